"""``returnn.torch.context``: ``get_run_ctx``, ``RunCtx``, ``Loss``.

As in Mini-RETURNN, the module attribute ``_run_ctx`` is the current run context: export and test scripts set it
themselves outside the engine (``context._run_ctx = context.RunCtx(stage="forward_step", device="cpu")``) so that
``get_run_ctx()`` inside ``model.forward`` works. Reading or assigning ``_run_ctx`` here reads or sets the
runtime's current context (:func:`i6_minireturnn.engine.run_ctx.set_run_ctx`), so both names always agree.
"""

import sys
import types
from typing import Optional

from i6_minireturnn.engine import run_ctx as _impl
from i6_minireturnn.engine.run_ctx import (  # noqa: F401
    Loss,
    RunCtx,
    get_run_ctx,
    init_forward_step_run_ctx,
    init_load_run_ctx,
    init_train_step_run_ctx,
    reset_run_ctx,
)

__all__ = ["RunCtx", "Loss", "get_run_ctx", "init_train_step_run_ctx", "init_forward_step_run_ctx"]


class _ContextModule(types.ModuleType):
    """This module, with ``_run_ctx`` bound to the runtime's current run context."""

    @property
    def _run_ctx(self) -> Optional[RunCtx]:
        return _impl._current

    @_run_ctx.setter
    def _run_ctx(self, ctx: Optional[RunCtx]) -> None:
        _impl.set_run_ctx(ctx)  # any object, as in Mini-RETURNN (test scripts sometimes set a stand-in)


sys.modules[__name__].__class__ = _ContextModule
