"""User-facing errors.

Anything a user can cause with bad input raises :class:`XmfastError` (or a subclass) whose
message is one line naming the file, the line where there is one, what is wrong and, where it
helps, what to do. The CLI prints that line and exits with status 2.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any


class XmfastError(Exception):
    """Bad input or a bad request; the message is meant for the user as is."""


class SettingError(XmfastError):
    """A setting of a configuration is unknown or of the wrong type. `path` is its key (nested
    keys in order: ``("maml", "inner_lr")``) and `detail` the message without the owner's name,
    so that a file reader can put the file and line in front of it."""

    def __init__(self, message: str, path: tuple[str, ...], detail: str) -> None:
        super().__init__(message)
        self.path, self.detail = path, detail


class DataError(XmfastError):
    """A rating file or data directory is unusable."""


class DatasetError(XmfastError):
    """A prepared dataset is missing, incomplete, or of another format version."""


# While the command line runs a command: its option for each Python argument that differs from
# ``--`` plus the name with dashes (see :func:`argument`); None in Python.
_CLI_OPTIONS: ContextVar[Mapping[str, str] | None] = ContextVar("xmfast_cli_options", default=None)


def argument(name: str, value: Any = True, *, metavar: str = "") -> str:
    """How a message names an argument the caller can give: ``overwrite=True`` to Python code,
    ``--overwrite`` under the command line (:func:`cli_options`), so neither reader is told to
    use a spelling that does not exist where they are. A non-boolean `value` is shown with it
    (``device='cuda'`` / ``--device cuda``); None shows the name alone (``users=…`` / ``--user``,
    or ``--user ID`` with a `metavar`)."""
    options = _CLI_OPTIONS.get()
    if options is None:
        return f"{name}=…" if value is None else f"{name}={value!r}"
    option = options.get(name, "--" + name.replace("_", "-"))
    if value is None:
        return f"{option} {metavar}" if metavar else option
    if value is True:
        return option
    if value is False:
        return "--no-" + option.removeprefix("--")
    return f"{option} {value}"


def spelled(python: str, cli: str) -> str:
    """`cli` under the command line (:func:`cli_options`), `python` otherwise: for advice whose
    two spellings differ in more than an argument's name (``resume(RUN)`` / ``xmfast train
    --resume RUN``, ``pretrained={'gmf': RUN}`` / ``--gmf-run RUN``)."""
    return python if _CLI_OPTIONS.get() is None else cli


@contextlib.contextmanager
def cli_options(options: Mapping[str, str] | None = None) -> Iterator[None]:
    """Within it, :func:`argument` names command-line options; `options` maps the Python
    argument names whose option is spelled otherwise (``users`` -> ``--user``)."""
    token = _CLI_OPTIONS.set(dict(options or {}))
    try:
        yield
    finally:
        _CLI_OPTIONS.reset(token)


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
