"""``returnn.config``: ``Config``, ``get_global_config``, ``set_global_config``."""

from typing import Optional

from i6_minireturnn.config import Config, set_global_config  # noqa: F401
from i6_minireturnn.config import get_global_config as _get_global_config


def get_global_config(
    raise_exception: bool = True, auto_create: bool = False, *, return_empty_if_none: bool = False
) -> Optional[Config]:
    """The config of the running process, with RETURNN's keywords.

    :param raise_exception: without a global config, raise (otherwise return None)
    :param auto_create: without a global config, create an empty one, make it the global one and return it
    :param return_empty_if_none: without a global config, return a new empty ``Config`` that does not become the
        global one (RETURNN mainline's keyword: ``get_global_config(return_empty_if_none=True).typed_value(...)``
        then gives the defaults)
    """
    config = _get_global_config(raise_exception=False, auto_create=auto_create)
    if config is not None:
        return config
    if return_empty_if_none:
        return Config()
    if raise_exception:
        raise RuntimeError("No global config set")
    return None


__all__ = ["Config", "get_global_config", "set_global_config"]
