"""The Rust/Python seam (`xmfast.core`): array ownership and dtype checks, the GIL, panics,
exceptions, the Vocab API, dates and hashes, and what the installed package contains."""

from __future__ import annotations

import ast
import gc
import importlib.metadata
import inspect
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import xmfast
from conftest import write_text
from xmfast import core

u16, u32, u64, i32 = np.uint16, np.uint32, np.uint64, np.int32
INSTALLED = Path(xmfast.__file__).resolve().parent


def run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter outside the checkout (so the installed package is used)."""
    full_env = {**os.environ, "RUST_BACKTRACE": "0", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)


def assert_rust_owned(a: np.ndarray, dtype: type, ndim: int = 1) -> None:
    """A numpy array over memory allocated in Rust (a Vec moved into numpy, not copied)."""
    assert isinstance(a, np.ndarray)
    assert a.dtype == np.dtype(dtype), a.dtype
    assert a.ndim == ndim
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
    assert not a.flags.owndata  # numpy did not allocate it...
    assert type(a.base).__name__ == "PySliceContainer"  # ...the Rust Vec behind it is kept alive by its base


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("small")
    rows = [(f"u{u}", f"I{(u * 3 + k) % 17}", 4.0, f"2020-01-{k + 1:02d}") for u in range(6) for k in range(5)]
    f = write_text(d / "uk_5core.txt", "".join(f"{u} {i} {r} {day}\n" for u, i, r, day in rows))
    return core.read_ratings([("uk", str(f))])


# ---- outputs: arrays over Rust memory --------------------------------------------------------

def test_outputs_are_numpy_arrays_owning_rust_memory(small: dict) -> None:
    m, u, i, d = small["market"], small["user"], small["item"], small["day"]
    for name, dtype in (("market", u16), ("user", u32), ("item", u32), ("rating", np.float32), ("day", i32)):
        assert_rust_owned(small[name], dtype)
        assert small[name].shape == (30,)
    assert_rust_owned(core.kcore_mask(m, u, i, 2, 2), np.bool_)
    assert_rust_owned(core.restrict_items_mask(i, np.array([1, 2], dtype=u32)), np.bool_)
    new, old = core.compact_ids(i)
    assert_rust_owned(new, u32)
    assert_rust_owned(old, u32)
    offsets, items = core.market_items(m, i, 1)
    assert_rust_owned(offsets, u64)
    assert_rust_owned(items, u32)
    s = core.leave_one_out(m, u, i, d)
    for name, dtype in (("group_market", u16), ("group_user", u32), ("train_rows", u32), ("train_offsets", u64),
                        ("heldout_groups", u32), ("valid_rows", u32), ("test_rows", u32)):
        assert_rust_owned(s[name], dtype)
    assert isinstance(s["duplicates_dropped"], int)
    h = core.cooccurrence(s["train_offsets"], i[s["train_rows"]], s["group_market"], [0], 17)
    for a, dtype in zip(h, (u64, u32, u32)):
        assert_rust_owned(a, dtype)
    assert_rust_owned(small["users"].encode(["u1", "zz"]), np.int64)
    assert_rust_owned(small["users"].stable_hashes(), u64)
    neg = core.sample_distinct(offsets, items, np.zeros(2, dtype=u32), np.array([0, 1, 2], dtype=u64),
                               np.array([3, 4], dtype=u32), np.array([1, 2], dtype=u64), 5, 0)
    assert_rust_owned(neg, u32, ndim=2)
    assert neg.shape == (2, 5)
    sampler = core.TrainNegativeSampler(s["train_offsets"], np.zeros(6, dtype=u32), offsets, items,
                                        s["train_offsets"], np.sort(i[s["train_rows"]].reshape(6, 3), axis=1).ravel(), 2, 0)
    assert_rust_owned(sampler.sample(0), u32, ndim=2)
    assert sampler.sample(0).shape == (sampler.rows, 2) == (18, 2)


def test_output_memory_outlives_the_array_and_is_independent() -> None:
    ids = np.array([5, 9, 5, 7, 9, 1], dtype=u32)
    new, _ = core.compact_ids(ids)
    view = new[1::2]
    del new
    gc.collect()
    _ = [np.ones(10_000, dtype=u32) for _ in range(20)]  # reuse freed memory if it were freed
    assert view.tolist() == [1, 2, 3]
    # Each call gives fresh memory: writing into one result does not change another.
    a, _ = core.compact_ids(ids)
    b, _ = core.compact_ids(ids)
    a[:] = 99
    assert b.tolist() == [0, 1, 0, 2, 1, 3]
    assert not np.shares_memory(a, b)


# ---- inputs: borrowed, strictly typed --------------------------------------------------------

def test_inputs_are_borrowed_without_copies(tmp_path: Path) -> None:
    # Read-only and memory-mapped inputs are accepted as they are (no writable copy needed).
    ids = np.array([4, 7, 4, 2, 7, 7], dtype=u32)
    ro = ids.copy()
    ro.flags.writeable = False
    assert core.compact_ids(ro)[0].tolist() == [0, 1, 0, 2, 1, 1]
    np.save(tmp_path / "ids.npy", ids)
    mm = np.load(tmp_path / "ids.npy", mmap_mode="r")
    assert isinstance(mm, np.memmap) and core.compact_ids(mm)[1].tolist() == [4, 7, 2]
    # A contiguous slice at an offset is read at that offset.
    big = np.arange(100, dtype=u32)
    assert core.compact_ids(big[50:53])[1].tolist() == [50, 51, 52]
    # The sampler writes into the caller's buffer itself: a row slice of a bigger array.
    s = core.TrainNegativeSampler(np.array([0, 3], dtype=u64), np.zeros(1, dtype=u32), np.array([0, 10], dtype=u64),
                                  np.arange(10, dtype=u32), np.array([0, 2], dtype=u64), np.array([1, 2], dtype=u32), 4, 7)
    buf = np.full((5, 4), 12345, dtype=u32)
    s.sample_into(buf[1:4], 3)
    assert np.array_equal(buf[1:4], s.sample(3))
    assert (buf[0] == 12345).all() and (buf[4] == 12345).all()
    assert not np.isin(buf[1:4], [1, 2]).any()


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (np.array([1, 2], dtype=np.int64), TypeError, r"type mismatch:\s*from=int64, to=uint32"),
        (np.array([1, 2], dtype=np.float64), TypeError, r"type mismatch:\s*from=float64, to=uint32"),
        (np.array([1, 2], dtype=">u4"), TypeError, r"type mismatch:\s*from=>u4, to=uint32"),
        (np.arange(10, dtype=u32)[::2], ValueError, r"`ids` must be a C-contiguous 1-d array"),
        (np.zeros((2, 2), dtype=u32), TypeError, r"dimensionality mismatch:\s*from=2, to=1"),
        ([1, 2, 3], TypeError, r"'list' object is not an instance of 'ndarray'"),
    ],
    ids=["int64", "float64", "big-endian", "strided", "2-d", "list"],
)
def test_bad_inputs_are_refused_not_converted(bad: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        core.compact_ids(bad)


def test_non_contiguous_inputs_name_the_argument() -> None:
    m, u, i = np.zeros(4, dtype=u16), np.zeros(4, dtype=u32), np.zeros(8, dtype=u32)
    with pytest.raises(ValueError, match="`item` must be a C-contiguous"):
        core.kcore_mask(m, u, i[::2], 1, 1)
    with pytest.raises(ValueError, match="`allowed` must be a C-contiguous"):
        core.restrict_items_mask(u, i[::2])
    with pytest.raises(ValueError, match="`market` and `item` differ in length"):
        core.market_items(m, i, 1)


def test_sample_into_checks_its_buffer() -> None:
    s = core.TrainNegativeSampler(np.array([0, 3], dtype=u64), np.zeros(1, dtype=u32), np.array([0, 10], dtype=u64),
                                  np.arange(10, dtype=u32), np.array([0, 2], dtype=u64), np.array([1, 2], dtype=u32), 4, 7)
    with pytest.raises(TypeError, match="type mismatch"):
        s.sample_into(np.zeros((3, 4), dtype=np.int64), 0)
    with pytest.raises(ValueError, match="`out` must be a C-contiguous uint32 array"):
        s.sample_into(np.zeros((3, 5), dtype=u32)[:, :4], 0)
    with pytest.raises(ValueError, match=r"\(3, 4\)|rows × k = 12"):
        s.sample_into(np.zeros((2, 4), dtype=u32), 0)
    ro = np.zeros((3, 4), dtype=u32)
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="not writeable"):
        s.sample_into(ro, 0)


def test_sample_into_refuses_a_fortran_ordered_buffer() -> None:
    """An F-contiguous (3, 4) buffer is contiguous but not in row order: filling it in memory
    order would scramble rows and columns, so it must be refused like any non-C layout."""
    s = core.TrainNegativeSampler(np.array([0, 3], dtype=u64), np.zeros(1, dtype=u32), np.array([0, 10], dtype=u64),
                                  np.arange(10, dtype=u32), np.array([0, 2], dtype=u64), np.array([1, 2], dtype=u32), 4, 7)
    out = np.zeros((4, 3), dtype=u32).T
    assert out.shape == (3, 4) and out.flags.f_contiguous and not out.flags.c_contiguous
    try:
        s.sample_into(out, 0)
    except ValueError as e:
        assert "C-contiguous" in str(e)
    else:
        assert np.array_equal(out, s.sample(0)), "sample_into wrote a Fortran-ordered buffer in the wrong layout"


# ---- the GIL ---------------------------------------------------------------------------------

def _big_columns(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    idx = np.arange(n, dtype=u64)
    market = (idx % 3).astype(u16)
    user = (idx * np.uint64(2654435761) % np.uint64(1_000_003)).astype(u32)
    item = (idx * np.uint64(40503) % np.uint64(200_003)).astype(u32)
    day = (idx % 4000).astype(i32)
    return market, user, item, day


@pytest.fixture(scope="module")
def big_columns() -> tuple[np.ndarray, ...]:
    return _big_columns(10_000_000)


@pytest.mark.parametrize("call", ["kcore_mask", "leave_one_out"])
def test_gil_is_released_during_long_rust_work(big_columns: tuple[np.ndarray, ...], call: str) -> None:
    market, user, item, day = big_columns
    if call == "kcore_mask":
        def work() -> object:
            return core.kcore_mask(market, user, item, 5, 5, True)
    else:
        n = 2_000_000  # contiguous prefixes: borrowed as they are

        def work() -> object:
            return core.leave_one_out(market[:n], user[:n], item[:n], day[:n])

    window: dict[str, float] = {}

    def worker() -> None:
        window["t0"] = time.perf_counter()
        work()
        window["t1"] = time.perf_counter()

    # The main thread counts and notes the time every 1000 steps while the worker is in Rust.
    stamps: list[float] = []
    count = 0
    thread = threading.Thread(target=worker)
    thread.start()
    while thread.is_alive():
        count += 1
        if count % 1000 == 0:
            stamps.append(time.perf_counter())
    thread.join()
    t0, t1 = window["t0"], window["t1"]
    duration = t1 - t0
    inside = [t for t in stamps if t0 < t < t1]
    gaps = np.diff([t0, *inside, t1])
    # Holding the GIL, the worker would run from t0 to t1 without letting the main thread in:
    # no stamps inside the window, one gap as long as the call. Released, the main thread runs
    # all along (only the OS scheduler interrupts it).
    assert duration > 0.05, duration
    assert len(inside) >= 20, (len(inside), duration)
    assert gaps.max() < 0.5 * duration, (gaps.max(), duration)
    assert count >= 1000 * len(inside)


# ---- panics and exceptions -------------------------------------------------------------------

def test_rust_panic_becomes_panic_exception_and_interpreter_survives(tmp_path: Path) -> None:
    code = """
