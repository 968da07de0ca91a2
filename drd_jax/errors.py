"""The errors a user can cause: something they gave (a config, a flag, a file, a dataset, a
workdir) that the command cannot use.

Each is a :class:`UserError`, and also the built-in error it stands for, so ``except ValueError``
and ``except FileNotFoundError`` catch it as before. The entry points (``experiments.cli``) print
a :class:`UserError` as one line, ``error: <message>``, and exit with its :attr:`exit_status`;
every other exception is a bug and keeps its traceback. So a check of what the user gave raises
one of these, wherever it lives; a check that only a caller's bug can fail (shapes, an op's
arguments) raises the plain built-in.
"""

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MissingFileError",
    "OutputExistsError",
    "OutputNotADirectoryError",
    "UserError",
]


class UserError(Exception):
    """A fault in what the user gave; the message says what and how to fix it.

    Attributes:
      exit_status: the entry points' exit status for it (2, as for a usage error).
    """

    exit_status = 2


class ConfigError(UserError, ValueError):
    """A config field, flag or command-line argument holds a value the command cannot use
    (``config.<field>: ...``, ``--<flag>: ...``)."""


class DataError(UserError, ValueError):
    """A dataset, a record of it, a manual download, an image or a depth map given cannot be read
    or is not what it should be (naming the file and what was expected)."""


class CheckpointError(UserError, ValueError):
    """A run's workdir or checkpoint, an export or a weights file given cannot be used: unreadable,
    damaged, edited, of another config, model or format, or (an export to overwrite) holding
    files of its own (naming the file)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory given, or one it must hold, does not exist (naming it)."""


class OutputExistsError(UserError, FileExistsError):
    """An output given already exists (or holds files) and would be overwritten (naming it)."""


class OutputNotADirectoryError(UserError, NotADirectoryError):
    """An output directory given is a symlink or sits under a file (naming it)."""
