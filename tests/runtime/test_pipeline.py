"""Datasets, sequence orders, batching limits, collation and worker loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from i6_minireturnn.data.batching import BatchLimits
from i6_minireturnn.data.collate import collate_batch
from i6_minireturnn.data.generating import DummyDataset, SyntheticSpeechDataset
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions
from i6_minireturnn.data.registry import init_dataset
from i6_minireturnn.errors import ConfigError, DataError


def test_dummy_dataset_values():
    dataset = DummyDataset(input_dim=2, output_dim=3, num_seqs=4, seq_len=3)
    dataset.init_seq_order(1)
    seq = dataset.get_seq(1)
    np.testing.assert_allclose(seq["data"], ((np.arange(1, 7) % 10 - 5.0) / 10.0).reshape(3, 2))
    assert seq["classes"].tolist() == [7 % 3, 8 % 3, 9 % 3]
    assert seq["seq_tag"] == "seq-1" and dataset.get_data_dim("classes") == 3 and dataset.is_data_sparse("classes")
    assert dataset.num_outputs == {"data": (2, 2), "classes": (3, 1)}


def test_synthetic_speech_is_deterministic_per_sequence():
    a = SyntheticSpeechDataset(num_seqs=20, seed=5, seq_ordering="random")
    b = SyntheticSpeechDataset(num_seqs=20, seed=5)
    a.init_seq_order(3)
    b.init_seq_order(1)
    for i in range(20):
        seq = a.get_seq(i)
        same = b.get_seq(a.corpus_index(i))
        assert seq["seq_tag"] == same["seq_tag"]
        np.testing.assert_array_equal(seq["data"], same["data"])
        assert len(seq["classes"]) <= len(seq["data"]) // 2
    assert a.get_seq_length(0) == {k: len(v) for k, v in a.get_seq(0).items() if k in ("data", "classes")}


@pytest.mark.parametrize(
    "ordering", ["default", "reverse", "random", "random:7", "sorted", "sorted_reverse", "laplace:3", "laplace:.5"]
)
def test_seq_orderings_are_permutations_and_reproducible(ordering):
    def order(epoch):
        dataset = SyntheticSpeechDataset(num_seqs=30, seq_ordering=ordering)
        dataset.init_seq_order(epoch)
        return [dataset.corpus_index(i) for i in range(dataset.num_seqs)]

    assert sorted(order(1)) == list(range(30))
    assert order(2) == order(2)
    dataset = SyntheticSpeechDataset(num_seqs=30)
    lengths = [dataset.corpus_seq_lengths(i)["data"] for i in order(1)]
    if ordering == "sorted":
        assert lengths == sorted(lengths)
    if ordering == "sorted_reverse":
        assert lengths == sorted(lengths, reverse=True)
    if ordering == "random":
        assert order(1) != order(2)


def test_partition_epoch_splits_without_overlap():
    parts = []
    for epoch in (1, 2, 3):
        dataset = SyntheticSpeechDataset(num_seqs=10, partition_epoch=3, seq_ordering="random")
        dataset.init_seq_order(epoch)
        parts.append([dataset.corpus_index(i) for i in range(dataset.num_seqs)])
    assert sorted(sum(parts, [])) == list(range(10))


def test_unknown_seq_ordering():
    dataset = SyntheticSpeechDataset(num_seqs=3, seq_ordering="shuffled")
    with pytest.raises(ConfigError, match="Unknown seq_ordering 'shuffled'"):
        dataset.init_seq_order(1)


def test_batch_limits_type_errors():
    with pytest.raises(ConfigError, match="batch_size"):
        BatchLimits("1000")


def test_collate_pads_and_reports_sizes():
    seqs = [
        {"data": np.ones((3, 2), "float32"), "classes": np.array([1, 2], "uint16"), "seq_tag": "a", "seq_idx": 0},
        {"data": np.ones((1, 2), "float32"), "classes": np.array([4, 5, 6], "uint16"), "seq_tag": "b", "seq_idx": 1},
    ]
    batch = collate_batch(seqs)
    assert batch["data"].shape == (2, 3, 2) and batch["data"][1, 1:].abs().sum() == 0
    assert batch["data:size1"].tolist() == [3, 1] and batch["data:size2"].tolist() == [2, 2]
    assert int(batch["data:size0"]) == 2
    assert batch["classes"].dtype == torch.int32 and batch["classes"].tolist() == [[1, 2, 0], [4, 5, 6]]
    assert batch["seq_tag"] == ["a", "b"] and batch["seq_idx"] == [0, 1]


def test_collate_copies_every_kind_of_source_array():
    """Read-only, byte-swapped, strided and padded-on-two-axes sources give the same batch as a plain copy."""
    rng = np.random.RandomState(3)
    read_only = rng.standard_normal((4, 3)).astype("float32")
    read_only.flags.writeable = False
    swapped = rng.standard_normal((2, 3)).astype(">f4")
    strided = rng.standard_normal((5, 6)).astype("float32")[:, ::2]
    images = [rng.standard_normal((2, 3, 4)).astype("float32"), rng.standard_normal((3, 1, 2)).astype("float32")]
    batch = collate_batch([{"data": read_only, "img": images[0]}, {"data": swapped, "img": images[1]}])
    batch2 = collate_batch([{"data": strided, "img": images[0]}, {"data": swapped, "img": images[1]}])
    expected = np.zeros((2, 4, 3), "float32")
    expected[0], expected[1, :2] = read_only, swapped
    np.testing.assert_array_equal(batch["data"].numpy(), expected)
    np.testing.assert_array_equal(batch2["data"].numpy()[0], strided)
    np.testing.assert_array_equal(batch2["data"].numpy()[1, 2:], 0)
    np.testing.assert_array_equal(batch2["data"].numpy()[1, :2], swapped)
    img = np.zeros((2, 3, 3, 4), "float32")
    img[0, :2, :3, :4], img[1, :3, :1, :2] = images
    np.testing.assert_array_equal(batch["img"].numpy(), img)
    assert [batch[f"img:size{i}"].tolist() for i in range(4)] == [2, [2, 3], [3, 1], [4, 2]]
    assert batch["data:size0"].dim() == 0 and batch["data:size1"].dtype == torch.int64
    assert list(batch) == ["data", "data:size1", "data:size2", "data:size0", "img"] + [
        f"img:size{i}" for i in (1, 2, 3, 0)
    ]


@pytest.mark.parametrize("shapes", [[(1000, 80), (10, 80), (700, 80)], [(3, 40000), (1, 40000)]])
def test_collate_copies_long_sequences_and_large_frames(shapes):
    """Sequences beyond one serial copy are copied in pieces; frames too large for a piece are copied whole."""
    rng = np.random.RandomState(4)
    arrays = [rng.standard_normal(shape).astype("float32") for shape in shapes]
    batch = collate_batch([{"data": a} for a in arrays])
    for row, array in zip(batch["data"].numpy(), arrays):
        np.testing.assert_array_equal(row[: len(array)], array)
        np.testing.assert_array_equal(row[len(array) :], 0)


def _all_batches(dataset, workers, epoch=1, worker_type="thread"):
    options = PipelineOptions(limits=BatchLimits(60, 8), num_workers=workers, worker_type=worker_type)
    return [(b["seq_tag"], b["data"].sum().item()) for b in EpochBatches(dataset, epoch, options)]


def test_batches_identical_for_any_worker_count():
    dataset = SyntheticSpeechDataset(num_seqs=40, seq_ordering="laplace:.10")
    single = _all_batches(dataset, 0)
    assert _all_batches(dataset, 1) == single
    assert _all_batches(dataset, 3) == single
    assert _all_batches(dataset, 2, worker_type="process") == single
    tags = [t for batch, _ in single for t in batch]
    assert sorted(tags) == sorted(f"seq-{i}" for i in range(40))  # every sequence once


class _StreamOnly(SyntheticSpeechDataset):
    """The same data, but without known lengths (forces the streamed path)."""

    has_cheap_lengths = False


def test_streamed_dataset_gives_the_same_batches():
    planned = _all_batches(SyntheticSpeechDataset(num_seqs=25, seq_ordering="random"), 0)
    assert _all_batches(_StreamOnly(num_seqs=25, seq_ordering="random"), 0) == planned
    assert _all_batches(_StreamOnly(num_seqs=25, seq_ordering="random"), 1) == planned
    assert _all_batches(_StreamOnly(num_seqs=25, seq_ordering="random"), 2, worker_type="process") == planned


def test_stopping_early_leaves_no_running_loader():
    import threading

    dataset = SyntheticSpeechDataset(num_seqs=200)
    options = PipelineOptions(limits=BatchLimits(60, 8), num_workers=3)
    batches = iter(EpochBatches(dataset, 1, options))
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("data")]


def test_empty_dataset_is_an_error_not_a_hang():
    with pytest.raises(DataError, match="no sequences"):
        _all_batches(SyntheticSpeechDataset(num_seqs=0), 0)


def test_init_dataset_errors():
    with pytest.raises(ConfigError, match="Unknown dataset class 'DumyDataset'.*DummyDataset"):
        init_dataset({"class": "DumyDataset"}, name="train")
    with pytest.raises(ConfigError, match="unknown option.*'num_seq'.*did you mean 'num_seqs'"):
        init_dataset({"class": "SyntheticSpeechDataset", "num_seq": 3}, name="train")
    with pytest.raises(ConfigError, match="no 'class'"):
        init_dataset({"num_seqs": 3}, name="dev")


def _collect(dataset, options, epoch=1):
    return [b for b in EpochBatches(dataset, epoch, options)]


def test_length_filters():
    from i6_minireturnn.data.chunking import LengthFilter

    dataset = SyntheticSpeechDataset(num_seqs=40)
    dataset.init_seq_order(1)
    lengths = [dataset.get_seq_length(i)["data"] for i in range(40)]
    length_filter = LengthFilter({"data": 12}, {"data": 25})
    options = PipelineOptions(limits=BatchLimits(200, 8), num_workers=0, length_filter=length_filter)
    kept = [n for b in _collect(dataset, options) for n in b["data:size1"].tolist()]
    assert sorted(kept) == sorted(n for n in lengths if 12 <= n <= 25)
    assert 0 < len(kept) < 40


def test_length_filter_int_applies_to_every_key():
    from i6_minireturnn.data.chunking import LengthFilter

    assert LengthFilter(None, 10).keep({"data": 10, "classes": 3})
    assert not LengthFilter(None, 10).keep({"data": 11, "classes": 3})
    assert not LengthFilter(5, None).keep({"data": 11, "classes": 3})
    assert LengthFilter({"data": 5}, None).keep({"data": 11, "classes": 3})
    with pytest.raises(ConfigError, match="max_seq_length"):
        LengthFilter(None, "long")


def test_chunking_values_and_min_chunk_size():
    from i6_minireturnn.data.chunking import Chunking

    chunking = Chunking(
        {"chunk_streams": {k: {"size": 4, "step": 3, "min_chunk_size": 2} for k in ("data", "classes")}}
    )
    dataset = DummyDataset(input_dim=2, output_dim=5, num_seqs=2, seq_len=10)
    options = PipelineOptions(limits=BatchLimits(1000, 100), num_workers=0, chunking=chunking)
    (batch,) = _collect(dataset, options)
    assert batch["seq_tag"] == ["seq-0"] * 3 + ["seq-1"] * 3
    assert batch["data:size1"].tolist() == [4, 4, 4] * 2
    dataset.init_seq_order(1)
    full = dataset.get_seq(1)["classes"]
    assert batch["classes"][3:].tolist() == [full[0:4].tolist(), full[3:7].tolist(), full[6:10].tolist()]


def test_random_chunk_start_is_reproducible_and_worker_independent():
    from i6_minireturnn.data.chunking import Chunking

    opts = {"chunk_streams": {"data": {"size": 5, "step": 5}}, "random_chunk_start": True}
    dataset = SyntheticSpeechDataset(num_seqs=30)

    def run(workers, worker_type="thread"):
        options = PipelineOptions(
            limits=BatchLimits(40, 8), num_workers=workers, worker_type=worker_type, chunking=Chunking(opts)
        )
        return [(b["seq_tag"], b["data"].sum().item()) for b in EpochBatches(dataset, 1, options)]

    first = run(0)
    assert run(2) == first and run(1, "process") == first
    assert _all_batches(_StreamOnly(num_seqs=30), 0) == _all_batches(SyntheticSpeechDataset(num_seqs=30), 0)


def test_chunking_mismatch_names_the_sequence():
    from i6_minireturnn.data.chunking import Chunking

    chunking = Chunking({"chunk_streams": {"data": {"size": 2, "step": 2}, "classes": {"size": 2, "step": 2}}})
    options = PipelineOptions(limits=BatchLimits(100), num_workers=0, chunking=chunking)
    with pytest.raises(DataError, match="different numbers of chunks.*sequence 0"):
        _collect(SyntheticSpeechDataset(num_seqs=3), options)


def test_training_with_chunking_and_filters_from_config(tmp_path, monkeypatch):
    from i6_minireturnn.__main__ import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.config").write_text(
        "#!rnn.py\nimport torch\n"
        "train = {'class': 'DummyDataset', 'input_dim': 2, 'output_dim': 3, 'num_seqs': 6, 'seq_len': 12}\n"
        "chunking_options = {'chunk_streams': {'data': {'size': 5, 'step': 5}, 'classes': {'size': 5, 'step': 5}}}\n"
        "max_seq_length = {'data': 100}\nbatch_size = 50\nnum_epochs = 1\nmodel = 'm/model'\n"
        "optimizer = {'class': 'sgd'}\nseen = []\n"
        "def get_model(epoch, step, **kwargs):\n    return torch.nn.Linear(2, 3)\n"
        "def train_step(*, model, data, run_ctx, **kwargs):\n"
        "    open('sizes.txt', 'a').write(' '.join(map(str, data['data:size1'].tolist())) + ' ')\n"
        "    run_ctx.mark_as_loss(model(data['data']).sum(), 'x')\n"
        "def forward_step(**kwargs):\n    pass\n"
    )
    assert main(["c.config", "++log_verbosity", "1"]) == 0
    sizes = sorted(int(n) for n in (tmp_path / "sizes.txt").read_text().split())
    assert sizes == sorted([5, 5, 2] * 6)  # 12 frames, chunks of 5 every 5 frames


def test_seq_list_filter_file(tmp_path):
    (tmp_path / "keep.txt").write_text("seq-2\nseq-5\nseq-7\n")
    dataset = SyntheticSpeechDataset(
        num_seqs=10, seq_list_filter_file=str(tmp_path / "keep.txt"), seq_ordering="random"
    )
    dataset.init_seq_order(1)
    assert sorted(dataset.get_seq_tag(i) for i in range(dataset.num_seqs)) == ["seq-2", "seq-5", "seq-7"]


def test_epoch_wise_filter_keeps_short_sequences_early():
    opts = {"num_seqs": 30, "epoch_wise_filter": {(1, 2): {"max_num_seqs": 10}, (3, 3): {"max_mean_len": 12}}}
    dataset = SyntheticSpeechDataset(**opts)
    all_lengths = sorted(dataset.corpus_seq_lengths(i)["data"] for i in range(30))
    dataset.init_seq_order(1)
    assert sorted(dataset.get_seq_length(i)["data"] for i in range(dataset.num_seqs)) == all_lengths[:10]
    dataset.init_seq_order(3)
    kept = [dataset.get_seq_length(i)["data"] for i in range(dataset.num_seqs)]
    assert sum(kept) / len(kept) <= 12 and len(kept) < 30
    dataset.init_seq_order(4)
    assert dataset.num_seqs == 30
    with pytest.raises(ConfigError, match="epoch_wise_filter options"):
        SyntheticSpeechDataset(num_seqs=3, epoch_wise_filter={(1, 1): {"subdirs": []}})


def test_datasets_written_against_the_earlier_hook_names_still_work():
    from i6_minireturnn.data.dataset import DataKey, Dataset

    class Squares(Dataset):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.data_keys = {"data": DataKey("data", 1, "float32", shape=(1,))}

        def _corpus_size(self):
            return 5

        def _corpus_seq_lengths(self, corpus_idx):
            return {"data": corpus_idx + 1}

        def _load_seq(self, corpus_idx):
            return {"data": np.full((corpus_idx + 1, 1), corpus_idx**2, "float32")}

    dataset = Squares(seq_ordering="sorted_reverse")
    assert dataset.has_cheap_lengths and dataset.corpus_size() == 5
    batches = EpochBatches(dataset, 1, PipelineOptions(limits=BatchLimits(5), num_workers=0))
    assert batches.num_batches == 4  # lengths 5 | 4 | 3 | 2 + 1, planned from the lengths
    assert [b["data:size1"].tolist() for b in batches] == [[5], [4], [3], [2, 1]]


def test_earlier_hook_names_call_and_extend_the_built_in_datasets():
    from i6_minireturnn.data.generating import StaticDataset

    class Doubled(StaticDataset):
        def _load_seq(self, corpus_idx):
            assert self._corpus_seq_tag(corpus_idx) == f"seq-{corpus_idx}"
            return {key: value * 2 for key, value in super()._load_seq(corpus_idx).items()}

    dataset = Doubled(data=[{"data": np.ones((3, 1), "float32")}])
    dataset.init_seq_order(1)
    assert dataset.get_seq(0)["data"].tolist() == [[2.0]] * 3 and dataset._corpus_size() == 1
    assert dataset.has_cheap_lengths and dataset._corpus_seq_lengths(0) == {"data": 3}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_pinned_batches_equal_unpinned():
    dataset = SyntheticSpeechDataset(num_seqs=30, seq_ordering="laplace:.10")
    batches = {}
    for pin in (False, True):
        options = PipelineOptions(limits=BatchLimits(60, 8), num_workers=1, pin_memory=pin)
        batches[pin] = list(EpochBatches(dataset, 1, options))
    assert len(batches[True]) == len(batches[False])
    for pinned, plain in zip(batches[True], batches[False]):
        assert list(pinned) == list(plain) and type(pinned) is type(plain)
        for key, value in plain.items():
            if isinstance(value, torch.Tensor):
                assert pinned[key].is_pinned() and torch.equal(pinned[key], value), key
            else:
                assert pinned[key] == value
