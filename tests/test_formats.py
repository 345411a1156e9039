"""File formats beyond XMarket's: the same ratings written as XMarket files, CSV with odd column
names and quoted extra columns, TSV, RecBole `.inter` and Parquet read to identical arrays and
vocabularies; the delimited parser against Python's `csv` module; and each bad input's error."""

from __future__ import annotations

import csv
import datetime as dt
import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write_text
from xmfast import core
from xmfast.errors import DataError
from xmfast.ratings import CSV, INTER, PARQUET, TSV, XMARKET, Columns, FileFormat, Ratings, read_ratings

EPOCH = dt.date(1970, 1, 1)


def arrays(r: Ratings) -> tuple:
    return (r.markets, r.users.to_list(), r.items.to_list(), r.market.tolist(), r.user.tolist(),
            r.item.tolist(), r.rating.tolist(), r.day.tolist())


def csv_text(rows: list[list[object]], delimiter: str = ",") -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return out.getvalue()


# Ids without whitespace (XMarket's separator) but with every character CSV must quote.
ID = st.text(alphabet="ab7_,;|\"'-é", min_size=1, max_size=4)
ROW = st.tuples(ID, ID, st.sampled_from([1.0, 2.5, 4.0, 5.0]), st.integers(-800, 25_000), st.integers(0, 86_399))
TABLE = st.lists(
    st.tuples(st.sampled_from(["north", "south", "east-1"]), st.lists(ROW, min_size=1, max_size=6)),
    min_size=1, max_size=3, unique_by=lambda m: m[0],
)


@settings(max_examples=15, deadline=None)
@given(table=TABLE)
def test_every_format_gives_the_same_arrays(tmp_path_factory: pytest.TempPathFactory, table: list) -> None:
    tmp = tmp_path_factory.mktemp("formats")
    date = lambda day: (EPOCH + dt.timedelta(days=day)).isoformat()  # noqa: E731
    xmarket, tsv, inter = [], [], []
    odd = [["note", "Stars", "Product", "Reviewer", "When", "Where"]]
    pq_cols: dict[str, list] = {"market": [], "user_id": [], "item_id": [], "rating": [], "ts": []}
    for market, rows in table:
        lines = ["userId itemId rate date"] + [f"{u} {i} {r} {date(d)}" for u, i, r, d, _ in rows]
        xmarket.append((market, write_text(tmp / f"{market}_5core.txt", "\n".join(lines) + "\n")))
        for u, i, r, d, s in rows:
            odd.append([f'a "{u}", {s}', r, i, u, d * 86_400 + s, market])  # seconds within the day
            for k, v in zip(pq_cols, [market, u, i, r, dt.datetime(1970, 1, 1) + dt.timedelta(days=d, seconds=s)]):
                pq_cols[k].append(v)
        tsv_rows = [["user", "date", "item", "rate"]] + [[u, f"{date(d)} 12:00:00", i, r] for u, i, r, d, _ in rows]
        tsv.append((market, write_text(tmp / f"{market}.tsv", csv_text(tsv_rows, "\t")), TSV))
        inter_rows = [["user_id:token", "item_id:token", "rating:float", "timestamp:float"]]
        inter_rows += [[u, i, r, d * 86_400 + s + 0.25] for u, i, r, d, s in rows]  # float seconds
        inter.append((market, write_text(tmp / f"{market}.inter", csv_text(inter_rows, "\t")), INTER))
    want = arrays(read_ratings(xmarket))
    mapping = Columns.mapping(user="Reviewer", item="Product", rating="Stars", time="When", market="Where")
    gz = write_text(tmp / "all.csv.gz", csv_text(odd), gz=True)
    assert arrays(read_ratings([(None, gz, FileFormat("delimited", ",", mapping))])) == want
    assert arrays(read_ratings(tsv)) == want
    assert arrays(read_ratings(inter)) == want
    pq.write_table(pa.table({**pq_cols, "ts": pa.array(pq_cols["ts"], pa.timestamp("ms"))}), tmp / "all.parquet",
                   row_group_size=3)  # several batches
    parquet = FileFormat("parquet", columns=Columns(time=("ts",)))
    assert arrays(read_ratings([(None, tmp / "all.parquet", parquet)])) == want


