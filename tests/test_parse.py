"""Parsing XMarket files: hand-computed cases, bad input, a differential property test against a
plain-Python parser, fuzzing, and the real files' known counts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import MARKETS_7, write_text
from xmfast import core
from xmfast.errors import DataError
from xmfast.ratings import read_ratings

EPOCH = dt.date(1970, 1, 1)


def days(text: str) -> int:
    return (dt.date.fromisoformat(text) - EPOCH).days


def test_processed_file_by_hand(tmp_path: Path) -> None:
    f = write_text(tmp_path / "uk_5core.txt", "userId itemId rate date\nu1 B1 5.0 2020-01-02\nu2 B1 4.0 2020-01-03\nu1 B2 3.5 2019-12-31\n")
    r = read_ratings([("uk", f)])
    assert r.markets == ["uk"]
    assert r.users.to_list() == ["u1", "u2"] and r.items.to_list() == ["B1", "B2"]
    assert r.user.tolist() == [0, 1, 0] and r.item.tolist() == [0, 0, 1]
    assert r.rating.dtype == np.float32 and r.rating.tolist() == [5.0, 4.0, 3.5]
    assert r.day.tolist() == [days("2020-01-02"), days("2020-01-03"), days("2019-12-31")]
    assert r.files[0]["had_header"] and not r.files[0]["gzip"] and r.files[0]["rows"] == 3


def test_raw_gzip_without_header_and_shared_item_vocabulary(tmp_path: Path) -> None:
    uk = write_text(tmp_path / "uk_5core.txt", "userId itemId rate date\nu1 B1 5.0 2020-01-02\n")
    de = write_text(tmp_path / "ratings_de_Electronics.txt.gz", "x B2 1.0 2018-05-05\r\nu1\tB1 2.0 2018-05-06\n", gz=True)
    r = read_ratings([("uk", uk), ("de", de)])
    assert r.markets == ["uk", "de"]
    assert r.market.tolist() == [0, 1, 1]
    # Items are one vocabulary across markets; so are users (u1 is one id in both).
    assert r.item.tolist() == [0, 1, 0]
    assert r.user.tolist() == [0, 1, 0]
    assert r.files[1]["gzip"] and not r.files[1]["had_header"]


BAD_INPUTS = [
    ("wrong separator", "u1,B1,5.0,2020-01-02\n", "f.txt:1: expected 4 columns (userId itemId rate date), found 1 (the line contains ','"),
    ("too many columns", "u1 B1 5.0 2020-01-02 extra\n", "f.txt:1: expected 4 columns (userId itemId rate date), found more"),
    ("too few columns", "u1 B1 5.0\n", "f.txt:1: expected 4 columns (userId itemId rate date), found 3"),
    ("non-numeric rating", "u1 B1 5.0 2020-01-02\nu2 B1 five 2020-01-02\n", 'f.txt:2: non-numeric rating "five"'),
    ("infinite rating", "u1 B1 inf 2020-01-02\n", 'f.txt:1: rating "inf" is not a finite number'),
    ("bad date", "u1 B1 5.0 2020/01/02\n", 'f.txt:1: unparsable date "2020/01/02" (expected YYYY-MM-DD)'),
    ("impossible date", "u1 B1 5.0 2021-02-29\n", 'f.txt:1: unparsable date "2021-02-29": day 29 does not exist'),
    ("non-UTF-8 id", b"u1 B1 5.0 2020-01-02\nu\xe9 B1 5.0 2020-01-02\n", "f.txt:2: userId is not valid UTF-8"),
    ("duplicate header", "userId itemId rate date\nu1 B1 5.0 2020-01-02\nuserId itemId rate date\n", "f.txt:3: duplicate header"),
    ("malformed header", "userId item rate date\n", "f.txt:1: malformed header"),
    ("empty file", "", "f.txt: no ratings in file"),
    ("header only", "userId itemId rate date\n", "f.txt: no ratings in file"),
]


@pytest.mark.parametrize(("case", "content", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_names_file_and_line(tmp_path: Path, case: str, content: str | bytes, message: str) -> None:
    f = write_text(tmp_path / "f.txt", content)
    with pytest.raises(core.DataFormatError) as exc:
        core.read_ratings([("uk", str(f))])
    text = str(exc.value)
    assert text.startswith(str(tmp_path / message.split(":")[0])), text
    assert message.split("f.txt", 1)[1] in text
    assert "\n" not in text
    # The library wraps it into the user-facing error type.
    with pytest.raises(DataError):
        read_ratings([("uk", f)])


def test_truncated_gzip_and_missing_file(tmp_path: Path) -> None:
    body = "".join(f"user{i} B{i % 97} 4.0 2020-01-01\n" for i in range(5000))
    f = write_text(tmp_path / "ratings_uk_Electronics.txt.gz", body, gz=True)
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(core.DataFormatError, match=r"ratings_uk_Electronics\.txt\.gz: truncated gzip"):
        core.read_ratings([("uk", str(f))])
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        core.read_ratings([("uk", str(tmp_path / "nope.txt"))])
    with pytest.raises(DataError, match="nope.txt"):
        read_ratings([("uk", tmp_path / "nope.txt")])


def test_error_line_numbers_are_exact_in_large_files(tmp_path: Path) -> None:
    lines = [f"user{i % 1000} B{i % 333} 4.0 2020-01-01" for i in range(300_000)]
    lines[271_828] = "user1 B1 4.0 2020-13-01"
    f = write_text(tmp_path / "big.txt", "userId itemId rate date\n" + "\n".join(lines) + "\n")
    with pytest.raises(core.DataFormatError, match=r"big\.txt:271830: unparsable date"):
        core.read_ratings([("uk", str(f))])


# ---- differential: the Rust parser against a plain Python one ---------------------------------

id_text = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=6)
row = st.tuples(
    id_text,
    id_text,
    st.sampled_from(["1.0", "2", "3.5", "4.0", "5.0", "0.25"]),
    st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(2030, 12, 31)),
)


def plain_parse(rows: list[tuple[str, str, str, dt.date]]) -> tuple[list[str], list[str], list[int], list[int], list[float], list[int]]:
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u, i, r, d = [], [], [], []
    for user, item, rating, date in rows:
        u.append(users.setdefault(user, len(users)))
        i.append(items.setdefault(item, len(items)))
        r.append(float(np.float32(rating)))
        d.append((date - EPOCH).days)
    return list(users), list(items), u, i, r, d


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(row, min_size=1, max_size=80), header=st.booleans(), sep=st.sampled_from([" ", "\t", "  "]))
def test_parser_matches_plain_python(tmp_path_factory: pytest.TempPathFactory, rows: list, header: bool, sep: str) -> None:
    text = ("userId itemId rate date\n" if header else "") + "".join(
        sep.join([u, i, r, d.isoformat()]) + "\n" for u, i, r, d in rows
    )
    f = write_text(tmp_path_factory.mktemp("p") / "m.txt", text)
    got = core.read_ratings([("uk", str(f))])
    users, items, u, i, r, d = plain_parse(rows)
    assert got["users"].to_list() == users
    assert got["items"].to_list() == items
    assert got["user"].tolist() == u and got["item"].tolist() == i
    assert got["rating"].tolist() == r and got["day"].tolist() == d


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | st.text(alphabet="ab1 .\n\t-:2019\r,é", max_size=200).map(str.encode))
def test_random_bytes_give_clean_errors_only(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    f = write_text(tmp_path_factory.mktemp("fuzz") / "f.txt", data)
    try:
        core.read_ratings([("uk", str(f))])
    except core.DataFormatError as e:
        assert str(e).startswith(str(f)) and "\n" not in str(e)


@settings(max_examples=200, deadline=None)
@given(st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31)))
def test_dates_match_the_python_calendar(date: dt.date) -> None:
    assert core.parse_date(date.isoformat()) == (date - EPOCH).days
    assert core.format_date((date - EPOCH).days) == date.isoformat()


# ---- the real files --------------------------------------------------------------------------

def test_real_xmarket_counts(xmarket_dir: Path) -> None:
    r = read_ratings([(m, xmarket_dir / f"{m}_5core.txt") for m in MARKETS_7])
    expected = {"uk": (3352, 3251, 31547), "ca": (4668, 5735, 44779), "in": (239, 470, 2015),
                "de": (1851, 2179, 17300), "fr": (1838, 1879, 17624), "jp": (487, 955, 4485), "mx": (1878, 1645, 17095)}
    for name, (users, items, ratings) in expected.items():
        sel = r.market == r.market_index(name)
        assert (np.unique(r.user[sel]).size, np.unique(r.item[sel]).size, int(sel.sum())) == (users, items, ratings), name
    assert len(r.items) == 8304
    assert len(r.users) == 14311
    assert len(r) == 134845
    # Original ids are kept: the first data row of in_5core.txt maps back exactly.
    first = (xmarket_dir / "in_5core.txt").read_text().splitlines()[1].split()
    row = int(np.flatnonzero(r.market == r.market_index("in"))[0])
    assert r.users[int(r.user[row])] == first[0] and r.items[int(r.item[row])] == first[1]
    assert core.format_date(int(r.day[row])) == first[3]
