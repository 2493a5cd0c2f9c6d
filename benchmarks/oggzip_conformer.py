"""An i6-style speech setup end to end: Vorbis audio in an OggZip, log-mel in the model, an i6_models Conformer, CTC.

    python benchmarks/oggzip_conformer.py [--utterances 2000] [--minireturnn PATH] [--workdir DIR]
        [--setting 'NAME=CONFIG LINES'] [--only default,gpu-bound] [--repeats 1] [--device cpu --layers 1 ...]
        [--amp bfloat16] [--common 'CONFIG LINES'] [--also CHECKOUT]

Generates (once, in ``--workdir``) a training OggZip of `--utterances` utterances of 2.4-16 s of 16 kHz speech-like
audio (a voiced source with a moving pitch, syllable envelopes and noise) encoded as Vorbis, a dev OggZip of 40 and
a word vocabulary; writes one config file that both runtimes read: raw audio from the OggZip (``features: "raw"``),
log-mel features computed in the model on the device (STFT of 25 ms windows, 10 ms hop, 80 mel filters), an i6_models
``ConformerEncoderV1`` (VGG front end, 4x subsampling; 8 x 384 by default), CTC, AdamW, batches of 300 s of audio,
2 epochs. Then, in one call, one process per setting:

- ``default``: ``python -m i6_minireturnn CONFIG`` with the config as it is (what a user who sets nothing gets);
- the settings named by ``--setting NAME=LINES`` (config lines appended, e.g. ``threads-1=num_workers_per_gpu = 1``);
  without any, a fixed list: one loader thread (the default before loaders were sized from the machine), 8 threads,
  8 worker processes;
- ``also-N`` (with ``--also CHECKOUT``): another checkout of this runtime (e.g. the commit before a change) with the
  config as it is;
- ``minireturnn`` (with ``--minireturnn PATH``, a Mini-RETURNN checkout): ``python PATH/rnn.py CONFIG``, its default
  loading (one worker process; more need a dataset that supports sharding, which its OggZipDataset does not). Its
  OggZipDataset builds a C++ helper with g++ at first use, into ``/var/tmp/$USER/returnn_native``: where g++ fails,
  copy that folder from a machine where it was built;
- ``gpu-bound``: the reference. The same model, loss and optimizer (AdamW as the runtime sets it up) trained by a
  plain loop on epoch 2's batches, all already in GPU memory (loaded before timing), its thread and torch's backward
  thread on one CPU as the runtime runs them: the epoch time when loading costs nothing.

``--amp bfloat16`` adds ``torch_amp_options = {'dtype': 'bfloat16'}`` (both runtimes and the reference autocast).
``--common LINES`` appends config lines to every run's config, the reference's included (e.g.
``import torch\\ntorch.backends.cuda.enable_cudnn_sdp(False)``, for attention in bfloat16).

Printed per setting: epoch 2's time (the run's own log line), the computing share (ours: the epoch summary's; the
rest of the time the loop waited for data), the ratio of the epoch to the GPU-bound reference and to Mini-RETURNN's
default, the whole process's time, and the peak memory of the process tree (the sum of the proportional set sizes of
the process and its children, sampled every 0.2 s: pages shared between a parent and its forked workers are counted
once). Each run's log stays in ``WORKDIR/runs/NAME/log.txt``, every line after the seconds since the run's start
(where a whole process's time goes). Needs ``soundfile`` and ``i6_models`` (with ``typeguard``) importable; log-mel
needs no librosa here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCHMARKS)
RATE = 16000
WORDS = [f"w{i}" for i in range(200)]

CONFIG = '''#!rnn.py
# written by benchmarks/oggzip_conformer.py: one file for this runtime and for Mini-RETURNN
import numpy as np
import torch
from torch import nn

from i6_models.assemblies.conformer.conformer_v1 import (
    ConformerBlockV1Config,
    ConformerEncoderV1,
    ConformerEncoderV1Config,
)
from i6_models.config import ModuleFactoryV1
from i6_models.parts.conformer.convolution import ConformerConvolutionV1Config
from i6_models.parts.conformer.feedforward import ConformerPositionwiseFeedForwardV1Config
from i6_models.parts.conformer.mhsa import ConformerMHSAV1Config
from i6_models.parts.conformer.norm import LayerNormNC
from i6_models.parts.frontend.vgg_act import VGG4LayerActFrontendV1, VGG4LayerActFrontendV1Config

task = "train"
backend = "torch"
{device_line}
_audio = {{"features": "raw", "sample_rate": 16000}}
_targets = {{"class": "Vocabulary", "vocab_file": {vocab!r}, "unknown_label": None}}
train = {{"class": "OggZipDataset", "path": {train!r}, "audio": _audio, "targets": _targets,
         "seq_ordering": "laplace:.100", "use_cache_manager": False}}
dev = {{"class": "OggZipDataset", "path": {dev!r}, "audio": _audio, "targets": _targets,
       "seq_ordering": "sorted_reverse", "use_cache_manager": False}}
batch_size = 300 * 16000
max_seqs = 200
num_epochs = 2
optimizer = {{"class": "adamw", "epsilon": 1e-16, "weight_decay": 1e-2}}
learning_rate = 5e-4
model = {model_prefix!r}
log_verbosity = 4
NUM_LABELS = {num_labels}
LAYERS = {layers}
DIM = {dim}


class LogMel(nn.Module):
    """Log10 mel filterbank of the power spectrum (25 ms Hann windows, 10 ms hop), as i6 models compute it."""

    def __init__(self, n_fft=400, hop=160, mels=80, rate=16000):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        mel = lambda hz: 2595.0 * np.log10(1.0 + hz / 700.0)
        edges = 700.0 * (10 ** (np.linspace(mel(60.0), mel(rate / 2), mels + 2) / 2595.0) - 1.0)
        bins = np.linspace(0, rate / 2, n_fft // 2 + 1)
        lower = (bins[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
        upper = (edges[2:, None] - bins[None, :]) / (edges[2:, None] - edges[1:-1, None])
        weights = np.maximum(0.0, np.minimum(lower, upper))
        self.register_buffer("mel_basis", torch.tensor(weights, dtype=torch.float32))
        self.register_buffer("window", torch.hann_window(n_fft))

    def forward(self, raw, lengths):
        spec = torch.stft(raw, self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        power = spec.real**2 + spec.imag**2  # [B, F, T]
        features = torch.log10(torch.clamp(torch.matmul(self.mel_basis, power), min=1e-10)).transpose(1, 2)
        return features, lengths // self.hop + 1


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = LogMel()
        frontend = VGG4LayerActFrontendV1Config(
            in_features=80, conv1_channels=32, conv2_channels=64, conv3_channels=64, conv4_channels=32,
            conv_kernel_size=(3, 3), conv_padding=None, pool1_kernel_size=(2, 1), pool1_stride=(2, 1),
            pool1_padding=None, pool2_kernel_size=(2, 1), pool2_stride=(2, 1), pool2_padding=None,
            activation=nn.functional.relu, out_features=DIM,
        )
        block = ConformerBlockV1Config(
            ff_cfg=ConformerPositionwiseFeedForwardV1Config(input_dim=DIM, hidden_dim=4 * DIM, dropout=0.1),
            mhsa_cfg=ConformerMHSAV1Config(
                input_dim=DIM, num_att_heads=4, att_weights_dropout=0.1, dropout=0.1
            ),
            conv_cfg=ConformerConvolutionV1Config(
                channels=DIM, kernel_size=31, dropout=0.1, activation=nn.functional.silu, norm=LayerNormNC(DIM)
            ),
        )
        self.encoder = ConformerEncoderV1(
            ConformerEncoderV1Config(
                num_layers=LAYERS, frontend=ModuleFactoryV1(VGG4LayerActFrontendV1, frontend), block_cfg=block
            )
        )
        self.output = nn.Linear(DIM, NUM_LABELS + 1)  # + blank, the last index

    def forward(self, raw, raw_lengths):
        with torch.no_grad():
            features, lengths = self.features(raw, raw_lengths.to(raw.device))
            mask = torch.arange(features.shape[1], device=raw.device)[None, :] < lengths[:, None]
        encoded, mask = self.encoder(features, mask)
        return torch.log_softmax(self.output(encoded), dim=-1), mask.sum(dim=1)


def get_model(**kwargs):
    return Model()


def ctc_loss(model, raw, raw_lengths, labels, label_lengths):
    """(summed CTC loss, number of labels)"""
    log_probs, lengths = model(raw, raw_lengths)
    loss = nn.functional.ctc_loss(
        log_probs.transpose(0, 1), labels, lengths, label_lengths.to(lengths.device), blank=NUM_LABELS,
        reduction="sum", zero_infinity=True,
    )
    return loss, label_lengths.sum()


def train_step(*, model, data, run_ctx, **kwargs):
    loss, norm = ctc_loss(model, data["data"][:, :, 0], data["data:size1"], data["classes"], data["classes:size1"])
    run_ctx.mark_as_loss(name="ctc", loss=loss, inv_norm_factor=norm)
'''

OURS_EPOCH = re.compile(r"epoch (\d+): trained (\d+) steps in ([0-9.]+)s.*?computing (\d+)% of the time")
MINI_EPOCH = re.compile(r"Trained (\d+) steps, took ([0-9.]+)s")
LOADERS_LINE = re.compile(r"Data loaders for dataset 'train'[^\n]*")
DEFAULT_SETTINGS = [
    "threads-1=num_workers_per_gpu = 1",
    "threads-8=num_workers_per_gpu = 8",
    "processes-8=num_workers_per_gpu = 8\ndata_worker_type = 'process'",
]


# ---- data --------------------------------------------------------------------------------------------------------


def _utterance(index: int, seed: int) -> Tuple[str, bytes, float, str]:
    """(file name, Vorbis bytes, duration, text) of one utterance: a voiced source (harmonics of a pitch that moves)
    under syllable envelopes, with noise; about three words a second."""
    import soundfile

    rng = np.random.RandomState(seed * 100003 + index)
    duration = rng.uniform(2.4, 16.0)
    t = np.arange(int(duration * RATE)) / RATE
    pitch = rng.uniform(90, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None) ** 2
    audio = 0.1 * envelope * voiced + 0.01 * rng.standard_normal(len(t))
    buffer = io.BytesIO()
    soundfile.write(buffer, audio.astype("float32"), RATE, format="OGG", subtype="VORBIS")
    text = " ".join(rng.choice(WORDS, size=max(1, int(duration * 3))))
    return f"utt{index}.ogg", buffer.getvalue(), float(len(t)) / RATE, text


def _utterance_args(args: Tuple[int, int]) -> Tuple[str, bytes, float, str]:
    return _utterance(*args)


def make_corpus(path: str, utterances: int, seed: int = 0) -> None:
    """An OggZip at `path` (``NAME.txt`` and ``NAME/utt*.ogg``), encoded by all CPUs; kept if it exists."""
    if os.path.exists(path):
        return
    name = os.path.splitext(os.path.basename(path))[0]
    with multiprocessing.get_context("fork").Pool() as pool:
        made = pool.map(_utterance_args, [(i, seed) for i in range(utterances)], chunksize=8)
    entries = []
    with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_STORED) as archive:
        for file, data, duration, text in made:
            archive.writestr(f"{name}/{file}", data)
            entries.append({"file": file, "seq_name": f"{name}/{file}", "duration": duration, "text": text})
        archive.writestr(f"{name}.txt", repr(entries))
    os.replace(path + ".tmp", path)


def write_vocab(path: str) -> None:
    with open(path, "w") as f:
        f.write(repr({word: i for i, word in enumerate(WORDS)}))


def prepare(workdir: str, utterances: int) -> Dict[str, str]:
    """The corpora and the vocabulary in `workdir` (made where missing)."""
    os.makedirs(workdir, exist_ok=True)
    paths = {
        "train": os.path.join(workdir, f"train{utterances}.zip"),
        "dev": os.path.join(workdir, "dev40.zip"),
        "vocab": os.path.join(workdir, "vocab.txt"),
    }
    start = time.perf_counter()
    make_corpus(paths["train"], utterances)
    make_corpus(paths["dev"], 40, seed=1)
    write_vocab(paths["vocab"])
    hours = sum(e["duration"] for e in corpus_entries(paths["train"])) / 3600
    print(f"corpus: {utterances} utterances, {hours:.2f} h of audio, ready after {time.perf_counter() - start:.1f} s")
    return paths


def corpus_entries(path: str) -> List[Dict[str, object]]:
    import ast

    name = os.path.splitext(os.path.basename(path))[0]
    with zipfile.ZipFile(path) as archive:
        return ast.literal_eval(archive.read(f"{name}.txt").decode("utf-8"))


def write_config(path: str, paths: Dict[str, str], args: argparse.Namespace, extra: str, model_prefix: str) -> None:
    text = CONFIG.format(
        device_line=f"device = {args.device!r}" if args.device else "",
        vocab=paths["vocab"],
        train=paths["train"],
        dev=paths["dev"],
        model_prefix=model_prefix,
        num_labels=len(WORDS),
        layers=args.layers,
        dim=args.dim,
    )
    if args.amp:
        text += f"torch_amp_options = {{'dtype': {args.amp!r}}}\n"
    if args.common:
        text += "\n# for every run\n" + args.common.replace("\\n", "\n") + "\n"
    if extra:
        text += f"\n# setting\n{extra}\n"
    with open(path, "w") as f:
        f.write(text)


# ---- runs --------------------------------------------------------------------------------------------------------


def tree_pss_kb(root: int) -> int:
    """Sum of the proportional set sizes (kB) of process `root` and its descendants."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue
    return total


