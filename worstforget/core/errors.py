"""Errors that carry a one-line message naming the problem and the fix.

The CLI prints these without a traceback and exits non-zero; library callers can catch them.
"""


class WorstforgetError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class DataNotFoundError(WorstforgetError):
    """A dataset's files are missing; the message says where we looked and how to get them."""


class ConfigError(WorstforgetError):
    """An invalid option, hyper-parameter or combination of them."""


class OptionError(ConfigError):
    """An invalid option worded with the library's parameter names: `template` holds `{name}` for each of
    `options`. A front end words it with its own names (the CLI's flags) through `worded`."""

    def __init__(self, template: str, *options: str):
        self.template, self.options = template, options
        super().__init__(self.worded(lambda name: name))

    def worded(self, name_of) -> str:
        """The message with each option named by `name_of(option)`."""
        return self.template.format(**{o: name_of(o) for o in self.options}) if self.options else self.template


class InvalidDataError(WorstforgetError):
    """A dataset's arrays are unusable (non-finite inputs, labels that do not name training classes)."""


class DivergedError(WorstforgetError):
    """An optimisation produced a non-finite loss or parameters; the message names the run and the step."""

    def __init__(self, message: str, *, method: str = "", step: int | None = None):
        super().__init__(message)
        self.method = method
        self.step = step  # 1-based optimisation step at which divergence was first seen (None: after the run)
