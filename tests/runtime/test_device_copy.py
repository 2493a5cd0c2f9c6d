"""Loader threads copy the batches to the loop's device (``copy_to_device``): the loop gets them there, with the
contents of the host batches, and makes no copies itself; the engine's training and evaluation on a GPU take such
batches. On machines without GPU the "meta" device stands in for one (shapes and dtypes, no values)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

from i6_minireturnn.data.batching import BatchLimits
from i6_minireturnn.data.generating import SyntheticSpeechDataset
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions

from .conftest import write_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


class _CopiesInThisThread(TorchFunctionMode):
    """Counts the ``Tensor.to`` calls made in the thread that entered it (torch's function modes are per thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            self.calls += 1
        return func(*args, **(kwargs or {}))


class _Streamed(SyntheticSpeechDataset):
    has_cheap_lengths = False  # batched as the sequences come


def _dataset(streamed: bool) -> SyntheticSpeechDataset:
    if streamed:  # sorting by length needs the lengths up front
        return _Streamed(num_seqs=30, seq_ordering="random")
    return SyntheticSpeechDataset(num_seqs=30, seq_ordering="laplace:.10")


def _batches(options: PipelineOptions, *, streamed: bool = False, epoch: int = 1):
    dataset = _dataset(streamed)
    with _CopiesInThisThread() as copies:
        batches = list(EpochBatches(dataset, epoch, options))
    return batches, copies.calls


@pytest.mark.parametrize("workers,streamed", [(1, False), (2, False), (1, True)], ids=["1", "2", "streamed"])
def test_loader_threads_copy_the_batches_to_the_device(workers, streamed):
    host_options = PipelineOptions(limits=BatchLimits(60, 8), num_workers=workers)
    host, _ = _batches(host_options, streamed=streamed)
    copied, loop_copies = _batches(dataclasses.replace(host_options, copy_to_device="meta"), streamed=streamed)
    assert loop_copies == 0  # the loader threads made them
    assert len(copied) == len(host) >= 4
    for on_device, on_host in zip(copied, host):
        assert list(on_device) == list(on_host) and type(on_device) is type(on_host)
        for key, value in on_host.items():
            if isinstance(value, torch.Tensor):
                assert on_device[key].device.type == "meta", key
                assert on_device[key].shape == value.shape and on_device[key].dtype == value.dtype, key
            else:
                assert on_device[key] == value, key


def test_the_engine_loops_on_a_gpu_have_their_batches_copied_there():
    options = PipelineOptions(limits=BatchLimits(60, 8))
    assert options.for_loop_on("cuda:1").copy_to_device == "cuda:1"
    assert options.for_loop_on("cpu").copy_to_device is None
    assert options.copy_to_device is None  # forwarding and custom engines' data loaders keep host batches


def test_without_loader_threads_the_batches_stay_in_host_memory():
    # the loop copies them (the engine's move_data_to_device), as it does for batches from worker processes
    options = PipelineOptions(limits=BatchLimits(60, 8), num_workers=0, copy_to_device="meta")
    batches, _ = _batches(options)
    assert all(batch["data"].device.type == "cpu" for batch in batches)


@needs_cuda
@pytest.mark.parametrize("streamed", [False, True], ids=["planned", "streamed"])
def test_batches_copied_to_the_gpu_equal_the_host_batches(streamed):
    options = PipelineOptions(limits=BatchLimits(60, 8), num_workers=2, pin_memory=True)
    for epoch in (1, 2, 3):
        host, _ = _batches(options, streamed=streamed, epoch=epoch)
        dataset = _dataset(streamed)
        device_options = dataclasses.replace(options, copy_to_device="cuda")
        sums = []
        for batch in EpochBatches(dataset, epoch, device_options):
            # the loop's kernels read each batch while the loaders copy the next ones into memory released before
            assert batch["data"].is_cuda
            sums.append([batch[key].double().sum() for key in ("data", "data:size1", "classes", "classes:size1")])
            torch.cuda._sleep(1_000_000)  # keeps the kernels queued behind the released batch
        for on_device, on_host in zip(sums, host):
            expected = [on_host[key].double().sum() for key in ("data", "data:size1", "classes", "classes:size1")]
            assert [float(s) for s in on_device] == pytest.approx([float(s) for s in expected], rel=1e-12)


@needs_cuda
def test_the_engine_loops_make_no_copies_of_the_batches_on_a_gpu(tmp_path):
    config = write_config(
        tmp_path,
        """
        import torch
        from torch.overrides import TorchFunctionMode
        device = "cuda"
        num_workers_per_gpu = 1

        class HostCopies(TorchFunctionMode):
            calls = 0

            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func is torch.Tensor.to and args[0].is_pinned():  # on a GPU, batches are collated in pinned memory
                    HostCopies.calls += 1
                return func(*args, **(kwargs or {}))

        HostCopies().__enter__()  # in the loop's thread, where the config is read (its own process: it stays)

        def train_step(*, model, data, run_ctx, **kwargs):
            logits = model(data["data"])
            loss = nn.functional.cross_entropy(logits, data["classes"].long(), reduction="sum")
            print(f"step on {data['data'].device.type}, host copies so far {HostCopies.calls}")
            run_ctx.mark_as_loss(name="CE", loss=loss, inv_norm_factor=data["classes:size1"].sum())
        """,
    )
    run = subprocess.run(
        [sys.executable, "-m", "i6_minireturnn", str(config)], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    steps = [line for line in run.stdout.splitlines() if line.startswith("step on")]
    assert len(steps) == 6  # 2 epochs of 2 training steps and 1 dev step
    assert steps == 6 * ["step on cuda, host copies so far 0"]  # the loop copied no batch
