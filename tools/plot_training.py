#!/usr/bin/env python3
"""Plots a training's scores and learning rate from its learning_rates file (``LEARNING_RATES [--out-dir DIR]
[--format png|svg|pdf] [--title NAME] [--key SCORE]``); see i6_minireturnn.tools.plot_training."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from i6_minireturnn.tools.plot_training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
