"""``returnn.datasets.util.hdf``: Mini-RETURNN's home of ``SimpleHDFWriter`` (TTS hooks import it from here).

Also the layout names that module defines. Resolved on first use, so that runs which never touch HDF do not
import h5py.
"""

from typing import Any

HDF_SEQ_LENGTHS_KEY = "seqLengths"
HDF_INPUT_PATT_SIZE_KEY = "inputPattSize"
HDF_TIMES_KEY = "times"

# star imports get the writer too; it is resolved by __getattr__ below
__all__ = ["SimpleHDFWriter", "HDF_SEQ_LENGTHS_KEY", "HDF_INPUT_PATT_SIZE_KEY", "HDF_TIMES_KEY"]  # noqa: F822


def __getattr__(name: str) -> Any:
    if name == "SimpleHDFWriter":
        from i6_minireturnn.data.hdf_writer import SimpleHDFWriter

        return SimpleHDFWriter
    if name == "HDFDatasetWriter":
        raise AttributeError(
            "returnn.datasets.util.hdf.HDFDatasetWriter is not provided here: dump datasets with "
            "python -m i6_minireturnn.tools.hdf_dump (or tools/hdf_dump.py), which writes the same layout"
        )
    raise AttributeError(f"module 'returnn.datasets.util.hdf' has no attribute {name!r}")
