"""RETURNN's HDF layout: reading files in Mini-RETURNN's layout, our writer, hdf_dump, and bad files."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from i6_minireturnn.data.hdf import HDFDataset  # noqa: E402
from i6_minireturnn.data.hdf_writer import SimpleHDFWriter  # noqa: E402
from i6_minireturnn.data.registry import init_dataset  # noqa: E402
from i6_minireturnn.errors import DataError  # noqa: E402
from i6_minireturnn.tools import hdf_dump  # noqa: E402


def _returnn_layout_file(path, rng):
    """A file exactly as Mini-RETURNN's SimpleHDFWriter writes it (dense inputs, a sparse and a dense target)."""
    lengths = [4, 2, 3]
    inputs = rng.standard_normal((sum(lengths), 5)).astype("float32")
    classes = rng.randint(0, 7, size=sum(lengths)).astype("int32")
    feats = rng.standard_normal((sum(n + 1 for n in lengths), 3)).astype("float32")
    with h5py.File(path, "w") as f:
        f.attrs.update({"numTimesteps": sum(lengths), "inputPattSize": 5, "numDims": 1, "numLabels": 5, "numSeqs": 3})
        f.create_dataset("labels", (0,), dtype="S5")
        f.create_dataset("inputs", data=inputs)
        # columns: inputs, then target keys in sorted order (classes, feats)
        f.create_dataset("seqLengths", data=np.array([[n, n, n + 1] for n in lengths], dtype="int32"))
        f.create_dataset("seqTags", data=np.array(["s/a", "s/b", "s/c"], dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("targets/data/classes", data=classes)
        f.create_dataset("targets/data/feats", data=feats)
        f.create_group("targets/size")
        f["targets/size"].attrs["classes"] = [7, 1]
        f["targets/size"].attrs["feats"] = [3, 2]
        for key in ("classes", "feats"):
            f.create_dataset(
                f"targets/labels/{key}", data=np.array(["dummy-label"], dtype=object), dtype=h5py.string_dtype()
            )
    return lengths, inputs, classes, feats


def test_reads_returnn_layout(tmp_path):
    lengths, inputs, classes, feats = _returnn_layout_file(tmp_path / "a.hdf", np.random.RandomState(0))
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")], use_cache_manager=False)
    dataset.init_seq_order(1)
    assert dataset.num_seqs == 3 and dataset.get_all_tags() == ["s/a", "s/b", "s/c"]
    assert dataset.get_data_dim("data") == 5 and not dataset.is_data_sparse("data")
    assert dataset.get_data_dim("classes") == 7 and dataset.is_data_sparse("classes")
    assert dataset.get_data_dim("feats") == 3 and dataset.get_data_shape("feats") == [3]
    seq = dataset.get_seq(1)
    np.testing.assert_array_equal(seq["data"], inputs[4:6])
    np.testing.assert_array_equal(seq["classes"], classes[4:6])
    np.testing.assert_array_equal(seq["feats"], feats[5:8])
    assert dataset.get_seq_length(2) == {"data": 3, "classes": 3, "feats": 4}


def test_writer_round_trip_sparse_inputs_and_extra_dims(tmp_path):
    path = str(tmp_path / "out.hdf")
    rng = np.random.RandomState(1)
    writer = SimpleHDFWriter(path, dim=None, ndim=1)
    labels = np.array([[1, 2, 3], [4, 5, 0]], "int32")
    grid = rng.standard_normal((2, 4, 5, 3)).astype("float32")
    writer.insert_batch(labels, [3, 2], ["x", b"y"], extra={"grid": grid})
    writer.insert_batch(labels[:1], np.array([1]), ["z"], extra={"grid": grid[:1, :2]})
    assert not os.path.exists(path)  # nothing under the final name before close
    writer.close()
    dataset = init_dataset({"class": "HDFDataset", "files": [path], "use_cache_manager": False})
    dataset.init_seq_order(1)
    assert [dataset.get_seq(i)["data"].tolist() for i in range(3)] == [[1, 2, 3], [4, 5], [1]]
    assert dataset.is_data_sparse("data") and dataset.get_data_shape("grid") == [5, 3]
    np.testing.assert_array_equal(dataset.get_seq(1)["grid"], grid[1])
    np.testing.assert_array_equal(dataset.get_seq(2)["grid"], grid[0, :2])
    assert dataset.get_all_tags() == ["x", "y", "z"]


def test_unclosed_writer_leaves_nothing(tmp_path):
    writer = SimpleHDFWriter(str(tmp_path / "never.hdf"), dim=2)
    writer.insert_batch(np.zeros((1, 3, 2), "float32"), [3], ["a"])
    del writer
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_several_files_concatenate(tmp_path):
    for name, num in (("a", 3), ("b", 2)):
        hdf_dump.dump(
            init_dataset({"class": "SyntheticSpeechDataset", "num_seqs": num, "seed": len(name)}),
            str(tmp_path / f"{name}.hdf"),
        )
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf"), str(tmp_path / "b.hdf")], use_cache_manager=False)
    dataset.init_seq_order(1)
    assert dataset.num_seqs == 5 and dataset.get_seq(4)["seq_tag"] == "seq-1"


def test_hdf_dump_from_config_keeps_everything(tmp_path, capsys):
    config = tmp_path / "c.config"
    config.write_text(
        "#!rnn.py\ntrain = {'class': 'SyntheticSpeechDataset', 'num_seqs': 7, 'seq_ordering': 'random'}\n"
    )
    assert hdf_dump.main([str(config), str(tmp_path / "train.hdf")]) == 0
    assert "Wrote 7 sequences" in capsys.readouterr().out
    source = init_dataset({"class": "SyntheticSpeechDataset", "num_seqs": 7, "seq_ordering": "random"})
    source.init_seq_order(1)
    dumped = HDFDataset(files=[str(tmp_path / "train.hdf")], use_cache_manager=False)
    dumped.init_seq_order(1)
    assert dumped.data_keys.keys() == source.data_keys.keys()
    assert dumped.get_data_dim("classes") == 10 and dumped.is_data_sparse("classes")
    for i in range(7):
        a, b = dumped.get_seq(i), source.get_seq(i)
        assert a["seq_tag"] == b["seq_tag"]
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["classes"], b["classes"])
    assert (
        hdf_dump.main(
            ["{'class': 'DummyDataset', 'input_dim': 2, 'output_dim': 3, 'num_seqs': 2}", str(tmp_path / "d.hdf")]
        )
        == 0
    )


def test_training_and_process_workers_read_hdf(tmp_path, monkeypatch):
    from i6_minireturnn.__main__ import main

    hdf_dump.dump(
        init_dataset({"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 8, "seq_len": 5}),
        str(tmp_path / "train.hdf"),
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.config").write_text(
        "#!rnn.py\nimport torch\n"
        "train = {'class': 'HDFDataset', 'files': ['train.hdf'], 'use_cache_manager': False}\n"
        "dev = {**train, 'seq_ordering': 'sorted'}\n"
        "num_workers_per_gpu = 2\ndata_worker_type = 'process'\nbatch_size = 20\nnum_epochs = 2\nmodel = 'm/model'\n"
        "optimizer = {'class': 'adam'}\nlog_verbosity = 1\n"
        "def get_model(epoch, step, **kwargs):\n    return torch.nn.Linear(2, 3)\n"
        "def train_step(*, model, data, run_ctx, **kwargs):\n"
        "    logits = model(data['data']).transpose(1, 2)\n"
        "    run_ctx.mark_as_loss(torch.nn.functional.cross_entropy(logits, data['classes'].long()), 'ce')\n"
    )
    assert main(["c.config"]) == 0
    assert os.path.exists(tmp_path / "m/model.002.pt")


def test_bad_files_are_named(tmp_path):
    def fails(path, match, **kwargs):
        with pytest.raises(DataError, match=match):
            HDFDataset(files=[str(path)], use_cache_manager=False, **kwargs)

    fails(tmp_path / "missing.hdf", "HDF file not found.*missing.hdf")
    (tmp_path / "text.hdf").write_text("no hdf")
    fails(tmp_path / "text.hdf", "text.hdf.*not an HDF file")
    hdf_dump.dump(init_dataset({"class": "SyntheticSpeechDataset", "num_seqs": 50}), str(tmp_path / "good.hdf"))
    data = (tmp_path / "good.hdf").read_bytes()
    (tmp_path / "cut.hdf").write_bytes(data[: len(data) // 3])
    fails(tmp_path / "cut.hdf", "cut.hdf.*truncated")
    with h5py.File(tmp_path / "nolengths.hdf", "w") as f:
        f.create_dataset("inputs", data=np.zeros((3, 2)))
    fails(tmp_path / "nolengths.hdf", "nolengths.hdf.*no 'seqLengths'")
    fails(tmp_path / "good.hdf", "good.hdf.*no data key.*'alignment'", data_keys=["data", "alignment"])
