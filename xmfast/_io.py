"""Small I/O helpers: atomic directory replacement and content digests."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def digest_file(path: Path) -> str:
    """blake2b-256 of a file's bytes, hex."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def digest_json(value: Any) -> str:
    """blake2b-256 of the canonical JSON form of `value`, hex."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=32).hexdigest()


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (Python or NumPy) replaced by None: an undefined
    figure is JSON null, never the literal NaN that strict JSON readers reject."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def json_text(value: Any, **options: Any) -> str:
    """Strict JSON text of `value` (see :func:`finite`); every JSON file xmfast writes goes
    through here."""
    return json.dumps(finite(value), allow_nan=False, **options)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (not strict JSON)")


def loads_strict(text: str) -> Any:
    """json.loads that refuses NaN and Infinity (ValueError; JSONDecodeError is one)."""
    return json.loads(text, parse_constant=_reject_constant)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json_text(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_array(path: Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yields a fresh temporary directory beside `target`; on success it replaces `target`.

    A crash or exception leaves `target` exactly as it was (the temporary directory is removed,
    or, after a hard kill, left under a `.partial-` name that no reader accepts).
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{target.name}.partial-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    old: Path | None = None
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            if not overwrite:
                raise FileExistsError(target)
            old = parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        # Put the previous directory back if it was moved aside and not replaced.
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Writes a file through a temporary sibling and a rename, so readers never see half of it
    and a failure leaves any previous file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json_text(value, indent=1) + "\n")


def read_descriptor(
    directory: Path, name: str, *, fmt: str, version: int, what: str, remedy: str, error: type[Exception]
) -> dict[str, Any]:
    """The JSON file `name` that describes a directory xmfast wrote (a prepared dataset's
    manifest, a run's run.json), checked for its format and version. Every problem is one
    `error` naming the file and saying what to do (`remedy`)."""
    directory = Path(directory)
    file = directory / name
    if not file.is_file():
        raise error(f"{directory}: not a {what} (no {name}); {remedy}")
    try:
        data = loads_strict(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{file}: unreadable ({e}); {remedy}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{file}: not an xmfast {what}")
    if "format_version" not in data:
        raise error(f"{file}: no format_version (damaged or edited by hand); {remedy}")
    found = data["format_version"]
    if isinstance(found, bool) or not isinstance(found, int):
        raise error(f"{file}: format_version is {found!r}, not an integer version number (damaged or edited by hand); {remedy}")
    if found != version:
        raise error(
            f"{file}: {what} format version {data.get('format_version')}, but this xmfast reads version {version}; {remedy}"
        )
    return data
