"""Errors that carry a one-line message naming the problem and the fix.

The CLI prints these without a traceback and exits non-zero; library callers can catch them.
"""


class WorstforgetError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DataNotFoundError(WorstforgetError):
    """A dataset's files are missing; the message says where we looked and how to get them."""


class ConfigError(WorstforgetError):
    """An invalid option, hyper-parameter or combination of them."""
