"""Exception types whose messages are shown to the user as-is (no traceback) by the command line."""


class UserError(Exception):
    """A problem caused by the input (config, data, checkpoint files); the message names the cause."""


class ConfigError(UserError):
    """A config key is missing, misspelt or of the wrong type."""


class DataError(UserError):
    """A dataset file or sequence is unusable."""


class CheckpointError(UserError):
    """A checkpoint file is missing, truncated or does not fit the model."""


class TrainingError(UserError):
    """Training cannot go on (non-finite loss, a step that marks no loss, ...)."""
