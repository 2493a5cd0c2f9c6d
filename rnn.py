#!/usr/bin/env python3
"""RETURNN-style entry point: ``python rnn.py CONFIG [++key value]`` runs the i6-minireturnn runtime."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from i6_minireturnn.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
