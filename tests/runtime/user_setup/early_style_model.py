"""A model file in the style of early-2023 hybrid setups and their export scripts: it imports ``TrainCtx``, reads
options through ``get_global_config(return_empty_if_none=True)``, logs ``run_ctx.step``, and its ``export`` sets
``returnn.torch.context._run_ctx`` itself before tracing the model outside the engine."""

import json

import torch
from torch import nn

from returnn.config import get_global_config
from returnn.torch import context
from returnn.torch.context import get_run_ctx
from returnn.torch.engine import Engine, TrainCtx  # noqa: F401 - imported (and unused) as those files do

STEPS_FILE = "steps_seen.jsonl"


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden_dim = get_global_config(return_empty_if_none=True).typed_value("hidden_dim", 4)
        self.layers = nn.Sequential(nn.Linear(2, self.hidden_dim), nn.ReLU(), nn.Linear(self.hidden_dim, 3))

    def forward(self, features):
        run_ctx = get_run_ctx()
        logits = self.layers(features.float())
        if run_ctx.stage == "forward_step":
            return torch.log_softmax(logits, dim=-1)
        return logits.permute(0, 2, 1)


def get_model(epoch, step, **kwargs):
    return Model()


def train_step(*, model, data, run_ctx, **kwargs):
    logits = model(data["data"])
    loss = nn.functional.cross_entropy(logits, data["classes"].long(), reduction="sum")
    run_ctx.mark_as_loss(name="ce", loss=loss, inv_norm_factor=data["classes:size1"].sum())
    with open(STEPS_FILE, "a") as f:
        f.write(json.dumps({"training": model.training, "step": run_ctx.step, "global_step": run_ctx.global_step}))
        f.write("\n")


def export(*, model, model_filename):
    context._run_ctx = context.RunCtx(stage="forward_step", device="cpu")
    dummy = torch.randn(1, 5, 2)
    scripted = torch.jit.trace(model.eval(), example_inputs=(dummy,))
    torch.jit.save(scripted, model_filename)
