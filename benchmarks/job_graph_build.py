"""How long building a Sisyphus graph of our jobs takes, against the same graph of i6_core's RETURNN jobs.

Each side builds and hashes N pairs of a training job and a forward job on its last checkpoint, every pair with its
own config (another learning rate, another model size): MiniReturnnTrainingJob + MiniReturnnForwardJob, against
i6_core's ReturnnTrainingJob + ReturnnForwardJobV2 (``returnn_root`` = this repository). The configs are the same
on both sides (a serialization Collection with a Network, ``backend = "torch"`` as i6_core needs it). Each side runs
in a fresh process of its own, the sides alternating; the figures are the best of the repeats, without the imports
(printed apart). Target: ours at most 1.5x i6_core's.

    python benchmarks/job_graph_build.py [--pairs 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "tests.runtime.user_setup.epoch_aware_model"


def build(side: str, pairs: int) -> Dict[str, float]:
    """Imports the side's jobs, then builds and hashes `pairs` training + forward jobs; returns the seconds of each."""
    sys.path[:0] = [REPO, os.path.join(REPO, "recipe")]  # as a recipe finds `jobs` and i6_core
    start = time.perf_counter()
    from i6_core.returnn.config import ReturnnConfig
    from sisyphus import tk

    from jobs.serialization import Collection, Network

    if side == "ours":
        from jobs import MiniReturnnForwardJob, MiniReturnnTrainingJob
    else:
        from i6_core.returnn.forward import ReturnnForwardJobV2
        from i6_core.returnn.training import ReturnnTrainingJob

        returnn = {"returnn_python_exe": tk.Path(sys.executable), "returnn_root": tk.Path(REPO)}
    imported = time.perf_counter()
    ids: List[str] = []
    for i in range(pairs):
        network = Network(f"{MODEL}.Model", {"augment_from_epoch": 2 + i % 7}, train_step=f"{MODEL}.train_step")
        dataset = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 100}
        train_config = ReturnnConfig(
            config={
                "backend": "torch",
                "train": dataset,
                "dev": {**dataset, "num_seqs": 10},
                "batch_size": 1000,
                "optimizer": {"class": "adam", "epsilon": 1e-8},
                "learning_rates": [1e-3 * (1 + i / pairs)] * 4,
            },
            python_epilog=[Collection([network])],
        )
        forward_config = ReturnnConfig(
            config={"backend": "torch", "forward": dataset, "batch_size": 1000}, python_epilog=[Collection([network])]
        )
        if side == "ours":
            train = MiniReturnnTrainingJob(train_config, num_epochs=4)
            forward = MiniReturnnForwardJob(train.out_checkpoints[4], forward_config, output_files=["out.hdf"])
        else:
            train = ReturnnTrainingJob(train_config, num_epochs=4, **returnn)
            forward = ReturnnForwardJobV2(
                model_checkpoint=train.out_checkpoints[4],
                returnn_config=forward_config,
                output_files=["out.hdf"],
                **returnn,
            )
        ids += [train.job_id(), forward.job_id()]
    built = time.perf_counter()
    assert len(set(ids)) == 2 * pairs, "every pair must be distinct jobs"
    return {"import_s": imported - start, "build_s": built - imported}


def run_side(side: str, pairs: int) -> Dict[str, float]:
    """:func:`build` in a fresh Python process (no job cache, no module imported before)."""
    done = subprocess.run(
        [sys.executable, __file__, "--side", side, "--pairs", str(pairs)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Runs both sides alternately in fresh processes and prints each repeat, the best figures and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1000, help="training + forward job pairs per side (1000)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per side; the best counts (3)")
    parser.add_argument("--side", choices=["ours", "i6_core"], help=argparse.SUPPRESS)  # one side, in this process
    args = parser.parse_args()
    if args.side:
        print(json.dumps(build(args.side, args.pairs)))
        return
    results: Dict[str, List[Dict[str, float]]] = {"ours": [], "i6_core": []}
    for repeat in range(args.repeats):
        for side in results:
            results[side].append(run_side(side, args.pairs))
            build_s, import_s = results[side][-1]["build_s"], results[side][-1]["import_s"]
            print(f"repeat {repeat + 1} {side:8s} build+hash {build_s:.2f} s, import {import_s:.2f} s")
    best = {side: min(r["build_s"] for r in runs) for side, runs in results.items()}
    imports = {side: min(r["import_s"] for r in runs) for side, runs in results.items()}
    for side in results:
        per_pair = best[side] / args.pairs * 1e3
        print(
            f"{side:8s} {args.pairs} pairs: {best[side]:.2f} s ({per_pair:.2f} ms a pair), import {imports[side]:.2f} s"
        )
    print(f"ratio ours / i6_core: {best['ours'] / best['i6_core']:.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()
