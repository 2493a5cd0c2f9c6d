"""Command-line tools around the runtime (``python -m i6_minireturnn.tools.<name>``)."""

from __future__ import annotations

import os
import sys
from typing import Optional


def program_name(module_file: str, root_script: Optional[str] = None) -> str:
    """The tool's name in its usage line, the way the user started it: ``python tools/hdf_dump.py`` through one of
    RETURNN's root scripts (as given, e.g. i6_core's absolute path), else ``python -m i6_minireturnn.tools.<name>``.

    `module_file` is the tool module's ``__file__``; `root_script` names the root script that serves the same
    command line under another name (``dump-dataset.py``), shown where the tool runs inside another program.
    """
    module = "i6_minireturnn.tools." + os.path.splitext(os.path.basename(module_file))[0]
    started = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if started and os.path.abspath(started) == os.path.abspath(module_file):
        return f"python -m {module}"  # python -m sets argv[0] to the module's file
    in_tools_folder = os.path.basename(os.path.dirname(os.path.abspath(started))) == "tools" if started else False
    if started.endswith(".py") and in_tools_folder:
        return f"python {started}"
    if root_script:
        return f"python tools/{root_script}"
    return f"python -m {module}"
