"""The demo's forward step, slowed down so that a test finds the forward job running and can kill it."""

import time

from demo_model import forward_step as demo_forward_step


def forward_step(*, model, data, run_ctx, **kwargs):
    time.sleep(0.4)
    demo_forward_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
