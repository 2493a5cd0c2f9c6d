"""What the training loop receives, not only what the pipeline makes: one config file, a model of one scalar (an
epoch is data time), run as a user runs it, next to Mini-RETURNN with the same file and the pipeline alone (issue 25).

    python benchmarks/config_throughput.py [--minireturnn PATH] [--file /tmp/bench.hdf] [--workdir DIR]
        [--variant 'data_loader_pacing = False'] [--variant 'num_workers_per_gpu = 2'] [--also CHECKOUT] [--repeats 1]

The HDF file is the one of ``benchmarks/hdf_pipeline.py throughput`` (3000 sequences of 200-1500 frames x 80 dims
plus int32 labels, 2.55 M frames; made there if missing). The config trains one scalar parameter with SGD for 2
epochs on the CPU, batch_size 40000 frames, max_seqs 64, ``laplace:.64`` order, default loaders; its ``train_step``
takes the first frame of every sequence (the batch is touched, the step costs almost nothing) and appends
(epoch, time, frames) to a file per step. Runs, in this order, in one call:

- ours: ``python -m i6_minireturnn CONFIG`` with this checkout (the repository this script lies in) first on
  ``PYTHONPATH``; once per ``--variant`` (a config line appended to the same config) besides the default, and once
  per ``--also`` (another checkout of this runtime, e.g. the commit before a change, with the default config);
- Mini-RETURNN: ``python PATH/rnn.py CONFIG`` (``--minireturnn``, a checkout; from a git mirror:
  ``git --git-dir=MIRROR archive HEAD | tar -x -C PATH``), the same config file; it imports ``better_exchook``
  (``pip install better_exchook``, or its folder on ``PYTHONPATH``). A dev set of 100 sequences is in the config
  because Mini-RETURNN's engine needs one; steps under ``no_grad`` (its evaluation) write no stamps;
- the pipeline alone: ``EpochBatches`` of the default settings iterated without a loop
  (``hdf_pipeline.py``'s setting ``1:thread``, 2 epochs).

Figure: frames/s of epoch 2, from the step time stamps: the frames of its steps after the first, over the time from
its first step to its last (the loop's rate, without the epoch's start). Next to it the epoch time the run's own log
prints (ours: ``trained N steps in X s``; Mini-RETURNN: ``Trained N steps, took X s``) and the whole process's time.
``--repeats N`` alternates the runs N times and prints the median of each. The figures move with whatever else
runs on the machine (the load average is printed before and after): Mini-RETURNN's two processes lose more to a
busy machine than our one, so compare ratios only from one call.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
sys.path.insert(0, BENCHMARKS)

from hdf_pipeline import BATCH_SIZE, MAX_SEQS, ORDERING, make_file  # noqa: E402

STAMPS_ENV = "CONFIG_THROUGHPUT_STAMPS"  # where train_step writes its time stamps

CONFIG = """#!rnn.py
# written by benchmarks/config_throughput.py: a model of one scalar, so that an epoch is data time
import os
import time

import torch

task = "train"
device = "cpu"
train = {{"class": "HDFDataset", "files": [{file!r}], "seq_ordering": {ordering!r}}}
dev = {{"class": "HDFDataset", "files": [{dev_file!r}]}}  # Mini-RETURNN needs one
batch_size = {batch_size}
max_seqs = {max_seqs}
num_epochs = 2
optimizer = {{"class": "sgd"}}
learning_rate = 0.001
model = {model!r}
log_verbosity = 4


class Scalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


def get_model(*, epoch, step, **kwargs):
    return Scalar()


_stamps = None


def train_step(*, model, data, run_ctx, **kwargs):
    global _stamps
    if _stamps is None:
        _stamps = open(os.environ["{stamps_env}"], "a", buffering=1)
    features = data["data"]
    loss = (model.w * features[:, 0].mean() - 1.0) ** 2  # the first frame of every sequence: the batch is touched
    run_ctx.mark_as_loss(loss, "scalar")
    if torch.is_grad_enabled():  # training, not evaluating dev
        _stamps.write(f"{{run_ctx.epoch}} {{time.perf_counter()}} {{int(data['data:size1'].sum())}}\\n")
