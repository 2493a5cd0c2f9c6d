"""Dumps a dataset (a config's ``train`` dataset, another key, or a dataset dict) to an HDF file.

    python -m i6_minireturnn.tools.hdf_dump CONFIG OUT.hdf [--dataset train] [--epoch 1]
    python -m i6_minireturnn.tools.hdf_dump "{'class': 'SyntheticSpeechDataset', 'num_seqs': 10}" OUT.hdf

Every data key and the sequence tags are written in RETURNN's layout: ``data`` as ``inputs`` (or the first key
where there is no ``data``), the other keys as targets. The output appears complete or not at all.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..data.dataset import Dataset
from ..data.hdf_writer import SimpleHDFWriter
from .dataset_source import load_dataset, run_tool


def dump(dataset: Dataset, output: str, *, epoch: int = 1) -> int:
    """Writes all sequences of the epoch; returns their number."""
    dataset.init_seq_order(epoch)
    keys = dataset.data_keys
    input_key = "data" if "data" in keys else next(iter(keys))
    main = keys[input_key]
    extra_type = {k: (v.dim, v.ndim, v.dtype) for k, v in keys.items() if k != input_key}
    writer = SimpleHDFWriter(output, dim=main.dim, ndim=main.ndim, extra_type=extra_type or None)
    for seq_idx in range(dataset.num_seqs):
        seq = dataset.get_seq(seq_idx)
        data = seq[input_key]
        extra = {k: seq[k][None] for k in extra_type}
        writer.insert_batch(data[None], [data.shape[0]], [seq["seq_tag"]], extra=extra or None)
    writer.close()
    return dataset.num_seqs


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="config file, or a dataset dict as Python literal")
    parser.add_argument("output", help="HDF file to write")
    parser.add_argument("--dataset", default="train", help="config key of the dataset (default: train)")
    parser.add_argument("--epoch", type=int, default=1)
    args = parser.parse_args(argv)

    def action() -> None:
        count = dump(load_dataset(args.source, args.dataset)[0], args.output, epoch=args.epoch)
        print(f"Wrote {count} sequences to {args.output}")

    return run_tool(action)


if __name__ == "__main__":
    sys.exit(main())
