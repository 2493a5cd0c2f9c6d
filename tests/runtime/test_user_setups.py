"""Whole user setups through the command line: an attention encoder-decoder ASR model with a CTC auxiliary loss,
and a TTS aligner over a MetaDataset of HDFs whose forward hooks write durations in a process pool; plus the small
``returnn.*`` names early or mainline-flavoured model files use (``get_global_config(return_empty_if_none=True)``,
``TrainCtx``, ``context._run_ctx = RunCtx(...)``, ``run_ctx.step``)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from i6_minireturnn import compat
from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file

from .conftest import write_config

SETUP_ROOT = Path(__file__).resolve().parent  # holds the package user_setup, like a recipe folder

AED_CONFIG = """
#!rnn.py
import sys
sys.path.insert(0, {root!r})
from user_setup.aed_ctc_model import get_model, train_step

task = "train"
device = "cpu"
log_verbosity = 4
train = {{"class": "SyntheticSpeechDataset", "num_seqs": 24, "seed": 1, "seq_ordering": "laplace:.4"}}
dev = {{"class": "SyntheticSpeechDataset", "num_seqs": 6, "seed": 2}}
batch_size = 150
max_seqs = 4
num_workers_per_gpu = 0
num_epochs = 2
model = "out/model"
learning_rate_file = "out/learning_rates"
optimizer = {{"class": "adam"}}
learning_rate = 0.01
"""


def _loss_log(tmp_path: Path):
    return [json.loads(line) for line in (tmp_path / "loss_log.jsonl").read_text().splitlines()]


def test_attention_model_with_scaled_ctc_reports_normalised_epoch_losses(tmp_path, run_cli):
    """CE + 0.3 CTC: per-name epoch losses are sum(loss) / sum(inv_norm_factor), the update uses the scaled sum,
    and SpecAugment read from get_run_ctx().epoch starts in epoch 2 (training only)."""
    config = write_config(tmp_path, base=AED_CONFIG.format(root=str(SETUP_ROOT)))
    code, _, err = run_cli(config)
    assert code == 0, err
    assert (tmp_path / "out/model.002.pt").exists()

    steps = _loss_log(tmp_path)
    for step in steps:  # the total loss the update used: the scaled sum of the normalised losses
        expected = step["ce"] / step["ce_norm"] + 0.3 * step["ctc"] / step["ctc_norm"]
        assert step["total"] == pytest.approx(expected, rel=1e-5)
    assert {(s["mode"], s["epoch"], s["masked"]) for s in steps} == {
        ("train", 1, False),
        ("train", 2, True),
        ("eval", 1, False),
        ("eval", 2, False),
    }

    sums = defaultdict(float)
    for step in steps:
        for name in ("ce", "ctc"):
            sums[(step["mode"], step["epoch"], name)] += step[name]
            sums[(step["mode"], step["epoch"], name + "_norm")] += step[name + "_norm"]
    data = read_learning_rate_file(str(tmp_path / "out/learning_rates"))
    assert sorted(data) == [1, 2]
    for epoch in (1, 2):
        errors = data[epoch].error
        assert {"ctc", "ce", "dev_loss_ctc", "dev_loss_ce"} <= set(errors)
        for name in ("ce", "ctc"):
            for mode, key in (("train", name), ("eval", f"dev_loss_{name}")):
                expected = sums[(mode, epoch, name)] / sums[(mode, epoch, name + "_norm")]
                assert errors[key] == pytest.approx(expected, rel=1e-4), (epoch, key)
        assert all(math.isfinite(v) for v in errors.values())
    # the model learns: the dev CE falls from epoch 1 to epoch 2
    assert data[2].error["dev_loss_ce"] < data[1].error["dev_loss_ce"], data
    assert data[2].error["dev_loss_ctc"] < data[1].error["dev_loss_ctc"], data


ALIGNER_CONFIG = """
#!rnn.py
import sys
sys.path.insert(0, {root!r})
from user_setup.tts_aligner import get_model, train_step, forward_init_hook, forward_step, forward_finish_hook

