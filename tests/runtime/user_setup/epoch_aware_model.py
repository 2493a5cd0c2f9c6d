"""A model that reads the epoch inside forward, as SpecAugment-style code does to start augmenting late."""

import json

import torch
from torch import nn

from returnn.torch.context import get_run_ctx

SEEN_FILE = "run_ctx_seen.jsonl"


def _record(where: str) -> None:
    ctx = get_run_ctx()
    entry = {"where": where, "stage": ctx.stage, "epoch": ctx.epoch, "step": ctx.global_step, "device": ctx.device}
    entry["engine"] = type(ctx.engine).__name__
    with open(SEEN_FILE, "a") as f:
        f.write(json.dumps(entry) + "\n")


class Model(nn.Module):
    def __init__(self, augment_from_epoch: int = 2):
        super().__init__()
        _record("get_model")
        self.augment_from_epoch = augment_from_epoch
        self.linear = nn.Linear(2, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _record("forward")
        run_ctx = get_run_ctx()
        if self.training and run_ctx.epoch >= self.augment_from_epoch:
            features = features * 0.0  # "augmentation" strong enough to see in the loss
        return self.linear(features.float()).permute(0, 2, 1)


def get_model(epoch, step, **kwargs):
    return Model()


def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"])
    loss = nn.functional.cross_entropy(logits, data["classes"].long(), reduction="sum")
    run_ctx.mark_as_loss(name="ce", loss=loss, inv_norm_factor=data["classes:size1"].sum())
