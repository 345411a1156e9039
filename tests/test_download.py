"""`xmfast download` against a local HTTP server (issue 8): whole files, resumed partial
downloads, a server that ignores ranges, truncated archives and missing files."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

from xmfast.download import XMARKET_CATEGORIES, check_categories, download, rating_file_url
from xmfast.errors import DataError, XmfastError
from xmfast_cli.app import app

RATINGS = "".join(f"u{i} i{i % 97} {1 + i % 5}.0 2016-0{1 + i % 9}-1{i % 10}\n" for i in range(20000)).encode()


class Server:
    """Serves `files` (URL path → bytes) with Range support unless `ranges` is False; records
    the Range header of every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.seen: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = server.files.get(self.path)
                asked = self.headers.get("Range")
                server.seen.append(asked)
                if body is None:
                    self.send_error(404)
                    return
                start = int(asked.split("=")[1].rstrip("-")) if asked and server.ranges else 0
                if start >= len(body) and start:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/XMarket/FULL"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def put(self, market: str, category: str, body: bytes) -> None:
        self.files[urlsplit(rating_file_url(market, category, self.base)).path] = body


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()


def test_whole_files_and_skip_when_complete(server: Server, tmp_path: Path) -> None:
    archive = gzip.compress(RATINGS)
    server.put("uk", "Electronics", archive)
    server.put("de", "Electronics", gzip.compress(RATINGS[:1000]))
    got = download(["uk", "de"], "Electronics", tmp_path, base_url=server.base)
    assert [g.market for g in got] == ["uk", "de"] and not any(g.skipped for g in got)
    assert (tmp_path / "ratings_uk_Electronics.txt.gz").read_bytes() == archive
    assert not list(tmp_path.glob("*.part"))
    again = download(["uk"], "Electronics", tmp_path, base_url=server.base)
    assert again[0].skipped and len(server.seen) == 2  # no third request


def test_a_partial_download_is_resumed_with_a_range_request(server: Server, tmp_path: Path) -> None:
    archive = gzip.compress(RATINGS)
    server.put("in", "Electronics", archive)
    (tmp_path / "ratings_in_Electronics.txt.gz.part").write_bytes(archive[:5000])
    got = download(["in"], "Electronics", tmp_path, base_url=server.base)[0]
    assert server.seen == ["bytes=5000-"] and got.resumed_from == 5000
    assert got.path.read_bytes() == archive
    # a server that ignores ranges sends everything again: the part is replaced, not appended to
    server.ranges = False
    (tmp_path / "ratings_jp_Electronics.txt.gz.part").write_bytes(archive[:5000])
    server.put("jp", "Electronics", archive)
    got = download(["jp"], "Electronics", tmp_path, base_url=server.base)[0]
    assert got.resumed_from == 0 and got.path.read_bytes() == archive