task = "train"
device = "cpu"
log_verbosity = 4
train = {{
    "class": "MetaDataset",
    "datasets": {{
        "audio": {{"class": "HDFDataset", "files": ["audio.hdf"]}},
        "text": {{"class": "HDFDataset", "files": ["phonemes.hdf"]}},
        "speaker": {{"class": "HDFDataset", "files": ["speakers.hdf"]}},
    }},
    "data_map": {{
        "audio_features": ("audio", "data"),
        "phonemes": ("text", "data"),
        "speaker_labels": ("speaker", "data"),
    }},
    "seq_order_control_dataset": "audio",
}}
forward = train
batch_size = 60
max_seqs = 3
num_workers_per_gpu = 0
num_epochs = 1
model = "out/model"
learning_rate_file = "out/learning_rates"
optimizer = {{"class": "adam"}}
learning_rate = 0.001
"""


def _write_aligner_data(folder: Path, num_seqs: int = 7):
    """Writes audio, phoneme and speaker-id HDFs (the speaker file in another order); returns the true durations."""
    from i6_minireturnn.data.hdf_writer import SimpleHDFWriter

    rng = np.random.RandomState(42)
    speaker_offsets = rng.normal(size=(3, 8)) * 0.05
    audio = SimpleHDFWriter(str(folder / "audio.hdf"), dim=8, ndim=2)
    phonemes = SimpleHDFWriter(str(folder / "phonemes.hdf"), dim=8, ndim=1)
    truth = {}
    speakers = []
    for i in range(num_seqs):
        tag = f"corpus/utt{i}/1"
        num_phonemes = rng.randint(3, 7)
        seq = [rng.randint(8)]
        while len(seq) < num_phonemes:  # neighbours differ, so the true alignment is the only good one
            seq.append((seq[-1] + rng.randint(1, 8)) % 8)
        durations = rng.randint(1, 5, size=num_phonemes).astype("int32")
        speaker = i % 3
        frames = np.repeat(np.eye(8)[seq], durations, axis=0) + speaker_offsets[speaker]
        frames += rng.normal(size=frames.shape) * 0.01
        audio.insert_batch(frames[None].astype("float32"), np.array([len(frames)]), [tag])
        phonemes.insert_batch(np.array([seq], dtype="int32"), np.array([num_phonemes]), [tag])
        speakers.append((tag, speaker))
        truth[tag] = durations
    audio.close()
    phonemes.close()
    speaker_writer = SimpleHDFWriter(str(folder / "speakers.hdf"), dim=3, ndim=1)
    for tag, speaker in reversed(speakers):
        speaker_writer.insert_batch(np.array([[speaker]], dtype="int32"), np.array([1]), [tag])
    speaker_writer.close()
    return truth


def test_tts_aligner_over_meta_dataset_writes_durations_from_a_process_pool(tmp_path, run_cli):
    """MetaDataset of three HDFs (speaker ids matched by tag), 1 epoch of forward-sum training, then a forward run
    whose finish hook computes durations in a fork Pool and writes them with SimpleHDFWriter(dim=None, ndim=1)."""
    h5py = pytest.importorskip("h5py")
    truth = _write_aligner_data(tmp_path)
    config = write_config(tmp_path, base=ALIGNER_CONFIG.format(root=str(SETUP_ROOT)))
    code, _, err = run_cli(config)
    assert code == 0, err
    assert "forward_sum" in read_learning_rate_file(str(tmp_path / "out/learning_rates"))[1].error

    code, _, err = run_cli(config, "++task", "forward")
    assert code == 0, err
    with h5py.File(tmp_path / "durations.hdf", "r") as f:
        tags = [t.decode() if isinstance(t, bytes) else t for t in f["seqTags"][()]]
        lengths = f["seqLengths"][()][:, 0]
        inputs = f["inputs"][()]
    assert sorted(tags) == sorted(truth)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for i, tag in enumerate(tags):
        assert lengths[i] == len(truth[tag])
        np.testing.assert_array_equal(inputs[offsets[i] : offsets[i + 1]], truth[tag])
    speakers_seen = json.loads((tmp_path / "speakers_seen.json").read_text())
    assert speakers_seen == {f"corpus/utt{i}/1": i % 3 for i in range(len(truth))}  # matched by tag, not order

    # read back through the runtime's own HDFDataset, as a TTS training setup would
    from i6_minireturnn.data.hdf import HDFDataset

    dataset = HDFDataset(files=[str(tmp_path / "durations.hdf")], use_cache_manager=False)
    dataset.init_seq_order(1)
    read = {seq["seq_tag"]: seq["data"].tolist() for seq in map(dataset.get_seq, range(dataset.num_seqs))}
    assert read == {tag: durations.tolist() for tag, durations in truth.items()}


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_early_style_model_file_trains_and_exports_outside_the_engine(tmp_path, run_cli):
    """``TrainCtx`` imports, ``get_global_config(return_empty_if_none=True)`` reads the run's config inside the
    runtime and gives defaults outside it, ``run_ctx.step`` is the global step, and an export function that sets
    ``context._run_ctx = context.RunCtx(stage=..., device=...)`` can call the model outside the engine."""
    header = f"import sys\nsys.path.insert(0, {str(SETUP_ROOT)!r})\nfrom user_setup.early_style_model import *\n"
    config = write_config(tmp_path, header + "hidden_dim = 7\n")
    code, _, err = run_cli(config)
    assert code == 0, err
    seen = [json.loads(line) for line in (tmp_path / "steps_seen.jsonl").read_text().splitlines()]
    assert all(s["step"] == s["global_step"] for s in seen)
    assert [s["step"] for s in seen if s["training"]] == [0, 1, 2, 3]  # 8 seqs, max_seqs 4, 2 epochs
    weights = torch.load(tmp_path / "out/model.002.pt", weights_only=False)["model"]
    assert weights["layers.0.weight"].shape == (7, 2)  # hidden_dim came from the run's config

    from i6_minireturnn import config as runtime_config
    from i6_minireturnn.engine import run_ctx as runtime_run_ctx

    previous = runtime_config.get_global_config(raise_exception=False)
    runtime_config.set_global_config(None)
    compat.install()
    try:
        import returnn.torch.context as context
        from returnn.config import Config, get_global_config
        from returnn.torch.engine import TrainCtx

        empty = get_global_config(return_empty_if_none=True)
        assert isinstance(empty, Config) and empty.typed_value("hidden_dim", 4) == 4
        assert get_global_config(raise_exception=False) is None  # the empty config does not become the global one
        with pytest.raises(RuntimeError, match="No global config"):
            get_global_config()
        with pytest.raises(NotImplementedError, match="Mini-RETURNN"):
            TrainCtx()

        from user_setup.early_style_model import Model, export

        model = Model()
        assert model.hidden_dim == 4
        export(model=model, model_filename=str(tmp_path / "model.jit"))
        ctx = context.get_run_ctx()
        assert context._run_ctx is ctx and (ctx.stage, ctx.device, ctx.engine, ctx.epoch) == (
            "forward_step",
            "cpu",
            None,
            None,
        )
        traced = torch.jit.load(str(tmp_path / "model.jit"))
        log_probs = traced(torch.randn(2, 3, 2))
        assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 3))
    finally:
        runtime_run_ctx.reset_run_ctx()
        compat.uninstall()
        runtime_config.set_global_config(previous)
