"""User-facing errors.

Anything a user can cause with bad input raises :class:`XmfastError` (or a subclass) whose
message is one line naming the file, the line where there is one, what is wrong and, where it
helps, what to do. The CLI prints that line and exits with status 2.
"""

from __future__ import annotations

import numbers


class XmfastError(Exception):
    """Bad input or a bad request; the message is meant for the user as is."""


class DataError(XmfastError):
    """A rating file or data directory is unusable."""


class DatasetError(XmfastError):
    """A prepared dataset is missing, incomplete, or of another format version."""


U32_MAX = 2**32 - 1
"""Largest count the Rust core takes for thresholds, widths and sizes (a u32)."""
U64_MAX = 2**64 - 1


def check_int(name: str, value: int, low: int = 1, high: int = U32_MAX) -> None:
    """Raises XmfastError naming `name` (a setting or option) unless ``low <= value <= high``;
    values go to the Rust core as fixed-width integers, where a bigger one is an OverflowError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise XmfastError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise XmfastError(f"{name} must be at least {low}, got {value}")
    if value > high:
        raise XmfastError(f"{name} must be at most {high}, got {value}")
