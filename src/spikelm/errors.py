"""Exceptions that the CLI turns into a one-line message (no traceback)."""

from __future__ import annotations

from .config import ConfigError

__all__ = ["SpikelmError", "CheckpointError", "DataError", "ConfigError"]


class SpikelmError(Exception):
    """Base class of the errors a user can fix; the message says what is wrong and how to fix it."""


class CheckpointError(SpikelmError):
    """A checkpoint file is missing, corrupt, truncated, or not of a supported layout."""


class DataError(SpikelmError):
    """A corpus, token file or benchmark file is missing or malformed."""
