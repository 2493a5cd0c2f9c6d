"""HDF -> padded batches without a model: frames/s and peak memory per worker setting, next to Mini-RETURNN's.

    python benchmarks/hdf_pipeline.py throughput [--file /tmp/bench.hdf] [--epochs 3] [--minireturnn PATH]
        [--step-ms 0] [--settings 0:thread,1:thread,2:thread,1:process,2:process]
    python benchmarks/hdf_pipeline.py memory [--file /tmp/bench_2g.hdf] [--gigabytes 2]

Throughput setting (issue figures): 3000 sequences of 200-1500 frames x 80 dims plus int32 labels, batch_size 40000
frames, max_seqs 64, ``laplace:.64`` order. Every setting runs in its own process (so that its peak resident memory
is its own) over ``--epochs`` epochs; the figure is the median epoch. ``--minireturnn PATH`` (a Mini-RETURNN
checkout) also runs Mini-RETURNN's own training data loader on the same file: the chain its engine builds in
``_create_data_loader`` with the default ``num_workers_per_gpu = 1`` (one spawned, persistent worker process; a
checkout from a git mirror: ``git --git-dir=MIRROR archive HEAD | tar -x -C PATH``). Memory next to each figure: the
process's peak resident memory, plus the peaks of its live child processes together (loader workers; for
Mini-RETURNN also the multiprocessing manager its engine starts for the epoch number).
``--step-ms N`` stands in for a model that trains: after each batch the consumer holds the GIL for N/4 ms (Python
that launches kernels) and waits 3N/4 ms (the accelerator computes); the figure then is frames/s of the whole loop,
and reading ahead should never make it slower than loading in the training process (workers 0).
Memory: peak resident memory of a separate process that iterates a large file once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, Iterable, List

import numpy as np

SETTINGS = ["0:thread", "1:thread", "2:thread", "1:process", "2:process"]
DEFAULT_SETTING = "1:thread"  # num_workers_per_gpu = 1, data_worker_type = "thread"
BATCH_SIZE, MAX_SEQS, ORDERING = 40000, 64, "laplace:.64"


def make_file(path: str, num_seqs: int, min_len: int, max_len: int, dim: int = 80) -> None:
    """Random float32 features and int32 labels; written in chunks of 100 sequences."""
    from i6_minireturnn.data.hdf_writer import SimpleHDFWriter

    if os.path.exists(path):
        return
    rng = np.random.RandomState(0)
    writer = SimpleHDFWriter(path, dim=dim, extra_type={"classes": (100, 1, "int32")})
    for start in range(0, num_seqs, 100):
        lengths = rng.randint(min_len, max_len + 1, size=min(100, num_seqs - start))
        features = rng.standard_normal((len(lengths), lengths.max(), dim)).astype("float32")
        labels = rng.randint(0, 100, size=(len(lengths), lengths.max())).astype("int32")
        tags = [f"seq-{start + i}" for i in range(len(lengths))]
        writer.insert_batch(features, lengths, tags, extra={"classes": labels})
    writer.close()


def train_step(step_ms: float) -> None:
    """What a training step costs the host: a quarter holding the GIL (Python), the rest waiting."""
    if step_ms <= 0:
        return
    end = time.perf_counter() + step_ms / 4000
    while time.perf_counter() < end:
        pass
    time.sleep(step_ms * 3 / 4000)


def children_peak_mb() -> float:
    """Peak resident memory of this process's live child processes (loader workers) together, from /proc."""
    total = 0.0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids = f.read().split()
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += sum(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
            except OSError:
                pass
    return total


def consume(batches: Iterable[Dict[str, Any]], step_ms: float, peaks: List[float]) -> float:
    """Frames/s of one epoch's batches; notes the worker processes' peak memory now and then (they end with the
    epoch)."""
    start, frames = time.perf_counter(), 0
    for i, batch in enumerate(batches):
        frames += int(batch["data:size1"].sum())
        train_step(step_ms)
        if i % 16 == 15:
            peaks.append(children_peak_mb())
    return frames / (time.perf_counter() - start)


def ours_epochs(
    path: str, workers: int, worker_type: str, epochs: int, step_ms: float, peaks: List[float]
) -> List[float]:
    """Frames/s of each epoch through our pipeline."""
    from i6_minireturnn.data.batching import BatchLimits
    from i6_minireturnn.data.hdf import HDFDataset
    from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions

    dataset = HDFDataset(files=[path], use_cache_manager=False, seq_ordering=ORDERING)
    options = PipelineOptions(limits=BatchLimits(BATCH_SIZE, MAX_SEQS), num_workers=workers, worker_type=worker_type)
    return [consume(EpochBatches(dataset, epoch, options), step_ms, peaks) for epoch in range(1, epochs + 1)]


def minireturnn_epochs(path: str, root: str, epochs: int, step_ms: float, peaks: List[float]) -> List[float]:
    """Frames/s of each epoch through Mini-RETURNN's training data loader, built as its engine builds it
    (``Engine._create_data_loader``) with its defaults (no length filter, no chunking, one worker)."""
    from functools import partial

    import torch
    import torch.utils.data.datapipes as dp

    sys.path.insert(0, root)  # the spawned worker gets this sys.path too
    from returnn.datasets import init_dataset
    from returnn.torch.data import pipeline as data_pipeline
    from returnn.torch.data import returnn_dataset_wrapper

    dataset = init_dataset({"class": "HDFDataset", "files": [path], "seq_ordering": ORDERING})
    manager = torch.multiprocessing.Manager()
    epoch_shared = manager.Value("i", 0)
    reset = returnn_dataset_wrapper.ReturnnDatasetResetMpSharedEpochCallback(
        dataset=dataset, epoch_mp_shared=epoch_shared
    )
    wrapped = returnn_dataset_wrapper.ReturnnDatasetIterDataPipe(dataset, reset_callback=reset)
    batches = data_pipeline.BatchingIterDataPipe(wrapped, batch_size=BATCH_SIZE, max_seqs=MAX_SEQS, drop_last=False)
    batches = dp.iter.Collator(batches, collate_fn=partial(data_pipeline.collate_batch, device="cpu"))
    num_workers = 1  # config.int("num_workers_per_gpu", 1)
    loader = torch.utils.data.DataLoader(
        dataset=batches,
        batch_size=None,
        num_workers=num_workers,
        multiprocessing_context="spawn" if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )
    rates = []
    for epoch in range(1, epochs + 1):
        epoch_shared.value = epoch
        rates.append(consume(loader, step_ms, peaks))
    manager.shutdown()
    return rates


def run_setting(path: str, setting: str, epochs: int, step_ms: float, minireturnn: str) -> Dict[str, object]:
    """Runs one setting in a fresh process: its epoch rates and peak resident memory (MB)."""
    command = [sys.executable, __file__, "_setting", setting, "--file", path, "--epochs", str(epochs)]
    command += ["--step-ms", str(step_ms)] + (["--minireturnn", minireturnn] if minireturnn else [])
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"setting {setting} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(args: argparse.Namespace) -> None:
    path = args.file or "/tmp/i6_minireturnn_bench_3000.hdf"
    make_file(path, 3000, 200, 1500)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{path}: {os.path.getsize(path) / 2**30:.2f} GiB, cores: {os.cpu_count()}, load average: {load}")
    if args.step_ms:
        print(f"each batch followed by a simulated training step of {args.step_ms} ms")
    with open(path, "rb") as f:  # into the page cache, so that no setting pays for the first read
        while f.read(2**26):
            pass
    settings = args.settings.split(",") + (["minireturnn"] if args.minireturnn else [])
    medians = {}
    for setting in settings:
        result = run_setting(path, setting, args.epochs, args.step_ms, args.minireturnn)
        rates = result["rates"]
        medians[setting] = statistics.median(rates)
        if setting == "minireturnn":
            name = "Mini-RETURNN (1 worker process, spawned)"
        else:
            workers, kind = setting.split(":")
            name = f"ours, workers {workers} ({kind})" + (" [default]" if setting == DEFAULT_SETTING else "")
        epochs = ", ".join(f"{r / 1e6:.2f}" for r in rates)
        memory = f"peak RSS {result['peak_mb']:.0f} MB"
        if result["children_mb"]:
            memory += f" + worker processes {result['children_mb']:.0f} MB"
        print(f"{name:48s} {medians[setting] / 1e6:6.2f} M frames/s (epochs: {epochs}); {memory}")
    if args.minireturnn:
        ratio = medians[DEFAULT_SETTING] / medians["minireturnn"]
        print(f"default settings: ours / Mini-RETURNN = {ratio:.2f}x")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average after: {load}")


def memory(args: argparse.Namespace) -> None:
    path = args.file or "/tmp/i6_minireturnn_bench_2g.hdf"
    num_seqs = int(args.gigabytes * 2**30 / (850 * 84 * 4))
    make_file(path, num_seqs, 200, 1500)
    result = run_setting(path, DEFAULT_SETTING, 1, 0.0, "")
    print(
        f"{path}: {os.path.getsize(path) / 2**30:.2f} GiB; one epoch at {result['rates'][0] / 1e6:.2f} M frames/s, "
        f"peak resident memory {result['peak_mb']:.0f} MB (of which {result['base_mb']:.0f} MB before reading: "
        "Python, torch, numpy, h5py)"
    )


def setting_main(args: argparse.Namespace) -> None:
    """One setting, in this process; prints its figures as JSON."""
    import torch  # noqa: F401  (counted in the base memory, as the training process has it)

    base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peaks: List[float] = []
    if args.setting == "minireturnn":
        rates = minireturnn_epochs(args.file, args.minireturnn, args.epochs, args.step_ms, peaks)
    else:
        workers, kind = args.setting.split(":")
        rates = ours_epochs(args.file, int(workers), kind, args.epochs, args.step_ms, peaks)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(rates=rates, peak_mb=peak_mb, base_mb=base_mb, children_mb=max(peaks, default=0.0))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["throughput", "memory", "_setting"])
    parser.add_argument("setting", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--file", default=None)
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="ours: workers:type, comma-separated")
    parser.add_argument("--step-ms", type=float, default=0.0, help="simulated training step after each batch")
    parser.add_argument("--minireturnn", default="", help="a Mini-RETURNN checkout, to run its pipeline too")
    args = parser.parse_args()
    {"throughput": throughput, "memory": memory, "_setting": setting_main}[args.what](args)


if __name__ == "__main__":
    main()
