"""Errors a user can fix. The CLI prints their message (no traceback) and exits with status 2."""

import difflib


class MopeError(Exception):
    """Base class: the message names the file, line or key at fault and says what to do."""


class ConfigError(MopeError):
    """A config file or override that does not parse, names an unknown key, or has a wrong value."""


class DataError(MopeError):
    """A dataset that is missing, malformed or holds an unreadable sample."""


class CheckpointError(MopeError):
    """A checkpoint that does not fit the model the config builds."""


class ModelError(MopeError):
    """An encoder or fusion setting the framework cannot build."""


class NonFiniteError(MopeError):
    """Training diverged (a NaN or infinite loss), or weights that hold such values were about to be saved."""


class Interrupted(MopeError):
    """A run stopped by a signal before it finished its command; the exit status says which signal (128 + N)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class ArgumentValueError(MopeError, ValueError):
    """A Python API argument with a wrong value (an empty list, lengths that differ, a tensor of the wrong shape).
    A ValueError for Python callers, as PyTorch and scikit-learn raise; a MopeError for the CLI, which reaches the
    API through `mope predict`."""


class ArgumentTypeError(MopeError, TypeError):
    """A Python API argument of the wrong type (a str where a list of texts is expected, None inside a list, an
    unknown keyword argument)."""


def suggest(word: str, candidates) -> str:
    """For a message about an unknown name: " (did you mean '<the closest candidate>'?)", or "" when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
