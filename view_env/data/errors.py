"""Errors raised by the data layer.

Each error says what was wrong, with the offending value, and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """A dataset root (or a file the layout requires) does not exist.

    The message names the expected layout and every place that was searched.
    """

    def __init__(self, what: str, layout: str, looked: Sequence[str]) -> None:
        places = "\n".join(f"  - {p}" for p in looked) or "  (nowhere: no root was given)"
        super().__init__(f"{what} not found.\nExpected layout:\n{layout}\nLooked in:\n{places}")


class DatasetFormatError(ValueError):
    """A dataset file exists but its content is wrong (malformed JSON, a path escaping the root, ...)."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {problem}")


class UnreadableImageError(OSError):
    """One image could not be decoded. Image banks skip and count these instead of stopping."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"cannot read image {key!r}: {reason}")


class NoReadableImagesError(DatasetFormatError):
    """Every image that was asked for failed to decode."""


class SkippedImagesWarning(UserWarning):
    """Some images could not be decoded and were skipped; issued once per load with the count and examples."""
