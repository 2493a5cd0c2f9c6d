"""Command-line tools around the runtime (``python -m i6_minireturnn.tools.<name>``)."""
