"""The config templates run as users run them: one training epoch on small generated data, then the forward task,
each as ``python -m i6_minireturnn config_templates/X.config ++key value ...`` in a fresh working directory."""

from __future__ import annotations

import ast
import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import h5py
import numpy as np
import torch

from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file

TEMPLATES = Path(__file__).resolve().parents[2] / "config_templates"
SMALL = ["++num_train_seqs", "200", "++num_dev_seqs", "20", "++num_epochs", "1"]


def run_template(cwd: Path, template: str, *args: str, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """Runs the template through the command line in `cwd`; fails with the output's end when it does not exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "i6_minireturnn", str(TEMPLATES / template), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if expect_ok:
        assert proc.returncode == 0, f"{template} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
    return proc


def check_trained(model: Path, learning_rates: Path, losses: List[str]) -> None:
    """Epoch 1 of the model prefix is stored (checkpoint, optimizer state), its train and dev scores are finite."""
    assert Path(f"{model}.001.opt.pt").is_file()
    checkpoint = torch.load(f"{model}.001.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["step"] > 0
    scores = read_learning_rate_file(str(learning_rates))[1].error
    assert set(losses) | {f"dev_loss_{loss}" for loss in losses} <= set(scores)
    assert all(math.isfinite(value) for value in scores.values()), scores


def trained(cwd: Path, name: str):
    """(model prefix, learning_rates file) of a template writing to output/<name>/."""
    return cwd / "output" / name / "model", cwd / "output" / name / "learning_rates"


def read_result(path: Path) -> Dict:
    """A forward result written as a Python dict literal ({seq_tag: value})."""
    result = ast.literal_eval(path.read_text())
    assert isinstance(result, dict)
    return result


def check_label_sequences(result: Dict, num_seqs: int, num_labels: int) -> None:
    assert sorted(result) == sorted(f"seq-{i}" for i in range(num_seqs))  # one entry per dev sequence
    for labels in result.values():
        assert isinstance(labels, list) and all(0 <= label < num_labels for label in labels)
    assert any(result.values())  # not all empty


def test_demo_ctc(tmp_path):
    run_template(tmp_path, "demo_ctc.config", "++num_epochs", "1")
    check_trained(tmp_path / "demo_output/models/epoch", tmp_path / "demo_output/learning_rates", ["ctc"])
    run_template(tmp_path, "demo_ctc.config", "++task", "forward", "++forward_data", "dev")
    check_label_sequences(read_result(tmp_path / "demo_output/recognition.txt"), 200, 10)


def test_attention_asr(tmp_path):
    run_template(tmp_path, "attention_asr.config", *SMALL)
    check_trained(*trained(tmp_path, "attention_asr"), ["ce", "ctc"])
    run_template(tmp_path, "attention_asr.config", "++task", "forward", "++num_dev_seqs", "20")
    check_label_sequences(read_result(tmp_path / "output/attention_asr/search_out.py"), 20, 10)


def test_transducer(tmp_path):
    # the runtime's own RNN-T loss: runs after the README's install (no torchaudio), so this never skips
    # blank dominates a transducer early on: an epoch of the full train set (a few seconds) makes it emit labels
    run_template(tmp_path, "transducer.config", "++num_train_seqs", "2000", "++num_dev_seqs", "20", "++num_epochs", "1")
    check_trained(*trained(tmp_path, "transducer"), ["rnnt"])
    run_template(tmp_path, "transducer.config", "++task", "forward", "++num_dev_seqs", "20")
    check_label_sequences(read_result(tmp_path / "output/transducer/search_out.py"), 20, 10)


def test_lstm_lm(tmp_path):
    run_template(tmp_path, "lstm_lm.config", *SMALL)
    check_trained(*trained(tmp_path, "lstm_lm"), ["ce"])
    proc = run_template(tmp_path, "lstm_lm.config", "++task", "forward", "++num_dev_seqs", "20")
    scores = read_result(tmp_path / "output/lstm_lm/scores.py")
    assert sorted(scores) == sorted(f"line-{i}" for i in range(20))  # one score per dev sentence
    assert all(math.isfinite(score) and score > 0 for score in scores.values())  # -log p of at least [END]
    perplexity = float((tmp_path / "output/lstm_lm/perplexity.txt").read_text())
    assert 1 < perplexity < 40  # a trained model beats guessing among the ~30 words
    assert f"Perplexity: {perplexity:.3f}" in proc.stdout


def test_translation(tmp_path):
    run_template(tmp_path, "translation.config", *SMALL)
    check_trained(*trained(tmp_path, "translation"), ["ce"])
    run_template(tmp_path, "translation.config", "++task", "forward", "++num_dev_seqs", "20")
    translations = read_result(tmp_path / "output/translation/translations.py")
    assert sorted(translations) == sorted(f"line-{i}" for i in range(20))
    with open(tmp_path / "output/translation/data/target.vocab.pkl", "rb") as f:
        words = set(pickle.load(f)) - {"<S>", "</S>", "<UNK>"}
    for sentence in translations.values():
        assert isinstance(sentence, str) and set(sentence.split()) <= words
    assert any(translations.values())


def test_tts_durations(tmp_path):
    run_template(
        tmp_path, "tts_durations.config", "++num_train_seqs", "100", "++num_dev_seqs", "10", "++num_epochs", "1"
    )
    check_trained(*trained(tmp_path, "tts_durations"), ["duration_mse", "mel_l1"])
    run_template(tmp_path, "tts_durations.config", "++task", "forward", "++num_dev_seqs", "10")
    with h5py.File(tmp_path / "output/tts_durations/durations.hdf", "r") as durations_file:
        tags = [tag.decode() if isinstance(tag, bytes) else tag for tag in durations_file["seqTags"][()]]
        phonemes_per_seq = durations_file["seqLengths"][:, 0]
        durations = durations_file["inputs"][()]
    with h5py.File(tmp_path / "output/tts_durations/features.hdf", "r") as features_file:
        frames_per_seq = features_file["seqLengths"][:, 0]
        features = features_file["inputs"][()]
    assert sorted(tags) == sorted(f"seq-{i}" for i in range(10))  # one entry per dev sequence
    assert 5 <= phonemes_per_seq.min() and phonemes_per_seq.max() <= 15  # a duration for each phoneme
    assert durations.dtype.kind == "i" and 1 <= durations.min() and durations.max() <= 8
    per_seq = np.split(durations, np.cumsum(phonemes_per_seq)[:-1])
    assert [int(d.sum()) for d in per_seq] == frames_per_seq.tolist()  # the frames follow the durations
    assert features.shape == (frames_per_seq.sum(), 20) and np.isfinite(features).all()
