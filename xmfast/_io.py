"""Small I/O helpers: every output xmfast writes, and content digests.

Every command writes through :func:`check_output` (is the path free, or an xmfast artefact of
the kind about to be written, and outside every input?), :func:`atomic_directory` and
:func:`write_text_atomic` (a temporary sibling renamed into place, so a reader never sees half
an output and a kill or failure leaves the previous one as it was). An ``OSError`` on the way
(read-only location, full disk, a parent that is a file) is an :class:`OutputError` naming the
path. Temporaries are named ``.NAME.partial-*`` (and a replaced directory ``.NAME.old-*``); each
is flocked by its writer while it lives, so the next writer of NAME removes those a killed
process left and never one a live process still holds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmfast.errors import XmfastError, argument

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks, no sweeping of leftovers
    fcntl = None  # type: ignore[assignment]


class OutputError(XmfastError, OSError):
    """An output cannot be written (or may not be replaced). Also an OSError, so callers that
    catch the operating system's error keep working."""


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


# ---- what an output may replace ------------------------------------------------------------------
@dataclass(frozen=True)
class OutputKind:
    """A kind of output: what it is called, whether it is a directory, and how an existing one
    is recognised (only a recognised one, or an empty one, is ever replaced)."""

    what: str
    directory: bool
    recognise: Callable[[Path], bool]


def json_format(path: Path, name: str | None = None) -> Any:
    """The ``format`` field of the JSON object in `path` (or `path/name`), or None."""
    file = path / name if name else path
    try:
        if file.stat().st_size > 1 << 30:
            return None
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline(4096).rstrip("\n")
    except OSError:
        return ""


def holds_no_file(path: Path) -> bool:
    """True for a directory with no file anywhere below it (nothing to lose by replacing it)."""
    for _root, _dirs, files in os.walk(path):
        if files:
            return False
    return True


def _overlap(out: Path, other: Path, *, descendants: bool) -> str | None:
    if out == other:
        return "is"
    if other.is_relative_to(out):
        return "contains"
    if descendants and out.is_relative_to(other):
        return "is inside"
    return None


def _a(what: str) -> str:
    return f"{'an' if what[0] in 'aeiou' else 'a'} {what}"


def check_output(path: Path, kind: OutputKind, *, inputs: Iterable[Path | None] = (),
                 containers: Iterable[Path | None] = (), overwrite: bool = True) -> Path:
    """Refuses, with one error line, an output that would replace or damage anything but an
    xmfast `kind` artefact: an existing path of another kind (a foreign file or folder, a file
    where a directory goes or the reverse), an input of the command or a directory holding one
    (paths resolved, symlinks followed), or, for `inputs`, a path inside one. `containers` are
    inputs that may hold the output (directories searched for runs). Leftovers of killed writers
    of `path` are swept first (:func:`sweep_leftovers`). Returns `path`."""
    path = Path(path)
    real = path.resolve()
    for inputs_, descendants in ((inputs, True), (containers, False)):
        for given in inputs_:
            if given is None:
                continue
            relation = _overlap(real, Path(given).resolve(), descendants=descendants)
            if relation:
                raise OutputError(f"{path}: {relation} {'the' if relation == 'is' else 'an'} input {given} of this "
                                  f"command; choose an output outside every input")
    above = real.parent
    while not os.path.lexists(above) and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise OutputError(f"{path}: cannot write it: {above} is not a directory; choose another location")
    if real.parent.is_dir():
        sweep_leftovers(real)  # first: a previous output a killed writer moved aside comes back
    if not os.path.lexists(real):
        return path
    if kind.directory:
        if not real.is_dir():
            raise OutputError(f"{path}: exists and is not a directory ({_a(kind.what)} is one); choose another output path")
        if holds_no_file(real):
            return path
        if not kind.recognise(real):
            raise OutputError(f"{path}: exists and is not {_a(kind.what)}; xmfast replaces only its own outputs: "
                              f"choose another output path, or move it away yourself")
        if not overwrite:
            raise OutputError(f"{path}: already exists (pass {argument('overwrite')} to replace it)")
        return path
    if real.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name for the {kind.what}")
    if not real.is_file():
        raise OutputError(f"{path}: exists and is not a regular file; choose another output path")
    if real.stat().st_size and not kind.recognise(real):
        raise OutputError(f"{path}: exists and is not {_a(kind.what)} written by xmfast; choose another file name, "
                          f"or move it away yourself")
    if not overwrite:
        raise OutputError(f"{path}: already exists (pass {argument('overwrite')} to replace it)")
    return path


