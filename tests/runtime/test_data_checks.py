"""Data that would silently ruin a training stops it with one line naming the sequence: label ids beyond the size an
HDF file declares (checked where a sequence is loaded, in loader threads and processes), and a non-finite loss (from
NaN input frames or otherwise) names the tags of the batch that produced it."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from .conftest import write_config

h5py = pytest.importorskip("h5py")

from i6_minireturnn.data.hdf import HDFDataset  # noqa: E402
from i6_minireturnn.data.hdf_writer import SimpleHDFWriter  # noqa: E402
from i6_minireturnn.errors import DataError  # noqa: E402

NUM_LABELS = 12
LOADERS = [  # (num_workers_per_gpu, data_worker_type)
    pytest.param(0, "thread", id="no-loader"),
    pytest.param(2, "thread", id="threads"),
    pytest.param(2, "process", id="processes"),
]


def _write_hdf(path, *, num_seqs=8, seq_len=5, labels=None, features=None, with_features=True, with_labels=True):
    """An HDF file (our writer) with float features [T, 2] and `classes` declared with NUM_LABELS classes; tags
    ``corpus/seq-<i>``. `labels` / `features`: {seq index: array} replacing that sequence's values."""
    rng = np.random.RandomState(0)
    extra_type = {"classes": (NUM_LABELS, 1, "int32")} if with_labels else None
    writer = SimpleHDFWriter(
        str(path), dim=2 if with_features else None, ndim=2 if with_features else 1, extra_type=extra_type
    )
    for i in range(num_seqs):
        feats = (features or {}).get(i, rng.standard_normal((seq_len, 2)).astype("float32"))
        classes = (labels or {}).get(i, rng.randint(0, NUM_LABELS, size=seq_len).astype("int32"))
        inputs = feats if with_features else np.zeros(seq_len, dtype="float32")
        extra = {"classes": np.asarray(classes, dtype="int32")[None]} if with_labels else None
        writer.insert_batch(inputs[None], seq_len=[seq_len], seq_tag=[f"corpus/seq-{i}"], extra=extra)
    writer.close()
    return path


def _bad_labels(value, *, at=3, seq_len=5):
    labels = np.arange(seq_len, dtype="int32") % NUM_LABELS
    labels[at] = value
    return labels


# the model has more outputs than the file declares classes: a label beyond the declared size trains silently
def _config(tmp_path, train, *, workers=0, worker_type="thread", outputs=64, extra=""):
    return write_config(
        tmp_path,
        f"train = {train!r}\n"
        "dev = None\n"
        f"num_workers_per_gpu = {workers}\n"
        f"data_worker_type = {worker_type!r}\n"
        "def get_model(epoch, step, **kwargs):\n"
        f"    return torch.nn.Linear(2, {outputs})\n"
        "def train_step(*, model, data, run_ctx, **kwargs):\n"
        "    logits = model(data['data'].float()).transpose(1, 2)\n"
        "    loss = torch.nn.functional.cross_entropy(logits, data['classes'].long(), reduction='sum')\n"
        "    run_ctx.mark_as_loss(name='CE', loss=loss, inv_norm_factor=data['classes:size1'].sum())\n" + extra,
    )


def _hdf(path, **kwargs):
    return {"class": "HDFDataset", "files": [str(path)], "use_cache_manager": False, **kwargs}


def _fails_with_one_line(run_cli, config, *expect):
    """The run fails with one ERROR line that says all of `expect`, no traceback, and nothing of the epoch stored."""
    code, out, err = run_cli(config)
    assert code != 0, out + err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), err
    for text in expect:
        assert text in lines[0], lines[0]
    out_dir = config.parent / "out"
    assert not [f for f in (os.listdir(out_dir) if out_dir.exists() else []) if f.startswith("model.")]
    lr_file = out_dir / "learning_rates"
    assert not lr_file.exists() or "1:" not in lr_file.read_text()
    return lines[0]


# ---- labels beyond the declared size --------------------------------------------------------------------------------


@pytest.mark.parametrize("workers, worker_type", LOADERS)
def test_label_beyond_declared_size_stops_naming_file_key_tag(tmp_path, run_cli, workers, worker_type):
    path = _write_hdf(tmp_path / "train.hdf", labels={5: _bad_labels(50)})
    config = _config(tmp_path, _hdf(path), workers=workers, worker_type=worker_type)
    line = _fails_with_one_line(run_cli, config, str(path), "'classes'", "'corpus/seq-5'", "label 50", "12 classes")
    assert "Caught" not in line and "worker" not in line