def test_mixed_formats_share_vocabularies_and_record_each_file(tmp_path: Path) -> None:
    uk = write_text(tmp_path / "uk_5core.txt", "userId itemId rate date\nu1 i1 5.0 2020-01-02\n")
    csv_file = write_text(tmp_path / "de.csv", "userId,itemId,time\nu2,i1,1577923200\nu1,i2,2020-01-03\n")
    table = pa.table({"user": [7, 8], "item": ["i2", "i3"], "date": pa.array([dt.date(2020, 1, 4)] * 2, pa.date32()),
                      "market": ["t1", "t2"]})
    pq.write_table(table, tmp_path / "more.parquet")
    r = read_ratings([("uk", uk), ("de", csv_file, CSV), (None, tmp_path / "more.parquet", PARQUET)])
    assert r.markets == ["uk", "de", "t1", "t2"]
    assert r.users.to_list() == ["u1", "u2", "7", "8"] and r.items.to_list() == ["i1", "i2", "i3"]
    assert r.user.tolist() == [0, 1, 0, 2, 3] and r.item.tolist() == [0, 0, 1, 1, 2]
    assert r.rating.tolist() == [5.0, 1.0, 1.0, 1.0, 1.0]  # no rating column: every rating is 1.0
    assert r.day.tolist() == [18263, 18263, 18264, 18265, 18265]
    assert [(f["market"], f["rows"], f["blake3"]) for f in r.files] == [
        (m, n, core.file_digest(p)) for m, n, p in [("uk", 1, uk), ("de", 2, csv_file), ("t1,t2", 2, tmp_path / "more.parquet")]
    ]
    assert arrays(read_ratings([("uk", uk)])) == arrays(read_ratings([("uk", uk, XMARKET)]))
    kept = r.drop_markets(["t2", "uk"])  # the Parquet file held t1 and t2: kept with t2
    assert [f["market"] for f in kept.files] == ["uk", "t1,t2"] and kept.market.tolist() == [1, 0]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.text(alphabet='ab ,;"\t|é', min_size=0, max_size=6),  # extra: may be empty
                            st.text(alphabet='ab ,;"\t|', min_size=1, max_size=6)), min_size=1, max_size=12),
    delimiter=st.sampled_from([",", "\t", ";", "|"]),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
)
def test_delimited_parser_agrees_with_the_csv_module(tmp_path_factory: pytest.TempPathFactory, rows, delimiter, quoting) -> None:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, quoting=quoting, lineterminator="\r\n")
    writer.writerow(["extra", "user", "item", "time"])
    writer.writerows([[e, u, "i", 0] for e, u in rows])
    f = write_text(tmp_path_factory.mktemp("csv") / "f.csv", out.getvalue())
    expected = [row[1] for row in csv.reader(io.StringIO(out.getvalue(), newline=""), delimiter=delimiter)][1:]
    r = read_ratings([("uk", f, FileFormat("delimited", delimiter))])
    assert [r.users[int(u)] for u in r.user] == expected


@pytest.mark.parametrize(
    ("text", "fmt", "market", "message"),
    [
        ("reviewer,asin,when\nu,i,0\n", CSV, "uk",
         "f.csv:1: column `user` not found in the header (tried: user, userId, user_id, reviewerID); "
         "the header's fields are: reviewer, asin, when"),
        ("user,item,time,overall\nu,i,0,5\n", FileFormat("delimited", ",", Columns.mapping(rating="stars")), "uk",
         "f.csv:1: column `rating` not found in the header (tried: stars)"),
        ("user,item,time\nu,i,soon\n", CSV, "uk", 'f.csv:2: unparsable time "soon" (expected YYYY-MM-DD or Unix seconds)'),
        ("user,item,time,rating\nu,i,0,good\n", CSV, "uk", 'f.csv:2: non-numeric rating "good"'),
        ("user,item,time\nu,i\n", CSV, "uk", "f.csv:2: expected at least 3 fields separated by ','"),
        ("user,item,time,market\nu,i,0,north\nu,i,0,east 1\n", CSV, None,
         'f.csv:3: market name "east 1" is not valid: use letters, digits, `_` and `-` only'),
        ("user,item,time\n", CSV, "uk", "f.csv: no ratings in file (empty, or only a header)"),
        ('user,item,time\n"u,i,0\n', CSV, "uk", "f.csv:2: unterminated quoted field"),
        ('user,item,time\nu,"",0\n', CSV, "uk", "f.csv:2: empty item id"),
    ],
)
def test_each_bad_input_is_one_error_naming_file_and_line(tmp_path: Path, text, fmt, market, message) -> None:
    f = write_text(tmp_path / "f.csv", text)
    with pytest.raises(DataError) as e:
        read_ratings([(market, f, fmt)])
    assert str(e.value).replace(str(tmp_path) + "/", "").startswith(message)


