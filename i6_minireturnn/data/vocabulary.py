"""Label vocabularies with RETURNN's classes and signatures: vocab files (a Python dict literal, a pickle of
label -> index, or one label per line), BPE, SentencePiece, characters and UTF-8 bytes.

Model and decoder files use these through ``returnn.datasets.util.vocabulary`` (e.g.
``Vocabulary.create_vocab(vocab_file=..., unknown_label=None)`` in a forward hook), so names, defaults and
return values follow RETURNN's.
"""

from __future__ import annotations

import ast
import os
import pickle
from typing import Any, Callable, Dict, List, Optional, Sequence, Type, Union

from ..errors import ConfigError, DataError

LabelRef = Union[str, int, None]  # RETURNN lets special labels be given by name or by index


def read_literal_file(filename: str, what: str) -> Any:
    """A Python literal (dict, list) or a pickle from a file, as RETURNN stores vocabularies and length tables."""
    if not os.path.isfile(filename):
        raise DataError(f"{what} not found: {filename!r}")
    with open(filename, "rb") as f:
        raw = f.read()
    try:
        return pickle.loads(raw) if raw[:1] == b"\x80" else ast.literal_eval(raw.decode("utf-8"))
    except (ValueError, SyntaxError, UnicodeDecodeError, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(
            f"{what} {filename!r} is neither a Python dict literal nor a pickle ({type(exc).__name__}: {exc})"
        ) from None


def read_vocab_file(filename: str) -> Dict[str, int]:
    """{label: index} from a RETURNN vocab file: a dict literal, a pickle, or one label per line (index = line number).

    A line-based file whose lines hold whitespace is refused: such a file is almost always a
    ``label index`` table given where a vocab file was expected, and reading it as labels would silently
    map every word to unknown.
    """
    if os.path.isfile(filename):
        with open(filename, "rb") as f:
            raw = f.read()
        if raw[:1] not in (b"\x80", b"{"):
            try:
                lines = raw.decode("utf-8").splitlines()
            except UnicodeDecodeError:
                lines = []
            if lines and all(line and not any(c.isspace() for c in line) for line in lines):
                return {label: i for i, label in enumerate(lines)}
            raise DataError(
                f"Vocabulary file {filename!r} is neither a Python dict literal nor a pickle nor one label per line"
            )
    vocab = read_literal_file(filename, "Vocabulary file")
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
        raise DataError(f"Vocabulary file {filename!r} must hold a dict {{label: index}}")
    return vocab


class Vocabulary:
    """Maps labels to indices and back, with RETURNN's unknown / BOS / EOS handling and signatures."""

    @classmethod
    def create_vocab(cls, **opts: Any) -> Vocabulary:
        """A vocabulary from RETURNN-style options, as ``Vocabulary.create_vocab(vocab_file=..., ...)`` in hooks.

        The class is ``class`` (a name) if given, else :class:`BytePairEncoding` for ``bpe_file``,
        :class:`SentencePieces` for ``model_file``, else the class this is called on (RETURNN's rule, so
        ``CharacterTargets.create_vocab(...)`` gives characters).
        """
        opts = dict(opts)
        name = opts.pop("class", None)
        if name is not None:
            klass = _vocab_class(name)
            if not issubclass(klass, cls):
                raise ConfigError(f"Vocabulary class {name!r} is not a {cls.__name__}")
        elif "bpe_file" in opts:
            klass = BytePairEncoding
        elif "model_file" in opts and not issubclass(cls, SentencePieces):
            klass = SentencePieces
        else:
            klass = cls
        try:
            return klass(**opts)
        except TypeError as exc:
            raise ConfigError(f"Vocabulary {klass.__name__}: {exc}") from None

    @classmethod
    def create_vocab_dict_from_labels(cls, labels: Sequence[str]) -> Dict[str, int]:
        """{label: index} for labels by index (the dict a vocab file holds)."""
        vocab = {label: i for i, label in enumerate(labels)}
        if len(vocab) != len(labels):
            raise DataError("Vocabulary labels are not unique")
        return vocab

    @classmethod
    def create_vocab_from_labels(cls, labels: Sequence[str], **kwargs: Any) -> Vocabulary:
        """Bytes, characters or words, guessed from the labels as RETURNN does (no unknown label by default)."""
        kwargs.setdefault("unknown_label", None)
        if len(labels) < 1000 and all(len(label) == 1 for label in labels):
            if all(ord(label) <= 255 and ord(label) == i for i, label in enumerate(labels)):
                return Utf8ByteTargets()
            return CharacterTargets(vocab_file=None, labels=list(labels), **kwargs)
        return Vocabulary(vocab_file=None, labels=list(labels), **kwargs)

    def __init__(
        self,
        vocab_file: Optional[str] = None,
        seq_postfix: Optional[Sequence[int]] = None,
        unknown_label: LabelRef = "UNK",
        bos_label: LabelRef = None,
        eos_label: LabelRef = None,
        pad_label: LabelRef = None,
        control_symbols: Optional[Dict[str, LabelRef]] = None,
        user_defined_symbols: Optional[Dict[str, LabelRef]] = None,
        num_labels: Optional[int] = None,
        labels: Union[Sequence[str], Dict[str, int], Callable[[], Sequence[str]], None] = None,
    ):
        if callable(labels):
            labels = labels()
        if labels is not None:
            vocab = dict(labels) if isinstance(labels, dict) else {label: i for i, label in enumerate(labels)}
        elif vocab_file is not None:
            vocab = read_vocab_file(vocab_file)
        else:
            raise DataError(f"{type(self).__name__} needs vocab_file or labels")
        self.vocab_file = vocab_file
        self._vocab = vocab
        size = max(vocab.values()) + 1 if vocab else 0
        self.num_labels = max(size, num_labels or 0)
        self._labels: List[Optional[str]] = [None] * self.num_labels
        for label, index in vocab.items():
            self._labels[index] = label
        self.seq_postfix = list(seq_postfix or [])
        # Unlike RETURNN, an unknown label that is not in the vocabulary means "no unknown label" rather than an
        # error: the default "UNK" would otherwise fail for every vocabulary spelling it "<unk>".
        self.unknown_label_id = self._optional_id(unknown_label, "unknown_label", strict=False)
        self.unknown_label = self._labels[self.unknown_label_id] if self.unknown_label_id is not None else None
        self.bos_label_id = self._optional_id(bos_label, "bos_label")
        self.eos_label_id = self._optional_id(eos_label, "eos_label")
        self.pad_label_id = self._optional_id(pad_label, "pad_label")
        self.control_symbol_ids = {k: self._optional_id(v, k) for k, v in (control_symbols or {}).items()}
        self.user_defined_symbol_ids = {k: self._optional_id(v, k) for k, v in (user_defined_symbols or {}).items()}

    def _optional_id(self, label: LabelRef, what: str, *, strict: bool = True) -> Optional[int]:
        """Index of a special label given by name or index; None for None (and -1, SentencePiece's "none")."""
        if label is None or label == -1:
            return None
        index = self.to_id(label, default=None)
        if index is None and strict:
            raise DataError(f"{what} {label!r} is not in the vocabulary {self.vocab_file or ''}".rstrip())
        return index

    @property
    def vocab(self) -> Dict[str, int]:
        """{label: index}."""
        return self._vocab

    @property
    def labels(self) -> List[Optional[str]]:
        """Labels by index."""
        return self._labels

    def set_random_seed(self, seed: int) -> None:
        """Per-epoch seed for sampling vocabularies; the deterministic ones here ignore it (as in RETURNN)."""

    def to_id(self, label: LabelRef, default: Union[int, Type[KeyError], None] = KeyError, allow_none: bool = False):
        """Index of a label given by name or by index (checked); None stays None with ``allow_none``."""
        if isinstance(label, str):
            return self.label_to_id(label, default=default)
        if isinstance(label, int) and not isinstance(label, bool):
            if label == -1 and allow_none:
                return None
            if self.is_id_valid(label):
                return label
            if default is KeyError:
                raise KeyError(f"invalid label id {label}")
            return None
        if label is None and allow_none:
            return None
        raise TypeError(f"invalid label type {type(label).__name__}")

    def label_to_id(self, label: str, default: Union[int, Type[KeyError], None] = KeyError) -> Optional[int]:
        """Index of a label; KeyError (or `default`) for labels not in the vocabulary, as in RETURNN."""
        if label in self._vocab:
            return self._vocab[label]
        if default is KeyError:
            raise KeyError(f"label {label!r} not in vocabulary {self.vocab_file or ''}".rstrip())
        return default

    def id_to_label(self, idx: int, default: Union[str, Type[KeyError], None] = KeyError) -> Optional[str]:
        """Label of an index."""
        idx = int(idx)
        if self.is_id_valid(idx) and self._labels[idx] is not None:
            return self._labels[idx]
        if default is KeyError:
            raise KeyError(f"label index {idx} not in vocabulary")
        return default

    def is_id_valid(self, idx: int) -> bool:
        """Whether `idx` is a label index of this vocabulary."""
        return 0 <= int(idx) < self.num_labels

    def get_seq_indices(self, seq: Sequence[str]) -> List[int]:
        """Indices of labels; labels not in the vocabulary give the unknown label, or KeyError without one."""
        if self.unknown_label_id is not None:
            return [self._vocab.get(label, self.unknown_label_id) for label in seq]
        return [self.label_to_id(label) for label in seq]

    def get_seq(self, sentence: str) -> List[int]:
        """Indices of the whitespace-separated labels of `sentence`, plus ``seq_postfix``."""
        return self.get_seq_indices(sentence.split()) + self.seq_postfix

    def get_seq_labels(self, seq: Sequence[int]) -> str:
        """The labels of `seq` (list or numpy array of indices), joined by spaces."""
        return " ".join(self.id_to_label(int(i)) for i in seq)

    def __repr__(self) -> str:
        parts = [repr(self.vocab_file), f"num_labels={self.num_labels}"]
        for what, index in (("unknown_label", self.unknown_label_id), ("bos_label", self.bos_label_id)):
            if index is not None:
                parts.append(f"{what}={self._labels[index]!r}")
        for what, index in (("eos_label", self.eos_label_id), ("pad_label", self.pad_label_id)):
            if index is not None:
                parts.append(f"{what}={self._labels[index]!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class BytePairEncoding(Vocabulary):
    """Subword units from subword-nmt merge codes (``bpe_file``), mapped with a vocab file; ``@@`` continues a word."""

    def __init__(
        self,
        vocab_file: str,
        bpe_file: str,
        seq_postfix: Optional[Sequence[int]] = None,
        unknown_label: LabelRef = "UNK",
        **kwargs: Any,
    ):
        super().__init__(vocab_file, seq_postfix=seq_postfix, unknown_label=unknown_label, **kwargs)
        self.bpe_file = bpe_file
        self._ranks = read_bpe_codes(bpe_file)
        self._cache: Dict[str, List[str]] = {}

    def segment_word(self, word: str) -> List[str]:
        """The subwords of one word (subword-nmt v0.2 rules: lowest-ranked merge first)."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(self._ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            ranked = [(rank, i) for rank, i in pairs if rank is not None]
            if not ranked:
                break
            best = min(ranked)[0]
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(parts) and self._ranks.get((parts[i], parts[i + 1])) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        if parts[-1] == "</w>":
            parts = parts[:-1]
        else:
            parts[-1] = parts[-1][: -len("</w>")]
        subwords = [p + "@@" for p in parts[:-1]] + [parts[-1]]
        self._cache[word] = subwords
        return subwords

    def get_seq(self, sentence: str) -> List[int]:
        """Indices of the BPE subwords of `sentence`, plus ``seq_postfix``."""
        subwords = [s for word in sentence.split() for s in self.segment_word(word)]
        return self.get_seq_indices(subwords) + self.seq_postfix


def read_bpe_codes(filename: str) -> Dict[tuple, int]:
    """{(left, right): rank} from a subword-nmt codes file."""
    if not os.path.isfile(filename):
        raise DataError(f"BPE codes file not found: {filename!r}")
    ranks: Dict[tuple, int] = {}
    with open(filename, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line_no == 1 and line.startswith("#version"):
                continue
            parts = line.rstrip("\n").split(" ")
            if len(parts) != 2:
                raise DataError(f"BPE codes file {filename!r}, line {line_no}: expected 'left right', got {line!r}")
            ranks.setdefault((parts[0], parts[1]), len(ranks))
    return ranks


# SentencePieceProcessor's own options, which RETURNN passes through from the vocabulary options
_SENTENCEPIECE_OPTIONS = (
    "model_proto",
    "out_type",
    "add_bos",
    "add_eos",
    "reverse",
    "emit_unk_piece",
    "enable_sampling",
    "nbest_size",
    "alpha",
    "num_threads",
)


class SentencePieces(Vocabulary):
    """A SentencePiece model (``model_file``), via the ``sentencepiece`` library; special labels come from the model."""

    def __init__(
        self,
        model_file: Optional[str] = None,
        *,
        seq_postfix: Optional[Sequence[int]] = None,
        control_symbols: Optional[Dict[str, LabelRef]] = None,
        user_defined_symbols: Optional[Dict[str, LabelRef]] = None,
        **opts: Any,
    ):
        try:
            import sentencepiece
        except ImportError:
            raise DataError("SentencePieces needs the 'sentencepiece' package (pip install sentencepiece)") from None
        unknown = sorted(set(opts) - set(_SENTENCEPIECE_OPTIONS))
        if unknown:
            raise ConfigError(
                f"SentencePieces got unknown option(s) {unknown}; valid: {', '.join(_SENTENCEPIECE_OPTIONS)}"
            )
        if model_file is not None and not os.path.isfile(model_file):
            raise DataError(f"SentencePiece model not found: {model_file!r}")
        if model_file is None and "model_proto" not in opts:
            raise ConfigError("SentencePieces needs model_file (or model_proto)")
        self.model_file = model_file
        self.processor = sentencepiece.SentencePieceProcessor(model_file=model_file, **opts)
        self.sp = self.processor  # RETURNN's attribute name, used by some decoding hooks
        size = self.processor.get_piece_size()
        super().__init__(
            labels=[self.processor.id_to_piece(i) for i in range(size)],
            seq_postfix=seq_postfix,
            unknown_label=self.processor.unk_id(),
            bos_label=self.processor.bos_id(),
            eos_label=self.processor.eos_id(),
            pad_label=self.processor.pad_id(),
            control_symbols=control_symbols,
            user_defined_symbols=user_defined_symbols,
        )
        self.vocab_file = model_file

    def is_id_valid(self, idx: int) -> bool:
        return 0 <= int(idx) < self.num_labels and not self.processor.is_unused(int(idx))

    def get_seq(self, sentence: str) -> List[int]:
        return list(self.processor.encode(sentence, out_type=int)) + self.seq_postfix

    def get_seq_labels(self, seq: Sequence[int]) -> str:
        return self.processor.decode([int(i) for i in seq])

    def set_random_seed(self, seed: int) -> None:
        """Seeds SentencePiece's sampling (``enable_sampling``); its generator is global, as in RETURNN."""
        import sentencepiece

        sentencepiece.set_random_generator_seed(seed)


class CharacterTargets(Vocabulary):
    """Every character is a label (vocab file or ``labels`` as for :class:`Vocabulary`)."""

    def __init__(
        self,
        vocab_file: Optional[str] = None,
        seq_postfix: Optional[Sequence[int]] = None,
        unknown_label: LabelRef = "@",
        labels: Optional[Sequence[str]] = None,
        **kwargs: Any,
    ):
        super().__init__(vocab_file, seq_postfix=seq_postfix, unknown_label=unknown_label, labels=labels, **kwargs)

    def get_seq(self, sentence: str) -> List[int]:
        return self.get_seq_indices(list(sentence)) + self.seq_postfix

    def get_seq_labels(self, seq: Sequence[int]) -> str:
        return "".join(self.id_to_label(int(i)) for i in seq)


class Utf8ByteTargets(Vocabulary):
    """The UTF-8 bytes of the text, 256 labels."""

    def __init__(self, seq_postfix: Optional[Sequence[int]] = None):
        super().__init__(labels=[chr(i) for i in range(256)], unknown_label=None, seq_postfix=seq_postfix)

    def get_seq(self, sentence: str) -> List[int]:
        return list(sentence.encode("utf-8")) + self.seq_postfix

    def get_seq_labels(self, seq: Sequence[int]) -> str:
        return bytes(int(i) for i in seq).decode("utf-8", errors="replace")


_VOCAB_CLASSES = {
    cls.__name__: cls for cls in (Vocabulary, BytePairEncoding, SentencePieces, CharacterTargets, Utf8ByteTargets)
}


def _vocab_class(name: Union[str, type]) -> type:
    """The class of a ``class`` option (a name, or the class itself)."""
    if isinstance(name, type) and issubclass(name, Vocabulary):
        return name
    if name == "SamplingBytePairEncoding":
        raise ConfigError("Vocabulary class 'SamplingBytePairEncoding' is not supported by this runtime")
    if name not in _VOCAB_CLASSES:
        raise ConfigError(f"Unknown vocabulary class {name!r}; valid: {', '.join(_VOCAB_CLASSES)}")
    return _VOCAB_CLASSES[name]


def create_vocab(opts: Union[str, Dict[str, Any], Vocabulary]) -> Vocabulary:
    """A vocabulary from dataset options: a Vocabulary, a vocab file name, or options for
    :meth:`Vocabulary.create_vocab`."""
    if isinstance(opts, Vocabulary):
        return opts
    if isinstance(opts, str):
        return Vocabulary(opts)
    return Vocabulary.create_vocab(**opts)
