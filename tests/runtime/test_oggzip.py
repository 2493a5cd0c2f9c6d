"""OggZipDataset: zip layout, audio features against an independent reference, filters, bad archives."""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
import pytest

soundfile = pytest.importorskip("soundfile")

from i6_minireturnn.data.registry import init_dataset  # noqa: E402
from i6_minireturnn.errors import DataError  # noqa: E402

RATE = 16000


def _tone(seconds, freq, seed):
    t = np.arange(int(seconds * RATE)) / RATE
    noise = np.random.RandomState(seed).standard_normal(len(t)) * 0.01
    return (0.5 * np.sin(2 * np.pi * freq * t) + noise).astype("float32")


def make_zip(folder, name="corpus", formats=("wav", "flac", "ogg"), drop_member=None, metadata=True):
    """A zip in RETURNN's layout with one utterance per audio format."""
    entries, path = [], folder / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i, fmt in enumerate(formats):
            audio = _tone(0.3 + 0.1 * i, 300 + 200 * i, i)
            buffer = io.BytesIO()
            soundfile.write(buffer, audio, RATE, format=fmt.upper())
            filename = f"utt{i}.{fmt}"
            if filename != drop_member:
                archive.writestr(f"{name}/{filename}", buffer.getvalue())
            entries.append({"file": filename, "seq_name": f"rec/{i}", "duration": len(audio) / RATE, "text": "ab ba"})
        if metadata:
            archive.writestr(f"{name}.txt", repr(entries))
    return path


