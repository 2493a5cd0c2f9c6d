"""The demo's train and forward steps, slowed down so that a test finds the training in its second epoch and the
forward job in the middle of its batches, and can kill their workers there."""

import time

from demo_model import forward_step as demo_forward_step
from demo_model import train_step as demo_train_step


def train_step(*, model, data, run_ctx, **kwargs):
    time.sleep(0.3)
    demo_train_step(model=model, data=data, run_ctx=run_ctx, **kwargs)


def forward_step(*, model, data, run_ctx, **kwargs):
    time.sleep(1.5)
    demo_forward_step(model=model, data=data, run_ctx=run_ctx, **kwargs)
