"""``returnn.datasets.util.vocabulary``: ``Vocabulary``."""

from i6_minireturnn.data.vocabulary import Vocabulary  # noqa: F401
