"""Exception types shared by the whole package.

The CLI prints a :class:`CommonspaceError` as one line and exits with its ``exit_code``;
any other exception is a bug and is shown with its traceback under ``--debug``. The search
service (:mod:`commonspace.apps.serve`) answers one with its ``http_status`` and the message as
JSON; any other exception there is logged and answered 500 without its traceback.
"""


class CommonspaceError(Exception):
    """Base class of errors caused by the user's input or environment."""

    exit_code = 1
    http_status = 500


class InputError(CommonspaceError, ValueError):
    """Bad input: wrong shape, NaN, empty data, unknown name, mismatched lengths."""

    exit_code = 2
    http_status = 400


class MissingFileError(CommonspaceError, FileNotFoundError):
    """A file or folder the user named does not exist or cannot be read."""

    exit_code = 3
    http_status = 404


class NotFittedError(CommonspaceError, AttributeError):
    """A fitted estimator's method was called before ``fit``."""

    exit_code = 2
    http_status = 400


class ModelNotAvailableError(CommonspaceError):
    """A model cannot be loaded (unknown name, or weights not on disk while offline)."""

    exit_code = 4
    http_status = 503


class NotFoundError(CommonspaceError, LookupError):
    """A requested item does not exist: a row outside the index, a row without a media file,
    a URL that names nothing (the service answers 404)."""

    exit_code = 3
    http_status = 404


class DegenerateOutputWarning(UserWarning):
    """A fitted model's output is degenerate: all-zero or constant rows, or a label classifier
    at chance level on its own training data. The message carries the figures."""
