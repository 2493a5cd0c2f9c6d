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


class OutputPathError(UserError):
    """An output file cannot be written where it should go: a parent is a file, or the folder is not writable."""


class DiskFullError(UserError):
    """Writing an output file failed because the disk or the quota is full; the message names the file."""


class FileFormatError(UserError):
    """A file in one of RETURNN's on-disk formats (e.g. the learning_rates file) cannot be read; names the file."""
