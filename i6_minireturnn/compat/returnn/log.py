"""``returnn.log``: the runtime's ``log`` with the streams ``log.v1`` ... ``log.v5``."""

from i6_minireturnn.log import Log, log  # noqa: F401
