"""MetaDataset: data keys of several datasets combined by sequence tag."""

from __future__ import annotations

import numpy as np
import pytest

from i6_minireturnn.data.registry import init_dataset
from i6_minireturnn.errors import ConfigError, DataError


def _meta(**extra):
    opts = {
        "class": "MetaDataset",
        "datasets": {
            "feat": {"class": "SyntheticSpeechDataset", "num_seqs": 12, "seq_ordering": "random"},
            "align": {"class": "DummyDataset", "input_dim": 3, "output_dim": 7, "num_seqs": 12, "seq_len": 4},
        },
        "data_map": {"data": ("feat", "data"), "classes": ("align", "classes"), "extra": ("align", "data")},
        "seq_order_control_dataset": "feat",
    }
    opts.update(extra)
    return init_dataset(opts, name="train")


def test_keys_come_from_their_datasets_matched_by_tag():
    meta = _meta()
    meta.init_seq_order(2)
    feat = init_dataset({"class": "SyntheticSpeechDataset", "num_seqs": 12, "seq_ordering": "random"})
    feat.init_seq_order(2)
    assert [meta.get_seq_tag(i) for i in range(12)] == [feat.get_seq_tag(i) for i in range(12)]  # control's order
    assert meta.get_data_dim("classes") == 7 and meta.is_data_sparse("classes") and meta.get_data_dim("extra") == 3
    align = init_dataset({"class": "DummyDataset", "input_dim": 3, "output_dim": 7, "num_seqs": 12, "seq_len": 4})
    align.init_seq_order(1)
    for i in range(12):
        seq = meta.get_seq(i)
        tag = seq["seq_tag"]
        np.testing.assert_array_equal(seq["data"], feat.get_seq(i)["data"])
        np.testing.assert_array_equal(seq["classes"], align.get_seq(int(tag.split("-")[1]))["classes"])
    assert meta.has_cheap_lengths and meta.get_seq_length(0)["extra"] == 4


def test_seq_list_file_restricts_the_corpus(tmp_path):
    (tmp_path / "list.txt").write_text("seq-3\nseq-7\nseq-1\n")
    meta = _meta(seq_list_file=str(tmp_path / "list.txt"))
    meta.init_seq_order(1)
    assert sorted(meta.get_seq_tag(i) for i in range(meta.num_seqs)) == ["seq-1", "seq-3", "seq-7"]


def test_missing_tags_are_named():
    opts = {
        "class": "MetaDataset",
        "datasets": {
            "a": {"class": "SyntheticSpeechDataset", "num_seqs": 5},
            "b": {"class": "SyntheticSpeechDataset", "num_seqs": 3},
        },
        "data_map": {"data": ("a", "data"), "classes": ("b", "classes")},
        "seq_order_control_dataset": "a",
    }
    meta = init_dataset(opts, name="train")
    with pytest.raises(DataError, match="2 sequence.*missing in dataset 'b'.*seq-3"):
        meta.init_seq_order(1)


@pytest.mark.parametrize(
    "data_map, message",
    [
        ({"data": ("nope", "data")}, "unknown dataset 'nope'"),
        ({"data": ("feat", "features")}, "key 'features', which dataset 'feat' does not have"),
    ],
)
def test_bad_data_map(data_map, message):
    with pytest.raises(ConfigError, match=message):
        _meta(data_map=data_map)


def test_concat_dataset_reads_one_after_another():
    part = {"class": "SyntheticSpeechDataset", "num_seqs": 3}
    concat = init_dataset({"class": "ConcatDataset", "datasets": [part, {**part, "seed": 5, "num_seqs": 2}]})
    concat.init_seq_order(1)
    assert concat.num_seqs == 5 and [concat.get_seq_tag(i) for i in range(5)] == [
        "seq-0",
        "seq-1",
        "seq-2",
        "seq-0",
        "seq-1",
    ]
    second = init_dataset({**part, "seed": 5, "num_seqs": 2})
    second.init_seq_order(1)
    np.testing.assert_array_equal(concat.get_seq(4)["data"], second.get_seq(1)["data"])
    with pytest.raises(ConfigError, match="data keys differ"):
        init_dataset(
            {"class": "ConcatDataset", "datasets": [part, {"class": "StaticDataset", "data": [{"x": np.zeros(2)}]}]}
        )


