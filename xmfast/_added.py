"""Settings added after results were made with their absence.

A field declared with :func:`added` has a value that means "as before the field existed"
(`absent`, by default the field's default). Keys built from settings (experiment stage keys, a
prepared dataset's fingerprint) leave the field out while it holds that value, so finished
stages and prepared datasets stay valid when a setting is introduced; and a record written
before the field existed (a run.json, a stage's settings) reads back with that value, not with
the current default: a default may change later (ACMR's `embedding_norm` did), an old run's
meaning may not."""

from __future__ import annotations

import typing
from dataclasses import Field, field, fields, is_dataclass
from typing import Any

_SAME = object()


def added(default: Any, *, absent: Any = _SAME) -> Any:
    """A dataclass field introduced later; `absent` is what a record without it means (default:
    `default`, for a setting whose default keeps the old behaviour)."""
    return field(default=default, metadata={"added": True, "absent": default if absent is _SAME else absent})


def is_added(f: Field) -> bool:
    return bool(f.metadata.get("added"))


def absent_value(f: Field) -> Any:
    """What a record without the added field `f` means."""
    return f.metadata["absent"]


def at_added_default(obj: Any, name: str) -> bool:
    """True when `obj`'s field `name` is an added one holding the value its absence means."""
    f = next(f for f in fields(obj) if f.name == name)
    return is_added(f) and getattr(obj, name) == absent_value(f)


def fill_absent(config_type: type, values: dict[str, Any]) -> dict[str, Any]:
    """`values` (a record of a `config_type`, as run.json or a stage key holds it) with every
    added field it lacks set to the value its absence means, nested settings too."""
    out = dict(values)
    hints = typing.get_type_hints(config_type)
    for f in fields(config_type):
        hint = hints.get(f.name)
        if f.name not in out:
            if is_added(f):
                out[f.name] = absent_value(f)
        elif isinstance(out[f.name], dict) and isinstance(hint, type) and is_dataclass(hint):
            out[f.name] = fill_absent(hint, out[f.name])
    return out


__all__ = ["added", "absent_value", "at_added_default", "fill_absent", "is_added"]
