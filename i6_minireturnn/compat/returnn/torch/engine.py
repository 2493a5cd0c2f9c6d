"""``returnn.torch.engine``: ``Engine``, to subclass as ``CustomEngine`` in configs (``EngineBase`` is what
``super(Engine, self)`` reaches), and ``TrainCtx`` so that early-2023 files importing it still load."""

from i6_minireturnn.engine.engine import Engine, EngineBase  # noqa: F401


class TrainCtx:
    """Placeholder for the train context of RETURNN mainline's early torch engine (early 2023).

    Files written then import it without using it, so importing works; building one fails with the reason: this
    runtime follows Mini-RETURNN, where step functions get ``run_ctx`` (``returnn.torch.context.RunCtx``).
    """

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            "returnn.torch.engine.TrainCtx belongs to RETURNN mainline's early torch engine and is not provided: "
            "this runtime follows Mini-RETURNN, where train_step(*, model, data, run_ctx, **kwargs) gets run_ctx "
            "(returnn.torch.context.RunCtx) and losses go through run_ctx.mark_as_loss"
        )


__all__ = ["Engine", "EngineBase", "TrainCtx"]
