"""Label vocabularies: RETURNN's vocab files (a Python dict literal or a pickle of label -> index), BPE,
SentencePiece, characters and UTF-8 bytes."""

from __future__ import annotations

import ast
import os
import pickle
from typing import Any, Dict, List, Optional, Sequence, Union

from ..errors import ConfigError, DataError


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
    """{label: index} from a RETURNN vocab file; a clear error for anything else."""
    vocab = read_literal_file(filename, "Vocabulary file")
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
        raise DataError(f"Vocabulary file {filename!r} must hold a dict {{label: index}}")
    return vocab


class Vocabulary:
    """Maps labels to indices and back, with RETURNN's unknown / BOS / EOS handling and signatures."""

    def __init__(
        self,
        vocab_file: Optional[str] = None,
        *,
        seq_postfix: Optional[Sequence[int]] = None,
        unknown_label: Optional[str] = "UNK",
        bos_label: Optional[str] = None,
        eos_label: Optional[str] = None,
        pad_label: Optional[str] = None,
        num_labels: Optional[int] = None,
        labels: Optional[Union[Sequence[str], Dict[str, int]]] = None,
    ):
        if labels is not None:
            vocab = dict(labels) if isinstance(labels, dict) else {label: i for i, label in enumerate(labels)}
        elif vocab_file is not None:
            vocab = read_vocab_file(vocab_file)
        else:
            raise DataError("Vocabulary needs vocab_file or labels")
        self.vocab_file = vocab_file
        self._vocab = vocab
        size = max(vocab.values()) + 1 if vocab else 0
        self.num_labels = max(size, num_labels or 0)
        self._labels: List[Optional[str]] = [None] * self.num_labels
        for label, index in vocab.items():
            self._labels[index] = label
        self.seq_postfix = list(seq_postfix or [])
        self.unknown_label = unknown_label if unknown_label in vocab else None
        self.unknown_label_id = vocab.get(unknown_label) if unknown_label is not None else None
        self.bos_label_id = self._optional_id(bos_label, "bos_label")
        self.eos_label_id = self._optional_id(eos_label, "eos_label")
        self.pad_label_id = self._optional_id(pad_label, "pad_label")

    def _optional_id(self, label: Optional[str], what: str) -> Optional[int]:
        if label is None:
            return None
        if label not in self._vocab:
            raise DataError(f"{what} {label!r} is not in the vocabulary {self.vocab_file or ''}".rstrip())
        return self._vocab[label]

    @property
    def vocab(self) -> Dict[str, int]:
        """{label: index}."""
        return self._vocab

    @property
    def labels(self) -> List[Optional[str]]:
        """Labels by index."""
        return self._labels

    def label_to_id(self, label: str, default: Union[int, type, None] = KeyError) -> Optional[int]:
        """Index of a label; the unknown label's index (or `default`) for labels not in the vocabulary."""
        if label in self._vocab:
            return self._vocab[label]
        if self.unknown_label_id is not None:
            return self.unknown_label_id
        if default is KeyError:
            raise KeyError(f"label {label!r} not in vocabulary and no unknown label")
        return default

    def id_to_label(self, label_id: int, default: Union[str, type, None] = KeyError) -> Optional[str]:
        """Label of an index."""
        if 0 <= label_id < self.num_labels and self._labels[label_id] is not None:
            return self._labels[label_id]
        if default is KeyError:
            raise KeyError(f"label index {label_id} not in vocabulary")
        return default

    def get_seq(self, sentence: str) -> List[int]:
        """Indices of the whitespace-separated labels of `sentence`, plus ``seq_postfix``."""
        return [self.label_to_id(label) for label in sentence.split()] + self.seq_postfix

    def get_seq_labels(self, seq: Sequence[int]) -> str:
        """The labels of `seq`, joined by spaces."""
        return " ".join(self.id_to_label(int(i)) for i in seq)

    def __repr__(self) -> str:
        return f"Vocabulary({self.vocab_file!r}, num_labels={self.num_labels})"


