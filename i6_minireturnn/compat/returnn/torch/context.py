"""``returnn.torch.context``: ``get_run_ctx``, ``RunCtx``, ``Loss``."""

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
