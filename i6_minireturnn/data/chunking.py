"""Sequence length filters (``min_seq_length`` / ``max_seq_length``) and chunking (``chunking_options``)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import ConfigError, DataError

Span = Dict[str, Tuple[int, int]]  # data key -> (start, end) of one chunk


class LengthFilter:
    """Drops sequences shorter than ``min_seq_length`` or longer than ``max_seq_length``.

    An int applies to every data key, a dict only to the keys it names.
    """

    def __init__(self, min_seq_length: Union[int, Dict[str, int], None], max_seq_length: Union[int, Dict, None]):
        self.min_length = _per_key("min_seq_length", min_seq_length)
        self.max_length = _per_key("max_seq_length", max_seq_length)

    @property
    def active(self) -> bool:
        """Whether any limit is set."""
        return self.min_length is not None or self.max_length is not None

    def keep(self, lengths: Dict[str, int]) -> bool:
        """Whether a sequence with these lengths passes."""
        for key, length in lengths.items():
            if self.min_length is not None and length < _limit(self.min_length, key, 0):
                return False
            if self.max_length is not None and length > _limit(self.max_length, key, float("inf")):
                return False
        return True


def _per_key(name: str, value: Any) -> Union[int, Dict[str, int], None]:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values()):
        return value
    raise ConfigError(f"{name} must be an int or a dict {{data key: int}}, got {value!r}")


def _limit(limit: Union[int, Dict[str, int]], key: str, default: float) -> float:
    return limit if isinstance(limit, int) else limit.get(key, default)


class Chunking:
    """Mini-RETURNN's ``chunking_options``: cuts each sequence into chunks per ``chunk_streams`` entry.

    ``{"chunk_streams": {"data": {"size": 100, "step": 50, "min_chunk_size": 10}, ...}, "random_chunk_start": False}``;
    keys without an entry are kept whole in every chunk. With ``random_chunk_start`` the first chunk starts at a
    random fraction of the step, drawn from (seed, sequence) so that it is reproducible.
    """

    def __init__(self, options: Dict[str, Any]):
        if not isinstance(options, dict) or not options.get("chunk_streams"):
            raise ConfigError(f"chunking_options needs a non-empty 'chunk_streams' dict, got {options!r}")
        unknown = set(options) - {"chunk_streams", "random_chunk_start"}
        if unknown:
            raise ConfigError(f"chunking_options has unknown entries {sorted(unknown)}")
        self.streams: Dict[str, Tuple[int, int, int]] = {}
        for key, entry in options["chunk_streams"].items():
            if not isinstance(entry, dict) or "size" not in entry or "step" not in entry:
                raise ConfigError(f"chunking_options chunk_streams[{key!r}] needs 'size' and 'step', got {entry!r}")
            size, step, min_size = int(entry["size"]), int(entry["step"]), int(entry.get("min_chunk_size") or 0)
            if size < 1 or step < 1:
                raise ConfigError(f"chunking_options chunk_streams[{key!r}]: size and step must be >= 1")
            self.streams[key] = (size, step, min_size)
        self.random_start = bool(options.get("random_chunk_start", False))

    def start_fraction(self, seed: int, corpus_idx: int) -> float:
        """Where in the first step the first chunk starts (0 without ``random_chunk_start``)."""
        if not self.random_start:
            return 0.0
        return float(np.random.RandomState((seed * 1_000_003 + corpus_idx) % 2**32).random_sample())

    def spans(self, lengths: Dict[str, int], fraction: float, *, where: str) -> List[Span]:
        """The chunks of a sequence with these lengths."""
        per_key: Dict[str, List[Tuple[int, int]]] = {}
        for key, (size, step, min_size) in self.streams.items():
            if key not in lengths:
                raise DataError(f"chunking_options names data key {key!r}, which {where} does not have")
            length = lengths[key]
            starts = range(int(fraction * step), length, step)
            per_key[key] = [(s, min(s + size, length)) for s in starts if min(s + size, length) - s >= min_size]
        counts = {key: len(spans) for key, spans in per_key.items()}
        if len(set(counts.values())) > 1:
            raise DataError(f"Chunking gives different numbers of chunks per data key for {where}: {counts}")
        num_chunks = next(iter(counts.values()))
        return [{key: spans[i] for key, spans in per_key.items()} for i in range(num_chunks)]


def chunk_lengths(lengths: Dict[str, int], span: Optional[Span]) -> Dict[str, int]:
    """Lengths of a chunk (unchunked keys keep their length)."""
    if span is None:
        return lengths
    return {key: (span[key][1] - span[key][0]) if key in span else length for key, length in lengths.items()}


def cut(seq: Dict[str, Any], span: Optional[Span]) -> Dict[str, Any]:
    """The chunk of a loaded sequence."""
    if span is None:
        return seq
    return {key: value[span[key][0] : span[key][1]] if key in span else value for key, value in seq.items()}
