#!/usr/bin/env python3
"""RETURNN's ``tools/torch_export_to_onnx.py``: ``CONFIG CHECKPOINT OUT.onnx [--device cpu] [--verbosity 5]
[--input_names ...] [--output_names ...]`` exports a model with the config's ``export`` function (as i6_core's
TorchOnnxExportJob calls it); see i6_minireturnn.tools.export_onnx."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from i6_minireturnn.tools.export_onnx import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
