"""RETURNN's HDF layout: reading files in Mini-RETURNN's layout, our writer, hdf_dump, and bad files."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from i6_minireturnn.data.batching import BatchLimits  # noqa: E402
from i6_minireturnn.data.collate import collate_batch  # noqa: E402
from i6_minireturnn.data.hdf import HDFDataset  # noqa: E402
from i6_minireturnn.data.hdf_writer import SimpleHDFWriter  # noqa: E402
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions  # noqa: E402
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


def _assert_same_batch(batch, expected):
    assert list(batch) == list(expected) and batch.dataset_name == expected.dataset_name
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key
        else:
            assert batch[key] == value, key


def _stored_like_minireturnn(path, rng, lengths, **storage):
    """Mini-RETURNN's layout with the data stored as given (chunked, compressed: read through h5py), uint16 labels
    (widened when collated), a key with two feature axes, and an empty sequence."""
    frames = sum(lengths)
    with h5py.File(path, "w") as f:
        f.create_dataset("inputs", data=rng.standard_normal((frames, 5)).astype("float32"), **storage)
        f.create_dataset("seqLengths", data=np.array([[n, n, n] for n in lengths], dtype="int32"))
        f.create_dataset("seqTags", data=np.array([f"t{i}" for i in range(len(lengths))], dtype="S"))
        f.create_dataset("targets/data/classes", data=rng.randint(0, 9, frames).astype("uint16"), **storage)
        f.create_dataset("targets/data/grid", data=rng.standard_normal((frames, 2, 3)).astype("float32"))


@pytest.mark.parametrize("storage", [{}, {"chunks": True}, {"compression": "gzip"}])
def test_batches_read_in_place_equal_collated_sequences(tmp_path, storage):
    lengths = [4, 0, 7, 1, 3, 3, 6]
    _stored_like_minireturnn(tmp_path / "a.hdf", np.random.RandomState(3), lengths[:3], **storage)
    _stored_like_minireturnn(tmp_path / "b.hdf", np.random.RandomState(4), lengths[3:], **storage)
    files = [str(tmp_path / "a.hdf"), str(tmp_path / "b.hdf")]
    dataset = HDFDataset(files=files, use_cache_manager=False, seq_ordering="random")
    dataset.init_seq_order(2)
    assert dataset.reads_batches
    order = [dataset.corpus_index(i) for i in range(dataset.num_seqs)]
    for picked in (order, order[:1], [order[i] for i in (1, 4)]):
        seq_indices = [order.index(i) for i in picked]
        expected = collate_batch(
            [dataset.get_corpus_seq(c, seq_idx=s) for c, s in zip(picked, seq_indices)], dataset_name=dataset.name
        )
        _assert_same_batch(dataset.read_batch(picked, seq_indices, pin_memory=False), expected)
    assert expected["classes"].dtype == torch.int32


class _Shifted(HDFDataset):
    """Changes what a sequence holds: its batches must be collated from the changed sequences."""

    def load_corpus_seq(self, corpus_idx):
        return {key: value + 1 for key, value in super().load_corpus_seq(corpus_idx).items()}


def test_pipeline_batches_unchanged_by_reading_in_place(tmp_path):
    _stored_like_minireturnn(tmp_path / "a.hdf", np.random.RandomState(5), list(range(1, 30)))
    path = str(tmp_path / "a.hdf")

    def batches(dataset, workers, worker_type="thread"):
        options = PipelineOptions(limits=BatchLimits(40, 5), num_workers=workers, worker_type=worker_type)
        return list(EpochBatches(dataset, 1, options))

    dataset = HDFDataset(files=[path], use_cache_manager=False, seq_ordering="laplace:.8")
    plan = EpochBatches(dataset, 1, PipelineOptions(limits=BatchLimits(40, 5))).plan
    expected = [
        collate_batch([dataset.get_corpus_seq(i.corpus_idx, seq_idx=i.seq_idx) for i in items], dataset.name)
        for items in plan
    ]
    for workers, worker_type in ((0, "thread"), (2, "thread"), (1, "process")):
        got = batches(dataset, workers, worker_type)
        assert len(got) == len(expected)
        for batch, want in zip(got, expected):
            _assert_same_batch(batch, want)
    shifted = _Shifted(files=[path], use_cache_manager=False, seq_ordering="laplace:.8")
    assert not shifted.reads_batches
    first = batches(shifted, 0)[0]
    assert torch.equal(first["classes"][:, :1], expected[0]["classes"][:, :1] + 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_batches_read_into_pinned_memory(tmp_path):
    _stored_like_minireturnn(tmp_path / "a.hdf", np.random.RandomState(6), [5, 2, 0, 9])
    dataset = HDFDataset(files=[str(tmp_path / "a.hdf")], use_cache_manager=False)
    pinned = dataset.read_batch([3, 0, 2], [0, 1, 2], pin_memory=True)
    _assert_same_batch(pinned, dataset.read_batch([3, 0, 2], [0, 1, 2], pin_memory=False))
    assert all(value.is_pinned() for value in pinned.values() if isinstance(value, torch.Tensor))
