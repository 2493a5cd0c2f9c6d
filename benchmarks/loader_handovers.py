"""How often the loader thread takes Python's lock from the training loop, per batch, and what that costs the loop.

A training loop that is limited by kernel launches (a small model: steps of a few ms) releases Python's lock at every
torch call; a loader thread that wants the lock then takes it, and the loop waits until it is handed back (on an H100,
8000 such hand-overs per second cost a 2-layer model 10% of its step rate). This benchmark needs no GPU: the main
thread stands in for the training loop, calling a small torch function in a loop (each call releases the lock), while
the default loader (one thread) reads an epoch. A call that takes more than ``--threshold-us`` is counted as a
hand-over; the figures are hand-overs per batch and the loop's time lost per batch, against the same loop without a
loader in the same run (the reference: its calls that are slow for other reasons).

    python benchmarks/loader_handovers.py [--seqs 1500] [--batch-size 8000] [--hdf /tmp/handovers.hdf]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Dict, Iterable, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engine_overhead import RandomFrames  # noqa: E402
from hdf_pipeline import make_file  # noqa: E402

from i6_minireturnn.config import Config  # noqa: E402
from i6_minireturnn.data.hdf import HDFDataset  # noqa: E402
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions  # noqa: E402


def launch_loop(stop: threading.Event, threshold_ns: int) -> Tuple[int, int, int]:
    """Calls a lock-releasing torch function until `stop`; returns (calls, slow calls, ns lost in slow calls)."""
    calls = slow = lost = 0
    tensor = torch.zeros(4)
    while not stop.is_set():
        start = time.perf_counter_ns()
        torch.add(tensor, 1)
        took = time.perf_counter_ns() - start
        calls += 1
        if took > threshold_ns:
            slow += 1
            lost += took
    return calls, slow, lost


def measure(batches: Iterable, threshold_ns: int) -> Dict[str, float]:
    """The launch loop in this thread while a loader thread consumes `batches` (None: for a fixed time alone)."""
    stop = threading.Event()
    count = [0]

    def consume() -> None:
        for _ in batches:
            count[0] += 1
        stop.set()

    started = time.perf_counter()
    consumer = threading.Thread(target=consume)
    consumer.start()
    calls, slow, lost = launch_loop(stop, threshold_ns)
    consumer.join()
    return {"batches": count[0], "seconds": time.perf_counter() - started, "calls": calls, "slow": slow, "lost": lost}


def alone(seconds: float, threshold_ns: int) -> Dict[str, float]:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    calls, slow, lost = launch_loop(stop, threshold_ns)
    return {"seconds": seconds, "calls": calls, "slow": slow, "lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=8000)
    parser.add_argument("--hdf", default="/tmp/loader_handovers.hdf", help="HDF file (written if missing)")
    parser.add_argument("--threshold-us", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    threshold_ns = int(args.threshold_us * 1000)
    make_file(args.hdf, args.seqs, 200, 800)
    datasets = {
        "in-memory arrays": RandomFrames(args.seqs, seq_ordering="laplace:.64"),
        "HDF file": HDFDataset(files=[args.hdf], seq_ordering="laplace:.64", use_cache_manager=False),
    }
    # the loader as the engine sets it up for a GPU: one thread, collating into page-locked memory where there is CUDA
    device = "cuda" if torch.cuda.is_available() else "cpu"
    options = PipelineOptions.from_config(Config({"batch_size": args.batch_size, "max_seqs": 64}), device=device)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {device}, threshold {args.threshold_us:.0f} us")
    for name, dataset in datasets.items():
        runs = [measure(EpochBatches(dataset, 2, options), threshold_ns) for _ in range(args.repeats)]
        reference = [alone(r["seconds"], threshold_ns) for r in runs[:2]]
        per_batch = statistics.median(r["slow"] / r["batches"] for r in runs)
        lost_ms = statistics.median(r["lost"] / r["batches"] / 1e6 for r in runs)
        ref_rate = statistics.median(r["slow"] / r["seconds"] for r in reference)
        ref_lost = statistics.median(r["lost"] / r["seconds"] for r in reference)
        batches_per_s = statistics.median(r["batches"] / r["seconds"] for r in runs)
        print(
            f"{name}: {runs[0]['batches']} batches; slow calls per batch {per_batch:.1f} "
            f"(loop alone: {ref_rate / batches_per_s:.1f} in the same time), loop time lost per batch "
            f"{lost_ms:.3f} ms (alone: {ref_lost / batches_per_s / 1e6:.3f} ms)"
        )


if __name__ == "__main__":
    main()
