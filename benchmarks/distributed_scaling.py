"""Multi-GPU scaling of the runtime's training: throughput of 1, 2 (and 4) GPUs on a Transformer CTC model of about
26M parameters with 40k-frame batches, and the computing share (time the loop did not wait for data).

Each run is what a user starts: ``python -m torch.distributed.run --standalone --nproc-per-node=N -m i6_minireturnn
CONFIG`` (``torch_distributed = {}``: DDP, NCCL). Every run trains the same 2 epochs of the same data (3000 sequences
of 200..1500 frames, 80 features, random labels); epoch 2 is timed (epoch 1 includes CUDA warm-up). Throughput is
batches per second over all GPUs (each rank takes 1/N of the epoch's batches; training drops the remainder of fewer
than N batches), the ratio against 1 GPU measured in the same invocation.

    python benchmarks/distributed_scaling.py [--gpus 1 2 4] [--seqs 3000] [--layers 8] [--plain]
    python benchmarks/distributed_scaling.py --gpus 1 --single-without-torchrun --timeline   # where a whole run goes
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from typing import Dict, List

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # run from a checkout, as the other benchmarks

from i6_minireturnn.data.dataset import DataKey, Dataset  # noqa: E402

CONFIG = """
import sys
sys.path.insert(0, {bench_dir!r})
from distributed_scaling import RandomSpeech, get_model, train_step  # noqa: F401

