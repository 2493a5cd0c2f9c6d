"""How often the loader thread takes Python's lock from the training loop, per batch, and what that costs the loop.

A training loop that is limited by kernel launches (a small model: steps of a few ms) releases Python's lock at every
torch call; a loader thread that wants the lock then takes it, and the loop waits until it is handed back (on an H100,
such hand-overs cost a 2-layer model 13% of its step rate without loader pacing). This benchmark needs no GPU: a
stand-in training loop takes each batch, then launches (calls a small torch function, which releases the lock, for
``--launch-ms``), then back-propagates (``--backward-ms`` without the lock, a window for paced loaders; see
i6_minireturnn/loop_tuning.py). A launch call that takes more than ``--threshold-us`` counts as a hand-over;
the figures are hand-overs per batch, the launch time lost per batch and the time the loop waited for batches, with
and without pacing, against the same loop without a loader (the reference: calls that are slow for other reasons).

    python benchmarks/loader_handovers.py [--seqs 1500] [--batch-size 8000] [--hdf /tmp/handovers.hdf]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, Iterable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engine_overhead import RandomFrames  # noqa: E402
from hdf_pipeline import make_file  # noqa: E402

from i6_minireturnn.config import Config  # noqa: E402
from i6_minireturnn.data.hdf import HDFDataset  # noqa: E402
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions  # noqa: E402
from i6_minireturnn.loop_tuning import LOOP_TUNING  # noqa: E402


def stand_in_loop(
    batches: Optional[Iterable], num_steps: int, launch_ns: int, backward_s: float, threshold_ns: int, paced: bool
) -> Dict[str, float]:
    """The stand-in training loop over `batches` (None: `num_steps` steps without a loader)."""
    tensor = torch.zeros(4)
    calls = slow = lost = steps = 0
    waited = 0.0
    iterator = iter(batches) if batches is not None else iter(range(num_steps))
    with LOOP_TUNING.pacing.training(paced):
        while True:
            start = time.perf_counter()
            if next(iterator, None) is None:
                break
            waited += time.perf_counter() - start
            steps += 1
            phase_end = time.perf_counter_ns() + launch_ns
            while True:
                begin = time.perf_counter_ns()
                if begin >= phase_end:
                    break
                torch.add(tensor, 1)
                took = time.perf_counter_ns() - begin
                calls += 1
                if took > threshold_ns:
                    slow += 1
                    lost += took
            with LOOP_TUNING.window():
                time.sleep(backward_s)
    return {"steps": steps, "calls": calls, "slow": slow, "lost": lost, "waited": waited}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=8000)
    parser.add_argument("--hdf", default="/tmp/loader_handovers.hdf", help="HDF file (written if missing)")
    parser.add_argument("--threshold-us", type=float, default=20.0)
    parser.add_argument("--launch-ms", type=float, default=4.0, help="a step's kernel launching (needs the lock)")
    parser.add_argument("--backward-ms", type=float, default=1.5, help="a step's backward (without the lock)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    threshold_ns = int(args.threshold_us * 1000)
    launch_ns = int(args.launch_ms * 1e6)
    backward_s = args.backward_ms / 1000
    make_file(args.hdf, args.seqs, 200, 800)
    datasets = {
        "in-memory arrays": RandomFrames(args.seqs, seq_ordering="laplace:.64"),
        "HDF file": HDFDataset(files=[args.hdf], seq_ordering="laplace:.64", use_cache_manager=False),
    }
    # the loader as the engine sets it up for a GPU: one thread, collating into page-locked memory where there is CUDA
    device = "cuda" if torch.cuda.is_available() else "cpu"
    options = PipelineOptions.from_config(Config({"batch_size": args.batch_size, "max_seqs": 64}), device=device)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {device}, threshold {args.threshold_us:.0f} us, "
        f"steps of {args.launch_ms} ms launching + {args.backward_ms} ms backward"
    )
    for name, dataset in datasets.items():
        num_steps = EpochBatches(dataset, 2, options).num_batches
        results = {"no loader": [], "paced": [], "unpaced": []}
        for _ in range(args.repeats):  # alternating: a machine whose speed drifts affects all alike
            for setting, runs in results.items():
                batches = None if setting == "no loader" else EpochBatches(dataset, 2, options)
                paced = setting != "unpaced"
                runs.append(stand_in_loop(batches, num_steps, launch_ns, backward_s, threshold_ns, paced))
        print(f"{name}: {num_steps} batches")
        for setting, runs in results.items():
            handovers = statistics.median(r["slow"] / r["steps"] for r in runs)
            lost_ms = statistics.median(r["lost"] / r["steps"] / 1e6 for r in runs)
            waited_ms = statistics.median(1e3 * r["waited"] / r["steps"] for r in runs)
            print(
                f"  {setting:9s}: slow calls per batch {handovers:.1f}, launch time lost per batch {lost_ms:.3f} ms, "
                f"waiting for the batch {waited_ms:.3f} ms"
            )


if __name__ == "__main__":
    main()