"""

OURS_EPOCH = re.compile(r"epoch (\d+): trained (\d+) steps in ([0-9.]+)s")
MINI_EPOCH = re.compile(r"Trained (\d+) steps, took ([0-9.]+)s")


def dev_file(hdf: str) -> str:
    """The small dev file beside the training file (100 sequences)."""
    return os.path.splitext(hdf)[0] + "_dev.hdf"


def write_config(path: str, hdf: str, model: str, variant: str = "") -> None:
    text = CONFIG.format(
        file=hdf,
        dev_file=dev_file(hdf),
        ordering=ORDERING,
        batch_size=BATCH_SIZE,
        max_seqs=MAX_SEQS,
        model=model,
        stamps_env=STAMPS_ENV,
    )
    if variant:
        text += f"\n# variant\n{variant}\n"
    with open(path, "w") as f:
        f.write(text)


def epoch_rate(stamps_file: str, epoch: int) -> Tuple[float, int]:
    """Frames/s of `epoch` from the step stamps (steps after the first, over first to last stamp), and its steps."""
    rows = []
    with open(stamps_file) as f:
        for line in f:
            e, t, frames = line.split()
            if int(e) == epoch:
                rows.append((float(t), int(frames)))
    if len(rows) < 2:
        raise RuntimeError(f"{stamps_file}: fewer than 2 steps in epoch {epoch}")
    frames = sum(n for _, n in rows[1:])
    return frames / (rows[-1][0] - rows[0][0]), len(rows)


def run_config(name: str, command: List[str], config: str, workdir: str, env: Dict[str, str]) -> Dict[str, float]:
    """Runs one training process on `config` in a fresh folder; its epoch-2 figures."""
    folder = os.path.join(workdir, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    stamps = os.path.join(folder, "stamps.txt")
    start = time.perf_counter()
    out = subprocess.run(
        command + [config], cwd=folder, env={**env, STAMPS_ENV: stamps}, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    log = out.stdout + out.stderr
    with open(os.path.join(folder, "log.txt"), "w") as f:
        f.write(log)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed ({' '.join(command)}):\n{log[-3000:]}")
    rate, steps = epoch_rate(stamps, 2)
    logged: Optional[float] = None
    match = [m for m in OURS_EPOCH.finditer(log) if m.group(1) == "2"]
    if match:
        logged = float(match[-1].group(3))
    else:
        mini = list(MINI_EPOCH.finditer(log))
        if len(mini) >= 2:
            logged = float(mini[1].group(2))
    return {"rate": rate, "steps": steps, "logged_s": logged or float("nan"), "wall_s": wall}


def pipeline_alone(hdf: str) -> float:
    """Frames/s of epoch 2 of the default pipeline without a loop (hdf_pipeline.py's setting ``1:thread``)."""
    command = [sys.executable, os.path.join(BENCHMARKS, "hdf_pipeline.py"), "_setting", "1:thread"]
    out = subprocess.run(command + ["--file", hdf, "--epochs", "2"], capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"pipeline alone failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["rates"][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", default="/tmp/i6_minireturnn_bench_3000.hdf")
    parser.add_argument("--minireturnn", default="", help="a Mini-RETURNN checkout, run with the same config")
    parser.add_argument("--workdir", default="", help="where the runs' folders go (default: a temporary folder)")
    parser.add_argument("--variant", action="append", default=[], help="a config line: one more run of ours")
    parser.add_argument("--also", action="append", default=[], help="another checkout of this runtime: one more run")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    make_file(args.file, 3000, 200, 1500)
    make_file(dev_file(args.file), 100, 200, 1500)
    with open(args.file, "rb") as f:  # into the page cache, so that no run pays for the first read
        while f.read(2**26):
            pass
    workdir = args.workdir or tempfile.mkdtemp(prefix="config_throughput_")
    os.makedirs(workdir, exist_ok=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.file}, cores: {os.cpu_count()}, load average: {load}, runs in {workdir}")

    env = dict(os.environ)
    inherited = env.get("PYTHONPATH", "").split(os.pathsep)
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in inherited if p])
    runs: List[Tuple[str, List[str], str, Dict[str, str]]] = []
    for i, variant in enumerate([""] + args.variant):
        config = os.path.join(workdir, f"ours{i}.config")
        write_config(config, args.file, os.path.join(workdir, f"ours{i}", "model"), variant)
        runs.append((variant or "ours, default", [sys.executable, "-m", "i6_minireturnn"], config, env))
    for i, checkout in enumerate(args.also):  # other checkouts of this runtime (e.g. before a change), default config
        config = os.path.join(workdir, f"also{i}.config")
        write_config(config, args.file, os.path.join(workdir, f"also{i}", "model"))
        root = os.path.abspath(checkout)
        also_env = {**env, "PYTHONPATH": os.pathsep.join([root] + [p for p in inherited if p])}
        runs.append((f"ours at {root}", [sys.executable, "-m", "i6_minireturnn"], config, also_env))
    if args.minireturnn:
        config = os.path.join(workdir, "minireturnn.config")
        write_config(config, args.file, os.path.join(workdir, "minireturnn", "model"))
        root = os.path.abspath(args.minireturnn)
        # its own `returnn`, none of ours; it imports better_exchook (pip install better_exchook, or a folder of it
        # on PYTHONPATH)
        mini_env = {**os.environ, "PYTHONPATH": os.pathsep.join([root] + [p for p in inherited if p])}
        runs.append(("Mini-RETURNN", [sys.executable, os.path.join(root, "rnn.py")], config, mini_env))

    results: Dict[str, List[Dict[str, float]]] = {name: [] for name, *_ in runs}
    results["pipeline alone"] = []
    for _ in range(args.repeats):
        for name, command, config, run_env in runs:
            folder = "minireturnn" if name == "Mini-RETURNN" else os.path.splitext(os.path.basename(config))[0]
            results[name].append(run_config(folder, command, config, workdir, run_env))
        results["pipeline alone"].append({"rate": pipeline_alone(args.file)})

    medians = {name: statistics.median(r["rate"] for r in rs) for name, rs in results.items()}
    for name, rs in results.items():
        line = f"{name:40s} {medians[name] / 1e6:6.2f} M frames/s"
        if len(rs) > 1:
            line += " (" + ", ".join(f"{r['rate'] / 1e6:.2f}" for r in rs) + ")"
        if "logged_s" in rs[0]:
            logged = statistics.median(r["logged_s"] for r in rs)
            wall = statistics.median(r["wall_s"] for r in rs)
            line += f"; epoch 2: {rs[0]['steps']} steps, {logged:.2f} s logged; process {wall:.1f} s"
        print(line)
    default = medians["ours, default"]
    if "Mini-RETURNN" in medians:
        for name in [name for name, *_ in runs if name != "Mini-RETURNN"]:
            print(f"{name} / Mini-RETURNN = {medians[name] / medians['Mini-RETURNN']:.2f}x")
    print(f"ours, default / pipeline alone = {default / medians['pipeline alone']:.2f}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average after: {load}")


if __name__ == "__main__":
    main()
