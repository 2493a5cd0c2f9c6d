"""RETURNN seq orderings used by i6 data helpers (``sort_bin_shuffle``, CombinedDataset ``interleave``) and the
``MultiProcDataset`` wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from i6_minireturnn.data.registry import init_dataset
from i6_minireturnn.data.seq_order import compute_seq_order, interleave_order
from i6_minireturnn.errors import ConfigError

from .conftest import write_config

# corpus index -> length; all lengths differ, so sorting by length is unambiguous
LENGTHS = [5, 3, 8, 1, 9, 2, 7, 4, 6, 0]
BY_LENGTH = [9, 3, 5, 1, 7, 0, 8, 6, 2, 4]  # corpus indices, shortest first


def _order(method, seed, lengths=LENGTHS):
    return compute_seq_order(len(lengths), method, seed=seed, get_seq_len=lambda i: lengths[i])


def _bin_draw(seed, num_seqs, num_bins):
    """RETURNN's random draws for sort_bin_shuffle: a permutation of the sequences (ties), then of the bins."""
    rng = np.random.RandomState(seed)
    rng.permutation(num_seqs)
    return rng.permutation(num_bins).tolist()


def _static(lengths, **kwargs):
    data = [{"data": np.full((n, 2), i, dtype="float32")} for i, n in enumerate(lengths)]
    return init_dataset({"class": "StaticDataset", "data": data, **kwargs}, name="static")


# ---- sort_bin_shuffle --------------------------------------------------------------------------------------------


def test_sort_bin_shuffle_hand_computed():
    # ".3": 10 // 3 = 3 bins of the length-sorted list: [0:3], [3:6], [6:10] (floor bounds, the last takes the rest)
    bins = [BY_LENGTH[0:3], BY_LENGTH[3:6], BY_LENGTH[6:10]]
    assert _order("sort_bin_shuffle:.3", seed=1) == [8, 6, 2, 4, 9, 3, 5, 1, 7, 0]  # bins 2, 0, 1
    for seed in (1, 2, 7):
        expected = [i for b in _bin_draw(seed, 10, 3) for i in bins[b]]
        assert _order("sort_bin_shuffle:.3", seed=seed) == expected


def test_sort_bin_shuffle_bin_count_forms():
    halves = [BY_LENGTH[:5], BY_LENGTH[5:]]
    expected = [i for b in _bin_draw(3, 10, 2) for i in halves[b]]
    assert _order("sort_bin_shuffle", seed=3) == expected  # default: 2 bins
    assert _order("sort_bin_shuffle:.32", seed=3) == expected  # at least 2 bins (10 // 32 = 0)
    assert _order("sort_bin_shuffle:2", seed=3) == expected
    quarters = [BY_LENGTH[0:2], BY_LENGTH[2:5], BY_LENGTH[5:7], BY_LENGTH[7:10]]  # 10 * b // 4 = 0, 2, 5, 7
    assert _order("sort_bin_shuffle:4", seed=3) == [i for b in _bin_draw(3, 10, 4) for i in quarters[b]]


def test_sort_bin_shuffle_equal_lengths_grouped_in_random_order():
    lengths = [2, 1, 2, 1, 2, 1, 2, 1]  # two bins: all length-1 seqs, then all length-2 seqs (or the other way)
    orders = {tuple(_order("sort_bin_shuffle:2", seed=s, lengths=lengths)) for s in range(1, 30)}
    for order in orders:
        assert {frozenset(order[:4]), frozenset(order[4:])} == {frozenset({1, 3, 5, 7}), frozenset({0, 2, 4, 6})}
    assert len(orders) > 2  # ties are broken at random, not by corpus index