from xmfast import core
try:
    core._panic_for_tests("boom")
except Exception:
    print("CAUGHT-AS-EXCEPTION")
except BaseException as e:
    t = type(e)
    print("CAUGHT", t.__module__, t.__name__, issubclass(t, BaseException), str(e))
print("AFTER", core.stable_hash("uk"), core.parse_date("2020-01-01"), core.Vocab(["a", "b"]).index("b"))
try:
    core._panic_for_tests("again")
except BaseException as e:
    print("AGAIN", str(e))
"""
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == [
        "CAUGHT pyo3_runtime PanicException True boom",
        f"AFTER {core.stable_hash('uk')} {core.parse_date('2020-01-01')} 1",
        "AGAIN again",
    ]
    assert "boom" in proc.stderr and "panicked" in proc.stderr
    # Uncaught, it ends the program with a Python traceback (not a crash of the process).
    proc = run_python("from xmfast import core\ncore._panic_for_tests('fatal')\nprint('unreachable')", tmp_path)
    assert proc.returncode == 1
    assert "unreachable" not in proc.stdout
    assert "pyo3_runtime.PanicException: fatal" in proc.stderr


def test_data_format_error_is_a_value_error(tmp_path: Path) -> None:
    assert issubclass(core.DataFormatError, ValueError)
    f = write_text(tmp_path / "bad.txt", "u1 B1 5.0\n")
    with pytest.raises(ValueError) as exc:
        core.read_ratings([("uk", str(f))])
    assert type(exc.value) is core.DataFormatError
    assert str(exc.value) == f"{f}:1: expected 4 columns (userId itemId rate date), found 3"


def test_file_digest_is_the_digest_read_ratings_records(tmp_path: Path) -> None:
    import hashlib

    f = write_text(tmp_path / "uk_5core.txt", "userId itemId rate date\nu1 B1 5.0 2020-01-01\n")
    recorded = core.read_ratings([("uk", str(f))])["files"][0]["blake3"]
    assert core.file_digest(f) == core.file_digest(str(f)) == recorded
    assert len(recorded) == 64 and recorded != hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        core.file_digest(tmp_path / "missing.txt")


def test_data_format_error_lives_in_xmfast_core_and_pickles(tmp_path: Path) -> None:
    """Errors cross process boundaries (multiprocessing, data-loader workers) by pickling, which
    looks the class up by its module: it must be `xmfast.core`, where the class is found."""
    f = write_text(tmp_path / "bad.txt", "u1 B1 x 2020-01-01\n")
    with pytest.raises(core.DataFormatError) as exc:
        core.read_ratings([("uk", str(f))])
    assert core.DataFormatError.__module__ == "xmfast.core"
    again = pickle.loads(pickle.dumps(exc.value))
    assert type(again) is core.DataFormatError and str(again) == str(exc.value)


def test_core_errors_map_to_python_exceptions(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        core.read_ratings([("uk", str(tmp_path / "nope.txt"))])
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(OSError, match=r"d\.txt: Is a directory"):
        core.read_ratings([("uk", str(tmp_path / "d.txt"))])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(core.DataFormatError, match=r"empty\.txt: no ratings in file"):
        core.read_ratings([("uk", str(tmp_path / "empty.txt"))])
    m = np.zeros(1, dtype=u16)
    with pytest.raises(ValueError, match="order must be 'temporal' or 'random', not \"sideways\""):
        core.leave_one_out(m, np.zeros(1, dtype=u32), np.zeros(1, dtype=u32), np.zeros(1, dtype=i32), order="sideways")


# ---- Vocab -----------------------------------------------------------------------------------

def test_vocab_api() -> None:
    v = core.Vocab(["b", "a", "c"])
    assert len(v) == 3 and len(core.Vocab()) == 0 and core.Vocab().to_list() == []
    assert (v[0], v[1], v[2], v[-1], v[-3]) == ("b", "a", "c", "c", "b")
    for bad in (3, -4, 10**6):
        with pytest.raises(IndexError, match="out of range"):
            v[bad]
    assert "a" in v and "z" not in v and "" not in v
    assert v.index("c") == 2
    with pytest.raises(KeyError) as exc:
        v.index("z")
    assert exc.value.args == ("z",)
    assert v.get("a") == 1 and v.get("z") is None
    enc = v.encode(["c", "z", "b", "a", "c"])
    assert enc.dtype == np.int64 and enc.tolist() == [2, -1, 0, 1, 2]
    assert v.encode([]).tolist() == []
    assert v.to_list() == ["b", "a", "c"] and list(map(v.__getitem__, range(len(v)))) == v.to_list()
    # Repeated ids are interned once, numbered by first appearance.
    w = core.Vocab(["x", "y", "x", "z", "y"])
    assert w.to_list() == ["x", "y", "z"] and w.index("z") == 2
    # subset keeps the given numbers in the given order.
    assert v.subset(np.array([2, 0], dtype=u32)).to_list() == ["c", "b"]
    assert v.subset(np.array([], dtype=u32)).to_list() == []
    with pytest.raises(IndexError, match="id number 3 out of range"):
        v.subset(np.array([0, 3], dtype=u32))
    assert v == core.Vocab(["b", "a", "c"]) and v != core.Vocab(["a", "b", "c"]) and v != ["b", "a", "c"]
    assert repr(v) == "Vocab(<3 ids>)"
    assert v.stable_hashes().tolist() == [core.stable_hash(s) for s in ["b", "a", "c"]]


ODD_IDS = ["plain", "with space", "tab\there", "é中文", "🙂", "", "quote\"'", "back\\slash", "nul\x00byte",
           "\ufeffbom", "line\u2028sep", "vt\x0bff\x0c", "A" * 5000]


def test_vocab_write_read_round_trip_with_odd_characters(tmp_path: Path) -> None:
    v = core.Vocab(ODD_IDS)
    assert v.to_list() == ODD_IDS
    v.write(tmp_path / "ids.txt")  # a PathLike
    back = core.Vocab.read(str(tmp_path / "ids.txt"))
    assert back.to_list() == ODD_IDS and back == v
    assert (tmp_path / "ids.txt").read_bytes() == "".join(s + "\n" for s in ODD_IDS).encode()
    empty = core.Vocab()
    empty.write(tmp_path / "empty.txt")
    assert core.Vocab.read(tmp_path / "empty.txt").to_list() == []


@pytest.mark.parametrize("ids", [["a\r", "b"], ["a", "a\r"], ["x\ny", "z"], ["\r\n"]], ids=["trailing-cr", "cr-twin", "newline", "crlf"])
def test_vocab_write_never_silently_changes_ids(tmp_path: Path, ids: list[str]) -> None:
    """Ids with line breaks cannot be stored one per line: `write` must refuse them or store
    them so that `read` gives them back; never a different list (the parser does produce ids
    ending in \\r, from a line like `u1\\r 5 ...`)."""
    v = core.Vocab(ids)
    try:
        v.write(tmp_path / "ids.txt")
    except ValueError:
        return
    assert core.Vocab.read(tmp_path / "ids.txt").to_list() == ids


def test_vocab_io_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        core.Vocab.read(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="nodir"):
        core.Vocab(["a"]).write(tmp_path / "nodir" / "ids.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(OSError, match="latin1.txt"):
        core.Vocab.read(tmp_path / "latin1.txt")


def test_stable_hashes_are_deterministic_across_processes(tmp_path: Path) -> None:
    ids = ["uk", "AXYZ123", "", "é"]
    here = core.Vocab(ids).stable_hashes().tolist()
    assert here == [core.stable_hash(s) for s in ids]
    assert len(set(here)) == 4
    code = f"from xmfast import core\nprint(core.Vocab({ids!r}).stable_hashes().tolist(), [core.stable_hash(s) for s in {ids!r}])"
    outs = {run_python(code, tmp_path, {"PYTHONHASHSEED": seed}).stdout for seed in ("0", "1", "12345")}
    assert outs == {f"{here} {here}\n"}


def test_stable_hash_is_pinned() -> None:
    # Random streams (splits, negatives) are keyed by these: a change would change every dataset.
    assert core.stable_hash("uk") == 600521885487022061
    assert core.stable_hash("x") == 3204358148266727566
    assert core.stable_hash("a") == 198367012849983736
    assert core.stable_hash("uk") != core.stable_hash("ku")
    assert 0 <= core.stable_hash("é" * 1000) < 2**64


# ---- dates -----------------------------------------------------------------------------------

def test_parse_and_format_date_round_trip() -> None:
    assert core.parse_date("1970-01-01") == 0
    assert core.parse_date("1969-12-31") == -1
    assert core.parse_date("2000-02-29") == 11016
    assert core.parse_date("9999-12-31") == 2932896
    assert core.parse_date("0001-01-01") == -719162
    for day in [-719162, -1, 0, 1, 11016, 18000, 2932896, *range(-800, 800, 7)]:
        assert core.parse_date(core.format_date(day)) == day
    assert core.format_date(0) == "1970-01-01" and core.format_date(59) == "1970-03-01"


@pytest.mark.parametrize(
    "text",
    ["2020/01/01", "2020-1-01", "20-01-01", "2020-01-01 ", " 2020-01-01", "2020-13-01", "2020-00-10", "2021-02-29",
     "2020-04-31", "2020-01-00", "abcd-ef-gh", "", "+020-01-01", "２０２０-01-01", "2020-01-1x"],
)
def test_parse_date_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"unparsable date"):
        core.parse_date(text)


def _civil_from_days(z: int) -> str:
    """Howard Hinnant's algorithm with Python integers (no overflow)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (m <= 2)
    return f"{y:04}-{m:02}-{d:02}"