def reference_log_mel(audio, num_mels, n_fft=400, hop=160):
    """Independent reference: explicit DFT per frame and Slaney mel triangles, written out step by step."""

    def to_mel(f):
        return f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) * 27 / math.log(6.4)

    def to_hz(m):
        return m * (200 / 3) if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)

    points = [to_hz(to_mel(0) + (to_mel(RATE / 2) - to_mel(0)) * j / (num_mels + 1)) for j in range(num_mels + 2)]
    bins = [k * RATE / n_fft for k in range(n_fft // 2 + 1)]
    filters = np.zeros((num_mels, len(bins)))
    for m in range(num_mels):
        left, center, right = points[m], points[m + 1], points[m + 2]
        for k, f in enumerate(bins):
            rising, falling = (f - left) / (center - left), (right - f) / (right - center)
            filters[m, k] = max(0.0, min(rising, falling)) * 2 / (right - left)
    padded = np.concatenate([np.zeros(n_fft // 2), audio.astype(np.float64), np.zeros(n_fft // 2)])
    window = [0.5 - 0.5 * math.cos(2 * math.pi * n / n_fft) for n in range(n_fft)]
    ks = np.arange(n_fft // 2 + 1)[:, None]
    ns = np.arange(n_fft)[None, :]
    dft = np.exp(-2j * np.pi * ks * ns / n_fft)
    out = []
    for start in range(0, len(padded) - n_fft + 1, hop):
        spectrum = np.abs(dft @ (padded[start : start + n_fft] * window)) ** 2
        out.append(np.log(np.maximum(1e-3, filters @ spectrum)))
    return np.array(out)


def test_log_mel_features_match_reference(tmp_path):
    path = make_zip(tmp_path)
    dataset = init_dataset(
        {
            "class": "OggZipDataset",
            "path": str(path),
            "audio": {"features": "log_mel_filterbank", "num_feature_filters": 20, "peak_normalization": False},
            "targets": None,
            "use_cache_manager": False,
        }
    )
    dataset.init_seq_order(1)
    assert dataset.num_seqs == 3 and dataset.get_all_tags() == ["rec/0", "rec/1", "rec/2"]
    for i in range(2):  # wav and flac are lossless: compare with the reference on the original samples
        seq = dataset.get_seq(i)
        expected = reference_log_mel(_tone(0.3 + 0.1 * i, 300 + 200 * i, i), 20)
        assert seq["data"].shape == expected.shape == (dataset.get_seq_length(i)["data"], 20)
        np.testing.assert_allclose(seq["data"], expected, atol=2e-3)  # 16-bit PCM quantisation
    ogg = dataset.get_seq(2)["data"]  # lossy: same shape, strongest band near the tone
    assert ogg.shape == (dataset.get_seq_length(2)["data"], 20) and np.isfinite(ogg).all()


@pytest.mark.parametrize("features, dim", [("mfcc", 13), ("log_log_mel_filterbank", 40), ("raw", 1)])
def test_other_features_shapes(tmp_path, features, dim):
    dataset = init_dataset(
        {
            "class": "OggZipDataset",
            "path": str(make_zip(tmp_path, formats=("wav",))),
            "audio": {"features": features, "num_feature_filters": dim, "preemphasis": 0.97, "norm_mean": "per_seq"},
            "targets": None,
            "use_cache_manager": False,
        }
    )
    dataset.init_seq_order(1)
    data = dataset.get_seq(0)["data"]
    assert data.shape == (dataset.get_seq_length(0)["data"], dim) and np.isfinite(data).all()
    np.testing.assert_allclose(data.mean(axis=0), 0.0, atol=1e-4)  # per-sequence mean normalisation


def test_targets_norm_files_segments_and_subsets(tmp_path):
    (tmp_path / "chars").write_text("{'a': 0, 'b': 1, ' ': 2}")
    np.savetxt(tmp_path / "mean.txt", np.full(8, 2.0))
    (tmp_path / "segments").write_text("rec/0\nrec/2\n")
    opts = {
        "class": "OggZipDataset",
        "path": [str(make_zip(tmp_path))],
        "audio": {"features": "log_mel_filterbank", "num_feature_filters": 8, "norm_mean": str(tmp_path / "mean.txt")},
        "targets": {"class": "CharacterTargets", "vocab_file": str(tmp_path / "chars")},
        "segment_file": str(tmp_path / "segments"),
        "use_cache_manager": False,
    }
    dataset = init_dataset(opts)
    dataset.init_seq_order(1)
    assert dataset.get_all_tags() == ["rec/0", "rec/2"]
    assert dataset.get_seq(0)["classes"].tolist() == [0, 1, 2, 1, 0] and dataset.get_data_dim("classes") == 3
    del opts["segment_file"]
    assert init_dataset({**opts, "fixed_random_subset": 2}).get_total_num_seqs() == 2
    filtered = init_dataset({**opts, "epoch_wise_filter": {(1, 1): {"max_mean_len": 0.34}}})
    filtered.init_seq_order(1)
    assert filtered.num_seqs == 1 and filtered.get_seq_tag(0) == "rec/0"  # the shortest only
    filtered.init_seq_order(2)
    assert filtered.num_seqs == 3


def test_bad_archives_are_named(tmp_path):
    def fails(match, **kwargs):
        with pytest.raises(DataError, match=match):
            init_dataset({"class": "OggZipDataset", "audio": {}, "targets": None, "use_cache_manager": False, **kwargs})

    fails("OggZip file not found", path=str(tmp_path / "none.zip"))
    fails("has no metadata file 'nometa.txt'", path=str(make_zip(tmp_path, name="nometa", metadata=False)))
    fails(
        "audio file 'gap/utt1.flac' of sequence 1 is missing",
        path=str(make_zip(tmp_path, name="gap", drop_member="utt1.flac")),
    )
    (tmp_path / "fake.zip").write_text("not a zip")
    fails("fake.zip.*not a readable zip", path=str(tmp_path / "fake.zip"))


def test_archive_reached_under_another_name_reads_its_metadata(tmp_path):
    # Sisyphus' output/ links give the job's out.ogg.zip another name: the archive's one metadata file names it
    link = tmp_path / "my_corpus.ogg.zip"
    link.symlink_to(make_zip(tmp_path, name="out.ogg", formats=("wav", "flac")))
    dataset = init_dataset({"class": "OggZipDataset", "path": str(link), "audio": {}, "use_cache_manager": False})
    dataset.init_seq_order(1)
    assert [dataset.get_seq_tag(i) for i in range(dataset.num_seqs)] == ["rec/0", "rec/1"]
    assert dataset.get_seq(1)["data"].shape[0] > 0
