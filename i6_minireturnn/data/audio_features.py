"""Audio features for OggZipDataset: log-mel, log-log-mel, MFCC and raw samples, computed with numpy.

Frames: Hann window of ``window_len`` seconds, hop ``step_len`` seconds, centred (zero padding of half a window at
both ends), so an utterance of n samples gives ``1 + n // hop`` frames. Mel filters use the Slaney scale with
area normalisation (librosa's default), power spectrum with an FFT size of the window length.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional, Union

import numpy as np

from ..errors import ConfigError, DataError

FEATURES = ("mfcc", "log_mel_filterbank", "log_log_mel_filterbank", "raw")
LOG_NOISE_FLOOR = 1e-3  # mel energies below it are clipped before the log


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: Optional[float] = None):
    """[n_mels, n_fft // 2 + 1] triangular filters, each normalised to unit area (Slaney)."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower = (fft_freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - fft_freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def power_spectrogram(audio: np.ndarray, sample_rate: int, window_len: float, step_len: float) -> np.ndarray:
    """[frames, n_fft // 2 + 1] power spectrum of centred, Hann-windowed frames (float32: ample for log features)."""
    n_fft = int(window_len * sample_rate)
    hop = int(step_len * sample_rate)
    padded = np.pad(audio.astype(np.float32), n_fft // 2)
    num_frames = 1 + (len(padded) - n_fft) // hop
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(num_frames, n_fft), strides=(padded.strides[0] * hop, padded.strides[0])
    )
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic Hann
    spectrum = np.fft.rfft(frames * window, axis=1)
    return (spectrum.real**2 + spectrum.imag**2).astype(np.float32)


def log_mel(audio: np.ndarray, sample_rate: int, window_len: float, step_len: float, num_filters: int) -> np.ndarray:
    """log(max(noise floor, mel energies)), [frames, num_filters]."""
    spec = power_spectrogram(audio, sample_rate, window_len, step_len)
    mel = _project(spec, mel_filterbank(sample_rate, int(window_len * sample_rate), num_filters))
    return np.log(np.maximum(LOG_NOISE_FLOOR, mel))


def _project(frames: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """frames @ weights.T without BLAS: BLAS would start its own thread pool in every loader worker, and these
    products are small, so the workers would mostly fight over cores."""
    return np.einsum("tf,mf->tm", frames, weights.astype(frames.dtype), optimize=False)


def mfcc(audio: np.ndarray, sample_rate: int, window_len: float, step_len: float, num_filters: int, n_mels: int = 128):
    """DCT-II (orthonormal) of the dB mel spectrum; coefficient 0 replaced by the frame RMS energy."""
    spec = power_spectrogram(audio, sample_rate, window_len, step_len)
    mel = _project(spec, mel_filterbank(sample_rate, int(window_len * sample_rate), n_mels))
    db = 10.0 * np.log10(np.maximum(1e-10, mel))
    db = np.maximum(db, db.max() - 80.0)
    k = np.arange(num_filters)[:, None]
    n = np.arange(n_mels)[None, :]
    dct = np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels)) * np.sqrt(2.0 / n_mels)
    dct[0] /= np.sqrt(2.0)
    coefficients = _project(db, dct)
    coefficients[:, 0] = np.sqrt(spec.sum(axis=1) * 2 / int(window_len * sample_rate) ** 2)  # RMS via Parseval
    return coefficients


class AudioFeatureExtractor:
    """RETURNN's ``audio`` options: features, num_feature_filters, window_len, step_len, norm, peak_normalization,
    preemphasis, sample_rate, pre_process."""

    def __init__(
        self,
        *,
        features: str = "mfcc",
        num_feature_filters: Optional[int] = None,
        window_len: float = 0.025,
        step_len: float = 0.010,
        norm_mean: Union[str, float, np.ndarray, None] = None,
        norm_std_dev: Union[str, float, np.ndarray, None] = None,
        peak_normalization: bool = True,
        preemphasis: Optional[float] = None,
        sample_rate: Optional[int] = None,
        pre_process: Optional[Callable[..., np.ndarray]] = None,
    ):
        if features not in FEATURES:
            raise ConfigError(f"audio features {features!r} unknown; valid: {', '.join(FEATURES)}")
        self.features = features
        self.num_feature_filters = num_feature_filters or (1 if features == "raw" else 40)
        self.window_len, self.step_len = window_len, step_len
        self.norm_mean = _load_norm(norm_mean, "norm_mean")
        self.norm_std_dev = _load_norm(norm_std_dev, "norm_std_dev")
        self.peak_normalization = peak_normalization
        self.preemphasis = preemphasis
        self.sample_rate = sample_rate
        self.pre_process = pre_process

    def num_frames(self, duration: float, sample_rate: Optional[int] = None) -> int:
        """Frames of an utterance of `duration` seconds (for planning batches without decoding)."""
        rate = sample_rate or self.sample_rate or 16000
        samples = int(round(duration * rate))
        return samples if self.features == "raw" else 1 + samples // int(self.step_len * rate)

    def __call__(self, audio: np.ndarray, sample_rate: int, *, where: str = "") -> np.ndarray:
        if self.sample_rate and sample_rate != self.sample_rate:
            raise DataError(f"{where}: audio has sample rate {sample_rate}, audio options ask for {self.sample_rate}")
        audio = np.asarray(audio, dtype=np.float64)
        if audio.ndim == 2:
            audio = audio.mean(axis=1)  # mix channels
        if self.pre_process is not None:
            audio = np.asarray(self.pre_process(audio, sample_rate=sample_rate), dtype=np.float64)
        if self.preemphasis:
            audio = np.append(audio[:1], audio[1:] - self.preemphasis * audio[:-1])
        if self.peak_normalization:
            peak = np.abs(audio).max(initial=0.0)
            if peak > 0:
                audio = audio / peak
        if self.features == "raw":
            data = audio[:, None]
        elif self.features == "mfcc":
            data = mfcc(audio, sample_rate, self.window_len, self.step_len, self.num_feature_filters)
        else:
            data = log_mel(audio, sample_rate, self.window_len, self.step_len, self.num_feature_filters)
            if self.features == "log_log_mel_filterbank":
                data = np.log(1.0 + data - np.log(LOG_NOISE_FLOOR))  # compresses the log-mel range once more
        data = _normalise(data, self.norm_mean, self.norm_std_dev)
        return data.astype("float32")


def _load_norm(value: Any, name: str) -> Any:
    if value is None or isinstance(value, (int, float)) or (isinstance(value, str) and value == "per_seq"):
        return value
    if isinstance(value, str):
        if not os.path.isfile(value):
            raise DataError(f"audio {name} file not found: {value!r}")
        return np.loadtxt(value, ndmin=1).astype(np.float64)
    return np.asarray(value, dtype=np.float64)


def _normalise(data: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    if mean is not None:
        data = data - (data.mean(axis=0, keepdims=True) if isinstance(mean, str) else mean)
    if std is not None:
        data = data / (data.std(axis=0, keepdims=True) + 1e-10 if isinstance(std, str) else std)
    return data
