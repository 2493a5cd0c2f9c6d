"""``returnn.datasets.hdf``: ``SimpleHDFWriter`` (forward hooks dump outputs with it) and ``HDFDataset``.

Resolved on first use, so that runs which never touch HDF do not import h5py.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "SimpleHDFWriter":
        from i6_minireturnn.data.hdf_writer import SimpleHDFWriter

        return SimpleHDFWriter
    if name == "HDFDataset":
        from i6_minireturnn.data.hdf import HDFDataset

        return HDFDataset
    raise AttributeError(f"module 'returnn.datasets.hdf' has no attribute {name!r}")
