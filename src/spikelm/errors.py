"""The one error family: every error a user can cause is a :class:`SpikelmError`, which the CLI turns
into a one-line message and exit code 2 (no traceback). Anything else escaping a command is a bug."""

from __future__ import annotations

__all__ = ["SpikelmError", "CheckpointError", "DataError", "ConfigError", "TokenizerError"]


class SpikelmError(Exception):
    """Base class of the errors a user can fix; the message says what is wrong and how to fix it."""


class ConfigError(SpikelmError, ValueError):
    """A configuration key or option is unknown or its value is invalid; the message names the key."""


class CheckpointError(SpikelmError):
    """A checkpoint file is missing, corrupt, truncated, or not of a supported layout."""


class DataError(SpikelmError):
    """A corpus, token file or benchmark file is missing or malformed."""


class TokenizerError(DataError, ValueError):
    """A tokenizer or its vocabulary file is missing or malformed (a ``ValueError`` too, so callers
    that predate :class:`DataError` keep working)."""
