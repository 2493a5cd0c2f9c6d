"""How close the engine's training loop comes to a hand-written PyTorch loop, and how often it syncs.

Reference: a plain loop over the same batches, already collated in memory (no data loading at all), doing
forward, masked cross-entropy, backward and Adam steps. The engine runs the same model and loss from a dataset
through its pipeline (worker process, pinned memory), its run context, loss tracking and updater.
Prints frames/s of both, the ratio, and the host-device synchronisations per training step that
``torch.cuda.set_sync_debug_mode`` reports inside the engine's epoch.

    python benchmarks/engine_overhead.py [--device cuda] [--seqs 1500] [--layers 6]
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Dict, List

import numpy as np
import torch
from torch import nn

from i6_minireturnn.config import Config
from i6_minireturnn.data.dataset import DataKey, Dataset
from i6_minireturnn.data.pipeline import EpochBatches, PipelineOptions
from i6_minireturnn.engine.engine import Engine
from i6_minireturnn.log import log

FEATURES, CLASSES = 80, 40


class RandomFrames(Dataset):
    """Framewise classification data held in memory (loading costs nothing): lengths 200..800 frames."""

    has_cheap_lengths = True

    def __init__(self, num_seqs: int, **kwargs):
        super().__init__(**kwargs)
        rng = np.random.RandomState(0)
        self.lengths = rng.randint(200, 801, size=num_seqs)
        self.features = [rng.standard_normal((n, FEATURES)).astype("float32") for n in self.lengths]
        self.labels = [rng.randint(0, CLASSES, size=n).astype("int32") for n in self.lengths]
        self.data_keys = {
            "data": DataKey("data", FEATURES, "float32", shape=(FEATURES,)),
            "classes": DataKey("classes", CLASSES, "int32", sparse=True),
        }

    def corpus_size(self) -> int:
        return len(self.lengths)

    def corpus_seq_lengths(self, corpus_idx: int) -> Dict[str, int]:
        n = int(self.lengths[corpus_idx])
        return {"data": n, "classes": n}

    def load_corpus_seq(self, corpus_idx: int) -> Dict[str, np.ndarray]:
        return {"data": self.features[corpus_idx], "classes": self.labels[corpus_idx]}


class Encoder(nn.Module):
    """Transformer encoder with a framewise softmax output."""

    def __init__(self, layers: int, dim: int = 512):
        super().__init__()
        self.inp = nn.Linear(FEATURES, dim)
        layer = nn.TransformerEncoderLayer(dim, 8, 4 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, CLASSES)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        return self.out(self.encoder(self.inp(x), src_key_padding_mask=mask))


def masked_ce(model: nn.Module, data: Dict[str, torch.Tensor]):
    logits = model(data["data"], data["data:size1"])
    lengths = data["classes:size1"]
    mask = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths[:, None]
    # multiply by the mask instead of boolean indexing, which would sync host and device
    frame_losses = nn.functional.cross_entropy(logits.float().transpose(1, 2), data["classes"].long(), reduction="none")
    return (frame_losses * mask).sum(), lengths.sum()


def plain_loop(model: nn.Module, batches: List[Dict[str, torch.Tensor]], device: str) -> float:
    """Seconds for one epoch of the reference loop (batches pinned in memory already)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    total = torch.zeros((), device=device)
    start = time.perf_counter()
    for batch in batches:
        data = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            loss, norm = masked_ce(model, data)
        (loss / norm).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total += loss.detach()
    float(total)  # one sync at the end
    return time.perf_counter() - start


def count_syncs(func, device: str) -> int:
    """Synchronising CUDA calls that torch reports while `func` runs."""
    if not device.startswith("cuda"):
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            func()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def train_step(*, model, data, run_ctx, **kwargs):
    loss, norm = masked_ce(model, data)
    run_ctx.mark_as_loss(loss, "ce", inv_norm_factor=norm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seqs", type=int, default=1500)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=1, help="num_workers_per_gpu")
    parser.add_argument("--worker-type", default="thread", choices=["thread", "process"])
    args = parser.parse_args()
    log.initialize(verbosity=2)

    dataset = RandomFrames(args.seqs, seq_ordering="laplace:.64")
    keys = {
        "device": args.device,
        "batch_size": args.batch_size,
        "max_seqs": 64,
        "num_epochs": 3,
        "optimizer": {"class": "adam"},
        "learning_rate": 1e-4,
        "torch_amp_options": {"dtype": "bfloat16"},
        "get_model": lambda epoch, step, **kw: Encoder(args.layers),
        "train_step": train_step,
        "log_step_interval": 100,
        "num_workers_per_gpu": args.workers,
        "data_worker_type": args.worker_type,
    }
    config = Config(keys)
    engine = Engine(config)
    engine.init_train(train_data=dataset)
    options = PipelineOptions.from_config(config, device=args.device)
    batches_per_epoch = {
        epoch: [
            {k: v.pin_memory() if isinstance(v, torch.Tensor) and options.pin_memory else v for k, v in b.items()}
            for b in EpochBatches(dataset, epoch, options)
        ]
        for epoch in (1, 2)
    }
    batches = batches_per_epoch[2]
    frames = sum(int(b["data:size1"].sum()) for b in batches)
    print(
        f"{len(batches)} batches, {frames} frames per epoch, device {args.device}, torch {torch.__version__}, "
        f"{args.layers} layers, {args.workers} {args.worker_type} worker(s)"
    )

    # A new set of batch shapes costs a one-time warm-up on CUDA (seen with both loops): warm both loops on the
    # batches of epochs 1 and 2, then time epoch 2 in each.
    reference = Encoder(args.layers).to(args.device)
    for epoch in (1, 2):
        plain_loop(reference, batches_per_epoch[epoch], args.device)
    plain_seconds = plain_loop(reference, batches, args.device)

    def engine_epoch(epoch: int) -> float:
        engine.epoch = epoch
        engine.init_train_epoch()
        start = time.perf_counter()
        engine.train_epoch()
        return time.perf_counter() - start

    engine_epoch(1)
    engine_epoch(2)
    engine_seconds = engine_epoch(2)
    engine_syncs = count_syncs(lambda: engine_epoch(2), args.device)
    plain_syncs = count_syncs(lambda: plain_loop(reference, batches, args.device), args.device)
    print(f"plain loop (in-memory batches): {frames / plain_seconds / 1e6:.3f} M frames/s ({plain_seconds:.2f} s)")
    print(f"engine (pipeline + loop):       {frames / engine_seconds / 1e6:.3f} M frames/s ({engine_seconds:.2f} s)")
    print(f"engine / plain throughput ratio: {plain_seconds / engine_seconds:.3f}")
    if args.device.startswith("cuda"):
        print(f"host-device syncs per epoch of {len(batches)} steps: engine {engine_syncs}, plain loop {plain_syncs}")


if __name__ == "__main__":
    main()
