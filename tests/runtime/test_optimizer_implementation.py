"""The optimizer's implementation (fused kernels on a GPU) and a stored state restored without changing it."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from i6_minireturnn.config import Config
from i6_minireturnn.engine.engine import Engine
from i6_minireturnn.engine.optimizer_implementation import default_implementation
from i6_minireturnn.engine.updater import Updater

from .conftest import write_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def _model(device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(device)


def _train(updater: Updater, model: torch.nn.Module, steps: int) -> None:
    generator = torch.Generator().manual_seed(1)
    device = next(model.parameters()).device
    for step in range(steps):
        loss = model(torch.randn(5, 4, generator=generator).to(device)).square().sum()
        updater.step(loss, step)


def _updater(model: torch.nn.Module, optimizer: dict, device: str = "cpu") -> Updater:
    updater = Updater(config=Config({"optimizer": optimizer}), network=model, device=device, initial_learning_rate=0.01)
    updater.create_optimizer()
    return updater


def test_on_the_cpu_the_optimizer_keeps_torchs_default_implementation():
    updater = _updater(_model(), {"class": "adam"})
    assert updater.optimizer.param_groups[0]["fused"] is None
    assert updater.optimizer.param_groups[0]["foreach"] is None


def test_fused_kernels_are_chosen_only_where_the_config_leaves_the_choice_open():
    on_gpu = [torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert default_implementation(torch.optim.Adam, {}, [torch.nn.Parameter(torch.zeros(2))]) == {}  # CPU
    assert default_implementation(torch.optim.Adam, {}, on_gpu) == {}  # not CUDA

    class OwnAdam(torch.optim.Adam):
        pass

    for cls, options in [(OwnAdam, {}), (torch.optim.SGD, {})]:
        assert default_implementation(cls, options, on_gpu) == {}


def test_parameter_groups_given_as_iterators_reach_the_optimizer_whole():
    # Mini-RETURNN's custom updaters return parameters() or groups of generators; choosing the implementation
    # looks at every parameter first, which must not use them up.
    model = _model()

    class OwnGroups(Updater):
        def _get_optimizer_param_groups(self, optim_class, optimizer_opts):
            weights = (p for p in model.parameters() if p.ndim == 2)
            return iter(
                [{"params": weights, "weight_decay": 0.1}, {"params": [p for p in model.parameters() if p.ndim == 1]}]
            )

    class AllParameters(Updater):
        def _get_optimizer_param_groups(self, optim_class, optimizer_opts):
            return model.parameters()

    config = Config({"optimizer": {"class": "adamw"}})
    own = OwnGroups(config=config, network=model, device="cpu")
    own.create_optimizer()
    assert [len(group["params"]) for group in own.optimizer.param_groups] == [2, 2]
    every = AllParameters(config=config, network=model, device="cpu")
    every.create_optimizer()
    assert len(every.optimizer.param_groups[0]["params"]) == 4


def test_a_stored_state_keeps_the_loading_runs_implementation(tmp_path):
    # A state written with fused kernels (here on the CPU), loaded by a run that uses torch's default: the run keeps
    # its implementation, and its next update equals the one the writing optimizer makes.
    writer_model = _model()
    writer = _updater(writer_model, {"class": "adam", "fused": True})
    _train(writer, writer_model, 3)
    writer.save_optimizer(str(tmp_path / "model.003.opt.pt"))

    reader_model = _model()
    reader_model.load_state_dict(writer_model.state_dict())
    reader = _updater(reader_model, {"class": "adam"})
    reader.load_optimizer(str(tmp_path / "model.003.opt.pt"))
    group = reader.optimizer.param_groups[0]
    assert group["fused"] is None and group["foreach"] is None
    assert all(reader.optimizer.state[p]["step"].item() == 3 for p in reader_model.parameters())

    _train(writer, writer_model, 1)
    _train(reader, reader_model, 1)
    for written, read in zip(writer_model.parameters(), reader_model.parameters()):
        torch.testing.assert_close(read, written, rtol=1e-5, atol=1e-6)


def test_a_config_that_chooses_an_implementation_gets_it_after_loading(tmp_path):
    writer_model = _model()
    writer = _updater(writer_model, {"class": "adamw"})
    _train(writer, writer_model, 2)
    writer.save_optimizer(str(tmp_path / "model.002.opt.pt"))
    reader = _updater(_model(), {"class": "adamw", "foreach": False})
    reader.load_optimizer(str(tmp_path / "model.002.opt.pt"))
    assert reader.optimizer.param_groups[0]["foreach"] is False


def _synchronisations(func) -> int:
    """Synchronising CUDA calls that torch reports while `func` runs on this thread (the engine's loader threads
    may be reading the first batches meanwhile: theirs are not counted)."""
    caller = threading.current_thread()
    count = 0

    def record(message, *args, **kwargs):
        nonlocal count
        count += threading.current_thread() is caller and "synchroniz" in str(message)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            func()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return count


@needs_cuda
def test_on_a_gpu_adam_and_adamw_use_fused_kernels_unless_the_config_chooses():
    assert _updater(_model("cuda"), {"class": "adam"}, "cuda").optimizer.param_groups[0]["fused"] is True
    assert _updater(_model("cuda"), {"class": "adamw"}, "cuda").optimizer.param_groups[0]["fused"] is True
    chosen = _updater(_model("cuda"), {"class": "adam", "foreach": True}, "cuda").optimizer.param_groups[0]
    assert chosen["foreach"] is True and not chosen["fused"]
    assert not _updater(_model("cuda"), {"class": "sgd"}, "cuda").optimizer.param_groups[0].get("fused")


@needs_cuda
@pytest.mark.parametrize(
    "first, resumed, fused",
    [
        ({"class": "adam", "foreach": True}, {"class": "adam", "foreach": True}, False),
        ({"class": "adam"}, {"class": "adam", "foreach": True}, False),
        ({"class": "adam", "foreach": True}, {"class": "adam"}, True),
    ],
)
def test_a_resumed_gpu_training_updates_without_synchronising(tmp_path, run_cli, first, resumed, fused):
    # A step counter left on the GPU under the foreach update is read back for every parameter at every update.
    config = write_config(tmp_path, f'device = "cuda"\noptimizer = {first!r}\n')
    code, _, err = run_cli(config, "++num_epochs", "1")
    assert code == 0, err
    continued = Config()
    continued.load_file(str(config))
    continued.set("num_epochs", 2)
    continued.set("optimizer", resumed)
    engine = Engine(continued)
    engine.init_train()
    try:
        optimizer = engine._updater.optimizer
        assert bool(optimizer.param_groups[0]["fused"]) is fused  # the resumed run's own choice, not the stored one
        params = optimizer.param_groups[0]["params"]
        for param in params:
            step = optimizer.state[param]["step"]
            assert step.item() == 2  # the first epoch's updates
            assert step.device.type == ("cuda" if fused else "cpu")
            param.grad = torch.ones_like(param)
        optimizer.step()  # (the first update after loading may synchronise once)
        # a counter on the GPU: 2 per parameter at every update; torch's foreach update may synchronise once itself
        assert _synchronisations(optimizer.step) <= (0 if fused else 1) < 2 * len(params)
    finally:
        engine.close()