def test_truncated_archives_and_missing_files_are_clean_errors(server: Server, tmp_path: Path) -> None:
    server.put("fr", "Electronics", gzip.compress(RATINGS)[:-100])  # the server itself has a cut file
    with pytest.raises(DataError, match="not a complete gzip archive"):
        download(["fr"], "Electronics", tmp_path, base_url=server.base)
    assert not list(tmp_path.iterdir())  # nothing kept: neither the file nor its part
    with pytest.raises(XmfastError, match="HTTP 404"):
        download(["mx"], "Electronics", tmp_path, base_url=server.base)
    with pytest.raises(XmfastError, match="unknown market code 'zz'"):
        download(["zz"], "Electronics", tmp_path, base_url=server.base)
    with pytest.raises(XmfastError, match="cannot connect"):
        download(["uk"], "Electronics", tmp_path, base_url="http://127.0.0.1:9/x", timeout=5)
    # an existing corrupt file is reported, not silently kept
    (tmp_path / "ratings_ca_Electronics.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="ratings_ca_Electronics.txt.gz: not a complete gzip file"):
        download(["ca"], "Electronics", tmp_path, base_url=server.base)


def test_cli_download_then_prepare(server: Server, tmp_path: Path) -> None:
    for m in ("uk", "in"):
        server.put(m, "Electronics", gzip.compress(RATINGS))
    r = CliRunner().invoke(app, ["download", "--markets", "uk,in", "--out", str(tmp_path / "raw"),
                                 "--base-url", server.base])
    assert r.exit_code == 0, r.output
    assert "uk: " in r.output and "downloaded" in r.output
    # raw files get FOREC's preprocessing, which needs the us file: one line saying how to fetch it
    r = CliRunner().invoke(app, ["prepare", str(tmp_path / "raw"), "--target", "in", "--sources", "all",
                                 "--out", str(tmp_path / "ds")])
    assert r.exit_code == 2 and "xmfast download --markets us --category Electronics" in r.output, r.output
    assert not (tmp_path / "ds").exists()
    r = CliRunner().invoke(app, ["prepare", str(tmp_path / "raw"), "--target", "in", "--sources", "all",
                                 "--out", str(tmp_path / "ds"), "--reference", "none", "--min-user", "1", "--min-item", "1"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["download", "--markets", "uk", "--out", str(tmp_path / "raw"), "--base-url",
                                 server.base + "/nothing"])
    assert "already complete" in r.output  # the file is there and whole: nothing is fetched
    r = CliRunner().invoke(app, ["download", "--markets", "mx", "--out", str(tmp_path / "raw"), "--base-url", server.base])
    assert r.exit_code == 2 and "error:" in r.output and "HTTP 404" in r.output and "Traceback" not in r.output


def test_categories_are_xmarkets_sixteen_and_a_wrong_one_is_named_with_a_suggestion() -> None:
    assert len(XMARKET_CATEGORIES) == 16 and "Electronics" in XMARKET_CATEGORIES and "Home_and_Kitchen" in XMARKET_CATEGORIES
    assert check_categories("all") == list(XMARKET_CATEGORIES)
    assert check_categories("Books, Electronics,Books") == ["Books", "Electronics"]
    for wrong, meant in (("electronics", "Electronics"), ("Toys", "Toys_and_Games"), ("Home_Kitchen", "Home_and_Kitchen")):
        with pytest.raises(XmfastError, match=rf"category '{wrong}': not an XMarket category; did you mean {meant}\? "
                                              r"XMarket's categories are Arts_Crafts_and_Sewing, .*Toys_and_Games \(or all\)"):
            check_categories(wrong)
    with pytest.raises(XmfastError, match=r"'Garden': not an XMarket category; XMarket's"):
        check_categories("Garden")


def test_a_market_without_the_category_is_one_line_and_the_others_are_fetched(server: Server, tmp_path: Path) -> None:
    archive = gzip.compress(RATINGS[:2000])
    server.put("uk", "Books", archive)
    server.put("in", "Books", archive)
    got = download(["uk", "mx", "in"], "Books", tmp_path, base_url=server.base)
    assert [(g.market, g.missing is not None) for g in got] == [("uk", False), ("mx", True), ("in", False)]
    assert got[1].missing == rating_file_url("mx", "Books", server.base)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ratings_in_Books.txt.gz", "ratings_uk_Books.txt.gz"]
    r = CliRunner().invoke(app, ["download", "--markets", "uk,mx", "--category", "Books", "--out", str(tmp_path),
                                 "--base-url", server.base])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # the console wraps long lines
    assert "uk: " in text and "already complete" in text
    assert (f"mx: no Books ratings at {rating_file_url('mx', 'Books', server.base)} (HTTP 404; not every XMarket market "
            "has every category)") in text


def test_every_category_at_once_and_the_list(server: Server, tmp_path: Path) -> None:
    server.put("jp", "Automotive", gzip.compress(RATINGS[:500]))
    server.put("jp", "Toys_and_Games", gzip.compress(RATINGS[:700]))
    got = download(["jp"], "all", tmp_path, base_url=server.base)
    assert [g.category for g in got] == list(XMARKET_CATEGORIES)
    assert [g.category for g in got if not g.missing] == ["Automotive", "Toys_and_Games"]
    assert (tmp_path / "ratings_jp_Toys_and_Games.txt.gz").read_bytes() == gzip.compress(RATINGS[:700])
    r = CliRunner().invoke(app, ["download", "--list"])
    assert r.exit_code == 0 and "Arts_Crafts_and_Sewing" in r.output and "Toys_and_Games" in r.output and "us" in r.output
    r = CliRunner().invoke(app, ["download", "--markets", "jp", "--out", str(tmp_path), "--category", "Toys"])
    assert r.exit_code == 2 and "did you mean Toys_and_Games?" in r.output and "Traceback" not in r.output