def test_combined_dataset_fills_missing_keys_empty():
    combined = init_dataset(
        {
            "class": "CombinedDataset",
            "datasets": {
                "speech": {"class": "SyntheticSpeechDataset", "num_seqs": 2},
                "text": {"class": "CopyTaskDataset", "nsymbols": 10, "num_seqs": 2, "minlen": 2, "maxlen": 3},
            },
            "data_map": {("speech", "data"): "audio", ("speech", "classes"): "labels", ("text", "data"): "labels"},
            "seq_ordering": "default",
        }
    )
    combined.init_seq_order(1)
    speech, text = combined.get_seq(0), combined.get_seq(3)
    assert speech["audio"].shape[1] == 16 and len(speech["labels"]) >= 3
    assert text["audio"].shape == (0, 16) and 2 <= len(text["labels"]) <= 3
    assert combined.get_seq_length(3)["audio"] == 0


def test_concat_seqs_dataset(tmp_path):
    data = [
        {"data": np.arange(6, dtype="float32").reshape(3, 2), "classes": np.array([5, 6, 0])},
        {"data": np.full((2, 2), 9, dtype="float32"), "classes": np.array([7, 0])},
        {"data": np.zeros((5, 2), dtype="float32"), "classes": np.array([8, 0])},
    ]
    (tmp_path / "list").write_text("seq-0;seq-1\nseq-2\n")
    (tmp_path / "lens").write_text("{'seq-0': 3, 'seq-1': 2, 'seq-2': 5}")
    dataset = init_dataset(
        {
            "class": "ConcatSeqsDataset",
            "dataset": {"class": "StaticDataset", "data": data},
            "seq_list_file": str(tmp_path / "list"),
            "seq_len_file": str(tmp_path / "lens"),
            "remove_in_between_postfix": {"classes": 0},
            "repeat_in_between_last_frame_up_to_multiple_of": {"data": 4},
            "seq_ordering": "sorted_reverse",
        }
    )
    dataset.init_seq_order(1)
    # both are 5 long (3 + 2): sorted_reverse reverses the stable order
    assert [dataset.get_seq_tag(i) for i in range(2)] == ["seq-2", "seq-0;seq-1"]
    seq = dataset.get_seq(1)
    assert seq["classes"].tolist() == [5, 6, 7, 0]
    assert seq["data"][:, 0].tolist() == [0, 2, 4, 4, 9, 9]  # 3 frames padded to 4 by repeating the last
    assert dataset.get_seq_length(1) == {"data": 6, "classes": 4}
    (tmp_path / "bad").write_text("seq-0;seq-9\n")
    with pytest.raises(DataError, match="not in the dataset.*seq-9"):
        init_dataset(
            {
                "class": "ConcatSeqsDataset",
                "dataset": {"class": "StaticDataset", "data": data},
                "seq_list_file": str(tmp_path / "bad"),
            }
        )


def test_seq_list_file_becomes_the_control_datasets_option(tmp_path):
    (tmp_path / "list.txt").write_text("seq-3\n")
    meta = _meta(seq_list_file=str(tmp_path / "list.txt"))
    assert meta.control.seq_list_filter_file == str(tmp_path / "list.txt")
    assert meta.datasets["align"].seq_list_filter_file is None
    control = init_dataset({"class": "SyntheticSpeechDataset", "num_seqs": 12})
    with pytest.raises(ConfigError, match="must be given as a dataset dict"):
        _meta(seq_list_file=str(tmp_path / "list.txt"), datasets={"feat": control})
