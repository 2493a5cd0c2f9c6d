"""Text datasets: LmDataset (one sentence per line) and TranslationDataset (parallel source/target files)."""

from __future__ import annotations

import gzip
import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..cache_manager import cached_path
from ..errors import ConfigError, DataError
from .dataset import DataKey, Dataset
from .vocabulary import Vocabulary, create_vocab


def read_lines(filename: str) -> List[str]:
    """Lines of a plain or gzipped text file (newline stripped)."""
    if not os.path.isfile(filename):
        raise DataError(f"Text file not found: {filename!r}")
    opener = gzip.open if filename.endswith(".gz") else open
    try:
        with opener(filename, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read text file {filename!r}: {exc}") from None


class _TokenizedText(Dataset):
    """Common part: lines tokenized on first use (and cached), so lengths are exact for batch planning."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._cache: Dict[int, Dict[str, np.ndarray]] = {}

    def _tokenize(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def _load_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        if corpus_idx not in self._cache:
            self._cache[corpus_idx] = self._tokenize(corpus_idx)
        return self._cache[corpus_idx]

    def _corpus_seq_lengths(self, corpus_idx: int) -> Dict[str, int]:
        return {k: len(v) for k, v in self._load_seq(corpus_idx).items()}


class LmDataset(_TokenizedText):
    """RETURNN's LmDataset: ``corpus_file`` (one or several, plain or .gz), tokens by ``orth_vocab`` (vocabulary
    options) or ``orth_symbols_file`` (one symbol per line; characters, or words with ``word_based``).
    """

    def __init__(
        self,
        *,
        corpus_file: Union[str, Sequence[str]],
        orth_vocab: Optional[Dict[str, Any]] = None,
        orth_symbols_file: Optional[str] = None,
        word_based: bool = False,
        seq_end_symbol: Optional[str] = "[END]",
        unknown_symbol: Optional[str] = "[UNKNOWN]",
        use_cache_manager: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        files = [corpus_file] if isinstance(corpus_file, str) else list(corpus_file)
        self.lines: List[str] = []
        for filename in files:
            self.lines.extend(line for line in read_lines(cached_path(filename, enabled=use_cache_manager)))
        if (orth_vocab is None) == (orth_symbols_file is None):
            raise ConfigError(f"LmDataset {self.name!r}: give exactly one of orth_vocab and orth_symbols_file")
        self.vocab: Optional[Vocabulary] = create_vocab(orth_vocab) if orth_vocab is not None else None
        self.symbols: Dict[str, int] = {}
        if orth_symbols_file is not None:
            symbols = [line.strip() for line in read_lines(orth_symbols_file) if line.strip()]
            self.symbols = {s: i for i, s in enumerate(symbols)}
        self.word_based = word_based
        self.seq_end_symbol = seq_end_symbol if seq_end_symbol in self.symbols else None
        self.unknown_symbol = unknown_symbol if unknown_symbol in self.symbols else None
        dim = self.vocab.num_labels if self.vocab else len(self.symbols)
        self.data_keys = {"data": DataKey("data", dim, "int32", sparse=True)}

    def _corpus_size(self) -> int:
        return len(self.lines)

    def _corpus_seq_tag(self, corpus_idx: int) -> str:
        return f"line-{corpus_idx}"

    def _tokenize(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        line = self.lines[corpus_idx]
        if self.vocab is not None:
            return {"data": np.array(self.vocab.get_seq(line), dtype="int32")}
        tokens = line.split() if self.word_based else list(line)
        ids = []
        for token in tokens:
            if token in self.symbols:
                ids.append(self.symbols[token])
            elif self.unknown_symbol is not None:
                ids.append(self.symbols[self.unknown_symbol])
            else:
                raise DataError(f"LmDataset {self.name!r}, line {corpus_idx + 1}: unknown symbol {token!r}")
        if self.seq_end_symbol is not None:
            ids.append(self.symbols[self.seq_end_symbol])
        return {"data": np.array(ids, dtype="int32")}


class TranslationDataset(_TokenizedText):
    """RETURNN's TranslationDataset: ``{path}/source.{file_postfix}`` and ``target.{file_postfix}`` (plain or .gz)
    with vocab files ``source.vocab.pkl`` / ``target.vocab.pkl``; keys ``data`` (source) and ``classes`` (target).
    """

    def __init__(
        self,
        *,
        path: str,
        file_postfix: str,
        source_postfix: str = "",
        target_postfix: str = "",
        unknown_label: Union[str, Dict[str, Optional[str]], None] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        unknown = (
            unknown_label if isinstance(unknown_label, dict) else {"data": unknown_label, "classes": unknown_label}
        )
        self.postfix = {"data": source_postfix, "classes": target_postfix}
        self.text: Dict[str, List[str]] = {}
        self.vocabs: Dict[str, Vocabulary] = {}
        for key, side in (("data", "source"), ("classes", "target")):
            base = os.path.join(path, f"{side}.{file_postfix}")
            self.text[key] = read_lines(
                base if os.path.exists(base) or not os.path.exists(base + ".gz") else base + ".gz"
            )
            self.vocabs[key] = Vocabulary(os.path.join(path, f"{side}.vocab.pkl"), unknown_label=unknown.get(key))
            self.data_keys[key] = DataKey(key, self.vocabs[key].num_labels, "int32", sparse=True)
        if len(self.text["data"]) != len(self.text["classes"]):
            raise DataError(
                f"TranslationDataset {self.name!r}: {len(self.text['data'])} source lines but "
                f"{len(self.text['classes'])} target lines in {path!r}"
            )

    def _corpus_size(self) -> int:
        return len(self.text["data"])

    def _corpus_seq_tag(self, corpus_idx: int) -> str:
        return f"line-{corpus_idx}"

    def _tokenize(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        result = {}
        for key, vocab in self.vocabs.items():
            line = self.text[key][corpus_idx] + self.postfix[key]
            try:
                result[key] = np.array(vocab.get_seq(line), dtype="int32")
            except KeyError as exc:
                raise DataError(f"TranslationDataset {self.name!r}, line {corpus_idx + 1} ({key}): {exc}") from None
        return result
