"""``returnn.torch.updater``: ``Updater`` (one per optimizer in custom engines) and ``get_optimizer_class``."""

from i6_minireturnn.engine.updater import Updater, get_optimizer_class  # noqa: F401

__all__ = ["Updater", "get_optimizer_class"]