@pytest.mark.parametrize("workers, worker_type", LOADERS)
def test_negative_label_stops_naming_tag(tmp_path, run_cli, workers, worker_type):
    path = _write_hdf(tmp_path / "train.hdf", labels={2: _bad_labels(-1)})
    config = _config(tmp_path, _hdf(path), workers=workers, worker_type=worker_type, extra="max_seqs = 1\n")
    _fails_with_one_line(run_cli, config, str(path), "'classes'", "'corpus/seq-2'", "label -1")


@pytest.mark.parametrize("workers, worker_type", LOADERS)
def test_label_check_through_meta_dataset(tmp_path, run_cli, workers, worker_type):
    """A MetaDataset passes the sequences of an HDF file through: the file's check names its file and the tag."""
    features = _write_hdf(tmp_path / "features.hdf", with_labels=False)
    alignment = _write_hdf(tmp_path / "alignment.hdf", labels={6: _bad_labels(12)}, with_features=False)
    train = {
        "class": "MetaDataset",
        "datasets": {"features": _hdf(features), "align": _hdf(alignment)},
        "data_map": {"data": ("features", "data"), "classes": ("align", "classes")},
        "seq_order_control_dataset": "features",
    }
    config = _config(tmp_path, train, workers=workers, worker_type=worker_type)
    _fails_with_one_line(run_cli, config, str(alignment), "'classes'", "'corpus/seq-6'", "label 12", "12 classes")


def test_labels_within_the_declared_size_train(tmp_path, run_cli):
    path = _write_hdf(tmp_path / "train.hdf", labels={5: _bad_labels(NUM_LABELS - 1)})
    code, out, err = run_cli(_config(tmp_path, _hdf(path), workers=2, outputs=NUM_LABELS))
    assert code == 0, err
    assert os.path.exists(tmp_path / "out/model.002.pt")


def test_label_check_on_both_read_paths(tmp_path):
    """Reading whole batches (``read_batch``) and single sequences (``get_seq``) both check; the sparse ``inputs`` of
    a file are checked against ``inputPattSize``; a size of 1 (what writers store when none was given) is no size."""
    path = _write_hdf(tmp_path / "a.hdf", labels={1: _bad_labels(13)})
    dataset = HDFDataset(files=[str(path)], use_cache_manager=False)
    dataset.init_seq_order(1)
    assert dataset.reads_batches
    with pytest.raises(DataError, match=r"'corpus/seq-1'.*label 13 .*12 classes"):
        dataset.read_batch([0, 1, 2], [0, 1, 2], pin_memory=False)
    dataset.read_batch([0, 2, 3], [0, 1, 2], pin_memory=False)
    with pytest.raises(DataError, match=r"'corpus/seq-1'.*label 13 "):
        dataset.get_seq(1)
    dataset.get_seq(0)

    sparse = SimpleHDFWriter(str(tmp_path / "sparse.hdf"), dim=5, ndim=1)
    sparse.insert_batch(np.array([[1, 2, 7]], dtype="int32"), seq_len=[3], seq_tag=["s/x"])
    sparse.close()
    dataset = HDFDataset(files=[str(tmp_path / "sparse.hdf")], use_cache_manager=False)
    dataset.init_seq_order(1)
    with pytest.raises(DataError, match=r"sparse\.hdf.*'data'.*'s/x'.*label 7 .*5 classes.*inputPattSize"):
        dataset.get_seq(0)

    undeclared = SimpleHDFWriter(str(tmp_path / "undeclared.hdf"), dim=None, ndim=1)
    undeclared.insert_batch(np.array([[1, 2, 7]], dtype="int32"), seq_len=[3], seq_tag=["s/y"])
    undeclared.close()
    dataset = HDFDataset(files=[str(tmp_path / "undeclared.hdf")], use_cache_manager=False)
    dataset.init_seq_order(1)
    np.testing.assert_array_equal(dataset.get_seq(0)["data"], [1, 2, 7])


# ---- non-finite losses name the batch's tags ------------------------------------------------------------------------


def _tags_in(line):
    return re.findall(r"'(corpus/seq-\d+)'", line)


@pytest.mark.parametrize("workers, worker_type", LOADERS)
def test_nan_input_frame_stops_naming_the_batch_tags(tmp_path, run_cli, workers, worker_type):
    features = np.ones((5, 2), dtype="float32")
    features[2, 1] = np.nan
    path = _write_hdf(tmp_path / "train.hdf", features={6: features})
    config = _config(tmp_path, _hdf(path), workers=workers, worker_type=worker_type, outputs=NUM_LABELS)
    line = _fails_with_one_line(run_cli, config, "Non-finite training loss in epoch 1, step 1", "'corpus/seq-6'")
    # batches of 4 sequences in corpus order: the second one holds sequences 4..7
    assert _tags_in(line) == [f"corpus/seq-{i}" for i in range(4, 8)]