@contextlib.contextmanager
def output_errors(path: Path) -> Iterator[None]:
    """Maps an OSError while writing `path` to one OutputError line naming it and saying what to do."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        hint = {
            errno.ENOSPC: "free some space and run it again",
            errno.EDQUOT: "free some space and run it again",
            errno.EACCES: "choose a location you may write to",
            errno.EPERM: "choose a location you may write to",
            errno.EROFS: "the file system is read-only; choose another location",
            errno.ENOTDIR: "a parent of it is a file, not a directory; choose another location",
            errno.EISDIR: "it is a directory; give a file name",
        }.get(e.errno or 0, "check the location and run it again")
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
        raise OutputError(f"{path}: cannot write it: {e.strerror or e}{where}; {hint}") from None


# ---- leftovers of killed writers ---------------------------------------------------------------
def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _held(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (a temporary being written) for as long as its writer lives."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sweep_leftovers(target: Path) -> list[Path]:
    """Cleans up after killed writers of `target`: a ``.NAME.old-*`` sibling (the previous
    output, moved aside an instant before the new one was renamed in) is put back when `target`
    is missing, and every other ``.NAME.old-*`` / ``.NAME.partial-*`` that no live process
    holds a lock on is removed. Returns what was removed."""
    target = Path(target)
    parent = target.parent
    if fcntl is None or not parent.is_dir():
        return []
    removed = []
    for prefix in (f".{target.name}.old-", f".{target.name}.partial-"):
        for p in sorted(parent.glob(glob_escape(prefix) + "*")):
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                if not _try_lock(fd):
                    continue  # a live writer's
                if prefix.endswith(".old-") and not os.path.lexists(target):
                    os.replace(p, target)
                elif p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
                else:
                    p.unlink(missing_ok=True)
                    removed.append(p)
            finally:
                os.close(fd)
    return removed


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _temporary(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}.{tag}-{uuid.uuid4().hex[:12]}"


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# ---- atomic writers ------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool, kind: OutputKind | None = None,
                     inputs: Iterable[Path | None] = ()) -> Iterator[Path]:
    """Yields a fresh temporary directory beside `target`; on success it replaces `target`.

    `kind` and `inputs` are checked first (:func:`check_output`). A failure leaves `target`
    exactly as it was (the temporary directory is removed); a hard kill leaves at most a
    ``.partial-`` or ``.old-`` sibling, which no reader accepts and the next writer removes. A
    directory that another process holds locked (a run being trained) is never replaced."""
    given = Path(target)
    inputs = list(inputs)
    if kind is not None:
        check_output(given, kind, inputs=inputs, overwrite=overwrite)
    target = given.resolve()  # through a symlink: the directory it names is replaced, not the link
    with output_errors(given):
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(target)
        tmp = _temporary(target, "partial")
        tmp.mkdir()
    old: Path | None = None
    try:
        with _held(tmp), output_errors(given):  # a full disk while the caller writes: one line too
            yield tmp
            _fsync_tree(tmp)
            if kind is not None:  # the check again, right before the swap: the world may have changed
                check_output(given, kind, inputs=inputs, overwrite=overwrite)
            if os.path.lexists(target):
                if not overwrite and not (target.is_dir() and holds_no_file(target)):
                    raise OutputError(f"{given}: already exists (pass {argument('overwrite')} to replace it)")
                with _exclusive(target, given, kind.what if kind else "output"):
                    old = _temporary(target, "old")
                    os.replace(target, old)
                    os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
    except BaseException:
        # Put the previous directory back if it was moved aside and not replaced.
        if old is not None and os.path.lexists(old) and not os.path.lexists(target):
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _exclusive(path: Path, shown: Path, what: str) -> Iterator[None]:
    """Holds `path`'s lock (see :meth:`xmfast.runs.Run.writing`) or refuses: a directory a live
    process writes into is never moved away under it."""
    if fcntl is None or not path.is_dir():  # pragma: no cover
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if not _try_lock(fd):
            raise OutputError(f"{shown}: another xmfast process is writing this {what}; wait for it to finish, "
                              f"or choose another output")
        yield
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str, *, kind: OutputKind | None = None,
                      inputs: Iterable[Path | None] = ()) -> None:
    """Writes a file through a temporary sibling and a rename, so readers never see half of it
    and a failure leaves any previous file untouched. With `kind`, checks what it replaces first
    (:func:`check_output`); an existing directory is never replaced."""
    given = Path(path)
    if kind is not None:
        check_output(given, kind, inputs=inputs)
    path = given.resolve()
    if path.is_dir():
        raise OutputError(f"{given}: is a directory; give a file name")
    with output_errors(given):
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(path)
        tmp = _temporary(path, "partial")
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                if fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
                os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_json_atomic(path: Path, value: Any, **check: Any) -> None:
    """JSON through :func:`write_text_atomic` (same checks)."""
    write_text_atomic(path, json_text(value, indent=1) + "\n", **check)


def read_descriptor(
    directory: Path, name: str, *, fmt: str, version: int, what: str, remedy: str, error: type[Exception]
) -> dict[str, Any]:
    """The JSON file `name` that describes a directory xmfast wrote (a prepared dataset's
    manifest, a run's run.json), checked for its format and version. Every problem is one
    `error` naming the file and saying what to do (`remedy`)."""
    directory = Path(directory)
    file = directory / name
    if not file.is_file():
        if not directory.exists():  # a mistyped path: "not a prepared dataset" would send one to re-make it
            raise error(f"{directory}: no such file or directory")
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