def test_parquet_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"user": ["u", "v"], "item": ["i", None], "time": [0.0, 1.0]}), f)
    with pytest.raises(DataError, match=r"t\.parquet: row 2: column 'item' \(item\) is empty \(null\)"):
        read_ratings([("uk", f, PARQUET)])
    with pytest.raises(DataError, match=r"t\.parquet: column `rating` not found in the header \(tried: stars\)"):
        read_ratings([("uk", f, FileFormat("parquet", columns=Columns.mapping(rating="stars")))])
    with pytest.raises(DataError, match=r"no market given for this file and its market column `market` not found"):
        read_ratings([(None, f, PARQUET)])
    pq.write_table(pa.table({"user": ["u", "v"], "item": ["i", "j"], "time": [0.0, float("nan")]}), f)
    with pytest.raises(DataError, match=r"t\.parquet: row 2: time nan in column 'time' is not a number of seconds"):
        read_ratings([("uk", f, PARQUET)])
    pq.write_table(pa.table({"user": ["u"], "item": ["i"], "time": ["2020-02-30"]}), f)
    with pytest.raises(DataError, match=r't\.parquet: row 1: unparsable date "2020-02-30": day 30 does not exist'):
        read_ratings([("uk", f, PARQUET)])
    write_text(tmp_path / "not.parquet", "user,item,time\n")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_ratings([("uk", tmp_path / "not.parquet", PARQUET)])
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(DataError, match=r'reading Parquet needs pyarrow: pip install "xmfast\[parquet\]"'):
        read_ratings([("uk", f, PARQUET)])


def test_parquet_time_types_give_days(tmp_path: Path) -> None:
    f = tmp_path / "t.parquet"
    moments = [-1, 0, 86_399, 86_400, 1_577_923_200]
    want = [-1, 0, 0, 1, 18_263]
    for column in [
        pa.array(moments, pa.int64()),
        pa.array([m + 0.5 for m in moments], pa.float64()),
        pa.array([m * 1_000_000 for m in moments], pa.timestamp("us", tz="UTC")),
        pa.array([EPOCH + dt.timedelta(days=d) for d in want], pa.date32()),  # Parquet keeps dates as days
        pa.array([(EPOCH + dt.timedelta(seconds=m)).isoformat() for m in moments]),
    ]:
        pq.write_table(pa.table({"user": ["u"] * 5, "item": ["i"] * 5, "time": column}), f)
        assert read_ratings([("uk", f, PARQUET)]).day.tolist() == want, column.type


def test_columns_and_formats_are_checked(tmp_path: Path) -> None:
    assert Columns.mapping(user="a", rating=None) == Columns(user=("a",), rating=None)
    assert Columns.mapping(rating=["x", "y"]).required == frozenset({"rating"})
    with pytest.raises(DataError, match="unknown role stars"):
        Columns.mapping(stars="x")
    with pytest.raises(DataError, match="`user` needs a tuple"):
        Columns(user="reviewerID")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="delimiter ':' is not supported"):
        FileFormat("delimited", ":")
    with pytest.raises(DataError, match="no market given, and the xmarket format names no market column"):
        read_ratings([(None, tmp_path / "uk_5core.txt", XMARKET)])
    assert core.check_market_name("east-1") and not core.check_market_name("east 1") and not core.check_market_name("")
    assert np.array_equal(read_ratings([("uk", write_text(tmp_path / "a.csv", "user;item;time\nu;i;0\n"),
                                         FileFormat("delimited", ";"))]).day, [0])