def test_sort_bin_shuffle_x2_shuffles_within_bins():
    bins = [BY_LENGTH[0:3], BY_LENGTH[3:6], BY_LENGTH[6:10]]
    differs = False
    for seed in range(1, 10):
        order = _order("sort_bin_shuffle_x2:.3", seed=seed)
        expected_bins = [bins[b] for b in _bin_draw(seed, 10, 3)]
        pieces, start = [], 0
        for b in expected_bins:
            pieces.append(order[start : start + len(b)])
            start += len(b)
        assert [sorted(p) for p in pieces] == [sorted(b) for b in expected_bins]
        differs |= pieces != expected_bins
    assert differs


def test_sort_bin_shuffle_through_dataset_per_epoch():
    lengths = [int(n) for n in np.random.RandomState(0).randint(1, 50, size=40)]
    dataset = _static(lengths, seq_ordering="sort_bin_shuffle:.8")

    def epoch_order(epoch):
        dataset.init_seq_order(epoch)
        return [dataset.corpus_index(i) for i in range(dataset.num_seqs)]

    first = epoch_order(1)
    assert sorted(first) == list(range(40))
    assert epoch_order(1) == first  # deterministic per epoch
    assert epoch_order(2) != first  # a new order each epoch
    # 40 // 8 = 5 bins of 8 seqs; each is a run of neighbouring lengths
    runs = [sorted(lengths[i] for i in first[b * 8 : (b + 1) * 8]) for b in range(5)]
    assert sorted(runs) == [sorted(lengths)[b * 8 : (b + 1) * 8] for b in range(5)]


@pytest.mark.parametrize("method", ["sort_bin_shuffle:x", "sort_bin_shuffle:0", "sort_bin_shuffle:.8:3"])
def test_sort_bin_shuffle_bad_argument(method):
    with pytest.raises(ConfigError, match="sort_bin_shuffle"):
        _order(method, seed=1)


# ---- interleave (CombinedDataset) --------------------------------------------------------------------------------


def test_interleave_order_hand_computed():
    # sizes 2 and 4: take from the part with the smaller (used + 1) / size, the lower index on ties
    # (1/2 vs 1/4) -> 1; (1/2 vs 2/4) tie -> 0; (2/2 vs 2/4) -> 1; (2/2 vs 3/4) -> 1; (2/2 vs 4/4) -> 0; then 1
    assert interleave_order([2, 4]) == [(1, 0), (0, 0), (1, 1), (1, 2), (0, 1), (1, 3)]
    assert interleave_order([3, 3]) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert interleave_order([1, 0, 2]) == [(2, 0), (0, 0), (2, 1)]


def test_combined_dataset_interleave_keeps_sub_orders():
    speech = {"class": "StaticDataset", "data": [{"data": np.full((3, 2), i, "float32")} for i in range(2)]}
    text = {
        "class": "StaticDataset",
        "data": [{"data": np.full((i + 1,), i, "int32")} for i in range(4)],
        "seq_ordering": "sorted_reverse",
    }
    combined = init_dataset(
        {
            "class": "CombinedDataset",
            # "text" sorts before "zpeech": part 0 is text (4 seqs), part 1 speech (2 seqs)
            "datasets": {"zpeech": speech, "text": text},
            "data_map": {("zpeech", "data"): "data", ("text", "data"): "text"},
            "seq_ordering": "interleave",
        },
        name="train",
    )
    for epoch in (1, 2):
        combined.init_seq_order(epoch)
        picked = []
        for i in range(combined.num_seqs):
            seq = combined.get_seq(i)
            picked.append(("speech", int(seq["data"][0, 0])) if len(seq["data"]) else ("text", int(seq["text"][0])))
        # text in its own order (longest first), speech in corpus order; fractions (text vs speech): 1/4 < 1/2,
        # 2/4 = 1/2 (tie: text), 3/4 > 1/2, 3/4 < 2/2, 4/4 = 2/2 (tie: text), then speech
        assert picked == [("text", 3), ("text", 2), ("speech", 0), ("text", 1), ("text", 0), ("speech", 1)]