@pytest.mark.parametrize("day", [-(2**31), -(2**31) + 1, -1_000_000_000, 1_000_000_000, 2**31 - 719_469, 2**31 - 719_468, 2**31 - 1])
def test_format_date_over_the_whole_day_range(day: int) -> None:
    """Any int32 day number formats to its own date (or is refused), never a wrapped-around one."""
    try:
        text = core.format_date(day)
    except (ValueError, OverflowError):
        return
    assert text == _civil_from_days(day)


# ---- packaging -------------------------------------------------------------------------------

def test_installed_layout(tmp_path: Path) -> None:
    code = """
import importlib.util, xmfast, xmfast_cli, xmfast.core
print(importlib.util.find_spec("cli"))
print(xmfast.__file__)
print(xmfast_cli.__file__)
print(xmfast.core.__file__)
"""
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    spec_cli, xm, cli, ext = proc.stdout.splitlines()
    assert spec_cli == "None"  # no generic top-level `cli` module is installed
    site = Path(xm).parent.parent
    assert Path(cli).parent.parent == site and Path(cli).parent.name == "xmfast_cli"
    assert Path(ext).parent == Path(xm).parent and Path(ext).name.startswith("core.")
    files = [str(f) for f in importlib.metadata.files("xmfast") or []]
    assert not [f for f in files if f.split("/")[0] in ("cli", "purelib")]
    for needed in ("xmfast/py.typed", "xmfast/core.pyi", "xmfast_cli/app.py", "xmfast_cli/__init__.py"):
        assert needed in files, needed
    assert (INSTALLED / "py.typed").is_file() and (INSTALLED / "core.pyi").is_file()
    assert importlib.metadata.version("xmfast") == xmfast.__version__ == core.__version__
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name == "xmfast"}
    assert scripts == {"xmfast": "xmfast_cli.app:main"}


