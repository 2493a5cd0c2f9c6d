"""OggZip decoding without a model: how loading scales with loaders, against libsndfile in a bare loop.

    python benchmarks/oggzip_features.py [--utterances 400] [--features raw] [--loaders 1 2 4 8] [--epochs 2]

Uses the Vorbis corpus of ``benchmarks/oggzip_conformer.py`` (made in ``--workdir`` if missing). Prints seconds of
audio per second of wall time for:

- ``soundfile``: a bare loop of ``zipfile`` reads and ``soundfile.read`` in one thread, nothing else: what one core
  decodes at most (the per-core limit); ``soundfile xN``: the same loop split over N threads;
- ``thread xN`` / ``process xN``: the runtime's pipeline (``EpochBatches`` with N loader threads or worker
  processes; batches of 300 s of audio, collated) with the dataset's feature options (``--features``: ``raw``, as
  models computing log-mel on the device take it, or ``log_mel_filterbank``: 80 filters on the CPU).

Per loader: the rate over N, and its share of the bare loop's single-core rate (1.00: linear scaling at the
libsndfile limit). The last of ``--epochs`` epochs is timed (the first warms the page cache).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import List

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCHMARKS), BENCHMARKS]  # this checkout's runtime, and the corpus maker beside

from oggzip_conformer import corpus_entries, make_corpus  # noqa: E402

from i6_minireturnn.data.batching import BatchLimits  # noqa: E402
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions  # noqa: E402
from i6_minireturnn.data.registry import init_dataset  # noqa: E402


def bare_loop(path: str, members: List[str], threads: int) -> float:
    """Seconds to read and decode `members` with soundfile in `threads` threads (one zip handle per thread)."""
    import soundfile

    def decode(part: List[str]) -> None:
        with zipfile.ZipFile(path) as archive:
            for member in part:
                soundfile.read(io.BytesIO(archive.read(member)), dtype="float32")

    parts = [members[i::threads] for i in range(threads)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, parts))
    return time.perf_counter() - start


def pipeline(path: str, features: str, loaders: int, worker_type: str, epochs: int) -> float:
    """Seconds for the last of `epochs` epochs through the runtime's pipeline."""
    audio = {"features": "raw", "sample_rate": 16000}
    if features != "raw":
        audio = {"features": features, "num_feature_filters": 80}
    dataset = init_dataset({"class": "OggZipDataset", "path": path, "audio": audio, "use_cache_manager": False})
    limits = BatchLimits(300 * 16000 if features == "raw" else 30000, 200)
    options = PipelineOptions(limits=limits, num_workers=loaders, worker_type=worker_type)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        for _ in EpochBatches(dataset, epoch, options):
            pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=400)
    parser.add_argument("--workdir", default="/tmp/i6_minireturnn_oggzip_conformer")
    parser.add_argument("--features", default="raw", choices=["raw", "log_mel_filterbank"])
    parser.add_argument("--loaders", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, f"train{args.utterances}.zip")
    make_corpus(path, args.utterances)
    name = os.path.splitext(os.path.basename(path))[0]
    entries = corpus_entries(path)
    audio_s = sum(float(e["duration"]) for e in entries)
    members = [f"{name}/{e['file']}" for e in entries]
    cpus = len(os.sched_getaffinity(0))
    print(f"{len(entries)} utterances, {audio_s / 3600:.2f} h of Vorbis audio, {cpus} CPUs, features {args.features}")

    bare_loop(path, members, 1)  # page cache
    single = audio_s / bare_loop(path, members, 1)
    print(f"{'soundfile x1':16s} {single:8.0f} s/s (the per-core limit)")
    for n in [n for n in args.loaders if n > 1]:
        rate = audio_s / bare_loop(path, members, n)
        print(f"{f'soundfile x{n}':16s} {rate:8.0f} s/s, per thread {rate / n:6.0f} = {rate / n / single:.2f}")
    for worker_type in ("thread", "process"):
        for n in args.loaders:
            rate = audio_s / pipeline(path, args.features, n, worker_type, args.epochs)
            print(f"{f'{worker_type} x{n}':16s} {rate:8.0f} s/s, per loader {rate / n:6.0f} = {rate / n / single:.2f}")


if __name__ == "__main__":
    main()
