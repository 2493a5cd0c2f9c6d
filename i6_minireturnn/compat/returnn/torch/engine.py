"""``returnn.torch.engine``: ``Engine``, to subclass as ``CustomEngine`` in configs (``EngineBase`` is what
``super(Engine, self)`` reaches)."""

from i6_minireturnn.engine.engine import Engine, EngineBase  # noqa: F401

__all__ = ["Engine", "EngineBase"]