def test_a_batch_is_named_by_each_tag_once_and_at_most_twenty():
    from i6_minireturnn.engine.reporting import _batch_note

    assert _batch_note(["a/1", "a/1", "b/2"], other_ranks=False) == "batch of sequences 'a/1', 'b/2'"
    note = _batch_note([f"s/{i}" for i in range(25)], other_ranks=False)
    assert note.endswith("'s/19' and 5 more") and "'s/20'" not in note


NAN_AT_STEP = """
def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data['data'].float()).transpose(1, 2)
    loss = torch.nn.functional.cross_entropy(logits, data['classes'].long(), reduction='sum')
    if run_ctx.global_step in NAN_STEPS:
        with open(f"tags.{run_ctx.global_step}", "w") as f:
            f.write("\\n".join(data["seq_tag"]))
        loss = loss * float("nan")
    run_ctx.mark_as_loss(name='CE', loss=loss, inv_norm_factor=data['classes:size1'].sum())
"""


def test_nonfinite_loss_between_log_points_names_its_own_batch(tmp_path, run_cli):
    """Log points every 4 steps; the loss of global step 12 (epoch 2, its 3rd step) is NaN: the message, read at the
    log point after the next step, names that step's batch, not the newest one."""
    path = _write_hdf(tmp_path / "train.hdf", num_seqs=40)
    extra = "log_step_interval = 4\nmax_seqs = 4\nNAN_STEPS = {12}\n" + NAN_AT_STEP
    config = _config(tmp_path, _hdf(path, seq_ordering="random"), outputs=NUM_LABELS, extra=extra)
    code, out, err = run_cli(config)
    assert code != 0 and "Traceback" not in err, err
    assert "Non-finite training loss in epoch 2, step 12" in err
    assert _tags_in(err) == (tmp_path / "tags.12").read_text().split("\n")
    assert os.path.exists(tmp_path / "out/model.001.pt") and not os.path.exists(tmp_path / "out/model.002.pt")


def test_skipped_nonfinite_steps_name_their_batches(tmp_path, run_cli):
    path = _write_hdf(tmp_path / "train.hdf", num_seqs=40)
    extra = "log_step_interval = 4\nmax_seqs = 4\nNAN_STEPS = {2, 12}\nstop_on_nonfinite_train_score = False\n"
    config = _config(tmp_path, _hdf(path, seq_ordering="random"), outputs=NUM_LABELS, extra=extra + NAN_AT_STEP)
    code, out, err = run_cli(config)
    assert code == 0, err
    warnings = [line for line in (out + err).splitlines() if "non-finite" in line and "skipped" in line]
    for step in (2, 12):
        line = next(w for w in warnings if f"step {step}:" in w)
        assert _tags_in(line) == (tmp_path / f"tags.{step}").read_text().split("\n"), line
    assert "1 step(s) with non-finite loss skipped" in out


NAN_ON_RANK_1 = """
_orig_train_step = train_step
def train_step(*, model, data, run_ctx, **kwargs):
    if os.environ.get("RANK") == "1" and run_ctx.epoch == 1 and run_ctx.global_step == 1:
        with open("tags.rank1", "w") as f:
            f.write("\\n".join(data["seq_tag"]))
        run_ctx.mark_as_loss(model(data["data"]).sum() * float("nan"), "ctc")
    else:
        _orig_train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
"""


def test_nonfinite_loss_on_one_rank_names_that_ranks_batch(tmp_path):
    """Two processes (torchrun, gloo): the rank whose loss was non-finite names its batch; the other one says so.
    Where such steps are skipped, that rank's warning names its batch."""
    from .test_distributed_training import _run, _write

    folder = _write(tmp_path, "torch_distributed = {}\n" + NAN_ON_RANK_1).parent
    code, out = _run(folder, processes=2)
    assert code != 0, out  # torchrun adds its own traceback of the failed child
    lines = [line for line in out.splitlines() if "Non-finite training loss in epoch 1, step 1" in line]
    tags = (folder / "tags.rank1").read_text().split("\n")
    assert any(re.findall(r"'(seq-\d+)'", line) == tags for line in lines), out
    assert any("on another rank" in line for line in lines), out
    assert not (folder / "out/model.001.pt").exists()

    folder = _write(
        tmp_path / "skip", "torch_distributed = {}\nstop_on_nonfinite_train_score = False\n" + NAN_ON_RANK_1
    )
    code, out = _run(folder.parent, processes=2)
    assert code == 0, out
    tags = (folder.parent / "tags.rank1").read_text().split("\n")
    warnings = [line for line in out.splitlines() if "WARNING: train epoch 1 step 1: non-finite loss" in line]
    assert [re.findall(r"'(seq-\d+)'", line) for line in warnings] == [tags], out