task = "train"
device = "cuda"
train = {{"class": RandomSpeech, "num_seqs": {seqs}, "seq_ordering": "laplace:.100"}}
batch_size = 40000
max_seqs = 200
num_epochs = 2
model = "out/model"
learning_rate_file = "out/learning_rates"
optimizer = {{"class": "adamw", "weight_decay": 0.01}}
learning_rate = 1e-4
torch_amp_options = {{"dtype": "bfloat16"}}
torch_distributed = {{}}
log_step_interval = 100
LAYERS = {layers}
"""

FEATURES, CLASSES, SUBSAMPLING = 80, 100, 4


class RandomSpeech(Dataset):
    """3000 sequences of 200..1500 frames; features are slices of a few random arrays, so loading costs nearly
    nothing and the benchmark measures the training, not the data."""

    has_cheap_lengths = True

    def __init__(self, num_seqs: int, **kwargs):
        super().__init__(**kwargs)
        rng = np.random.RandomState(0)
        self.lengths = rng.randint(200, 1501, size=num_seqs)
        self.pool = [rng.standard_normal((1500, FEATURES)).astype("float32") for _ in range(8)]
        self.labels = rng.randint(0, CLASSES - 1, size=1500 // 8).astype("int32")
        self.data_keys = {
            "data": DataKey("data", FEATURES, "float32", shape=(FEATURES,)),
            "classes": DataKey("classes", CLASSES, "int32", sparse=True),
        }

    def corpus_size(self) -> int:
        return len(self.lengths)

    def corpus_seq_lengths(self, corpus_idx: int) -> Dict[str, int]:
        n = int(self.lengths[corpus_idx])
        return {"data": n, "classes": n // 8}

    def load_corpus_seq(self, corpus_idx: int):
        n = int(self.lengths[corpus_idx])
        return {"data": self.pool[corpus_idx % 8][:n], "classes": self.labels[: n // 8]}


class TransformerCTC(torch.nn.Module):
    """Frames stacked by 4, a Transformer encoder (512 dims, 8 heads, 2048 feed-forward), CTC output."""

    def __init__(self, layers: int = 8, dim: int = 512):
        super().__init__()
        self.inp = torch.nn.Linear(FEATURES * SUBSAMPLING, dim)
        layer = torch.nn.TransformerEncoderLayer(dim, 8, 4 * dim, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = torch.nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        batch, time = x.shape[0], x.shape[1] // SUBSAMPLING * SUBSAMPLING
        x = x[:, :time].reshape(batch, time // SUBSAMPLING, FEATURES * SUBSAMPLING)
        lengths = lengths // SUBSAMPLING
        mask = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        return self.out(self.encoder(self.inp(x), src_key_padding_mask=mask)), lengths


def get_model(epoch, step, **kwargs):
    from i6_minireturnn.config import get_global_config

    # cuDNN's attention builds a new execution plan for every new padded length, costing 4-6 ms of host time per
    # layer and step with variable-length batches (seen with torch.profiler: it made this benchmark host-bound);
    # flash / memory-efficient attention have no such cost.
    if get_global_config().bool("BENCH_NO_CUDNN_ATTENTION", True):
        torch.backends.cuda.enable_cudnn_sdp(False)

    return TransformerCTC(layers=get_global_config().int("LAYERS", 8))


_PROFILE = {"step": 0, "profiler": None}


def _profile_steps() -> None:
    """With BENCH_PROFILE=<file>, rank 0 profiles 10 steps of epoch 2 (CPU and CUDA) and writes the table there."""
    target = os.environ.get("BENCH_PROFILE")
    if not target or os.environ.get("RANK", "0") != "0":
        return
    _PROFILE["step"] += 1
    if _PROFILE["step"] == 60:
        _PROFILE["profiler"] = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        )
        _PROFILE["profiler"].__enter__()
    elif _PROFILE["step"] == 70:
        torch.cuda.synchronize()
        _PROFILE["profiler"].__exit__(None, None, None)
        table = _PROFILE["profiler"].key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
        table += "\n" + _PROFILE["profiler"].key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
        with open(f"{target}.{os.environ.get('WORLD_SIZE', '1')}", "w") as f:
            f.write(table)


def train_step(*, model, data, run_ctx, **kwargs):
    _profile_steps()
    logits, lengths = model(data["data"], data["data:size1"].to(data["data"].device))
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)
    loss = torch.nn.functional.ctc_loss(
        log_probs, data["classes"].long(), lengths, data["classes:size1"], blank=CLASSES - 1, reduction="sum"
    )
    run_ctx.mark_as_loss(loss, "ctc", inv_norm_factor=data["classes:size1"].sum())


def plain_ddp_loop(config_file: str) -> None:
    """The reference under torchrun: a hand-written DDP loop over the same sharded batches (planned by the runtime's
    pipeline, loaded ahead by its worker), timing epoch 2 as the engine's summary line does."""
    import time

    import torch.distributed as dist

    from i6_minireturnn.config import Config, set_global_config
    from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions
    from i6_minireturnn.engine.run_ctx import RunCtx, set_run_ctx

    config = Config()
    config.load_file(config_file)
    set_global_config(config)
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = get_model(epoch=1, step=0).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.device(device).index])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    options = PipelineOptions.from_config(config, device=device)
    if world > 1:
        options = options.sharded(rank, world, remainder="drop")
    dataset = RandomSpeech(num_seqs=config.int("BENCH_SEQS", 3000), seq_ordering="laplace:.100")
    for epoch in (1, 2):
        start, steps = time.perf_counter(), 0
        total = torch.zeros((), device=device)
        for batch in EpochBatches(dataset, epoch, options):
            data = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            run_ctx = set_run_ctx(RunCtx(stage="train_step", device=device))
            with torch.autocast("cuda", dtype=torch.bfloat16):
                train_step(model=ddp, data=data, run_ctx=run_ctx)
            loss = run_ctx.total_loss()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach()
            steps += 1
        float(total)
        seconds = time.perf_counter() - start
        if rank == 0:
            print(f"epoch {epoch}: trained {steps} steps in {seconds:.1f}s, plain loop, computing 100%", flush=True)
    print("Finished in 0.0s")
    dist.destroy_process_group()


