"""How close the engine's training loop comes to a hand-written PyTorch loop, and how often it syncs.

Reference: a plain loop over the same batches, already collated in memory (no data loading at all), copying each
to the device, doing forward, masked cross-entropy, backward and Adam steps (torch's default implementation, as a
hand-written loop has it). The engine runs the same model and loss from a dataset through its pipeline (a loader
thread, pinned memory), its run context, loss tracking and updater (on a GPU,
Adam with torch's fused kernels; its loop thread and torch's backward thread sharing one CPU: the settings
``foreach``, ``unpinned``, ``plain-fused`` and ``plain-pinned`` compare like with like).
Prints, for each setting against the plain loop timed alternately in the same run: frames/s and the ratio of median
epochs, the median of paired ratios (with quartiles: the machine's noise), the ratio of per-step medians (each
step's median over the repeats, summed: robust to stretches of a slower machine) with the loop thread's CPU time a
step, and the host-device synchronisations per epoch that ``torch.cuda.set_sync_debug_mode`` reports.

    python benchmarks/engine_overhead.py [--device cuda] [--seqs 1500] [--layers 6] [--batch-size 20000]
    python benchmarks/engine_overhead.py --layers 2 --batch-size 8000     # a small model: steps of a few ms
    python benchmarks/engine_overhead.py --layers 2 --batch-size 8000 --settings default unpaced preloaded \
        plain-pipeline                                                    # where a small model's time goes
    python benchmarks/engine_overhead.py --layers 2 --batch-size 8000 --settings default foreach plain-fused
    python benchmarks/engine_overhead.py --layers 2 --batch-size 8000 --settings default unpinned plain-pinned
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, Iterable, List

import numpy as np
import torch
from torch import nn

from i6_minireturnn.config import Config
from i6_minireturnn.data.dataset import DataKey, Dataset
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions
from i6_minireturnn.engine.engine import Engine
from i6_minireturnn.log import log
from i6_minireturnn.loop_tuning import LOOP_TUNING

FEATURES, CLASSES = 80, 40
STEP_STARTS: List[float] = []  # when each step of the loop being timed began (both loops append)


class RandomFrames(Dataset):
    """Framewise classification data held in memory (loading costs nothing): lengths 200..800 frames."""

    has_cheap_lengths = True

    def __init__(self, num_seqs: int, **kwargs):
        super().__init__(**kwargs)
        rng = np.random.RandomState(0)
        self.lengths = rng.randint(200, 801, size=num_seqs)
        self.features = [rng.standard_normal((n, FEATURES)).astype("float32") for n in self.lengths]
        self.labels = [rng.randint(0, CLASSES, size=n).astype("int32") for n in self.lengths]
        self.data_keys = {
            "data": DataKey("data", FEATURES, "float32", shape=(FEATURES,)),
            "classes": DataKey("classes", CLASSES, "int32", sparse=True),
        }

    def corpus_size(self) -> int:
        return len(self.lengths)

    def corpus_seq_lengths(self, corpus_idx: int) -> Dict[str, int]:
        n = int(self.lengths[corpus_idx])
        return {"data": n, "classes": n}

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        return {"data": self.features[corpus_idx], "classes": self.labels[corpus_idx]}


class Encoder(nn.Module):
    """Transformer encoder with a framewise softmax output."""

    def __init__(self, layers: int, dim: int = 512):
        super().__init__()
        self.inp = nn.Linear(FEATURES, dim)
        layer = nn.TransformerEncoderLayer(dim, 8, 4 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        return self.out(self.encoder(self.inp(x), src_key_padding_mask=mask))


def masked_ce(model: nn.Module, data: Dict[str, torch.Tensor]):
    logits = model(data["data"], data["data:size1"])
    lengths = data["classes:size1"]
    mask = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None]
    # multiply by the mask instead of boolean indexing, which would sync host and device
    frame_losses = nn.functional.cross_entropy(logits.float().transpose(1, 2), data["classes"].long(), reduction="none")
    return (frame_losses * mask).sum(), lengths.sum()


def plain_loop(
    model: nn.Module, batches: Iterable[Dict[str, torch.Tensor]], device: str, paced: bool = True, fused: bool = False
) -> float:
    """Seconds for one epoch of the reference loop (batches pinned in memory already; or the pipeline's batches:
    then the backward is a window for paced loader threads, as in the engine). Adam as written by hand: torch's
    default implementation (foreach); `fused`: with the fused kernels the engine chooses on a GPU."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused or None)
    total = torch.zeros((), device=device)
    start = time.perf_counter()
    with LOOP_TUNING.pacing.training(paced):
        for batch in batches:
            STEP_STARTS.append(time.perf_counter())
            data = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
                loss, norm = masked_ce(model, data)
            with LOOP_TUNING.window():
                (loss / norm).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach()
    float(total)  # one sync at the end
    return time.perf_counter() - start


