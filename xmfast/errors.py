"""User-facing errors.

Anything a user can cause with bad input raises :class:`XmfastError` (or a subclass) whose
message is one line naming the file, the line where there is one, what is wrong and, where it
helps, what to do. The CLI prints that line and exits with status 2.
"""

from __future__ import annotations


class XmfastError(Exception):
    """Bad input or a bad request; the message is meant for the user as is."""


class DataError(XmfastError):
    """A rating file or data directory is unusable."""


class DatasetError(XmfastError):
    """A prepared dataset is missing, incomplete, or of another format version."""