def run(gpus: int, folder: str, args: argparse.Namespace, plain: bool = False) -> Dict[str, float]:
    """Trains 2 epochs on `gpus` GPUs; returns epoch 2's steps per rank, seconds and computing share, and the whole
    process's wall time."""
    import time

    started = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    config = os.path.join(folder, "returnn.config")
    bench_dir = os.path.dirname(os.path.abspath(__file__))
    with open(config, "w") as f:
        f.write(textwrap.dedent(CONFIG.format(bench_dir=bench_dir, seqs=args.seqs, layers=args.layers)))
        f.write(f"BENCH_SEQS = {args.seqs}\n" + "".join(line + "\n" for line in args.extra))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}"]
    if gpus == 1 and args.single_without_torchrun and not plain:
        cmd = [sys.executable]  # as a user starts a one-GPU training: python -m i6_minireturnn CONFIG
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])))
    target = [os.path.abspath(__file__), "--plain-worker", config] if plain else ["-m", "i6_minireturnn", config]
    lines = []
    with open(os.path.join(folder, "stderr"), "w+") as stderr:
        # stdout read line by line: with --timeline each line is shown with the seconds since the process started
        proc = subprocess.Popen(cmd + target, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        for line in proc.stdout:
            lines.append(line)
            if args.timeline and not plain and not line.startswith((" ", ")")):
                print(f"  {time.perf_counter() - started:6.2f}s  {line.rstrip()[:140]}")
        proc.wait()
        stderr.seek(0)
        errors = stderr.read()
    stdout = "".join(lines)
    if proc.returncode != 0:
        print(stdout[-3000:], errors[-5000:])
        raise SystemExit(f"{gpus} GPU run failed")
    summaries = re.findall(r"epoch (\d+): trained (\d+) steps in ([\d.]+)s.*?computing (\d+)%", stdout)
    epoch2 = [s for s in summaries if s[0] == "2"][0]
    params = re.search(r"Total number of parameters: (\d+)", stdout)
    if params:
        print(f"model: {int(params.group(1)) / 1e6:.1f}M parameters")
    return {
        "steps": int(epoch2[1]),
        "seconds": float(epoch2[2]),
        "computing": int(epoch2[3]) / 100,
        "total": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seqs", type=int, default=3000)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--extra", nargs="*", default=[], help="config lines added to the runtime's config")
    parser.add_argument("--plain", action="store_true", help="also time a hand-written DDP loop (reference)")
    parser.add_argument("--plain-worker", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument(
        "--timeline", action="store_true", help="show the runtime's log lines with the seconds since its start"
    )
    parser.add_argument(
        "--single-without-torchrun",
        action="store_true",
        help="run the 1-GPU case as python -m i6_minireturnn (its 'whole run' is then the whole process's time)",
    )
    args = parser.parse_args()
    if args.plain_worker:
        plain_ddp_loop(args.plain_worker)
        return
    available = torch.cuda.device_count()
    gpus_list: List[int] = [g for g in args.gpus if g <= available]
    print(f"{available} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}; runs: {gpus_list} GPU(s)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for plain in [False, True] if args.plain else [False]:
            name = "plain DDP loop" if plain else "runtime"
            for gpus in gpus_list:
                results[name, gpus] = r = run(gpus, os.path.join(tmp, f"{name}{gpus}"), args, plain=plain)
                r["rate"] = r["steps"] * gpus / r["seconds"]
                print(
                    f"{name}, {gpus} GPU(s): epoch 2: {r['steps']} steps per rank in {r['seconds']:.1f}s = "
                    f"{r['rate']:.2f} batches/s, computing {100 * r['computing']:.0f}%, whole run {r['total']:.1f}s",
                    flush=True,
                )
            base = results[name, gpus_list[0]]
            for gpus in gpus_list[1:]:
                speedup = results[name, gpus]["rate"] / base["rate"]
                print(f"{name}: speed-up {gpus} GPUs / {gpus_list[0]} GPU: {speedup:.2f}x")
        if args.plain:
            for gpus in gpus_list:
                ratio = results["runtime", gpus]["rate"] / results["plain DDP loop", gpus]["rate"]
                print(f"runtime / plain DDP loop throughput, {gpus} GPU(s): {ratio:.3f}")
                ours, theirs = results["runtime", gpus]["total"], results["plain DDP loop", gpus]["total"]
                print(
                    f"whole run, {gpus} GPU(s): runtime {ours:.1f}s, plain DDP loop {theirs:.1f}s "
                    f"(plain / runtime {theirs / ours:.2f})"
                )


if __name__ == "__main__":
    main()
