"""Label vocabularies: RETURNN's vocab files (a Python dict literal or a pickle of label -> index)."""

from __future__ import annotations

import ast
import os
import pickle
from typing import Dict, List, Optional, Sequence, Union

from ..errors import DataError


def read_vocab_file(filename: str) -> Dict[str, int]:
    """{label: index} from a RETURNN vocab file; a clear error for anything else."""
    if not os.path.isfile(filename):
        raise DataError(f"Vocabulary file not found: {filename!r}")
    with open(filename, "rb") as f:
        raw = f.read()
    try:
        vocab = pickle.loads(raw) if raw[:1] == b"\x80" else ast.literal_eval(raw.decode("utf-8"))
    except (ValueError, SyntaxError, UnicodeDecodeError, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(
            f"Vocabulary file {filename!r} is neither a Python dict literal nor a pickle ({type(exc).__name__}: {exc})"
        ) from None
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
