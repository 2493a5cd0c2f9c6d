"""SimpleHDFWriter as TTS aligner hooks use it: created in forward_init_hook, a fork Pool in the hooks, then close().

The forward runs go through the command line in a subprocess (``python -m i6_minireturnn CONFIG``), as a Sisyphus
job runs them; the results are checked with our HDFDataset and with h5py directly (RETURNN's layout).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from i6_minireturnn.data.generating import DummyDataset  # noqa: E402
from i6_minireturnn.data.hdf import HDFDataset  # noqa: E402
from i6_minireturnn.data.hdf_writer import SimpleHDFWriter  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
FORK = multiprocessing.get_context("fork")  # the Linux default, made explicit: the case that broke close()
NUM_SEQS = 7

# A hook file as in i6 TTS setups: the writer is created first, then a pool that lives until the process ends
# (forked while the writer holds its data), and a second pool computes the durations in forward_finish_hook.
HOOKS = """
import multiprocessing

import numpy as np
import torch

from {module} import SimpleHDFWriter


def get_model(epoch, step, **kwargs):
    return torch.nn.Linear(2, 3)


def run_lengths(labels):
    \"\"\"Durations: how long each run of equal labels lasts.\"\"\"
    labels = np.asarray(labels)
    starts = np.flatnonzero(np.concatenate([[True], labels[1:] != labels[:-1]]))
    return np.diff(np.concatenate([starts, [len(labels)]])).astype("float32")


def forward_init_hook(run_ctx, **kwargs):
    run_ctx.hdf_writer = SimpleHDFWriter("durations.hdf", dim=None, ndim=1)
    run_ctx.pool = multiprocessing.get_context("fork").Pool(2)  # as the TTS hooks do: never closed
    run_ctx.collected = []


def forward_step(*, model, data, run_ctx, **kwargs):
    model(data["data"].float())
    for tag, labels, length in zip(data["seq_tag"], data["classes"].numpy(), data["classes:size1"].numpy()):
        run_ctx.collected.append((tag, labels[:length].copy()))
    run_ctx.pool.map(abs, [1, -2])  # the long-lived pool works between steps


def forward_finish_hook(run_ctx, **kwargs):
    with multiprocessing.get_context("fork").Pool(4) as pool:
        durations = pool.map(run_lengths, [labels for _, labels in run_ctx.collected])
    for (tag, _), duration in zip(run_ctx.collected, durations):
        run_ctx.hdf_writer.insert_batch(
            inputs=duration[None], seq_len=np.array([len(duration)]), seq_tag=[tag]
        )
    run_ctx.hdf_writer.close()
"""

CONFIG = """
#!rnn.py
import sys
sys.path.insert(0, {folder!r})
from aligner_hooks import get_model, forward_init_hook, forward_step, forward_finish_hook

