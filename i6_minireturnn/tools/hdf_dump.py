"""Dumps a dataset (a config's ``train`` dataset, another key, or a dataset dict) to an HDF file.

    python -m i6_minireturnn.tools.hdf_dump CONFIG OUT.hdf [--dataset train] [--epoch 1] [--start_seq 0] [--end_seq N]
    python -m i6_minireturnn.tools.hdf_dump "{'class': 'SyntheticSpeechDataset', 'num_seqs': 10}" OUT.hdf

The arguments are RETURNN's ``tools/hdf_dump.py`` ones (plus ``--dataset``), so the root script
``tools/hdf_dump.py`` serves i6_core's ReturnnDumpHDFJob: ``--start_seq``/``--end_seq`` are sequence indices of the
epoch, both inclusive as in RETURNN.

Every data key and the sequence tags are written in RETURNN's layout: ``data`` as ``inputs`` (or the first key
where there is no ``data``), the other keys as targets. The output appears complete or not at all.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..data.dataset import Dataset
from ..data.hdf_writer import SimpleHDFWriter
from ..errors import DataError, UserError
from . import program_name
from .dataset_source import load_dataset, run_tool


def dump(dataset: Dataset, output: str, *, epoch: int = 1, start_seq: int = 0, end_seq: Optional[int] = None) -> int:
    """Writes the epoch's sequences `start_seq` .. `end_seq` (inclusive; None: to the last); returns their number."""
    dataset.init_seq_order(epoch)
    last = dataset.num_seqs - 1 if end_seq is None else min(end_seq, dataset.num_seqs - 1)
    wanted = f"{start_seq}..{'last' if end_seq is None else end_seq}"
    if start_seq < 0 or (end_seq is not None and end_seq < start_seq):
        raise UserError(f"--start_seq/--end_seq: the range {wanted} is empty or negative")
    if start_seq > last and (start_seq or end_seq is not None):
        # RETURNN refuses an empty range too; an empty dataset without a range still gives an empty file
        raise DataError(
            f"Dataset {dataset.name!r} has {dataset.num_seqs} sequences in epoch {epoch}: none in the range {wanted}"
        )
    keys = dataset.data_keys
    input_key = "data" if "data" in keys else next(iter(keys))
    main = keys[input_key]
    extra_type = {k: (v.dim, v.ndim, v.dtype) for k, v in keys.items() if k != input_key}
    writer = SimpleHDFWriter(output, dim=main.dim, ndim=main.ndim, extra_type=extra_type or None)
    for seq_idx in range(start_seq, last + 1):
        seq = dataset.get_seq(seq_idx)
        data = seq[input_key]
        extra = {k: seq[k][None] for k in extra_type}
        writer.insert_batch(data[None], [data.shape[0]], [seq["seq_tag"]], extra=extra or None)
    writer.close()
    return max(0, last + 1 - start_seq)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry; returns the exit code."""
    parser = argparse.ArgumentParser(prog=program_name(__file__), description=__doc__.split("\n")[0])
    parser.add_argument("source", help="config file, or a dataset dict as Python literal")
    parser.add_argument("output", help="HDF file to write")
    parser.add_argument("--dataset", default="train", help="config key of the dataset (default: train)")
    parser.add_argument("--epoch", type=int, default=1, help="epoch of the sequence order (default: 1)")
    parser.add_argument("--start_seq", type=int, default=0, help="first sequence index of the epoch (inclusive)")
    parser.add_argument("--end_seq", type=int, default=None, help="last sequence index (inclusive; default: the last)")
    args = parser.parse_args(argv)

    def action() -> None:
        dataset = load_dataset(args.source, args.dataset)[0]
        count = dump(dataset, args.output, epoch=args.epoch, start_seq=args.start_seq, end_seq=args.end_seq)
        print(f"Wrote {count} sequences to {args.output}")

    return run_tool(action)


if __name__ == "__main__":
    sys.exit(main())
