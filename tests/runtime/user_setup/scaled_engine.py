"""A CustomEngine in the style of i6 setups: overrides run_train_step and rescales the loss."""

from random import random

import torch

from returnn.log import log
from returnn.torch.engine import Engine
from returnn.util import NumbersDict

LOSS_SCALE = 0.0  # zero: the update does nothing, which a test can see in the parameters


class CustomEngine(Engine):
    def run_train_step(self, data, run_ctx, step_idx):
        data = self.move_data_to_device(data)
        sentinel_kw = {"__fwd_compatible_random_arg_%i" % int(random() * 100): None}
        self._train_step_func(model=self._model, data=data, run_ctx=run_ctx, **sentinel_kw)
        losses_dict = run_ctx.losses
        total_loss = run_ctx.total_loss() * LOSS_SCALE
        self._updater.step(total_loss, step_idx)
        sizes = NumbersDict({"data": int(data["data:size1"].max()), "classes": int(data["classes:size1"].max())})
        print("CustomEngine step %i, max sizes %s" % (step_idx, sizes), file=log.v3)
        assert isinstance(total_loss, torch.Tensor)
        return total_loss, losses_dict
