"""Text datasets: LmDataset (one sentence per line, or a Bliss corpus) and TranslationDataset (parallel files)."""

from __future__ import annotations

import ast
import gzip
import json
import os
import pickle
import xml.etree.ElementTree as ElementTree
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ..cache_manager import cached_path
from ..errors import ConfigError, DataError
from ..log import log
from .dataset import DataKey, Dataset
from .vocabulary import Vocabulary, create_vocab, read_literal_file

# A file option as RETURNN configs give it: a path, a list of paths, or a callable returning either
# (i6 setups write ``lambda: cf(path)`` so that the cache manager runs only when the dataset is built).
FileOption = Union[str, os.PathLike, Sequence[Any], Callable[[], Any], None]

_DEFAULT = object()  # marks an option the config did not set


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


def resolve_files(value: FileOption, option: str) -> List[str]:
    """The paths of a file option (callables called, lists flattened); empty for None or ""."""
    if callable(value):
        value = value()
    if value is None or value == "":
        return []
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, (list, tuple)):
        return [path for item in value for path in resolve_files(item, option)]
    raise ConfigError(f"{option} must be a path, a list of paths or a callable returning them, got {value!r}")


def _single_file(value: FileOption, option: str) -> Optional[str]:
    files = resolve_files(value, option)
    if len(files) > 1:
        raise ConfigError(f"{option} takes one file, got {files!r}")
    return files[0] if files else None


