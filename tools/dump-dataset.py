#!/usr/bin/env python3
"""RETURNN's ``tools/dump-dataset.py``: iterates a dataset, prints or dumps it, collects mean/std-dev stats
(i6_core's ExtractDatasetMeanStddevJob runs it). Our own command line: ``python -m i6_minireturnn.tools.dump_dataset``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from i6_minireturnn.tools.dump_dataset import main_returnn  # noqa: E402

if __name__ == "__main__":
    sys.exit(main_returnn())
