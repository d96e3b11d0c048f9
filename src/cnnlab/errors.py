"""Errors meant for people: one line that names the thing, what is wrong, and the fix.

The command line prints ``error: <message>`` for these and exits with status 2, without a
traceback.  Anything else that escapes is a bug and keeps its traceback.
"""


class CnnlabError(Exception):
    """Base class of the errors cnnlab reports to users as one line."""


class DataError(CnnlabError):
    """A data file or data source is missing, corrupt or not what the registry says."""


class ConfigError(CnnlabError, ValueError):
    """A setting (flag, option, argument) has a value cnnlab cannot use."""


class CheckpointError(CnnlabError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class TrainingError(CnnlabError):
    """Training cannot go on (for example the loss became NaN)."""


class ExportError(CnnlabError):
    """A trained network cannot be exported, or an exported file cannot be used."""
