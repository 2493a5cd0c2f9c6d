"""HDF -> padded batches without a model: frames/s per worker setting, and peak memory on a large file.

    python benchmarks/hdf_pipeline.py throughput [--file /tmp/bench.hdf]
    python benchmarks/hdf_pipeline.py memory [--file /tmp/bench_2g.hdf] [--gigabytes 2]

Throughput setting (issue figures): 3000 sequences of 200-1500 frames x 80 dims, batch_size 40000 frames,
max_seqs 64. Memory: peak resident memory of a separate process that iterates the whole file once.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np

from i6_minireturnn.data.batching import BatchLimits
from i6_minireturnn.data.hdf import HDFDataset
from i6_minireturnn.data.hdf_writer import SimpleHDFWriter
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions


def make_file(path: str, num_seqs: int, min_len: int, max_len: int, dim: int = 80) -> None:
    """Random float32 features and int32 labels; written in chunks of 100 sequences."""
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


def iterate(path: str, workers: int, worker_type: str, epoch: int = 1) -> float:
    """Frames per second of one epoch."""
    dataset = HDFDataset(files=[path], use_cache_manager=False, seq_ordering="laplace:.64")
    options = PipelineOptions(limits=BatchLimits(40000, 64), num_workers=workers, worker_type=worker_type)
    start, frames = time.perf_counter(), 0
    for batch in EpochBatches(dataset, epoch, options):
        frames += int(batch["data:size1"].sum())
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["throughput", "memory", "_iterate"])
    parser.add_argument("--file", default=None)
    parser.add_argument("--gigabytes", type=float, default=2.0)
    args = parser.parse_args()
    if args.what == "throughput":
        path = args.file or "/tmp/i6_minireturnn_bench_3000.hdf"
        make_file(path, 3000, 200, 1500)
        print(f"{path}: {os.path.getsize(path) / 2**30:.2f} GiB, cores: {os.cpu_count()}")
        with open(path, "rb") as f:  # into the page cache, so that no setting pays for the first read
            while f.read(2**26):
                pass
        for workers, kind in [(0, "thread"), (1, "thread"), (2, "thread"), (1, "process"), (2, "process")]:
            rates = [iterate(path, workers, kind, epoch) for epoch in (1, 2, 3)]
            epochs = ", ".join(f"{r / 1e6:.2f}" for r in rates)
            print(f"workers {workers} ({kind}): {max(rates) / 1e6:.2f} M frames/s (epochs: {epochs})")
    elif args.what == "memory":
        path = args.file or "/tmp/i6_minireturnn_bench_2g.hdf"
        num_seqs = int(args.gigabytes * 2**30 / (850 * 84 * 4))
        make_file(path, num_seqs, 200, 1500)
        size = os.path.getsize(path)
        out = subprocess.run(
            [sys.executable, __file__, "_iterate", "--file", path], capture_output=True, text=True, check=True
        )
        print(f"{path}: {size / 2**30:.2f} GiB; {out.stdout.strip()}")
    else:
        base_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rate = iterate(args.file, 1, "thread")
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"one epoch at {rate / 1e6:.2f} M frames/s, peak resident memory {peak_mb:.0f} MB "
            f"(of which {base_mb:.0f} MB before reading: Python, torch, numpy, h5py)"
        )


if __name__ == "__main__":
    main()
