"""The generating datasets: shapes, values and determinism."""

from __future__ import annotations

import numpy as np

from i6_minireturnn.data.generating import Task12AXDataset
from i6_minireturnn.data.registry import init_dataset


def _seqs(opts, epoch=1):
    dataset = init_dataset(opts, name="d")
    dataset.init_seq_order(epoch)
    return dataset, [dataset.get_seq(i) for i in range(dataset.num_seqs)]


def test_task_12ax_rule():
    assert Task12AXDataset.targets_for("1AXBY2BYAX1CAXAX") == [0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1]
    dataset, seqs = _seqs({"class": "Task12AXDataset", "num_seqs": 20})
    for seq in seqs:
        symbols = "".join(Task12AXDataset.INPUT_SYMBOLS[i] for i in seq["data"].argmax(1))
        assert seq["classes"].tolist() == Task12AXDataset.targets_for(symbols)
        assert 10 <= len(symbols) <= 100 and seq["data"].sum(1).tolist() == [1.0] * len(symbols)
    assert sum(int(s["classes"].sum()) for s in seqs) > 0  # some "R" answers
    assert dataset.get_data_dim("data") == 9 and dataset.get_data_dim("classes") == 2


def test_dummy_multiple_lengths_and_keys():
    _, seqs = _seqs({"class": "DummyDatasetMultipleSequenceLength", "input_dim": 2, "output_dim": 4, "num_seqs": 2})
    assert seqs[0]["data"].shape == (10, 2) and seqs[0]["classes"].shape == (20,)
    dataset, seqs = _seqs(
        {
            "class": "DummyDatasetMultipleDataKeys",
            "output_dim": {"data": 3, "classes": (5, 1), "extra": (2, 2)},
            "num_seqs": 3,
            "seq_len": {"data": 4, "classes": 2, "extra": 6},
        }
    )
    assert seqs[1]["data"].shape == (4, 3) and seqs[1]["extra"].shape == (6, 2)
    assert dataset.is_data_sparse("classes") and seqs[1]["classes"].max() < 5


def test_copy_task_grows_with_epoch():
    opts = {
        "class": "CopyTaskDataset",
        "nsymbols": 6,
        "num_seqs": 30,
        "minlen": 2,
        "maxlen": 4,
        "maxlen_epoch_factor": 3,
    }
    _, first = _seqs(opts, epoch=1)
    _, later = _seqs(opts, epoch=5)
    assert all(np.array_equal(s["data"], s["classes"]) for s in first)
    assert max(len(s["data"]) for s in first) <= 7 < max(len(s["data"]) for s in later)


def test_static_dataset():
    data = [
        {"data": np.ones((3, 2), "float32"), "classes": np.array([0, 4, 1])},
        {"data": np.zeros((1, 2), "float32"), "classes": np.array([2])},
    ]
    dataset, seqs = _seqs({"class": "StaticDataset", "data": data})
    assert (
        dataset.get_data_dim("classes") == 5 and dataset.is_data_sparse("classes") and dataset.get_data_dim("data") == 2
    )
    assert seqs[1]["classes"].tolist() == [2] and dataset.get_seq_length(0) == {"data": 3, "classes": 3}
