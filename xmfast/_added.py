"""Settings added after results were made with their absence.

A field declared with :func:`added` behaves at its default exactly as before it existed, so keys
built from settings (experiment stage keys, a prepared dataset's fingerprint) leave it out at
that default: finished stages and prepared datasets stay valid when a setting is introduced."""

from __future__ import annotations

from dataclasses import Field, field, fields
from typing import Any


def added(default: Any) -> Any:
    """A dataclass field introduced later; see the module docstring."""
    return field(default=default, metadata={"added": True})


def is_added(f: Field) -> bool:
    return bool(f.metadata.get("added"))


def at_added_default(obj: Any, name: str) -> bool:
    """True when `obj`'s field `name` is an added one holding its default."""
    f = next(f for f in fields(obj) if f.name == name)
    return is_added(f) and getattr(obj, name) == f.default


__all__ = ["added", "at_added_default", "is_added"]
