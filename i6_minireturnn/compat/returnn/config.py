"""``returnn.config``: ``Config`` and ``get_global_config``."""

from i6_minireturnn.config import Config, get_global_config, set_global_config  # noqa: F401
