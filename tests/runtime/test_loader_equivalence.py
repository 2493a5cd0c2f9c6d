"""The same batches and the same trained model for any number and type of loaders (issue 25 item 3): an OggZip corpus
whose pre_process dithers the audio from its random_state, a model with dropout, trained with one and two loader
threads and worker processes."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch

from i6_minireturnn.__main__ import main
from i6_minireturnn.data.registry import init_dataset

soundfile = pytest.importorskip("soundfile")

RATE = 16000
LOADERS = [("thread", 1), ("thread", 2), ("process", 1), ("process", 2)]  # (data_worker_type, num_workers_per_gpu)

CONFIG = """
#!rnn.py
import hashlib, json
import torch
from torch import nn

task = "train"
device = "cpu"
random_seed = 42


def dither(*, audio, sample_rate, random_state, **kwargs):
    # audio perturbation as i6 setups do it: noise from the random_state the pre_process is given
    return audio + 1e-2 * random_state.standard_normal(audio.shape)


train = {{
    "class": "OggZipDataset",
    "path": {zip!r},
    "audio": {{"features": "log_mel_filterbank", "num_feature_filters": 16, "pre_process": dither}},
    "targets": {{"class": "CharacterTargets", "vocab_file": {vocab!r}, "unknown_label": None}},
    "seq_ordering": "random",
    "use_cache_manager": False,
}}
batch_size = 160
max_seqs = 3
data_worker_type = {worker_type!r}
num_workers_per_gpu = {workers}
num_epochs = 2
model = "out/model"
learning_rate_file = "out/learning_rates"
optimizer = {{"class": "adam"}}
learning_rate = 1e-2


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.inp(x)))).log_softmax(-1)


def get_model(*, epoch, step, **kwargs):
    return Model()


def train_step(*, model, data, run_ctx, **kwargs):
    tensors = {{
        k: hashlib.sha1(v.contiguous().numpy().tobytes()).hexdigest()
        for k, v in sorted(data.items())
        if isinstance(v, torch.Tensor)
    }}
    with open("batches.jsonl", "a") as f:
        f.write(json.dumps({{"epoch": run_ctx.epoch, "tags": list(data["seq_tag"]), "tensors": tensors}}) + "\\n")
    x, x_len, y, y_len = data["data"], data["data:size1"], data["classes"], data["classes:size1"]
    log_probs = model(x)
    loss = nn.functional.ctc_loss(
        log_probs.transpose(0, 1), y, x_len, y_len, blank=3, reduction="sum", zero_infinity=True
    )
    run_ctx.mark_as_loss(loss, "ctc", inv_norm_factor=y_len.sum())
"""


def _corpus(folder):
    """A RETURNN OggZip of 12 short Vorbis utterances (0.3 to 0.8 s) with character targets, and its vocab file."""
    rng = np.random.RandomState(0)
    entries, path = [], folder / "corpus.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(12):
            t = np.arange(int((0.3 + 0.5 * rng.rand()) * RATE)) / RATE
            audio = 0.3 * np.sin(2 * np.pi * (200 + 50 * (i % 7)) * t) + 0.02 * rng.standard_normal(len(t))
            buffer = io.BytesIO()
            soundfile.write(buffer, audio.astype("float32"), RATE, format="OGG", subtype="VORBIS")
            archive.writestr(f"corpus/utt{i}.ogg", buffer.getvalue())
            text = " ".join("ab"[(i + k) % 2] * (1 + k % 2) for k in range(1 + i % 3))
            entries.append({"file": f"utt{i}.ogg", "seq_name": f"corpus/{i}", "duration": len(t) / RATE, "text": text})
        archive.writestr("corpus.txt", repr(entries))
    vocab = folder / "vocab.txt"
    vocab.write_text(repr({"a": 0, "b": 1, " ": 2}))
    return path, vocab


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per loader setting: the batches each step got and the checkpoints of both epochs (one training each)."""
    folder = tmp_path_factory.mktemp("loaders")
    zip_path, vocab = _corpus(folder)
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        for worker_type, workers in LOADERS:
            run_dir = folder / f"{worker_type}{workers}"
            run_dir.mkdir()
            config = run_dir / "returnn.config"
            config.write_text(
                CONFIG.format(zip=str(zip_path), vocab=str(vocab), worker_type=worker_type, workers=workers).lstrip()
            )
            patch.chdir(run_dir)
            assert main([str(config)]) == 0
            batches = [json.loads(line) for line in (run_dir / "batches.jsonl").read_text().splitlines()]
            checkpoints = {
                epoch: torch.load(run_dir / f"out/model.{epoch:03d}.pt", map_location="cpu")["model"]
                for epoch in (1, 2)
            }
            results[(worker_type, workers)] = batches, checkpoints
    return results


