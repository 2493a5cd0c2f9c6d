"""RETURNN's audio options beyond the basics: with_delta, feature_options, db_mel_filterbank and the rest of
ExtractAudioFeatures' options, checked against librosa (when installed) and against explicit hand computations."""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
import pytest

from i6_minireturnn.data.audio_features import AudioFeatureExtractor, delta
from i6_minireturnn.errors import ConfigError

RATE = 16000

# the audio dicts i6_experiments' ReturnnAudioFeatureOptions writes for Mini-RETURNN setups (dataclasses.asdict)
I6_LOG_MEL = {
    "features": "log_mel_filterbank",
    "num_feature_filters": 80,
    "window_len": 0.025,
    "step_len": 0.01,
    "with_delta": False,
    "feature_options": {"fmin": 60},
    "sample_rate": None,
    "peak_normalization": True,
    "preemphasis": None,
}
I6_DB_MEL = {
    "features": "db_mel_filterbank",
    "num_feature_filters": 80,
    "window_len": 0.05,
    "step_len": 0.0125,
    "with_delta": False,
    "feature_options": {"fmin": 60, "fmax": 7600, "min_amp": 1e-10, "center": False},
    "sample_rate": 16000,
    "peak_normalization": False,
    "preemphasis": 0.97,
}


def _signal(seconds: float = 0.53, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    noise = np.random.RandomState(seed).standard_normal(len(t)) * 0.02
    return 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t) + noise


