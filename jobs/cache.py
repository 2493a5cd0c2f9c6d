"""Input files that reach the node through the cache manager when the config runs, not when it is written."""

from __future__ import annotations

from i6_core.returnn.config import CodeWrapper
from sisyphus import tk
from sisyphus.delayed_ops import DelayedBase
from sisyphus.hash import sis_hash_helper


class CachedPath(DelayedBase):
    """Use in a config value (e.g. a dataset's ``files``) instead of the path: the written config calls the
    runtime's cache manager (``cf``, falling back to the original path) on the node. Hashed as the path itself,
    so wrapping a path does not change job hashes of a setup that is moved between clusters."""

    def __init__(self, path: tk.Path):
        super().__init__(path)
        self.path = path

    def get(self) -> CodeWrapper:
        path = self.path.get_path() if isinstance(self.path, tk.Path) else str(self.path)
        return CodeWrapper(
            f'__import__("i6_minireturnn.cache_manager", fromlist=["cached_path"]).cached_path({path!r})'
        )

    def _sis_hash(self) -> bytes:
        return sis_hash_helper(self.path)