def count_syncs(func, device: str) -> int:
    """Synchronising CUDA calls that torch reports while `func` runs."""
    if not device.startswith("cuda"):
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            func()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def train_step(*, model, data, run_ctx, **kwargs):
    STEP_STARTS.append(time.perf_counter())
    loss, norm = masked_ce(model, data)
    run_ctx.mark_as_loss(loss, "ce", inv_norm_factor=norm)


class PreloadedEngine(Engine):
    """The engine with its data pipeline replaced by the batches already in memory (the plain loop's input), to
    separate the engine loop's own cost from the data loading's."""

    preloaded: Dict[int, List[Dict[str, torch.Tensor]]] = {}

    def train_epoch(self) -> None:
        import i6_minireturnn.engine.engine as engine_module

        original = engine_module.take_batches
        engine_module.take_batches = lambda first, dataset, epoch, options: _Preloaded(self.preloaded[epoch])
        try:
            super().train_epoch()
        finally:
            engine_module.take_batches = original


class _Preloaded(list):
    @property
    def num_batches(self) -> int:
        return len(self)


def make_engine(args: argparse.Namespace, dataset: Dataset, worker_type: str, workers: int) -> Engine:
    """An engine over `dataset` with the benchmark's model and the given data worker setting."""
    keys = {
        "device": args.device,
        "batch_size": args.batch_size,
        "max_seqs": 64,
        "num_epochs": 3,
        "optimizer": {"class": "adam", "foreach": True} if worker_type == "foreach" else {"class": "adam"},
        "learning_rate": 1e-4,
        "torch_amp_options": {"dtype": "bfloat16"},
        "get_model": lambda epoch, step, **kw: Encoder(args.layers),
        "train_step": train_step,
        "log_step_interval": 100,
    }
    if worker_type == "unpaced":
        keys.update(data_loader_pacing=False)
    elif worker_type == "unpinned":
        keys.update(pin_training_loop=False)
    elif worker_type not in ("default", "preloaded", "foreach"):
        keys.update(num_workers_per_gpu=workers, data_worker_type=worker_type if workers else "thread")
    engine_class = {"preloaded": PreloadedEngine}.get(worker_type, Engine)
    engine = engine_class(Config(keys))
    engine.init_train(train_data=dataset)
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seqs", type=int, default=1500)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs of each loop (medians are compared)")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["default", "thread:2", "process:1", "none:0"],
        help="data worker settings to time: default (the config without worker keys), thread:N, process:N, none:0, "
        "preloaded (the engine loop over the plain loop's in-memory batches), unpaced (the default without loader "
        "pacing, see i6_minireturnn/loop_tuning.py), foreach (the default, but Adam's foreach implementation as "
        "in the plain loop, not "
        "the fused kernels the engine chooses on a GPU), unpinned (the default, but the loop's threads where the "
        "scheduler puts them: pin_training_loop = False), plain-fused (the plain loop with fused Adam: the engine's "
        "optimizer), plain-pinned (the plain loop with its threads on one CPU, as the engine's), "
        "plain-pipeline (the plain loop over the default pipeline's batches), plain-pipeline-unpaced",
    )
    parser.add_argument("--switch-interval", type=float, help="sys.setswitchinterval (Python's GIL hand-over)")
    parser.add_argument("--profile", metavar="FILE", help="write a torch.profiler table of one engine epoch here")
    args = parser.parse_args()
    log.initialize(verbosity=2)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)

    dataset = RandomFrames(args.seqs, seq_ordering="laplace:.64")
    engines = {}
    for setting in args.settings:
        worker_type, _, workers = setting.partition(":")
        if not worker_type.startswith("plain"):
            engines[setting] = make_engine(args, dataset, worker_type, int(workers or 1))
    options = PipelineOptions.from_config(make_engine(args, dataset, "default", 1).config, device=args.device)
    batches_per_epoch = {
        epoch: [
            {k: v.pin_memory() if isinstance(v, torch.Tensor) and options.pin_memory else v for k, v in b.items()}
            for b in EpochBatches(dataset, epoch, options)
        ]
        for epoch in (1, 2)
    }
    PreloadedEngine.preloaded = batches_per_epoch
    batches = batches_per_epoch[2]
    frames = sum(int(b["data:size1"].sum()) for b in batches)
    print(
        f"{len(batches)} batches, {frames} frames per epoch, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
        + f", torch {torch.__version__}, {args.layers} layers, batch_size {args.batch_size}"
    )

    # A new set of batch shapes costs a one-time warm-up on CUDA (seen with both loops): warm both loops on the
    # batches of epochs 1 and 2, then time epoch 2 in each, alternating, `repeats` times.
    reference = Encoder(args.layers).to(args.device)
    for epoch in (1, 2):
        plain_loop(reference, batches_per_epoch[epoch], args.device)

    def engine_epoch(engine: Engine, epoch: int) -> float:
        engine.epoch = epoch
        engine.init_train_epoch()
        start = time.perf_counter()
        engine.train_epoch()
        return time.perf_counter() - start

    def runner(setting: str) -> Callable[[int], float]:
        """One epoch of `setting`: an engine, or the plain loop over the pipeline's batches (paced or not)."""

        def run(epoch: int) -> float:
            if setting in engines:
                return engine_epoch(engines[setting], epoch)
            if setting == "plain-fused":
                return plain_loop(reference, batches_per_epoch[epoch], args.device, fused=True)
            if setting == "plain-pinned":
                with LOOP_TUNING.pinning.pinned(torch.device(args.device).index or 0):
                    return plain_loop(reference, batches_per_epoch[epoch], args.device)
            paced = setting != "plain-pipeline-unpaced"
            return plain_loop(reference, EpochBatches(dataset, epoch, options), args.device, paced)

        return run

    runners = {setting: runner(setting) for setting in args.settings}
    for run in runners.values():
        run(1)
        run(2)
    plain_times, engine_times = [], {setting: [] for setting in runners}
    plain_steps, engine_steps = [], {setting: [] for setting in runners}
    plain_cpu, engine_cpu = [], {setting: [] for setting in runners}

    def timed(func, *args):
        """(seconds, each step's seconds, the loop thread's CPU seconds a step) of one epoch of `func`."""
        STEP_STARTS.clear()
        cpu = time.thread_time()
        seconds = func(*args)
        # the loop thread's own work, without its waits (for Python's lock, the device, the data)
        cpu_per_step = (time.thread_time() - cpu) / len(STEP_STARTS)
        return seconds, np.diff(STEP_STARTS), cpu_per_step

    for _ in range(args.repeats):
        seconds, steps, cpu = timed(plain_loop, reference, batches, args.device)
        plain_times.append(seconds)
        plain_steps.append(steps)
        plain_cpu.append(cpu)
        for setting, run in runners.items():
            seconds, steps, cpu = timed(run, 2)
            engine_times[setting].append(seconds)
            engine_steps[setting].append(steps)
            engine_cpu[setting].append(cpu)
    plain = statistics.median(plain_times)
    print(f"plain loop (in-memory batches): {frames / plain / 1e6:.3f} M frames/s, median epoch {plain:.3f} s")
    for setting, times in engine_times.items():
        median = statistics.median(times)
        # each repeat's engine epoch against the plain epoch of the same repeat: robust to a machine whose speed
        # drifts during the run (seen on shared GPU machines: the same loop 25% faster at the end than at the start)
        ratios = [p / t for p, t in zip(plain_times, times)]
        # the quartiles show the machine's noise: a target inside them is not decided by this run
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        print(
            f"{setting:9s}: {frames / median / 1e6:.3f} M frames/s, median epoch {median:.3f} s, "
            f"/ plain = {plain / median:.3f}, median of paired ratios {statistics.median(ratios):.3f} "
            f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}; epochs {', '.join(f'{t:.3f}' for t in times)})"
        )
    print(f"plain loop epochs: {', '.join(f'{t:.3f}' for t in plain_times)}")
    # Per step: each step's median over the repeats, summed over the epoch's steps. A machine whose speed changes
    # during the run (other work on the host) slows whole stretches of steps; the median of each step over the
    # repeats leaves those out, where an epoch's total keeps them.
    plain_step_sum = np.median(np.stack(plain_steps), axis=0).sum()
    for setting, steps in engine_steps.items():
        engine_step_sum = np.median(np.stack(steps), axis=0).sum()
        print(
            f"per-step medians, {setting:9s}: {1e3 * engine_step_sum / len(batches):.3f} ms a step, "
            f"plain {1e3 * plain_step_sum / len(batches):.3f} ms, "
            f"/ plain = {plain_step_sum / engine_step_sum:.3f}; the loop thread's CPU time a step "
            f"{1e3 * statistics.median(engine_cpu[setting]):.3f} ms (plain {1e3 * statistics.median(plain_cpu):.3f})"
        )
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if args.device.startswith("cuda"):
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            runners[args.settings[0]](2)
        with open(args.profile, "w") as f:
            f.write(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=50))
    if args.device.startswith("cuda"):
        engine_syncs = count_syncs(lambda: runners[args.settings[0]](2), args.device)
        plain_syncs = count_syncs(lambda: plain_loop(reference, batches, args.device), args.device)
        print(f"host-device syncs per epoch of {len(batches)} steps: engine {engine_syncs}, plain loop {plain_syncs}")


if __name__ == "__main__":
    main()
