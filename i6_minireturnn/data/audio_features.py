"""Audio features for OggZipDataset, RETURNN's ``audio`` options (``ExtractAudioFeatures``), computed with numpy.

Feature kinds: ``mfcc``, ``log_mel_filterbank``, ``log_log_mel_filterbank``, ``db_mel_filterbank``,
``linear_spectrogram``, ``raw``, or a callable. Values follow librosa's conventions, which RETURNN calls: frames
of ``n_fft = int(window_len * sample_rate)`` samples, hop ``int(step_len * sample_rate)``, periodic Hann window,
centred frames (zero padding of ``n_fft // 2`` at both ends, librosa >= 0.10's default), so an utterance of n
samples gives ``1 + n // hop`` frames (``1 + (n - n_fft) // hop`` with ``center=False``). Mel filters use the
Slaney scale with area normalisation; spectra are power spectra (``|X|**2``).

``with_delta`` appends delta features of orders 1..n as ``librosa.feature.delta`` computes them: a
Savitzky-Golay derivative over 9 frames whose polynomial degree is the order, with polynomial fits at both ends.
``feature_options`` go to the feature function, as in RETURNN; a key that function does not take is a
ConfigError naming it.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import os
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from ..errors import ConfigError, DataError

FEATURES = (
    "mfcc",
    "log_mel_filterbank",
    "log_log_mel_filterbank",
    "db_mel_filterbank",
    "linear_spectrogram",
    "raw",
)
# feature_options each kind takes, with their defaults. RETURNN's log_mel_filterbank and log_log_mel_filterbank
# take none (a TypeError there); fmin/fmax are accepted here as well, with the same meaning as for the others.
FEATURE_OPTIONS: Dict[str, Dict[str, Any]] = {
    "mfcc": {"n_mels": 128, "fmin": 0, "fmax": None, "center": True},
    "log_mel_filterbank": {"fmin": 0, "fmax": None},
    "log_log_mel_filterbank": {"fmin": 0, "fmax": None},
    "db_mel_filterbank": {"fmin": 0, "fmax": None, "min_amp": 1e-10, "center": True},
    "linear_spectrogram": {"center": True},
}
# options RETURNN's ExtractAudioFeatures takes that this runtime does not implement, with the reason
UNSUPPORTED_OPTIONS = {
    "random_permute": "needs librosa's time stretching and pitch shifting; use pre_process for augmentation",
    "raw_ogg_opts": "the 'raw_ogg' features need RETURNN's ParseOggVorbis extension",
    "num_channels": "multi-channel raw features are not implemented; channels are mixed down",
}
UNSUPPORTED_FEATURES = {
    "raw_ogg": "needs RETURNN's ParseOggVorbis extension",
    "f_0": "needs pyworld",
}
_KNOWN_OPTIONS = (
    "features",
    "num_feature_filters",
    "window_len",
    "step_len",
    "with_delta",
    "feature_options",
    "norm_mean",
    "norm_std_dev",
    "peak_normalization",
    "preemphasis",
    "sample_rate",
    "pre_process",
    "post_process",
    "join_frames",
    "random_state",
    *UNSUPPORTED_OPTIONS,
)
_BASE_FEATURE_ARGS = ("audio", "sample_rate", "window_len", "step_len", "num_feature_filters")
LOG_NOISE_FLOOR = 1e-3  # mel energies below it are clipped before the natural log
DELTA_WIDTH = 9  # frames over which librosa.feature.delta fits its polynomial (RETURNN keeps the default)


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
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: Optional[float] = None
) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters between fmin and fmax (Hz), each normalised to unit area."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower = (fft_freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - fft_freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


@functools.lru_cache(maxsize=16)
def _hann(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann window of win_length samples, zero-padded to n_fft around the centre (librosa's pad_center)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    left = (n_fft - win_length) // 2
    return np.pad(window, (left, n_fft - win_length - left)).astype(np.float32)


def frame_signal(audio: np.ndarray, frame_length: int, hop: int, center: bool = True) -> np.ndarray:
    """[frames, frame_length] view of the signal; centred frames pad frame_length // 2 zeros at both ends."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if center:
        audio = np.pad(audio, frame_length // 2)
    num_frames = max(0, 1 + (len(audio) - frame_length) // hop)
    if num_frames == 0:
        return np.zeros((0, frame_length), dtype=np.float32)
    return np.lib.stride_tricks.as_strided(
        audio, shape=(num_frames, frame_length), strides=(audio.strides[0] * hop, audio.strides[0]), writeable=False
    )


def power_spectrogram(
    audio: np.ndarray,
    sample_rate: int,
    window_len: float,
    step_len: float,
    *,
    center: bool = True,
    n_fft: Optional[int] = None,
) -> np.ndarray:
    """[frames, n_fft // 2 + 1] power spectrum of Hann-windowed frames of window_len seconds (float32: ample for
    log features); n_fft defaults to the window length, a larger one zero-pads the window around its centre."""
    win_length = int(window_len * sample_rate)
    n_fft = n_fft or win_length
    frames = frame_signal(audio, n_fft, int(step_len * sample_rate), center)
    spectrum = np.fft.rfft(frames * _hann(win_length, n_fft), axis=1)
    return (spectrum.real**2 + spectrum.imag**2).astype(np.float32)


def _project(frames: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """frames @ weights.T without BLAS: BLAS would start its own thread pool in every loader worker, and these
    products are small, so the workers would mostly fight over cores."""
    return np.einsum("tf,mf->tm", frames, weights.astype(frames.dtype), optimize=False)


def mel_spectrogram(
    audio: np.ndarray,
    sample_rate: int,
    window_len: float,
    step_len: float,
    num_filters: int,
    *,
    fmin: float = 0.0,
    fmax: Optional[float] = None,
    center: bool = True,
) -> np.ndarray:
    """[frames, num_filters] mel power spectrogram (librosa.feature.melspectrogram with RETURNN's arguments)."""
    spec = power_spectrogram(audio, sample_rate, window_len, step_len, center=center)
    n_fft = int(window_len * sample_rate)
    return _project(spec, mel_filterbank(sample_rate, n_fft, num_filters, float(fmin), _opt_float(fmax)))


def log_mel(
    audio: np.ndarray,
    sample_rate: int,
    window_len: float,
    step_len: float,
    num_filters: int,
    *,
    fmin: float = 0.0,
    fmax: Optional[float] = None,
) -> np.ndarray:
    """``log_mel_filterbank``: log(max(1e-3, mel power)), [frames, num_filters]."""
    mel = mel_spectrogram(audio, sample_rate, window_len, step_len, num_filters, fmin=fmin, fmax=fmax)
    return np.log(np.maximum(LOG_NOISE_FLOOR, mel))


def log_log_mel(
    audio: np.ndarray,
    sample_rate: int,
    window_len: float,
    step_len: float,
    num_filters: int,
    *,
    fmin: float = 0.0,
    fmax: Optional[float] = None,
) -> np.ndarray:
    """``log_log_mel_filterbank``: the log-mel values once more in dB as librosa.amplitude_to_db gives them
    (20 log10 of the magnitude, floor 1e-5, at most 80 dB below the utterance's maximum)."""
    magnitude = np.abs(log_mel(audio, sample_rate, window_len, step_len, num_filters, fmin=fmin, fmax=fmax))
    db = 20.0 * np.log10(np.maximum(1e-5, magnitude))
    return np.maximum(db, db.max(initial=-np.inf) - 80.0)


def db_mel(
    audio: np.ndarray,
    sample_rate: int,
    window_len: float,
    step_len: float,
    num_filters: int,
    *,
    fmin: float = 0.0,
    fmax: Optional[float] = None,
    min_amp: float = 1e-10,
    center: bool = True,
) -> np.ndarray:
    """``db_mel_filterbank``: 20 log10(max(min_amp, mel power)), as RETURNN computes it (20, not 10, though the
    mel spectrogram holds powers; no reference level, no top_db clipping)."""
    mel = mel_spectrogram(audio, sample_rate, window_len, step_len, num_filters, fmin=fmin, fmax=fmax, center=center)
    return 20.0 * np.log10(np.maximum(min_amp, mel))


def mfcc(
    audio: np.ndarray,
    sample_rate: int,
    window_len: float,
    step_len: float,
    num_filters: int,
    *,
    n_mels: int = 128,
    fmin: float = 0.0,
    fmax: Optional[float] = None,
    center: bool = True,
) -> np.ndarray:
    """Orthonormal DCT-II of the dB mel spectrum (librosa.power_to_db: floor 1e-10, at most 80 dB below the
    utterance's maximum); coefficient 0 replaced by the frame's RMS energy of the unwindowed samples."""
    mel = mel_spectrogram(audio, sample_rate, window_len, step_len, n_mels, fmin=fmin, fmax=fmax, center=center)
    db = 10.0 * np.log10(np.maximum(1e-10, mel))
    db = np.maximum(db, db.max(initial=-np.inf) - 80.0)
    k = np.arange(num_filters)[:, None]
    n = np.arange(n_mels)[None, :]
    dct = np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels)) * np.sqrt(2.0 / n_mels)
    dct[0] /= np.sqrt(2.0)
    coefficients = _project(db, dct)
    frames = frame_signal(audio, int(window_len * sample_rate), int(step_len * sample_rate), center)
    coefficients[:, 0] = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    return coefficients


def linear_spectrogram(
    audio: np.ndarray,
    sample_rate: int,
    window_len: float,
    step_len: float,
    num_filters: int,
    *,
    center: bool = True,
) -> np.ndarray:
    """Magnitude spectrum with an FFT of 2 * num_filters points (window of window_len seconds), DC bin dropped."""
    if num_filters % 2 or 2 * num_filters < int(window_len * sample_rate):
        raise ConfigError(
            f"audio features 'linear_spectrogram' need an even num_feature_filters of at least half the window "
            f"({int(window_len * sample_rate)} samples), got {num_filters}"
        )
    power = power_spectrogram(audio, sample_rate, window_len, step_len, center=center, n_fft=2 * num_filters)
    return np.sqrt(power[:, 1:])


@functools.lru_cache(maxsize=64)
def _delta_weights(width: int, order: int) -> np.ndarray:
    """[width, width]: row e holds the weights that give the order-th derivative, at sample e of a window of
    `width` samples, of the least-squares polynomial of degree `order` through the window (zero where the window
    is too short for that degree)."""
    if order >= width:
        return np.zeros((width, width))
    weights = np.empty((width, width))
    for e in range(width):
        vandermonde = np.vander(np.arange(width, dtype=np.float64) - e, order + 1, increasing=True)
        weights[e] = math.factorial(order) * np.linalg.pinv(vandermonde)[order]
    return weights


def delta(features: np.ndarray, order: int = 1, width: int = DELTA_WIDTH) -> np.ndarray:
    """[frames, dim] delta features of one order along time, as ``librosa.feature.delta(features, order=order,
    axis=0)``: each frame's window of `width` frames is centred on it where possible and shifted inwards at both
    ends (Savitzky-Golay with polynomial fits at the edges). Sequences shorter than `width` (librosa refuses them)
    use one window over all their frames."""
    num_frames = features.shape[0]
    width = min(width, num_frames)
    if width == 0:
        return np.zeros_like(features, dtype=np.float32)
    starts = np.clip(np.arange(num_frames) - width // 2, 0, num_frames - width)
    windows = np.lib.stride_tricks.sliding_window_view(features.astype(np.float64), width, axis=0)  # [n, dim, w]
    weights = _delta_weights(width, order)[np.arange(num_frames) - starts]  # [frames, width]
    return np.einsum("tdw,tw->td", windows[starts], weights, optimize=False).astype(np.float32)


def _opt_float(value: Optional[float]) -> Optional[float]:
    return None if value is None else float(value)


class AudioFeatureExtractor:
    """RETURNN's ``audio`` options of OggZipDataset (``ExtractAudioFeatures``): features, num_feature_filters,
    window_len, step_len, with_delta, feature_options, norm_mean, norm_std_dev, peak_normalization, preemphasis,
    sample_rate, pre_process, post_process, join_frames, random_state. ``random_permute``, ``raw_ogg_opts`` and
    ``num_channels`` are refused with a ConfigError unless unset, as is any unknown option.

    Per sequence, in RETURNN's order: pre-emphasis, peak normalisation, pre_process, features, deltas, mean and
    standard-deviation normalisation, join_frames, post_process. pre_process, a feature function and a post_process
    that takes a ``random_state`` keyword draw from the utterance's own generator (see :meth:`__call__`).
    """

    def __init__(
        self,
        *,
        features: Union[str, Callable[..., np.ndarray]] = "mfcc",
        num_feature_filters: Optional[int] = None,
        window_len: float = 0.025,
        step_len: float = 0.010,
        with_delta: Union[bool, int] = False,
        feature_options: Optional[Dict[str, Any]] = None,
        norm_mean: Union[str, float, np.ndarray, None] = None,
        norm_std_dev: Union[str, float, np.ndarray, None] = None,
        peak_normalization: bool = True,
        preemphasis: Optional[float] = None,
        sample_rate: Optional[int] = None,
        pre_process: Optional[Callable[..., np.ndarray]] = None,
        post_process: Optional[Callable[..., np.ndarray]] = None,
        join_frames: Optional[int] = None,
        random_state: Optional[np.random.RandomState] = None,
        **unsupported: Any,
    ):
        _check_unsupported(unsupported)
        if isinstance(features, str) and features in UNSUPPORTED_FEATURES:
            raise ConfigError(f"audio features {features!r} are not supported: {UNSUPPORTED_FEATURES[features]}")
        if not callable(features) and features not in FEATURES:
            raise ConfigError(f"audio features {features!r} unknown; valid: {', '.join(FEATURES)} or a function")
        self.features = features
        self.num_feature_filters = int(num_feature_filters or (1 if features == "raw" else 40))
        if features == "raw" and self.num_feature_filters != 1:
            raise ConfigError(f"audio features 'raw' have num_feature_filters 1, got {num_feature_filters}")
        self.window_len, self.step_len = float(window_len), float(step_len)
        if self.window_len <= 0 or self.step_len <= 0:
            raise ConfigError(f"audio window_len and step_len must be positive, got {window_len} and {step_len}")
        self.with_delta = _check_with_delta(with_delta)
        self.feature_options = _check_feature_options(features, feature_options)
        if join_frames is not None and (
            isinstance(join_frames, bool) or int(join_frames) != join_frames or join_frames < 1
        ):
            raise ConfigError(f"audio join_frames must be a positive int or None, got {join_frames!r}")
        self.join_frames = int(join_frames) if join_frames else None
        self.norm_mean = self._load_norm(norm_mean, "norm_mean")
        self.norm_std_dev = self._load_norm(norm_std_dev, "norm_std_dev")
        self.peak_normalization = peak_normalization
        self.preemphasis = preemphasis
        self.sample_rate = sample_rate
        self.pre_process = pre_process
        self.post_process = post_process
        self._post_process_takes_random_state = post_process is not None and _takes_keyword(
            post_process, "random_state"
        )
        if random_state is not None and not isinstance(random_state, np.random.RandomState):
            raise ConfigError(f"audio random_state must be a numpy RandomState, got {type(random_state).__name__}")
        # A dataset hands each utterance its own generator (see __call__); a given random_state seeds those (its
        # state, which is not advanced), so that it changes the numbers but they stay the same for any loaders.
        self.seed_key = _state_key(random_state) if random_state is not None else ()
        # the generator of calls without one (RETURNN's RandomState(1)): its numbers depend on the order of the calls
        self.random_state = random_state if random_state is not None else np.random.RandomState(1)

    @property
    def draws_random_numbers(self) -> bool:
        """Whether an utterance's features may draw from its `random_state` (else a caller need not make one)."""
        return self.pre_process is not None or callable(self.features) or self._post_process_takes_random_state

    @property
    def feature_dim(self) -> int:
        """Dimension of one output frame: the filters, times (1 + delta orders), times join_frames."""
        return self.num_feature_filters * (self.with_delta + 1) * (self.join_frames or 1)

    def num_frames(self, duration: float, sample_rate: Optional[int] = None) -> int:
        """Frames of an utterance of `duration` seconds (for planning batches without decoding)."""
        rate = sample_rate or self.sample_rate or 16000
        samples = int(round(duration * rate))
        if self.features == "raw":
            frames = samples
        elif self.feature_options.get("center", True):
            frames = 1 + samples // int(self.step_len * rate)
        else:
            frame_length = 2 * self.num_feature_filters if self.features == "linear_spectrogram" else None
            frame_length = frame_length or int(self.window_len * rate)
            frames = max(0, 1 + (samples - frame_length) // int(self.step_len * rate))
        return -(-frames // self.join_frames) if self.join_frames else frames

    def __call__(
        self,
        audio: np.ndarray,
        sample_rate: int,
        *,
        where: str = "",
        seq_name: Optional[str] = None,
        random_state: Optional[np.random.RandomState] = None,
    ):
        """[frames, feature_dim] float32 features of one utterance; `where` names it in errors, `seq_name` goes
        to post_process. `random_state`: the utterance's own generator for pre_process, a feature function and a
        post_process that takes it (a dataset passes :meth:`.Dataset.seq_random_state` with :attr:`seed_key`);
        None: the extractor's shared one, whose numbers then depend on which utterances it gave numbers before."""
        random_state = random_state if random_state is not None else self.random_state
        if self.sample_rate and sample_rate != self.sample_rate:
            raise DataError(f"{where}: audio has sample rate {sample_rate}, audio options ask for {self.sample_rate}")
        if not self._exact_in_float32(audio):
            audio = np.asarray(audio, dtype=np.float64)
        if audio.ndim == 2:
            audio = audio.mean(axis=1)  # mix channels
        if self.preemphasis:
            audio = np.append(audio[:1], audio[1:] - self.preemphasis * audio[:-1])
        if self.peak_normalization:
            peak = np.abs(audio).max(initial=0.0)
            if peak > 0:
                audio = audio / peak
        if self.pre_process is not None:
            audio = self.pre_process(audio=audio, sample_rate=sample_rate, random_state=random_state)
            audio = np.asarray(audio, dtype=np.float64)
        data = self._features(audio, sample_rate, where, random_state)
        if self.with_delta:
            data = np.concatenate([data] + [delta(data, order) for order in range(1, self.with_delta + 1)], axis=1)
        data = _normalise(data, self.norm_mean, self.norm_std_dev)
        if self.join_frames:
            data = _join_frames(data, self.join_frames)
        if self.post_process is not None:
            extra = {"random_state": random_state} if self._post_process_takes_random_state else {}
            data = np.asarray(self.post_process(data, seq_name=seq_name, **extra))
            if data.ndim != 2 or data.shape[1] != self.feature_dim:
                raise DataError(
                    f"{where}: audio post_process returned shape {data.shape}, expected (T, {self.feature_dim})"
                )
        return data.astype("float32", copy=False)

    def _exact_in_float32(self, audio: np.ndarray) -> bool:
        """Whether float32 samples give the same features without widening to float64 first: raw samples of one
        channel, at most peak-normalized, untouched by Python functions. (A quotient of two float32 numbers computed
        in float64 and rounded to float32 is the float32 quotient, so the result is the same, bit for bit, with two
        copies of the utterance fewer: a tenth of a loader's time next to decoding Vorbis.)"""
        return (
            audio.dtype == np.float32
            and audio.ndim == 1
            and self.features == "raw"
            and not self.preemphasis
            and self.pre_process is None
            and self.post_process is None
            and not self.with_delta
            and self.norm_mean is None
            and self.norm_std_dev is None
            and not self.join_frames
        )

    def _features(
        self, audio: np.ndarray, sample_rate: int, where: str, random_state: np.random.RandomState
    ) -> np.ndarray:
        """[frames, num_feature_filters] features of the prepared samples."""
        if self.features == "raw":
            return audio[:, None]
        args = (audio, sample_rate, self.window_len, self.step_len, self.num_feature_filters)
        if callable(self.features):
            data = np.asarray(
                self.features(
                    random_state=random_state,
                    **dict(zip(_BASE_FEATURE_ARGS, args)),
                    **self.feature_options,
                )
            )
            if data.ndim != 2 or data.shape[1] != self.num_feature_filters:
                raise DataError(
                    f"{where}: audio features function returned shape {data.shape}, "
                    f"expected (T, {self.num_feature_filters})"
                )
            return data
        function = {
            "mfcc": mfcc,
            "log_mel_filterbank": log_mel,
            "log_log_mel_filterbank": log_log_mel,
            "db_mel_filterbank": db_mel,
            "linear_spectrogram": linear_spectrogram,
        }[self.features]
        fmax = self.feature_options.get("fmax")
        if fmax is not None and fmax > sample_rate / 2:
            raise DataError(f"{where}: audio feature_options fmax={fmax} lies above half the sample rate {sample_rate}")
        return function(*args, **self.feature_options)

    def _load_norm(self, value: Any, name: str) -> Any:
        """norm_mean / norm_std_dev: None, a number, "per_seq", a vector, or a text file of one (numpy.loadtxt)."""
        if value is None or isinstance(value, (int, float)) or (isinstance(value, str) and value == "per_seq"):
            return value
        if isinstance(value, str) or hasattr(value, "get_path"):
            path = value.get_path() if hasattr(value, "get_path") else value
            if not os.path.isfile(path):
                raise DataError(f"audio {name} file not found: {path!r}")
            value = np.loadtxt(path, ndmin=1)
        vector = np.asarray(value, dtype=np.float64).reshape(-1)
        dim = self.num_feature_filters * (self.with_delta + 1)  # applied before join_frames
        if vector.size not in (1, dim):
            raise ConfigError(f"audio {name} has {vector.size} values, the features (with deltas) have {dim}")
        return vector


def _check_unsupported(options: Dict[str, Any]) -> None:
    """ConfigError for options this runtime does not implement (unless unset) and for unknown ones."""
    for key, value in options.items():
        if key in UNSUPPORTED_OPTIONS:
            if value not in (None, False, {}):
                raise ConfigError(f"audio option {key!r} is not supported: {UNSUPPORTED_OPTIONS[key]}")
            continue
        close = difflib.get_close_matches(key, _KNOWN_OPTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"audio option {key!r} unknown{hint}; valid: {', '.join(_KNOWN_OPTIONS)}")


def _takes_keyword(function: Callable[..., Any], name: str) -> bool:
    """Whether `function` accepts the keyword argument `name` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): pass only what RETURNN passes
        return False
    return any(
        p.kind is p.VAR_KEYWORD or (p.name == name and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in params
    )


def _state_key(random_state: np.random.RandomState) -> Tuple[int, ...]:
    """Two seed words from a RandomState's state (without drawing from it): equal states give equal words."""
    _, keys, pos, *_ = random_state.get_state()
    return tuple(int(w) for w in np.random.SeedSequence([int(pos), *keys.tolist()]).generate_state(2))


def _check_with_delta(with_delta: Any) -> int:
    """RETURNN's with_delta: False/True or the highest delta order (int >= 0)."""
    if isinstance(with_delta, bool):
        return int(with_delta)
    if isinstance(with_delta, (int, np.integer)) and with_delta >= 0:
        return int(with_delta)
    raise ConfigError(f"audio with_delta must be a bool or an int >= 0, got {with_delta!r}")


def _check_feature_options(features: Any, options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The feature_options the feature function gets; keys it does not take are a ConfigError naming them."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ConfigError(f"audio feature_options must be a dict or None, got {type(options).__name__}")
    for key in options:
        if key in _BASE_FEATURE_ARGS:
            raise ConfigError(f"audio feature_options key {key!r}: set it in the audio options themselves")
    if callable(features):
        return dict(options)
    if features == "raw":
        return {}  # RETURNN hands no options to raw samples and ignores them
    accepted = FEATURE_OPTIONS[features]
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            takes = ", ".join(accepted)
            raise ConfigError(
                f"audio feature_options key {key!r} is not taken by features {features!r}{hint}; takes: {takes}"
            )
    merged = {**accepted, **options}
    if "fmin" in merged and merged["fmin"] < 0:
        raise ConfigError(f"audio feature_options fmin must be >= 0, got {merged['fmin']}")
    if merged.get("fmax") is not None and merged["fmax"] <= merged.get("fmin", 0):
        raise ConfigError(f"audio feature_options fmax={merged['fmax']} must lie above fmin={merged.get('fmin', 0)}")
    if "min_amp" in merged and not merged["min_amp"] > 0:
        raise ConfigError(f"audio feature_options min_amp must be > 0, got {merged['min_amp']}")
    if "n_mels" in merged and (not isinstance(merged["n_mels"], int) or merged["n_mels"] < 1):
        raise ConfigError(f"audio feature_options n_mels must be a positive int, got {merged['n_mels']!r}")
    return merged


def _normalise(data: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """RETURNN's norm_mean / norm_std_dev; per_seq deviations are floored at 1e-2."""
    if mean is not None:
        data = data - (data.mean(axis=0, keepdims=True) if isinstance(mean, str) else mean)
    if std is not None:
        data = data / (np.maximum(data.std(axis=0, keepdims=True), 1e-2) if isinstance(std, str) else std)
    return data


def _join_frames(data: np.ndarray, join: int) -> np.ndarray:
    """Superframes of `join` consecutive frames; the last one is filled up by repeating the final frame."""
    pad = -data.shape[0] % join
    if data.shape[0] and pad:
        data = np.pad(data, ((0, pad), (0, 0)), mode="edge")
    return data.reshape(-1, data.shape[1] * join)
