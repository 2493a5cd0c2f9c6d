"""Data pipeline throughput without a model: frames/s from a dataset to padded (optionally pinned) batches.

    python benchmarks/pipeline_throughput.py [--workers 0 1 2 4] [--pin]

The dataset is held in memory, so the figures show the pipeline's own cost (planning, collation, worker
transfer, pinning), per epoch: the first epoch of a loader includes starting its workers.
"""

from __future__ import annotations

import argparse
import time

import torch
from engine_overhead import RandomFrames  # noqa: E402  (benchmarks run from their folder or with it on sys.path)

from i6_minireturnn.data.batching import BatchLimits
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, default=1500)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pin", action="store_true", help="pin batches (as the engine does on CUDA)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    dataset = RandomFrames(args.seqs, seq_ordering="laplace:.64")
    print(f"torch {torch.__version__}, {args.seqs} seqs, pin_memory={args.pin}")
    for workers in args.workers:
        options = PipelineOptions(limits=BatchLimits(20000, 64), num_workers=workers, pin_memory=args.pin)
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            frames = batches = 0
            for batch in EpochBatches(dataset, epoch, options):
                frames += int(batch["data:size1"].sum())
                batches += 1
            seconds = time.perf_counter() - start
            print(f"workers {workers} epoch {epoch}: {batches} batches, {frames / seconds / 1e6:.2f} M frames/s")


if __name__ == "__main__":
    main()
