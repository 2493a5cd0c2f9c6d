"""``returnn.torch.engine``: ``Engine``, to subclass as ``CustomEngine`` in configs."""

from i6_minireturnn.engine.engine import Engine  # noqa: F401

__all__ = ["Engine"]
