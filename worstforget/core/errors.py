"""Errors that carry a one-line message naming the problem and the fix.

The CLI prints these without a traceback and exits non-zero; library callers can catch them.
"""


class WorstforgetError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DataNotFoundError(WorstforgetError):
    """A dataset's files are missing; the message says where we looked and how to get them."""


class ConfigError(WorstforgetError):
    """An invalid option, hyper-parameter or combination of them."""


class InvalidDataError(WorstforgetError):
    """A dataset's arrays are unusable (non-finite inputs, labels that do not name training classes)."""


class DivergedError(WorstforgetError):
    """An optimisation produced a non-finite loss or parameters; the message names the run and the step."""

    def __init__(self, message: str, *, method: str = "", step: int | None = None):
        super().__init__(message)
        self.method = method
        self.step = step  # 1-based optimisation step at which divergence was first seen (None: after the run)