def test_same_batches_for_any_number_and_type_of_loaders(runs):
    reference, _ = runs[LOADERS[0]]
    assert {b["epoch"] for b in reference} == {1, 2} and len(reference) >= 6
    for loader in LOADERS[1:]:
        batches, _ = runs[loader]
        assert [b["tags"] for b in batches] == [b["tags"] for b in reference], loader
        differing = [i for i, (a, b) in enumerate(zip(reference, batches)) if a["tensors"] != b["tensors"]]
        assert not differing, f"{loader}: the tensors of steps {differing} differ from one loader thread's"


def test_same_trained_model_for_any_number_and_type_of_loaders(runs):
    _, reference = runs[LOADERS[0]]
    for loader in LOADERS[1:]:
        _, checkpoints = runs[loader]
        for epoch, params in reference.items():
            assert params.keys() == checkpoints[epoch].keys()
            differing = [
                name
                for name, value in params.items()
                if value.numpy().tobytes() != checkpoints[epoch][name].numpy().tobytes()
            ]
            assert not differing, f"{loader}, epoch {epoch}: parameters {differing} differ from one loader thread's"


def _features(dataset, epoch, corpus_indices):
    dataset.init_seq_order(epoch)
    return {i: dataset.load_corpus_seq(i)["data"] for i in corpus_indices}


def test_loading_numbers_depend_on_epoch_and_sequence_only(tmp_path):
    """Loading in another order gives each sequence the same numbers; another epoch gives others, also for a
    dataset a MetaDataset reads by tag (never ordered itself); a given audio random_state seeds them."""
    zip_path, vocab = _corpus(tmp_path)
    given = np.random.RandomState(7)
    given_state = given.get_state()[1].copy()

    def zip_dataset(audio_random_state=None, with_audio=True):
        audio = {"features": "log_mel_filterbank", "num_feature_filters": 8, "pre_process": _dither}
        if audio_random_state is not None:
            audio["random_state"] = audio_random_state
        return {
            "class": "OggZipDataset",
            "path": str(zip_path),
            "audio": audio if with_audio else None,
            "targets": None if with_audio else {"class": "CharacterTargets", "vocab_file": str(vocab)},
            "use_cache_manager": False,
        }

    meta = init_dataset(
        {
            "class": "MetaDataset",
            "datasets": {"text": zip_dataset(with_audio=False), "audio": zip_dataset()},
            "data_map": {"data": ("audio", "data"), "classes": ("text", "classes")},
            "seq_order_control_dataset": "text",
        }
    )
    forward = _features(meta, 1, [0, 1, 2])
    backward = _features(meta, 1, [2, 1, 0])
    for i in range(3):
        np.testing.assert_array_equal(forward[i], backward[i])
    assert not np.array_equal(_features(meta, 2, [0])[0], forward[0])  # the audio part learns the epoch

    seeded = init_dataset(zip_dataset(given))
    assert not np.array_equal(_features(seeded, 1, [0])[0], forward[0])
    np.testing.assert_array_equal(_features(init_dataset(zip_dataset(given)), 1, [0])[0], _features(seeded, 1, [0])[0])
    assert np.array_equal(given.get_state()[1], given_state)  # seeds the generators, is not drawn from


def _dither(*, audio, sample_rate, random_state, **kwargs):
    return audio + 1e-2 * random_state.standard_normal(audio.shape)