class BytePairEncoding(Vocabulary):
    """Subword units from subword-nmt merge codes (``bpe_file``), mapped with a vocab file; ``@@`` continues a word."""

    def __init__(self, vocab_file: str, bpe_file: str, *, unknown_label: Optional[str] = "UNK", **kwargs):
        super().__init__(vocab_file, unknown_label=unknown_label, **kwargs)
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
        subwords = [s for word in sentence.split() for s in self.segment_word(word)]
        return [self.label_to_id(s) for s in subwords] + self.seq_postfix


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


class SentencePieces(Vocabulary):
    """A SentencePiece model (``model_file``), via the ``sentencepiece`` library."""

    def __init__(self, model_file: str, *, seq_postfix: Optional[Sequence[int]] = None, **_ignored):
        try:
            import sentencepiece
        except ImportError:
            raise DataError("SentencePieces needs the 'sentencepiece' package (pip install sentencepiece)") from None
        if not os.path.isfile(model_file):
            raise DataError(f"SentencePiece model not found: {model_file!r}")
        self.model_file = model_file
        self.processor = sentencepiece.SentencePieceProcessor(model_file=model_file)
        size = self.processor.get_piece_size()
        super().__init__(
            labels=[self.processor.id_to_piece(i) for i in range(size)],
            unknown_label=self.processor.id_to_piece(self.processor.unk_id()),
            seq_postfix=seq_postfix,
        )

    def get_seq(self, sentence: str) -> List[int]:
        return list(self.processor.encode(sentence, out_type=int)) + self.seq_postfix

    def get_seq_labels(self, seq: Sequence[int]) -> str:
        return self.processor.decode([int(i) for i in seq])


class CharacterTargets(Vocabulary):
    """Every character is a label (vocab file as for :class:`Vocabulary`)."""

    def __init__(self, vocab_file: str, *, unknown_label: Optional[str] = "@", **kwargs):
        super().__init__(vocab_file, unknown_label=unknown_label, **kwargs)

    def get_seq(self, sentence: str) -> List[int]:
        return [self.label_to_id(c) for c in sentence] + self.seq_postfix

    def get_seq_labels(self, seq: Sequence[int]) -> str:
        return "".join(self.id_to_label(int(i)) for i in seq)


class Utf8ByteTargets(Vocabulary):
    """The UTF-8 bytes of the text, 256 labels."""

    def __init__(self, *, seq_postfix: Optional[Sequence[int]] = None, **_ignored):
        super().__init__(labels=[chr(i) for i in range(256)], unknown_label=None, seq_postfix=seq_postfix)

    def get_seq(self, sentence: str) -> List[int]:
        return list(sentence.encode("utf-8")) + self.seq_postfix

    def get_seq_labels(self, seq: Sequence[int]) -> str:
        return bytes(int(i) for i in seq).decode("utf-8", errors="replace")


_VOCAB_CLASSES = {
    cls.__name__: cls for cls in (Vocabulary, BytePairEncoding, SentencePieces, CharacterTargets, Utf8ByteTargets)
}


def create_vocab(opts: Union[str, Dict[str, Any], Vocabulary]) -> Vocabulary:
    """A vocabulary from RETURNN-style options: ``class``, or guessed from ``bpe_file`` / ``model_file``."""
    if isinstance(opts, Vocabulary):
        return opts
    if isinstance(opts, str):
        return Vocabulary(opts)
    opts = dict(opts)
    name = opts.pop("class", None)
    if name is None:
        name = "BytePairEncoding" if "bpe_file" in opts else "SentencePieces" if "model_file" in opts else "Vocabulary"
    if name not in _VOCAB_CLASSES:
        raise ConfigError(f"Unknown vocabulary class {name!r}; valid: {', '.join(_VOCAB_CLASSES)}")
    try:
        return _VOCAB_CLASSES[name](**opts)
    except TypeError as exc:
        raise ConfigError(f"Vocabulary {name}: {exc}") from None
