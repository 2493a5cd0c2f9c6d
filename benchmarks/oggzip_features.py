"""OggZip -> log-mel batches without a model: sequences/s per worker, and the scaling from 1 to 4 workers.

    python benchmarks/oggzip_features.py [--utterances 240] [--seconds 6] [--format ogg]

Generates a zip of random-tone utterances (16 kHz) once, then runs one epoch per setting.
"""

from __future__ import annotations

import argparse
import io
import os
import time
import zipfile

import numpy as np

from i6_minireturnn.data.batching import BatchLimits
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions
from i6_minireturnn.data.registry import init_dataset

RATE = 16000


def make_zip(path: str, utterances: int, seconds: float, fmt: str) -> None:
    import soundfile

    if os.path.exists(path):
        return
    name = os.path.splitext(os.path.basename(path))[0]
    rng = np.random.RandomState(0)
    entries = []
    with zipfile.ZipFile(path + ".tmp", "w") as archive:
        for i in range(utterances):
            duration = seconds * rng.uniform(0.5, 1.5)
            t = np.arange(int(duration * RATE)) / RATE
            audio = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(len(t))
            buffer = io.BytesIO()
            soundfile.write(buffer, audio.astype("float32"), RATE, format=fmt.upper())
            archive.writestr(f"{name}/utt{i}.{fmt}", buffer.getvalue())
            entries.append({"file": f"utt{i}.{fmt}", "seq_name": f"bench/{i}", "duration": duration, "text": ""})
        archive.writestr(f"{name}.txt", repr(entries))
    os.replace(path + ".tmp", path)


def run(path: str, workers: int, worker_type: str) -> float:
    """Sequences per second of one epoch."""
    dataset = init_dataset(
        {
            "class": "OggZipDataset",
            "path": path,
            "audio": {"features": "log_mel_filterbank", "num_feature_filters": 80},
            "targets": None,
            "use_cache_manager": False,
        }
    )
    options = PipelineOptions(limits=BatchLimits(20000, 32), num_workers=workers, worker_type=worker_type)
    start, seqs = time.perf_counter(), 0
    for batch in EpochBatches(dataset, 1, options):
        seqs += len(batch["seq_tag"])
    return seqs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=240)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--format", default="ogg", choices=["ogg", "flac", "wav"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    path = f"/tmp/i6_minireturnn_bench_{args.format}_{args.utterances}.zip"
    make_zip(path, args.utterances, args.seconds, args.format)
    print(f"{args.utterances} utterances of about {args.seconds} s ({args.format}), {os.cpu_count()} cores")
    for worker_type in ("thread", "process"):
        rates = {w: run(path, w, worker_type) for w in args.workers}
        for w, rate in rates.items():
            print(f"{worker_type} workers {w}: {rate:.1f} seqs/s ({rate / w:.1f} per worker)")
        if 1 in rates and 4 in rates:
            print(f"{worker_type}: 4 workers / 1 worker = {rates[4] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
