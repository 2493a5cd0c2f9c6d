"""``returnn.util``: ``NumbersDict``."""

from i6_minireturnn.compat.numbers_dict import NumbersDict  # noqa: F401
