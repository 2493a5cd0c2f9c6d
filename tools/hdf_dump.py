#!/usr/bin/env python3
"""RETURNN's ``tools/hdf_dump.py``: dump a dataset to an HDF file (i6_core's ReturnnDumpHDFJob runs it)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from i6_minireturnn.tools.hdf_dump import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
