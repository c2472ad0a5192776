"""User-facing errors: one line that says what is wrong, where, and what to do.

Anything raised as a `SpanqaError` is shown to CLI users without a traceback; every other exception is a bug.
"""


class SpanqaError(Exception):
    """Base class of every error caused by the user's input or settings."""


class DataError(SpanqaError):
    """A data file is missing, malformed, or holds an invalid record."""


class ConfigError(SpanqaError):
    """Settings that cannot work together (window sizes, strides, model limits)."""


class ModelError(SpanqaError):
    """A model directory or hub id that cannot be loaded."""