task = "forward"
device = "cpu"
allow_random_model_init = True
forward = {{"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": {num_seqs}, "seq_len": 6}}
batch_size = 20
max_seqs = 2
"""


def run_lengths(labels: np.ndarray) -> np.ndarray:
    """The same durations the hook computes, for the expected values."""
    labels = np.asarray(labels)
    starts = np.flatnonzero(np.concatenate([[True], labels[1:] != labels[:-1]]))
    return np.diff(np.concatenate([starts, [len(labels)]])).astype("float32")


def expected_durations() -> Dict[str, np.ndarray]:
    source = DummyDataset(input_dim=2, output_dim=3, num_seqs=NUM_SEQS, seq_len=6)
    source.init_seq_order(1)
    return {source.get_seq(i)["seq_tag"]: run_lengths(source.get_seq(i)["classes"]) for i in range(NUM_SEQS)}


def run_forward(folder: Path, module: str) -> subprocess.CompletedProcess:
    """Writes the hook file and config into `folder` and runs ``python -m i6_minireturnn returnn.config`` there."""
    (folder / "hooks").mkdir()
    (folder / "hooks" / "aligner_hooks.py").write_text(textwrap.dedent(HOOKS.format(module=module)).lstrip())
    config = CONFIG.format(folder=str(folder / "hooks"), num_seqs=NUM_SEQS)
    (folder / "returnn.config").write_text(textwrap.dedent(config).lstrip())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "i6_minireturnn", "returnn.config"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def check_durations_file(path: Path) -> None:
    expected = expected_durations()
    dataset = HDFDataset(files=[str(path)], use_cache_manager=False)
    dataset.init_seq_order(1)
    assert dataset.num_seqs == NUM_SEQS and sorted(dataset.get_all_tags()) == sorted(expected)
    assert dataset.is_data_sparse("data") and dataset.get_data_dim("data") == 1
    for i in range(NUM_SEQS):
        seq = dataset.get_seq(i)
        np.testing.assert_array_equal(seq["data"], expected[seq["seq_tag"]])
        assert seq["data"].dtype == np.float32 and seq["data"].sum() == 6  # durations cover the whole sequence

    with h5py.File(path, "r") as f:
        tags = [t.decode() if isinstance(t, bytes) else t for t in f["seqTags"][...]]
        assert sorted(tags) == sorted(expected)
        assert f["inputs"].ndim == 1 and f["inputs"].dtype == np.float32
        assert f["seqLengths"].shape == (NUM_SEQS, 2) and f["seqLengths"].dtype == np.int32
        np.testing.assert_array_equal(f["seqLengths"][:, 0], [len(expected[t]) for t in tags])
        np.testing.assert_array_equal(f["seqLengths"][:, 1], 0)  # the dummy column readers count for 'classes'
        np.testing.assert_array_equal(f["inputs"][...], np.concatenate([expected[t] for t in tags]))
        assert dict(f.attrs) == {
            "numSeqs": NUM_SEQS,
            "numTimesteps": sum(len(d) for d in expected.values()),
            "inputPattSize": 1,
            "numLabels": 1,
            "numDims": 1,
        }
        assert "targets" not in f and f["labels"].shape == (0,)


def test_aligner_hooks_with_fork_pools_through_the_command_line(tmp_path):
    done = run_forward(tmp_path, "returnn.datasets.hdf")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_durations_file(tmp_path / "durations.hdf")
    assert sorted(os.listdir(tmp_path)) == ["durations.hdf", "hooks", "returnn.config"]  # no temp file left


def test_aligner_hooks_importing_returnn_datasets_util_hdf(tmp_path):
    done = run_forward(tmp_path, "returnn.datasets.util.hdf")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_durations_file(tmp_path / "durations.hdf")


def test_compat_module_util_hdf_offers_the_writer():
    from i6_minireturnn.compat.returnn.datasets import hdf as datasets_hdf
    from i6_minireturnn.compat.returnn.datasets.util import hdf as util_hdf

    assert util_hdf.SimpleHDFWriter is SimpleHDFWriter is datasets_hdf.SimpleHDFWriter
    assert (util_hdf.HDF_SEQ_LENGTHS_KEY, util_hdf.HDF_INPUT_PATT_SIZE_KEY) == ("seqLengths", "inputPattSize")


# ---- other shapes, extra keys, and writers on both sides of a fork ---------------------------------------------


def _square(x: int) -> int:
    return x * x


def test_ndim2_with_extra_keys_written_across_a_fork(tmp_path):
    path = tmp_path / "out.hdf"
    rng = np.random.RandomState(3)
    writer = SimpleHDFWriter(
        str(path), dim=3, ndim=2, extra_type={"classes": (4, 1, "int32")}, extra_labels={"classes": list("abcd")}
    )
    features = rng.standard_normal((2, 5, 3)).astype("float32")
    classes = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype="int32")
    writer.insert_batch(
        features, [5, 2], ["s/0", "s/1"], extra={"classes": classes, "score": np.array([0.5, 1.5], "float32")}
    )
    with FORK.Pool(4) as pool:  # forked while the writer holds data: the children get no usable copy of it
        squares = pool.map(_square, range(4))
    writer.insert_batch(
        features[:1, :4],
        np.array([4]),
        [b"s/2"],
        extra={"classes": np.array([squares], "int32") % 4, "score": np.array([2.5], "float32")},
    )
    writer.close()

    with h5py.File(path, "r") as f:
        assert f["inputs"].shape == (11, 3) and f.attrs["inputPattSize"] == 3 and f.attrs["numTimesteps"] == 11
        assert sorted(f["targets/data"]) == ["classes", "score"]
        np.testing.assert_array_equal(f["seqLengths"][...], [[5, 4, 1], [2, 4, 1], [4, 4, 1]])  # sorted key columns
        np.testing.assert_array_equal(f["targets/size"].attrs["classes"], [4, 1])  # declared: sparse, 4 classes
        np.testing.assert_array_equal(f["targets/size"].attrs["score"], [1, 1])  # inferred from the data
        assert [v.decode() for v in f["targets/labels/classes"][...]] == ["a", "b", "c", "d"]
        assert [v.decode() for v in f["targets/labels/score"][...]] == ["dummy-label"]
        np.testing.assert_array_equal(f["targets/data/score"][...], [0.5, 1.5, 2.5])

    dataset = HDFDataset(files=[str(path)], use_cache_manager=False)
    dataset.init_seq_order(1)
    assert dataset.get_all_tags() == ["s/0", "s/1", "s/2"]
    np.testing.assert_array_equal(dataset.get_seq(1)["data"], features[1, :2])
    np.testing.assert_array_equal(dataset.get_seq(2)["data"], features[0, :4])
    np.testing.assert_array_equal(dataset.get_seq(2)["classes"], [0, 1, 0, 1])  # squares % 4
    np.testing.assert_array_equal(dataset.get_seq(0)["classes"], classes[0])  # extra values are stored whole


def test_ndim3_two_dynamic_axes_are_flattened_with_sizes(tmp_path):
    path = tmp_path / "grid.hdf"
    grid = np.arange(2 * 3 * 4 * 2, dtype="float32").reshape(2, 3, 4, 2)
    writer = SimpleHDFWriter(str(path), dim=2, ndim=3)
    writer.insert_batch(grid, {0: [3, 2], 1: np.array([4, 1])}, ["g0", "g1"], extra={"weight": grid[:, :, :, 0]})
    writer.close()
    with h5py.File(path, "r") as f:
        assert f["inputs"].shape == (14, 2)
        np.testing.assert_array_equal(f["inputs"][:12], grid[0].reshape(12, 2))
        np.testing.assert_array_equal(f["inputs"][12:], grid[1, :2, :1].reshape(2, 2))
        np.testing.assert_array_equal(f["targets/data/sizes"][...], [3, 4, 2, 1])
        np.testing.assert_array_equal(f["targets/size"].attrs["sizes"], [1, 1])
        np.testing.assert_array_equal(f["targets/size"].attrs["weight"], [4, 2])
        np.testing.assert_array_equal(f["seqLengths"][...], [[12, 2, 3], [2, 2, 3]])  # inputs, sizes, weight
    dataset = HDFDataset(files=[str(path)], use_cache_manager=False)
    dataset.init_seq_order(1)
    np.testing.assert_array_equal(dataset.get_seq(1)["sizes"], [2, 1])
    np.testing.assert_array_equal(dataset.get_seq(1)["weight"], grid[1, :, :, 0])


def _write_in_worker(args: List) -> str:
    """A Pool worker that makes its own writer (an i6 pattern: one HDF part per worker)."""
    folder, index = args
    path = os.path.join(folder, f"part-{index}.hdf")
    writer = SimpleHDFWriter(path, dim=None, ndim=1)
    writer.insert_batch(np.full((1, index + 1), index, "int32"), [index + 1], [f"part/{index}"])
    writer.close()
    return path


def test_writers_created_in_pool_workers(tmp_path):
    parent = SimpleHDFWriter(str(tmp_path / "parent.hdf"), dim=None, ndim=1)  # open in the parent during the fork
    parent.insert_batch(np.array([[7, 8]]), [2], ["p"])
    with FORK.Pool(3) as pool:
        paths = pool.map(_write_in_worker, [(str(tmp_path), i) for i in range(3)])
    parent.close()
    dataset = HDFDataset(files=paths + [str(tmp_path / "parent.hdf")], use_cache_manager=False)
    dataset.init_seq_order(1)
    assert dataset.get_all_tags() == ["part/0", "part/1", "part/2", "p"]
    assert [dataset.get_seq(i)["data"].tolist() for i in range(4)] == [[0], [1, 1], [2, 2, 2], [7, 8]]
    assert sorted(os.listdir(tmp_path)) == ["parent.hdf", "part-0.hdf", "part-1.hdf", "part-2.hdf"]


_INHERITED: Dict[str, SimpleHDFWriter] = {}


def _use_inherited(_: int) -> str:
    """In a forked child: the parent's writer refuses to be used (it would corrupt the parent's file)."""
    try:
        _INHERITED["writer"].insert_batch(np.zeros((1, 1)), [1], ["child"])
    except RuntimeError as exc:
        return str(exc)
    return "no error"


def test_an_inherited_writer_refuses_use_in_the_child_and_the_parent_closes(tmp_path):
    writer = SimpleHDFWriter(str(tmp_path / "p.hdf"), dim=None, ndim=1)
    writer.insert_batch(np.array([[1.0, 2.0]]), [2], ["first"])
    _INHERITED["writer"] = writer
    try:
        with FORK.Pool(2) as pool:
            messages = pool.map(_use_inherited, range(2))
    finally:
        del _INHERITED["writer"]
    assert all("forked child cannot write" in m for m in messages), messages
    writer.insert_batch(np.array([[3.0]]), [1], ["second"])
    writer.close()
    with h5py.File(tmp_path / "p.hdf", "r") as f:
        np.testing.assert_array_equal(f["inputs"][...], [1.0, 2.0, 3.0])
        assert [t.decode() if isinstance(t, bytes) else t for t in f["seqTags"][...]] == ["first", "second"]
