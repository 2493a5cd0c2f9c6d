#!/usr/bin/env python3
"""RETURNN's ``tools/bliss-to-ogg-zip.py``: Bliss XML corpus -> OggZip archive (i6_core's BlissToOggZipJob runs it)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from i6_minireturnn.tools.bliss_to_ogg_zip import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
