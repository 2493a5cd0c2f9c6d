"""A GAN config in the style of i6's TTS vocoder setups: a ``CustomEngine(Engine)`` that calls Mini-RETURNN's engine
internals (``super(Engine, self).init_train``, ``_create_data_loader``, ``get_epoch_model``, ``_load_model``) and
drives two ``returnn.torch.updater.Updater`` (generator and discriminator, each with its learning rate and its
optimizer state file). A training stopped after epoch 2 and one that fails inside epoch 3, each continued, end
bit-identical (CPU) to the uninterrupted 3-epoch run: both nets and both optimizer states.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict

import torch

from i6_minireturnn import compat
from i6_minireturnn.config import Config
from i6_minireturnn.engine.engine import Engine
from i6_minireturnn.engine.learning_rate_control import read_learning_rate_file
from i6_minireturnn.engine.updater import Updater

from .conftest import assert_equal_nested, write_config

GAN_CONFIG = """
#!rnn.py
import os

import torch
from torch import nn

from returnn.torch.context import RunCtx
from returnn.torch.engine import Engine
from returnn.torch.updater import Updater

torch.set_num_threads(1)
task = "train"
device = "cpu"
log_verbosity = 4
train = {"class": "DummyDataset", "input_dim": 4, "output_dim": 3, "num_seqs": 12, "seq_len": 6}
dev = {"class": "DummyDataset", "input_dim": 4, "output_dim": 3, "num_seqs": 4, "seq_len": 6}
batch_size = 40
max_seqs = 4
num_workers_per_gpu = 0
num_epochs = 3
model = "out/model"
learning_rate_file = "out/learning_rates"
learning_rates = [0.01, 0.008, 0.005]
# One updater per sub-network, as the vocoder setups have it; the discriminator learns at half the rate.
updater = {
    "gen": {"submodel": "generator", "optimizer": {"class": "adam"}, "gradient_clip_norm": 1.0, "lr_scale": 1.0},
    "disc": {"submodel": "discriminator", "optimizer": {"class": "adamw", "weight_decay": 0.01}, "lr_scale": 0.5},
}
fail_in_epoch = 0  # > 0: the training fails in the second step of that epoch (a run killed mid-epoch)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.1), nn.Linear(8, 4))

    def forward(self, noise, cond):
        return self.net(noise + cond)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x).mean(dim=1)  # [B, 1]: one score per sequence


class GanModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.generator = Generator()
        self.discriminator = Discriminator()


def get_model(*, epoch, step, **kwargs):
    return GanModel()


def train_step(*, model, data, run_ctx, **kwargs):
    raise AssertionError("CustomEngine.run_train_step replaces train_step")


class CustomEngine(Engine):
    def __init__(self, config):
        super().__init__(config=config)
        self._updater = {}

    def init_train(self, train_data=None, dev_data=None):
        super(Engine, self).init_train(train_data=train_data, dev_data=dev_data)
        self._train_dataloader = self._create_data_loader(self.train_dataset)
        for dataset_name, dataset in self.eval_datasets.items():
            self._eval_dataloaders[dataset_name] = self._create_data_loader(dataset)
        self._start_epoch, filename = self.get_epoch_model(self.config)
        self._start_epoch = 1 if self._start_epoch is None else self._start_epoch + 1
        self._final_epoch = self.config_get_final_epoch(self.config)
        self._load_model(epoch=self._start_epoch, filename=filename)
        for key, updater_config in self.config.typed_value("updater").items():
            updater = Updater(
                config=updater_config,
                network=getattr(self._model, updater_config["submodel"]),
                device=self._device,
                initial_learning_rate=self.learning_rate,
            )
            updater.create_optimizer()
            self._updater[key] = updater
        if self._start_epoch > 1:
            self._load_optimizer(self._start_epoch)
        self._train_step_func = self.config.typed_value("train_step")

    def init_train_epoch(self):
        self.learning_rate = self.learning_rate_control.get_learning_rate_for_epoch(self.epoch)
        for key, updater in self._updater.items():
            updater.set_learning_rate(self.learning_rate * self.config.typed_value("updater")[key]["lr_scale"])

    def _load_optimizer(self, epoch, filename=None):
        for key, updater in self._updater.items():
            updater.load_optimizer(self.get_epoch_model_filename(epoch=epoch - 1) + f".opt_{key}.pt")

    def _save_optimizer(self):
        for key, updater in self._updater.items():
            updater.save_optimizer(self.get_epoch_model_filename() + f".opt_{key}.pt")
            old = self.get_epoch_model_filename(epoch=self.epoch - 2) + f".opt_{key}.pt"
            if self.epoch > 2 and os.path.isfile(old):
                os.unlink(old)

    def run_train_step(self, data, run_ctx: RunCtx, step_idx):
        if self.epoch == self.config.int("fail_in_epoch", 0) and step_idx == 1:
            raise RuntimeError("simulated crash")
        data = self.move_data_to_device(data)
        real = data["data"].float()  # [B, T, 4]
        fake = self._model.generator(torch.randn_like(real), real)

        d_real, d_fake = self._model.discriminator(real), self._model.discriminator(fake.detach())
        loss_disc = torch.mean((1 - d_real) ** 2) + torch.mean(d_fake**2)
        if step_idx != -1:
            self._updater["disc"].get_optimizer().zero_grad()  # drop the generator step's gradients
            self._updater["disc"].step(loss_disc, step_idx)
        run_ctx.mark_as_loss(name="disc", loss=loss_disc)

        loss_adv = torch.mean((1 - self._model.discriminator(fake)) ** 2)
        loss_recon = torch.mean(torch.abs(fake - real))
        loss_gen = loss_adv + 10.0 * loss_recon
        if step_idx != -1:
            self._updater["gen"].step(loss_gen, step_idx)
        run_ctx.mark_as_loss(name="gen", loss=loss_gen)
        return run_ctx.total_loss(), run_ctx.losses

    def run_eval_step(self, data, run_ctx):
        return self.run_train_step(data=data, run_ctx=run_ctx, step_idx=-1)