def run_process(name: str, command: List[str], folder: str, env: Dict[str, str]) -> Dict[str, object]:
    """Runs `command` in `folder`, sampling the memory of its process tree; its log, time and peak memory. The log
    is also written to ``log.txt`` with the seconds since the start before each line (where a process's time goes)."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    lines: List[str] = []
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )

    def read_lines() -> None:
        with open(os.path.join(folder, "log.txt"), "w") as timed:
            for line in process.stdout:
                lines.append(line)
                timed.write(f"[{time.perf_counter() - start:7.2f}] {line}")

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_pss_kb(process.pid))
        time.sleep(0.2)
    wall = time.perf_counter() - start
    reader.join()
    log = "".join(lines)
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed ({' '.join(command)}):\n{log[-3000:]}")
    return {"log": log, "wall_s": wall, "peak_mb": peak / 1024}


def epoch_figures(log: str) -> Dict[str, object]:
    """Epoch 2's time (and computing share, ours) from a run's log."""
    ours = [m for m in OURS_EPOCH.finditer(log) if m.group(1) == "2"]
    if ours:
        loaders = LOADERS_LINE.search(log)
        return {
            "epoch_s": float(ours[-1].group(3)),
            "steps": int(ours[-1].group(2)),
            "computing": int(ours[-1].group(4)) / 100,
            "loaders": loaders.group(0) if loaders else "",
        }
    mini = list(MINI_EPOCH.finditer(log))
    if len(mini) < 2:
        raise RuntimeError("no epoch 2 line in the log:\n" + log[-2000:])
    return {"epoch_s": float(mini[1].group(2)), "steps": int(mini[1].group(1)), "computing": None, "loaders": ""}


def gpu_bound(config_path: str, device: str) -> Dict[str, float]:
    """The reference, in this process: epoch 2's batches in device memory, then a plain loop over them."""
    import runpy

    import torch

    from i6_minireturnn.data.batching import BatchLimits
    from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions
    from i6_minireturnn.data.registry import init_dataset
    from i6_minireturnn.engine.optimizer_implementation import default_implementation
    from i6_minireturnn.loop_tuning import pinned_training_loop

    config = runpy.run_path(config_path)
    torch.manual_seed(1)
    dataset = init_dataset(dict(config["train"], name="train"))
    options = PipelineOptions(
        limits=BatchLimits(config["batch_size"], config["max_seqs"]), num_workers=8, worker_type="process"
    )
    keys = ("data", "data:size1", "classes", "classes:size1")
    epochs = {}
    for epoch in (1, 2):
        epochs[epoch] = [
            {k: batch[k].to(device) for k in keys}  # the lengths too, as the runtime moves every tensor
            for batch in EpochBatches(dataset, epoch, options)
        ]
    model = config["get_model"]().to(device)
    model.train()
    opts = {k: v for k, v in config["optimizer"].items() if k != "class"}
    kwargs = {"lr": config["learning_rate"], "eps": opts.pop("epsilon"), **opts}
    kwargs.update(default_implementation(torch.optim.AdamW, kwargs, list(model.parameters())))
    optimizer = torch.optim.AdamW(model.parameters(), **kwargs)
    amp = config.get("torch_amp_options")
    autocast = torch.autocast(device.split(":")[0], getattr(torch, amp["dtype"])) if amp else contextlib.nullcontext()
    times = {}
    for epoch, batches in epochs.items():  # epoch 1 warms up (CUDA, cuDNN's choices); epoch 2 is timed
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        # the loop's thread and torch's backward thread on one CPU, as the runtime runs them by default
        with pinned_training_loop(device, enabled=True):
            start = time.perf_counter()
            for batch in batches:
                with autocast:
                    loss, norm = config["ctc_loss"](
                        model, batch["data"][:, :, 0], batch["data:size1"], batch["classes"], batch["classes:size1"]
                    )
                optimizer.zero_grad(set_to_none=True)
                (loss / norm).backward()
                optimizer.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[epoch] = time.perf_counter() - start
    return {"epoch_s": times[2], "steps": len(epochs[2]), "computing": 1.0, "loaders": "batches in device memory"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--utterances", type=int, default=2000)
    parser.add_argument("--workdir", default="/tmp/i6_minireturnn_oggzip_conformer")
    parser.add_argument("--minireturnn", default="", help="a Mini-RETURNN checkout, run with the same config")
    parser.add_argument("--setting", action="append", default=[], help="NAME=CONFIG LINES: one more run of ours")
    parser.add_argument("--also", action="append", default=[], help="another checkout of this runtime: one more run")
    parser.add_argument("--only", default="", help="comma-separated names of the runs to make (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setting, alternated; medians printed")
    parser.add_argument("--device", default="", help="the config's `device` (default: the runtimes' choice)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--amp", default="", choices=["", "bfloat16"], help="torch_amp_options in the config")
    parser.add_argument("--common", default="", help="config lines for every run, the reference's included")
    parser.add_argument("--_gpu_bound", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._gpu_bound:
        device = args.device or ("cuda" if __import__("torch").cuda.is_available() else "cpu")
        print(json.dumps(gpu_bound(args._gpu_bound, device)))
        return

    paths = prepare(args.workdir, args.utterances)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    ours_env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO] + inherited), "PYTHONUNBUFFERED": "1"}
    runs: List[Tuple[str, List[str], Dict[str, str], str]] = []  # name, command before the config, env, extra lines
    for setting in ["default="] + (args.setting or DEFAULT_SETTINGS):
        name, _, lines = setting.partition("=")
        runs.append((name, [sys.executable, "-m", "i6_minireturnn"], ours_env, lines.replace("\\n", "\n")))
    for index, checkout in enumerate(args.also):
        also_env = {**ours_env, "PYTHONPATH": os.pathsep.join([os.path.abspath(checkout)] + inherited)}
        runs.append((f"also-{index}", [sys.executable, "-m", "i6_minireturnn"], also_env, ""))
    if args.minireturnn:
        root = os.path.abspath(args.minireturnn)
        mini_env = {**os.environ, "PYTHONPATH": os.pathsep.join([root] + inherited), "PYTHONUNBUFFERED": "1"}
        rnn = [sys.executable, os.path.join(root, "rnn.py")]
        runs.append(("minireturnn", rnn, mini_env, ""))
    runs.append(("gpu-bound", [sys.executable, os.path.abspath(__file__), "--_gpu_bound"], ours_env, ""))
    if args.only:
        wanted = set(args.only.split(","))
        runs = [run for run in runs if run[0] in wanted]

    # byte-compiled before any run, so that the first run of each runtime pays no more than the others
    import i6_models

    compiled = [os.path.join(REPO, "i6_minireturnn"), os.path.dirname(i6_models.__file__)]
    compiled += [os.path.abspath(args.minireturnn)] if args.minireturnn else []
    compiled += [os.path.join(os.path.abspath(checkout), "i6_minireturnn") for checkout in args.also]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *compiled], check=False, capture_output=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    precision = f", autocast to {args.amp}" if args.amp else ", float32"
    common = f"; every config ends with {args.common!r}" if args.common else ""
    print(
        f"{len(os.sched_getaffinity(0))} CPUs, load average {load}; {args.layers} x {args.dim} Conformer{precision}"
        + common
    )
    results: Dict[str, List[Dict[str, object]]] = {name: [] for name, *_ in runs}
    for repeat in range(args.repeats):
        for name, command, env, extra in runs:
            folder = os.path.join(args.workdir, "runs", name)
            os.makedirs(folder, exist_ok=True)
            config = os.path.join(args.workdir, f"{name}.config")
            write_config(config, paths, args, extra, os.path.join(folder, "model", "epoch"))
            try:
                if name == "gpu-bound":
                    command = command + [config] + (["--device", args.device] if args.device else [])
                    done = run_process(name, command, folder, env)
                    figures = json.loads(done["log"].strip().splitlines()[-1])
                else:
                    done = run_process(name, command + [config], folder, env)
                    figures = epoch_figures(done["log"])
            except RuntimeError as error:  # one failing setting (a runtime that cannot run it) spoils no other
                print(f"  [{repeat + 1}] {name}: failed, {str(error).strip().splitlines()[-1]}")
                continue
            figures.update(wall_s=done["wall_s"], peak_mb=done["peak_mb"])
            results[name].append(figures)
            share = f" (computing {100 * figures['computing']:.0f}%)" if figures.get("computing") is not None else ""
            print(
                f"  [{repeat + 1}] {name}: epoch 2 {figures['epoch_s']:.2f} s{share}, process {done['wall_s']:.1f} s, "
                f"peak {done['peak_mb']:.0f} MB",
                flush=True,
            )

    def median(name: str, key: str) -> Optional[float]:
        values = [r[key] for r in results.get(name, []) if r.get(key) is not None]
        return statistics.median(values) if values else None

    bound, mini = median("gpu-bound", "epoch_s"), median("minireturnn", "epoch_s")
    mini_wall = median("minireturnn", "wall_s")
    print(
        f"{'setting':16s} {'epoch 2':>8s} {'computing':>9s} {'/bound':>7s} {'/mini':>6s} {'process':>8s} "
        f"{'/mini':>6s} {'peak MB':>8s}"
    )
    for name in [name for name in results if results[name]]:
        epoch, wall, share = median(name, "epoch_s"), median(name, "wall_s"), median(name, "computing")
        row = f"{name:16s} {epoch:7.2f}s {'' if share is None else f'{100 * share:.0f}%':>9s} "
        row += f"{epoch / bound:7.2f} " if bound else f"{'':7s} "
        row += f"{epoch / mini:6.2f} " if mini else f"{'':6s} "
        row += f"{wall:7.1f}s " + (f"{wall / mini_wall:6.2f} " if mini_wall else f"{'':6s} ")
        row += f"{median(name, 'peak_mb'):8.0f}"
        print(row)
    for index, checkout in enumerate(args.also):
        print(f"also-{index}: {os.path.abspath(checkout)}")
    for name in [name for name in results if results[name]]:
        if results[name][0].get("loaders"):
            print(f"{name}: {results[name][0]['loaders']}")
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