def _reference_mel_power(audio, num_mels, n_fft, hop, fmin=0.0, fmax=None, center=True):
    """Mel power spectrogram written out step by step: explicit DFT per frame, Slaney mel triangles."""
    fmax = RATE / 2 if fmax is None else fmax

    def to_mel(f):
        return f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) * 27 / math.log(6.4)

    def to_hz(m):
        return m * (200 / 3) if m < 15 else 1000 * math.exp((m - 15) * math.log(6.4) / 27)

    lo, hi = to_mel(fmin), to_mel(fmax)
    points = [to_hz(lo + (hi - lo) * j / (num_mels + 1)) for j in range(num_mels + 2)]
    bins = [k * RATE / n_fft for k in range(n_fft // 2 + 1)]
    filters = np.zeros((num_mels, len(bins)))
    for m in range(num_mels):
        left, centre, right = points[m], points[m + 1], points[m + 2]
        for k, f in enumerate(bins):
            filters[m, k] = max(0.0, min((f - left) / (centre - left), (right - f) / (right - centre)))
            filters[m, k] *= 2 / (right - left)
    padded = np.concatenate([np.zeros(n_fft // 2), audio, np.zeros(n_fft // 2)]) if center else np.asarray(audio)
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / n_fft) for n in range(n_fft)])
    dft = np.exp(-2j * np.pi * np.arange(n_fft // 2 + 1)[:, None] * np.arange(n_fft)[None, :] / n_fft)
    frames = [padded[s : s + n_fft] for s in range(0, len(padded) - n_fft + 1, hop)]
    return np.array([filters @ np.abs(dft @ (frame * window)) ** 2 for frame in frames])


def _features(options, audio):
    return AudioFeatureExtractor(**options)(audio, RATE)


# ---- feature values --------------------------------------------------------------------------------------------


def test_log_mel_with_fmin_matches_hand_reference():
    audio = _signal()
    ours = _features(
        {
            "features": "log_mel_filterbank",
            "num_feature_filters": 40,
            "peak_normalization": False,
            "feature_options": {"fmin": 60, "fmax": 7000},
        },
        audio,
    )
    expected = np.log(np.maximum(1e-3, _reference_mel_power(audio, 40, 400, 160, fmin=60, fmax=7000)))
    assert ours.shape == expected.shape == (1 + len(audio) // 160, 40)
    np.testing.assert_allclose(ours, expected, atol=2e-4)


@pytest.mark.parametrize("center", [True, False])
def test_db_mel_matches_hand_reference(center):
    audio = _signal()
    options = {**I6_DB_MEL, "preemphasis": None, "feature_options": {**I6_DB_MEL["feature_options"], "center": center}}
    ours = _features(options, audio)
    expected = 20 * np.log10(np.maximum(1e-10, _reference_mel_power(audio, 80, 800, 200, 60, 7600, center)))
    frames = 1 + len(audio) // 200 if center else 1 + (len(audio) - 800) // 200
    assert ours.shape == expected.shape == (frames, 80)
    assert AudioFeatureExtractor(**options).num_frames(len(audio) / RATE) == frames
    np.testing.assert_allclose(ours, expected, atol=2e-3)  # dB of float32 powers


def test_feature_kinds_match_librosa():
    librosa = pytest.importorskip("librosa")
    audio = _signal(0.61, seed=3)

    def mel(**kwargs):
        return librosa.feature.melspectrogram(y=audio, sr=RATE, hop_length=160, n_fft=400, **kwargs)

    db_opts = {"fmin": 60, "fmax": 7600, "min_amp": 1e-10, "center": True}
    db_ours = _features(
        {
            "features": "db_mel_filterbank",
            "num_feature_filters": 80,
            "peak_normalization": False,
            "feature_options": db_opts,
        },
        audio,
    )
    db_ref = 20 * np.log10(np.maximum(1e-10, mel(n_mels=80, fmin=60, fmax=7600, center=True))).T
    np.testing.assert_allclose(db_ours, db_ref, atol=2e-3)

    log_ours = _features(
        {
            "features": "log_mel_filterbank",
            "num_feature_filters": 80,
            "peak_normalization": False,
            "feature_options": {"fmin": 60},
        },
        audio,
    )
    np.testing.assert_allclose(log_ours, np.log(np.maximum(1e-3, mel(n_mels=80, fmin=60))).T, atol=1e-4)

    loglog_ours = _features(
        {"features": "log_log_mel_filterbank", "num_feature_filters": 40, "peak_normalization": False}, audio
    )
    loglog_ref = librosa.amplitude_to_db(np.log(np.maximum(1e-3, mel(n_mels=40)))).T
    np.testing.assert_allclose(loglog_ours, loglog_ref, atol=1e-3)

    mfcc_opts = {"n_mels": 64, "fmin": 20, "fmax": 7800, "center": True}
    mfcc_ours = _features(
        {"features": "mfcc", "num_feature_filters": 13, "peak_normalization": False, "feature_options": mfcc_opts},
        audio,
    )
    mfcc_ref = librosa.feature.mfcc(y=audio, sr=RATE, n_mfcc=13, hop_length=160, n_fft=400, **mfcc_opts)
    mfcc_ref[0] = librosa.feature.rms(y=audio, hop_length=160, frame_length=400)
    np.testing.assert_allclose(mfcc_ours, mfcc_ref.T, atol=1e-3)

    lin_ours = _features(
        {
            "features": "linear_spectrogram",
            "num_feature_filters": 256,
            "peak_normalization": False,
            "feature_options": {"center": False},
        },
        audio,
    )
    lin_ref = np.abs(librosa.stft(audio, n_fft=512, hop_length=160, win_length=400, center=False))[1:].T
    np.testing.assert_allclose(lin_ours, lin_ref, atol=1e-3)

    feats = log_ours
    with_delta = _features(
        {
            "features": "log_mel_filterbank",
            "num_feature_filters": 80,
            "peak_normalization": False,
            "feature_options": {"fmin": 60},
            "with_delta": 2,
        },
        audio,
    )
    for order in (1, 2):
        ref = librosa.feature.delta(feats, order=order, axis=0)
        np.testing.assert_allclose(with_delta[:, 80 * order : 80 * (order + 1)], ref, atol=1e-4)


# ---- deltas ----------------------------------------------------------------------------------------------------


def test_delta_by_hand():
    # interior frames: first-order Savitzky-Golay over 9 frames is sum(k * x[t+k]) / sum(k^2), k = -4..4
    x = np.random.RandomState(1).standard_normal((15, 3))
    d1 = delta(x, 1)
    k = np.arange(-4, 5)
    for t in range(4, 11):
        np.testing.assert_allclose(d1[t], (k[:, None] * x[t - 4 : t + 5]).sum(axis=0) / (k**2).sum(), atol=1e-5)
    # edges: the slope of the least-squares line through the first / last 9 frames (same slope for all 4 frames)
    for t in range(4):
        np.testing.assert_allclose(d1[t], np.polyfit(np.arange(9), x[:9], 1)[0], atol=1e-5)
        np.testing.assert_allclose(d1[14 - t], np.polyfit(np.arange(9), x[6:], 1)[0], atol=1e-5)
    # second order: twice the x^2 coefficient of the least-squares parabola through the window (9 frames)
    d2 = delta(x, 2)
    np.testing.assert_allclose(d2[7], 2 * np.polyfit(k, x[3:12], 2)[0], atol=1e-5)
    np.testing.assert_allclose(d2[0], 2 * np.polyfit(np.arange(9), x[:9], 2)[0], atol=1e-5)
    # a linear ramp has delta = slope everywhere and second delta 0
    ramp = np.outer(np.arange(12.0), [1.0, -3.0])
    np.testing.assert_allclose(delta(ramp, 1), np.tile([1.0, -3.0], (12, 1)), atol=1e-5)
    np.testing.assert_allclose(delta(ramp, 2), 0.0, atol=1e-5)
    # shorter than the window (librosa refuses): one window over all frames
    short = np.array([[0.0], [2.0], [4.0]])
    np.testing.assert_allclose(delta(short, 1), 2.0, atol=1e-6)
    assert delta(short[:1], 1).tolist() == [[0.0]] and delta(short[:0], 1).shape == (0, 1)


@pytest.mark.parametrize("with_delta, dim", [(False, 20), (True, 40), (0, 20), (1, 40), (2, 60), (3, 80)])
def test_with_delta_dims(with_delta, dim):
    extractor = AudioFeatureExtractor(features="log_mel_filterbank", num_feature_filters=20, with_delta=with_delta)
    data = extractor(_signal(0.2), RATE)
    assert extractor.feature_dim == dim and data.shape == (extractor.num_frames(0.2), dim)
    base = AudioFeatureExtractor(features="log_mel_filterbank", num_feature_filters=20)(_signal(0.2), RATE)
    np.testing.assert_array_equal(data[:, :20], base)
    if dim > 20:
        np.testing.assert_allclose(data[:, 20:40], delta(base, 1), atol=1e-6)


def test_join_frames_norm_and_hooks():
    seen = {}

    def pre(*, audio, sample_rate, random_state):
        seen["pre"] = (sample_rate, isinstance(random_state, np.random.RandomState))
        return audio * 0.5

    def post(data, *, seq_name):
        seen["post"] = seq_name
        return data + 1.0

    options = {
        "features": "log_mel_filterbank",
        "num_feature_filters": 10,
        "with_delta": True,
        "join_frames": 3,
        "peak_normalization": False,
        "norm_mean": np.zeros(20),
        "norm_std_dev": 2.0,
        "pre_process": pre,
        "post_process": post,
    }
    extractor = AudioFeatureExtractor(**options)
    data = extractor(_signal(0.1), RATE, seq_name="rec/1")  # 11 frames -> 4 superframes, the last one padded
    assert extractor.feature_dim == 60 and data.shape == (4, 60) == (extractor.num_frames(0.1), 60)
    assert seen == {"pre": (RATE, True), "post": "rec/1"}
    plain = AudioFeatureExtractor(
        features="log_mel_filterbank", num_feature_filters=10, with_delta=True, peak_normalization=False
    )
    expected = plain(_signal(0.1) * 0.5, RATE) / 2.0 + 1.0
    np.testing.assert_allclose(data.reshape(12, 20)[:11], expected, atol=1e-5)
    np.testing.assert_allclose(data.reshape(12, 20)[11], expected[10], atol=1e-5)


def test_callable_features_get_feature_options():
    def energy(*, audio, sample_rate, window_len, step_len, num_feature_filters, random_state, scale):
        hop = int(step_len * sample_rate)
        return np.full((len(audio) // hop, num_feature_filters), scale)

    extractor = AudioFeatureExtractor(features=energy, num_feature_filters=2, feature_options={"scale": 3.0})
    assert extractor(_signal(0.1), RATE).tolist() == [[3.0, 3.0]] * 10


# ---- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, match",
    [
        ({"features": "log_mel_filterbank", "feature_options": {"n_mels": 64}}, "'n_mels' is not taken by features"),
        ({"features": "db_mel_filterbank", "feature_options": {"fmn": 60}}, "'fmn'.*did you mean 'fmin'"),
        ({"features": "mfcc", "feature_options": {"min_amp": 1e-5}}, "'min_amp' is not taken by features 'mfcc'"),
        ({"features": "db_mel_filterbank", "feature_options": {"min_amp": 0}}, "min_amp must be > 0"),
        ({"features": "db_mel_filterbank", "feature_options": {"fmin": 100, "fmax": 50}}, "fmax=50 must lie above"),
        ({"feature_options": {"window_len": 0.05}}, "'window_len': set it in the audio options"),
        ({"feature_options": [60]}, "feature_options must be a dict"),
        ({"with_delta": -1}, "with_delta must be a bool or an int >= 0"),
        ({"with_delta": "yes"}, "with_delta must be a bool"),
        ({"random_permute": {"rnd_zoom_switch": 0.5}}, "'random_permute' is not supported"),
        ({"num_channels": 2}, "'num_channels' is not supported"),
        ({"features": "raw_ogg"}, "'raw_ogg' are not supported"),
        ({"features": "f_0"}, "'f_0' are not supported"),
        ({"features": "fbank"}, "features 'fbank' unknown"),
        ({"peak_normalisation": True}, "'peak_normalisation' unknown.*did you mean 'peak_normalization'"),
        ({"join_frames": 0}, "join_frames must be a positive int"),
        ({"num_feature_filters": 10, "with_delta": 1, "norm_mean": np.zeros(10)}, "norm_mean has 10 values.*20"),
    ],
)
def test_unsupported_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        AudioFeatureExtractor(**options)


def test_unset_unsupported_options_and_raw_feature_options_are_accepted():
    extractor = AudioFeatureExtractor(
        features="raw", random_permute=None, num_channels=None, raw_ogg_opts=None, feature_options={"fmin": 60}
    )
    assert extractor(np.array([0.5, -1.0]), RATE).tolist() == [[0.5], [-1.0]]  # RETURNN ignores them for raw


# ---- OggZipDataset with the i6 helper's audio dicts ------------------------------------------------------------


def _make_zip(folder):
    soundfile = pytest.importorskip("soundfile")
    entries, path = [], folder / "corpus.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i, seconds in enumerate([0.42, 0.3]):
            buffer = io.BytesIO()
            soundfile.write(buffer, _signal(seconds, seed=i).astype("float32"), RATE, format="WAV", subtype="FLOAT")
            archive.writestr(f"corpus/utt{i}.wav", buffer.getvalue())
            entries.append({"file": f"utt{i}.wav", "seq_name": f"rec/{i}", "duration": seconds, "text": "a"})
        archive.writestr("corpus.txt", repr(entries))
    return path


@pytest.mark.parametrize(
    "audio, dim",
    [
        (I6_LOG_MEL, 80),
        (I6_DB_MEL, 80),
        ({**I6_LOG_MEL, "with_delta": True}, 160),
        ({**I6_DB_MEL, "with_delta": 2}, 240),
    ],
)
def test_oggzip_with_i6_helper_audio_dicts(tmp_path, audio, dim):
    from i6_minireturnn.data.registry import init_dataset

    dataset = init_dataset(
        {
            "class": "OggZipDataset",
            "path": str(_make_zip(tmp_path)),
            "audio": dict(audio),
            "targets": None,
            "use_cache_manager": False,
        }
    )
    dataset.init_seq_order(1)
    assert dataset.num_seqs == 2 and dataset.get_data_dim("data") == dim
    extractor = AudioFeatureExtractor(**audio)
    for i, seconds in enumerate([0.42, 0.3]):
        data = dataset.get_seq(i)["data"]
        assert data.shape == (dataset.get_seq_length(i)["data"], dim) and data.dtype == np.float32
        np.testing.assert_allclose(data, extractor(_signal(seconds, seed=i).astype("float32"), RATE), atol=1e-4)


@pytest.mark.parametrize("peak_normalization", [True, False])
def test_raw_float32_samples_give_the_float64_computation_bit_for_bit(peak_normalization):
    """Raw mono samples stay float32 (no widened copies); the result equals RETURNN's float64 computation rounded to
    float32, bit for bit, with and without peak normalization; stereo is mixed in float64 as before."""
    rng = np.random.RandomState(3)
    samples = (rng.standard_normal(16000) * 0.2).astype("float32")
    extractor = AudioFeatureExtractor(features="raw", sample_rate=16000, peak_normalization=peak_normalization)
    wide = samples.astype("float64")
    expected = (wide / np.abs(wide).max() if peak_normalization else wide).astype("float32")[:, None]
    got = extractor(samples, 16000)
    assert got.dtype == np.float32 and got.shape == (16000, 1)
    assert np.array_equal(got.view(np.int32), expected.view(np.int32))
    stereo = np.stack([samples, samples[::-1]], axis=1)
    mixed = stereo.astype("float64").mean(axis=1)
    expected = (mixed / np.abs(mixed).max() if peak_normalization else mixed).astype("float32")[:, None]
    assert np.array_equal(extractor(stereo, 16000), expected)
