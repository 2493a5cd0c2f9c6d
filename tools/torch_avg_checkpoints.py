#!/usr/bin/env python3
"""RETURNN's ``tools/torch_avg_checkpoints.py``: ``--checkpoints A.pt B.pt ... --output_path OUT.pt`` averages
model checkpoints (as i6_core's AverageTorchCheckpointsJob calls it); see i6_minireturnn.tools.average_checkpoints."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from i6_minireturnn.tools.average_checkpoints import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