"""


def _final_state(out: Path, epoch: int) -> Dict[str, object]:
    """What a continued training must reproduce: parameters, step and both optimizer states of `epoch`."""
    checkpoint = torch.load(out / f"model.{epoch:03d}.pt", weights_only=False)
    return {
        "checkpoint": checkpoint,
        "opt_gen": torch.load(out / f"model.{epoch:03d}.opt_gen.pt", weights_only=False),
        "opt_disc": torch.load(out / f"model.{epoch:03d}.opt_disc.pt", weights_only=False),
    }


def _drop_dev_scores(filename: Path, epoch: int) -> None:
    scores = read_learning_rate_file(str(filename))
    scores[epoch].error = {k: v for k, v in scores[epoch].error.items() if not k.startswith("dev_")}
    filename.write_text("{\n" + "".join(f"{e}: {scores[e]!r},\n" for e in sorted(scores)) + "}\n")


def _epoch_model(folder: Path, num_epochs: int = 3):
    config = Config(
        {
            "task": "train",
            "model": str(folder / "out/model"),
            "learning_rate_file": str(folder / "out/learning_rates"),
            "num_epochs": num_epochs,
        }
    )
    return Engine.get_epoch_model(config), Engine.config_get_final_epoch(config)


def test_gan_custom_engine_resumes_bit_identical(tmp_path, run_cli, monkeypatch):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir()
    parts.mkdir()
    config_whole = write_config(whole, base=GAN_CONFIG)
    config_parts = write_config(parts, base=GAN_CONFIG)

    monkeypatch.chdir(whole)
    code, out, err = run_cli(config_whole)
    assert code == 0, err + out
    assert "Using custom engine CustomEngine" in out

    monkeypatch.chdir(parts)
    code, out, err = run_cli(config_parts, "++num_epochs", "2")  # stopped after epoch 2
    assert code == 0, err + out
    assert _epoch_model(parts) == ((2, str(parts / "out/model.002")), 3)
    _drop_dev_scores(parts / "out/learning_rates", 2)  # as if stopped between storing epoch 2 and evaluating it
    code, out, err = run_cli(config_parts, "++fail_in_epoch", "3")  # dies inside epoch 3: nothing of it is kept
    assert code != 0 and "simulated crash" in err + out
    assert "Epoch 2 was not evaluated on dev; doing that now." in out
    # A model file without its learning_rates entry (a run killed while storing epoch 3) is no epoch to resume from.
    shutil.copy(parts / "out/model.002.pt", parts / "out/model.003.pt")
    assert _epoch_model(parts) == ((2, str(parts / "out/model.002")), 3)
    code, out, err = run_cli(config_parts)
    assert code == 0, err + out
    assert "start epoch 3" in out and "start epoch 2" not in out

    assert _epoch_model(whole) == ((3, str(whole / "out/model.003")), 3)
    assert_equal_nested(_final_state(whole / "out", 3), _final_state(parts / "out", 3), "final state")
    state = _final_state(whole / "out", 3)
    assert state["checkpoint"]["epoch"] == 3 and state["checkpoint"]["step"] == 9  # 12 seqs, 4 per batch, 3 epochs
    lr_gen = state["opt_gen"]["param_groups"][0]["lr"]
    lr_disc = state["opt_disc"]["param_groups"][0]["lr"]
    assert (lr_gen, lr_disc) == (0.005, 0.0025)
    assert state["opt_disc"]["param_groups"][0]["weight_decay"] == 0.01
    for key in ("gen", "disc"):  # the custom engine keeps its two newest optimizer states
        assert not (whole / f"out/model.001.opt_{key}.pt").exists()
    scores = read_learning_rate_file(str(parts / "out/learning_rates"))
    assert sorted(scores) == [1, 2, 3]
    assert all(set(scores[epoch].error) == {"disc", "gen", "dev_loss_disc", "dev_loss_gen"} for epoch in scores)
    # The late evaluation of epoch 2 draws other generator noise than the one right after training; the rest agrees.
    scores_whole = read_learning_rate_file(str(whole / "out/learning_rates"))
    for data in (scores[2], scores_whole[2]):
        data.error = {k: v for k, v in data.error.items() if not k.startswith("dev_")}
    assert_equal_nested(scores, scores_whole, "scores")


def test_get_epoch_model_without_stored_epochs(tmp_path):
    assert _epoch_model(tmp_path, num_epochs=7) == ((None, None), 7)
    checkpoint = tmp_path / "init.pt"
    torch.save({"model": {}, "epoch": 5, "step": 10}, checkpoint)
    config = Config(
        {"task": "train", "model": str(tmp_path / "m"), "import_model_train_epoch1": str(tmp_path / "init")}
    )
    assert Engine.get_epoch_model(config) == (0, str(checkpoint))
    config = Config({"task": "forward", "load": str(checkpoint)})
    assert Engine.get_epoch_model(config) == (None, str(checkpoint))


class _DictConfigUpdater(Updater):
    """An updater subclass as vocoder configs write it: its own __init__ sets only Mini-RETURNN's attributes and reads
    a plain dict; it overrides the parameter groups."""

    def __init__(self, *, config, network, device, initial_learning_rate=1.0):
        self.config = config
        self.learning_rate = initial_learning_rate
        self.network = network
        self._device = device
        self.optimizer = None
        self._grad_scaler = None
        self._grad_clip = self.config.get("gradient_clip", None)
        self._grad_clip_norm = self.config.get("gradient_clip_norm", None)
        self._accum_grad_multiple_step = config.get("accum_grad_multiple_step", 1)

    def create_optimizer(self):
        self.optimizer = self._create_optimizer(self.config.get("optimizer", None))

    def _get_optimizer_param_groups(self, optim_class, optimizer_opts):
        return [{"params": [p for name, p in self.network.named_parameters() if name.endswith("weight")]}]


def test_updater_subclass_in_mini_returnn_style(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    updater = _DictConfigUpdater(
        config={"optimizer": {"class": "sgd", "momentum": 0.9}, "gradient_clip": 0.5, "accum_grad_multiple_step": 2},
        network=net,
        device="cpu",
        initial_learning_rate=0.1,
    )
    updater.create_optimizer()
    assert [p for group in updater.get_optimizer().param_groups for p in group["params"]] == [net.weight]
    bias, weight = net.bias.detach().clone(), net.weight.detach().clone()
    for step_idx in range(2):
        updater.step(net(torch.ones(4, 3)).sum(), step_idx)
    assert torch.equal(net.bias, bias) and not torch.equal(net.weight, weight)  # only the weight is optimised
    updater.set_learning_rate(0.05)
    updater.save_optimizer(str(tmp_path / "opt.pt"))
    fresh = _DictConfigUpdater(config=updater.config, network=net, device="cpu")
    fresh.create_optimizer()
    fresh.load_optimizer(str(tmp_path / "opt.pt"))
    assert_equal_nested(fresh.get_optimizer().state_dict(), updater.get_optimizer().state_dict(), "optimizer")


def test_returnn_torch_util_for_configs():
    """``returnn.torch.util.diagnose_gpu`` (all Mini-RETURNN ships in that package) imports inside the runtime."""
    compat.install()
    try:
        from returnn.torch.util.diagnose_gpu import diagnose_no_gpu  # noqa: PLC0415 - only inside the runtime

        assert isinstance(diagnose_no_gpu(), list)
    finally:
        compat.uninstall()