def read_corpus(filename: str, *, skip_empty_lines: bool = True) -> List[str]:
    """Orthographies of a line-based text file or a Bliss XML corpus (plain or gzipped), as RETURNN's LmDataset."""
    if not os.path.isfile(filename):
        raise DataError(f"Corpus file not found: {filename!r}")
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(filename, "rb") as f:
        head = f.read(512).lstrip()
    if head.startswith(b"<?xml") or head.startswith(b"<corpus"):
        return _read_bliss_orths(filename, opener)
    orths = []
    with opener(filename, "rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:  # RETURNN falls back to latin-1 for old corpora
                line = raw.decode("latin_1")
            line = line.strip()
            if line or not skip_empty_lines:
                orths.append(line)
    return orths


def _read_bliss_orths(filename: str, opener: Callable) -> List[str]:
    orths = []
    try:
        with opener(filename, "rb") as f:
            for _, elem in ElementTree.iterparse(f, events=("end",)):
                if elem.tag == "segment":
                    orth = elem.find("orth")
                    orths.append(" ".join(((orth.text if orth is not None else None) or "").split()))
                    elem.clear()  # big corpora: keep memory flat
    except ElementTree.ParseError as exc:
        raise DataError(f"Bliss corpus {filename!r}: {exc}") from None
    return orths


def orth_to_symbols(
    orth: str,
    *,
    word_based: bool = False,
    upper_case_special: bool = True,
    square_brackets_for_specials: bool = True,
) -> List[str]:
    """Symbols of an orthography: words, or characters where ``[...]`` is one special symbol (RETURNN's rules)."""
    if word_based:
        words = orth.split()
        if upper_case_special and square_brackets_for_specials:
            words = [w.upper() if w.startswith("[") and w.endswith("]") else w for w in words]
        return words
    symbols: List[str] = []
    depth = 0
    for c in orth:
        if depth:
            depth += {"[": 1, "]": -1}.get(c, 0)
            symbols[-1] += c.upper() if upper_case_special else c
        elif square_brackets_for_specials and c == "[":
            depth = 1
            symbols.append(c)
        else:
            symbols.append(c)
    return symbols


def parse_orthography(
    orth: str,
    *,
    prefix: Sequence[str] = (),
    postfix: Sequence[str] = (),
    remove_chars: str = "(){}",
    collapse_spaces: bool = True,
    final_strip: bool = True,
    **symbol_opts: Any,
) -> List[str]:
    """RETURNN's orthography preprocessing (drop ``remove_chars``, collapse spaces) and then :func:`orth_to_symbols`."""
    for c in remove_chars:
        orth = orth.replace(c, "")
    if collapse_spaces:
        orth = " ".join(orth.split())
    if final_strip:
        orth = orth.strip()
    return list(prefix) + orth_to_symbols(orth, **symbol_opts) + list(postfix)


def read_symbols_map(filename: str) -> Dict[str, int]:
    """{symbol: index} from an ``orth_symbols_map_file``: a pickle, a dict literal, or lines ``symbol index``."""
    if filename.endswith(".pkl"):
        with open(filename, "rb") as f:
            symbols = pickle.load(f)
    else:
        if not os.path.isfile(filename):
            raise DataError(f"orth_symbols_map_file not found: {filename!r}")
        with open(filename, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("{"):
            symbols = read_literal_file(filename, "orth_symbols_map_file")
        else:
            symbols = {}
            for line_no, line in enumerate(text.splitlines(), 1):
                parts = line.rsplit(None, 1)
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise DataError(f"orth_symbols_map_file {filename!r}, line {line_no}: expected 'symbol index'")
                symbols[parts[0]] = int(parts[1])
    if not isinstance(symbols, dict) or not symbols:
        raise DataError(f"orth_symbols_map_file {filename!r} must hold a non-empty map {{symbol: index}}")
    if min(symbols.values()) != 0:
        raise DataError(f"orth_symbols_map_file {filename!r}: indices must start at 0")
    return {str(k): int(v) for k, v in symbols.items()}


def read_replace_map(filename: str, *, word_based: bool) -> Dict[str, List[str]]:
    """{symbol: replacement symbols} from an ``orth_replace_map_file`` (JSON, or a Python dict literal)."""
    if not os.path.isfile(filename):
        raise DataError(f"orth_replace_map_file not found: {filename!r}")
    with open(filename, encoding="utf-8") as f:
        text = f.read()
    try:
        mapping = json.loads(text)
    except ValueError:
        try:  # RETURNN's JSON reader also takes comments; a Python dict literal covers most such files
            mapping = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise DataError(f"orth_replace_map_file {filename!r} is neither JSON nor a Python dict literal") from None
    if not isinstance(mapping, dict):
        raise DataError(f"orth_replace_map_file {filename!r} must hold a dict {{symbol: replacement}}")
    return {
        key: list(value) if isinstance(value, list) else orth_to_symbols(value, word_based=word_based)
        for key, value in mapping.items()
    }


class _TokenizedText(Dataset):
    """Common part: lines tokenized on first use (and cached), so lengths are exact for batch planning."""

    has_cheap_lengths = True  # tokenizing a line costs little, and the result is kept for loading

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._cache: Dict[int, Dict[str, np.ndarray]] = {}

    def _tokenize(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        if corpus_idx not in self._cache:
            self._cache[corpus_idx] = self._tokenize(corpus_idx)
        return self._cache[corpus_idx]

    def corpus_seq_lengths(self, corpus_idx: int) -> Dict[str, int]:
        return {k: len(v) for k, v in self.load_corpus_seq(corpus_idx).items()}


class LmDataset(_TokenizedText):
    """RETURNN's LmDataset: ``corpus_file`` (text lines or Bliss XML, plain or .gz; one, several, or a callable),
    symbols from ``orth_symbols_file`` (one per line), ``orth_symbols_map_file`` (``symbol index`` lines, a dict
    literal or a pickle) or ``orth_vocab`` (vocabulary options); words with ``word_based``, else characters.

    ``add_delayed_seq_data`` adds the key ``"delayed"``: the sequence shifted right by one, starting with
    ``delayed_seq_data_start_symbol`` (an LM's input, with ``"data"`` its target). Symbols not in the map are
    an error, or become ``unknown_symbol`` with ``auto_replace_unknown_symbol``, or drop their line with
    ``error_on_invalid_seq=False``. Sequence tags are ``line-<n>``.
    """

    def __init__(
        self,
        *,
        corpus_file: FileOption,
        skip_empty_lines: bool = True,
        orth_vocab: Optional[Dict[str, Any]] = None,
        orth_symbols_file: FileOption = None,
        orth_symbols_map_file: FileOption = None,
        orth_replace_map_file: FileOption = None,
        word_based: bool = False,
        word_end_symbol: Optional[str] = None,
        seq_end_symbol: Any = _DEFAULT,
        unknown_symbol: Optional[str] = "[UNKNOWN]",
        parse_orth_opts: Optional[Dict[str, Any]] = None,
        auto_replace_unknown_symbol: bool = False,
        log_auto_replace_unknown_symbols: Union[bool, int] = 10,
        log_skipped_seqs: Union[bool, int] = 10,
        error_on_invalid_seq: bool = True,
        add_delayed_seq_data: bool = False,
        delayed_seq_data_start_symbol: Optional[str] = "[START]",
        use_cache_manager: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        files = resolve_files(corpus_file, "corpus_file")
        if not files:
            raise ConfigError(f"LmDataset {self.name!r}: corpus_file is empty")
        self.lines: List[str] = []
        for filename in files:
            orths = read_corpus(cached_path(filename, enabled=use_cache_manager), skip_empty_lines=skip_empty_lines)
            # RETURNN reads "</s>" alone on a line as an empty sentence and leaves it out
            self.lines.extend(orth for orth in orths if orth != "</s>")
        sources = {
            "orth_vocab": orth_vocab,
            "orth_symbols_file": _single_file(orth_symbols_file, "orth_symbols_file"),
            "orth_symbols_map_file": _single_file(orth_symbols_map_file, "orth_symbols_map_file"),
        }
        given = [k for k, v in sources.items() if v is not None]
        if len(given) != 1:
            raise ConfigError(
                f"LmDataset {self.name!r}: give exactly one of orth_vocab, orth_symbols_file and orth_symbols_map_file"
                f" (got {', '.join(given) or 'none'})"
            )
        self.vocab: Optional[Vocabulary] = create_vocab(orth_vocab) if orth_vocab is not None else None
        self.symbols: Dict[str, int] = {}
        if sources["orth_symbols_file"] is not None:
            # no strip: a line holding a single space is the space symbol of a character LM
            lines = read_lines(sources["orth_symbols_file"])
            self.symbols = {s: i for i, s in enumerate(line for line in lines if line)}
        elif sources["orth_symbols_map_file"] is not None:
            self.symbols = read_symbols_map(sources["orth_symbols_map_file"])
        self.word_based = word_based
        self.word_end_symbol = word_end_symbol if not word_based else None
        self.seq_end_symbol = self._check_seq_end_symbol(seq_end_symbol)
        self.unknown_symbol = unknown_symbol
        self.auto_replace_unknown_symbol = auto_replace_unknown_symbol
        if auto_replace_unknown_symbol and self.vocab is None and unknown_symbol not in (None, *self.symbols):
            raise ConfigError(
                f"LmDataset {self.name!r}: auto_replace_unknown_symbol needs unknown_symbol {unknown_symbol!r} "
                "in the symbol map (or unknown_symbol=None to drop unknown symbols)"
            )
        self._log_replaced = log_auto_replace_unknown_symbols
        self._log_skipped = log_skipped_seqs
        self.parse_orth_opts = dict(parse_orth_opts or {})
        self.parse_orth_opts.setdefault("word_based", word_based)
        end = [self.seq_end_symbol] if self.seq_end_symbol is not None else []
        self.parse_orth_opts.setdefault("postfix", ([self.word_end_symbol] if self.word_end_symbol else []) + end)
        self.replace_map: Dict[str, List[str]] = {}
        replace_file = _single_file(orth_replace_map_file, "orth_replace_map_file")
        if replace_file is not None:
            self.replace_map = read_replace_map(replace_file, word_based=word_based)
        if self.word_end_symbol:
            self.replace_map[" "] = [self.word_end_symbol]
        self.delayed_start_id: Optional[int] = None
        if add_delayed_seq_data:
            self.delayed_start_id = self._symbol_id(delayed_seq_data_start_symbol)
            if self.delayed_start_id is None:
                raise ConfigError(
                    f"LmDataset {self.name!r}: delayed_seq_data_start_symbol {delayed_seq_data_start_symbol!r} "
                    "is not in the vocabulary"
                )
        self._line_ids = list(range(len(self.lines)))
        if not error_on_invalid_seq and not auto_replace_unknown_symbol and self.vocab is None:
            # Batches are planned from the corpus up front, so lines RETURNN would skip while reading are dropped
            # here, once (seq tags keep their line numbers).
            self._line_ids = [i for i in self._line_ids if self._invalid_symbol(self._symbols_of(i)) is None]
            if len(self._line_ids) < len(self.lines):
                print(
                    f"LmDataset {self.name!r}: skipping {len(self.lines) - len(self._line_ids)} of {len(self.lines)}"
                    " sequences with symbols not in the symbol map",
                    file=log.v3,
                )
        dim = self.vocab.num_labels if self.vocab else max(self.symbols.values()) + 1
        self.data_keys = {"data": DataKey("data", dim, "int32", sparse=True)}
        if add_delayed_seq_data:
            self.data_keys["delayed"] = DataKey("delayed", dim, "int32", sparse=True)
        self.labels: Dict[str, List[Optional[str]]] = {key: self._labels(dim) for key in self.data_keys}

    def _check_seq_end_symbol(self, seq_end_symbol: Any) -> Optional[str]:
        """RETURNN appends ``[END]`` by default; a symbol map without it just gets no end symbol, while an end
        symbol the config names explicitly must be in the map."""
        if seq_end_symbol is _DEFAULT:
            return "[END]" if self.vocab is None and "[END]" in self.symbols else None
        if seq_end_symbol is not None and self.vocab is None and seq_end_symbol not in self.symbols:
            raise ConfigError(f"LmDataset {self.name!r}: seq_end_symbol {seq_end_symbol!r} is not in the symbol map")
        return seq_end_symbol

    def _symbol_id(self, symbol: Optional[str]) -> Optional[int]:
        if symbol is None:
            return None
        if self.vocab is not None:
            return self.vocab.label_to_id(symbol, default=None)
        return self.symbols.get(symbol)

    def _labels(self, dim: int) -> List[Optional[str]]:
        if self.vocab is not None:
            return list(self.vocab.labels)
        labels: List[Optional[str]] = [None] * dim
        for symbol, index in self.symbols.items():
            labels[index] = symbol
        return labels

    def corpus_size(self) -> int:
        return len(self._line_ids)

    def corpus_seq_tag(self, corpus_idx: int) -> str:
        return f"line-{self._line_ids[corpus_idx]}"

    def _symbols_of(self, line_id: int) -> List[str]:
        """The line's symbols after ``orth_replace_map`` (before unknown-symbol handling)."""
        symbols = parse_orthography(self.lines[line_id], **self.parse_orth_opts)
        if self.replace_map:
            symbols = [r for s in symbols for r in self.replace_map.get(s, [s])]
        if not self.word_based:  # replacements may have produced adjacent spaces: keep one, as RETURNN does
            space = self.word_end_symbol or " "
            symbols = [s for i, s in enumerate(symbols) if not (s == space and i > 0 and symbols[i - 1] == space)]
        return symbols

    def _invalid_symbol(self, symbols: Sequence[str]) -> Optional[str]:
        return next((s for s in symbols if s not in self.symbols), None)

    def _tokenize(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        line_id = self._line_ids[corpus_idx]
        if self.vocab is not None:
            data = np.array(self.vocab.get_seq(self.lines[line_id]), dtype="int32")
        else:
            symbols = self._symbols_of(line_id)
            unknown = self._invalid_symbol(symbols)
            if unknown is not None and self.auto_replace_unknown_symbol:
                self._note_replaced(unknown)
                replacement = [self.unknown_symbol] if self.unknown_symbol is not None else []
                symbols = [r for s in symbols for r in (replacement if s not in self.symbols else [s])]
            elif unknown is not None:
                raise DataError(
                    f"LmDataset {self.name!r}, line-{line_id} {self.lines[line_id][:200]!r}: symbol {unknown!r} is "
                    "not in the symbol map (set auto_replace_unknown_symbol=True to map it to unknown_symbol, or "
                    "error_on_invalid_seq=False to skip such lines)"
                )
            data = np.array([self.symbols[s] for s in symbols], dtype="int32")
        seq = {"data": data}
        if self.delayed_start_id is not None:
            seq["delayed"] = np.concatenate(([self.delayed_start_id], data))[: len(data)].astype("int32")
        return seq

    def _note_replaced(self, symbol: str) -> None:
        """Logs the first ``log_auto_replace_unknown_symbols`` replacements (all for True, none for False)."""
        if self._log_replaced is False or self._log_replaced == 0:
            return
        print(f"LmDataset {self.name!r}: unknown symbol {symbol!r} -> {self.unknown_symbol!r}", file=log.v3)
        if self._log_replaced is not True:
            self._log_replaced -= 1


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

    def corpus_size(self) -> int:
        return len(self.text["data"])

    def corpus_seq_tag(self, corpus_idx: int) -> str:
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
