"""``returnn.datasets.util.vocabulary``: RETURNN's vocabulary classes, as decoder and model files import them."""

from i6_minireturnn.data.vocabulary import (  # noqa: F401
    BytePairEncoding,
    CharacterTargets,
    SentencePieces,
    Utf8ByteTargets,
    Vocabulary,
)

__all__ = ["Vocabulary", "BytePairEncoding", "SentencePieces", "CharacterTargets", "Utf8ByteTargets"]