def test_interleave_outside_combined_dataset_is_refused():
    with pytest.raises(ConfigError, match="CombinedDataset"):
        _order("interleave", seed=1)
    sub = {"class": "StaticDataset", "data": [{"data": np.zeros((2, 1), "float32")}]}
    with pytest.raises(ConfigError, match="partition_epoch"):
        init_dataset(
            {
                "class": "CombinedDataset",
                "datasets": {"a": sub},
                "data_map": {("a", "data"): "data"},
                "seq_ordering": "interleave",
                "partition_epoch": 2,
            }
        )


# ---- MultiProcDataset --------------------------------------------------------------------------------------------

DUMMY = {"class": "DummyDataset", "input_dim": 2, "output_dim": 3, "num_seqs": 6, "seq_len": 4}


def _all_seqs(dataset, epoch=1):
    dataset.init_seq_order(epoch)
    return [dataset.get_seq(i) for i in range(dataset.num_seqs)]


def _assert_same_seqs(a, b):
    assert [s["seq_tag"] for s in a] == [s["seq_tag"] for s in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], np.ndarray):
                np.testing.assert_array_equal(x[key], y[key])


def test_multi_proc_dataset_is_its_inner_dataset():
    inner = {**DUMMY, "seq_ordering": "random"}
    wrapped = init_dataset({"class": "MultiProcDataset", "dataset": inner, "num_workers": 4, "buffer_size": 10})
    assert type(wrapped).__name__ == "DummyDataset"
    for epoch in (1, 2):
        _assert_same_seqs(_all_seqs(wrapped, epoch), _all_seqs(init_dataset(inner), epoch))


def test_multi_proc_dataset_around_hdf(tmp_path):
    pytest.importorskip("h5py")
    from i6_minireturnn.data.hdf_writer import SimpleHDFWriter

    path = str(tmp_path / "feats.hdf")
    writer = SimpleHDFWriter(path, dim=3)
    rng = np.random.RandomState(0)
    for n, tag in [(4, "a"), (2, "b"), (5, "c")]:
        writer.insert_batch(rng.standard_normal((1, n, 3)).astype("float32"), [n], [tag])
    writer.close()
    inner = {"class": "HDFDataset", "files": [path], "seq_ordering": "sorted"}
    wrapped = init_dataset(
        {"class": "MultiProcDataset", "dataset": inner, "num_workers": 2, "buffer_size": 5}, name="dev"
    )
    seqs = _all_seqs(wrapped)
    assert [s["seq_tag"] for s in seqs] == ["b", "a", "c"]
    _assert_same_seqs(seqs, _all_seqs(init_dataset(inner)))


def test_multi_proc_dataset_options():
    # other options become defaults of the inner dataset, as in RETURNN; the inner dict's own values win
    wrapped = init_dataset(
        {"class": "MultiProcDataset", "dataset": DUMMY, "num_workers": 1, "buffer_size": 1, "partition_epoch": 2}
    )
    assert wrapped.partition_epoch == 2
    with pytest.raises(ConfigError, match="bogus"):
        init_dataset({"class": "MultiProcDataset", "dataset": DUMMY, "num_workers": 1, "buffer_size": 1, "bogus": 1})
    with pytest.raises(ConfigError, match="needs 'dataset'"):
        init_dataset({"class": "MultiProcDataset", "num_workers": 1, "buffer_size": 1})


def test_training_with_multi_proc_dataset_and_sort_bin_shuffle(tmp_path, run_cli):
    config = write_config(
        tmp_path,
        """
        train = {
            "class": "MultiProcDataset",
            "dataset": {**train, "seq_ordering": "sort_bin_shuffle:.4"},
            "num_workers": 2,
            "buffer_size": 5,
        }
        dev = {"class": "MultiProcDataset", "dataset": dev, "num_workers": 1, "buffer_size": 5}
        """,
    )
    code, out, err = run_cli(config)
    assert code == 0, err
    assert (tmp_path / "out/model.002.pt").exists()
    assert "MultiProcDataset uses its inner dataset directly" in out + err