def _stub() -> ast.Module:
    return ast.parse((INSTALLED / "core.pyi").read_text())


def _stub_params(fn: ast.FunctionDef, *, drop_self: bool) -> list[tuple[str, str, object]]:
    a = fn.args
    out: list[tuple[str, str, object]] = []
    positional = a.posonlyargs + a.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(a.defaults)) + [ast.literal_eval(d) for d in a.defaults]
    for arg, default in zip(positional, defaults):
        out.append((arg.arg, "positional", default))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, "keyword", inspect.Parameter.empty if default is None else ast.literal_eval(default)))
    return out[1:] if drop_self and out and out[0][0] == "self" else out


def _runtime_params(obj: object) -> list[tuple[str, str, object]]:
    kinds = {inspect.Parameter.KEYWORD_ONLY: "keyword"}
    return [
        (p.name, kinds.get(p.kind, "positional"), p.default)
        for p in inspect.signature(obj).parameters.values()
        if p.name != "self"
    ]


def test_stub_covers_the_extension() -> None:
    stub = _stub()
    functions = {n.name: n for n in stub.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: n for n in stub.body if isinstance(n, ast.ClassDef)}
    values = {n.target.id for n in stub.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    public = {n for n in dir(core) if not n.startswith("__")} | {"__version__"}
    assert public == set(functions) | set(classes) | values
    for name, fn in functions.items():
        assert callable(getattr(core, name)), name
        assert _stub_params(fn, drop_self=False) == _runtime_params(getattr(core, name)), name
    assert issubclass(core.DataFormatError, ValueError) and [b.id for b in classes["DataFormatError"].bases] == ["ValueError"]
    for cname in ("Vocab", "TrainNegativeSampler"):
        cls = getattr(core, cname)
        members = {n.name: n for n in classes[cname].body if isinstance(n, ast.FunctionDef)}
        runtime = {n for n in dir(cls) if not n.startswith("_")}
        assert runtime == {n for n in members if not n.startswith("_")}, cname
        assert _stub_params(members["__init__"], drop_self=True) == _runtime_params(cls), cname
        for name, fn in members.items():
            assert hasattr(cls, name), (cname, name)
            if name.startswith("_"):
                continue
            decorators = {d.id for d in fn.decorator_list if isinstance(d, ast.Name)}
            if "property" in decorators:
                assert isinstance(inspect.getattr_static(cls, name), type(inspect.getattr_static(core.TrainNegativeSampler, "rows")))
                continue
            assert _stub_params(fn, drop_self="staticmethod" not in decorators) == _runtime_params(getattr(cls, name)), (cname, name)
    assert core.XMARKET_MARKETS == sorted(core.XMARKET_MARKETS) and len(core.XMARKET_MARKETS) == 18
    assert core.num_threads() >= 1
