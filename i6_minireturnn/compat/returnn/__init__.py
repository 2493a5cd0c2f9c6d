"""``returnn`` inside the i6-minireturnn runtime (Mini-RETURNN's names, this runtime's implementation)."""

from i6_minireturnn import __version__  # noqa: F401
