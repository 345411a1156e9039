"""Bad input found by the input-error audit, each through the CLI: one `error:` line naming the
file (and line) and what to do, exit status 2, no traceback, nothing already written changed.
Also: rating files starting with a UTF-8 byte-order mark parse like those without, and random
bytes (plain or gzipped) either parse or raise DataError."""

from __future__ import annotations

import gzip
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import write_text
from test_cli import assert_user_error, dir_bytes, invoke
from xmfast import trec
from xmfast.dataset import PreparedDataset
from xmfast.errors import U32_MAX, DataError, XmfastError
from xmfast.evaluation import EvalConfig, read_scores
from xmfast.prepare import KCore, PrepareConfig
from xmfast.ratings import read_ratings
from xmfast.recommend import select_groups
from xmfast.synth import SynthConfig

BOM = b"\xef\xbb\xbf"


# ---- 1. integer options the Rust core takes as u32 (or u64) ----------------------------------

@pytest.mark.parametrize("option", ["--min-user", "--min-item", "--reference-min-user", "--reference-min-item",
                                    "--eval-negatives"])
@pytest.mark.parametrize("value", [99999999999, U32_MAX + 1])
def test_prepare_integer_options_beyond_u32_name_the_option(sample_dir: Path, tmp_path: Path, option: str, value: int) -> None:
    out = tmp_path / "out"
    assert_user_error(invoke("prepare", sample_dir, "-t", "in", "-o", out, "--reference-market", "uk", option, value),
                      f"{option} must be at most {U32_MAX}, got {value}")
    assert not out.exists()


def test_prepare_accepts_the_u32_bound_and_too_many_negatives_is_a_clean_error(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # The largest u32 passes the option check; the k-core then leaves nothing (no overflow).
    assert_user_error(invoke("prepare", sample_dir, "-t", "in", "-o", out, "--min-item", U32_MAX),
                      "market in: no ratings left")
    # As many negatives as a u32 holds: refused before a candidate matrix of that width is
    # allocated (which used to abort the process).
    assert_user_error(invoke("prepare", sample_dir, "-t", "in", "-o", out, "--eval-negatives", U32_MAX),
                      "market in, user", "lower the number of evaluation negatives")
    assert not out.exists()


def test_the_library_configurations_check_the_bounds_too() -> None:
    with pytest.raises(XmfastError, match=f"min_user must be at most {U32_MAX}"):
        KCore(min_user=U32_MAX + 1)
    with pytest.raises(XmfastError, match="min_item must be an integer"):
        KCore(min_item=2.5)  # type: ignore[arg-type]
    with pytest.raises(XmfastError, match="evaluation negatives must be at most"):
        PrepareConfig(target="in", eval_negatives=U32_MAX + 1)
    with pytest.raises(XmfastError, match="items must be at most"):
        SynthConfig(items=U32_MAX + 1)
    with pytest.raises(XmfastError, match="seed must be at least 0"):
        SynthConfig(seed=-1)
    assert KCore(np.int64(5), 3).min_user == 5  # numpy integers are integers


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--items", "99999999999", f"--items must be at most {U32_MAX}"),
        ("--topics", str(U32_MAX + 1), f"--topics must be at most {U32_MAX}"),
        ("--min-per-user", str(U32_MAX + 1), f"--min-per-user must be at most {U32_MAX}"),
        ("--ratings", "-5", "--ratings must be at least 1, got -5"),
        ("--ratings", "0", "--ratings must be at least 1, got 0"),
        ("--ratings", "20", "ratings 20 is too few for market in to get one user (9 ratings per user on average); "
                            "give at least 25"),
        ("--ratings", str(2**64), f"--ratings must be at most {2**64 - 1}"),
        ("--seed", "-1", "--seed must be at least 0, got -1"),
        ("--items", "0", "--items must be at least 1, got 0"),
        ("--topics", "0", "--topics must be at least 1, got 0"),
        ("--min-per-user", "0", "--min-per-user must be at least 1, got 0"),
        ("--mean-per-user", "nan", "--mean-per-user must be a number at least --min-per-user (5), got nan"),
        ("--mean-per-user", "4.5", "--mean-per-user must be a number at least --min-per-user (5), got 4.5"),
    ],
)
def test_synth_integer_options_name_the_option(tmp_path: Path, option: str, value: str, message: str) -> None:
    assert_user_error(invoke("synth", tmp_path / "s", option, value), message)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"items": 0}, "items must be at least 1, got 0"),
        ({"mean_per_user": float("nan")}, "mean_per_user must be a number at least min_per_user (5), got nan"),
        ({"focus": 1.5}, "focus is a share, between 0 and 1, got 1.5"),
        ({"focus": float("nan")}, "focus is a share, between 0 and 1, got nan"),
        ({"size_decay": float("inf")}, "size_decay must be a number at least 0, got inf"),
        ({"size_decay": -0.5}, "size_decay must be a number at least 0, got -0.5"),
    ],
)
def test_synth_config_rejects_settings_the_generator_cannot_use(setting: dict, message: str) -> None:
    with pytest.raises(XmfastError, match=re.escape(message)):
        SynthConfig(**setting)


def test_recommend_k_beyond_u32_names_the_option(tmp_path: Path) -> None:
    assert_user_error(invoke("recommend", tmp_path / "run", "-u", "x", "--k", "99999999999"),
                      f"--k must be at most {U32_MAX}, got 99999999999")
    assert_user_error(invoke("recommend", tmp_path / "run", "-u", "x", "--k", "0"), "--k must be at least 1")


def test_evaluate_cutoffs_beyond_u32_name_the_option(dataset: Path) -> None:
    assert_user_error(invoke("evaluate", dataset, "--baseline", "pop", "--cutoffs", "5,99999999999"),
                      f"--cutoffs must be at most {U32_MAX}, got 99999999999")
    result = invoke("evaluate", dataset, "--baseline", "pop", "--cutoffs", f"5,{U32_MAX}", "--measures", "hr")
    assert result.exit_code == 0, result.output
    with pytest.raises(XmfastError, match=f"cut-off must be at most {U32_MAX}"):
        EvalConfig(cutoffs=(U32_MAX + 1,))


# ---- 2. a UTF-8 byte-order mark at the start of a rating file ----------------------------------

@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("header", [True, False], ids=["header", "no-header"])
def test_a_bom_file_parses_the_same_as_without(tmp_path: Path, gz: bool, header: bool) -> None:
    text = ("userId itemId rate date\n" if header else "") + "u1 B1 5.0 2020-01-02\nu2 B1 4.0 2020-01-03\nu1 B2 3.5 2019-12-31\n"
    plain = read_ratings([("uk", write_text(tmp_path / "plain.txt", text, gz=gz))])
    marked = read_ratings([("uk", write_text(tmp_path / "bom.txt", BOM + text.encode(), gz=gz))])
    assert marked.users.to_list() == plain.users.to_list() == ["u1", "u2"]
    assert marked.items.to_list() == plain.items.to_list()
    for column in ("market", "user", "item", "rating", "day"):
        np.testing.assert_array_equal(getattr(marked, column), getattr(plain, column))
    assert marked.files[0]["had_header"] == plain.files[0]["had_header"] == header
    assert marked.files[0]["rows"] == 3


def test_prepare_of_bom_files_gives_the_same_dataset(sample_dir: Path, tmp_path: Path, dataset: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("in_5core.txt", "uk_5core.txt"):
        (data / name).write_bytes(BOM + (sample_dir / name).read_bytes())
    result = invoke("prepare", data, "-t", "in", "-s", "uk", "-o", tmp_path / "ds")
    assert result.exit_code == 0, result.output
    got, want = PreparedDataset.load(tmp_path / "ds").arrays(), PreparedDataset.load(dataset).arrays()
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert (tmp_path / "ds" / "users.txt").read_bytes() == (dataset / "users.txt").read_bytes()
    assert (tmp_path / "ds" / "items.txt").read_bytes() == (dataset / "items.txt").read_bytes()


def test_a_utf16_file_says_so(tmp_path: Path) -> None:
    f = tmp_path / "uk_5core.txt"
    f.write_bytes("userId itemId rate date\nu1 B1 5.0 2020-01-02\n".encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16 text .*save it as UTF-8"):
        read_ratings([("uk", f)])


# ---- 3. a manifest whose format_version is not a version number --------------------------------

@pytest.mark.parametrize(
    ("value", "message"),
    [("1", "format_version is '1', not an integer"), (None, "format_version is None, not an integer"),
     (1.0, "format_version is 1.0, not an integer"), (True, "format_version is True, not an integer"),
     ("missing", "no format_version")],
    ids=["string", "null", "float", "bool", "missing"],
)
def test_manifest_format_version_of_the_wrong_type_or_missing(dataset: Path, tmp_path: Path, value, message: str) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    manifest = json.loads((ds / "manifest.json").read_text())
    if value == "missing":
        del manifest["format_version"]
    else:
        manifest["format_version"] = value
    (ds / "manifest.json").write_text(json.dumps(manifest))
    before = dir_bytes(ds)
    for args in (["stats", ds], ["evaluate", ds, "--baseline", "pop"]):
        assert_user_error(invoke(*args), f"{ds / 'manifest.json'}: {message}", "xmfast prepare")
    assert dir_bytes(ds) == before


# ---- 4. scores files ---------------------------------------------------------------------------

def _scores_files(d: Path, shape: tuple[int, int]) -> dict[str, tuple[Path, str]]:
    """name: (file, expected fragment of the error after the file name)."""
    ok = np.random.default_rng(0).random(shape)
    np.save(d / "ok.npy", ok)
    raw = (d / "ok.npy").read_bytes()
    files: dict[str, tuple[Path, str]] = {}

    def add(name: str, content: bytes, fragment: str) -> None:
        (d / name).write_bytes(content)
        files[name] = (d / name, fragment)

    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    files["pickled-object-array"] = (d / "objects.npy", "holds Python objects (a pickled object array)")
    add("pickle.npy", pickle.dumps([1.0, 2.0]), "not a .npy file (no NumPy header)")
    add("text.npy", b"0.1 0.2 0.3\n", "not a .npy file (no NumPy header)")
    add("empty.npy", b"", "not a .npy file (no NumPy header)")
    add("truncated.npy", raw[: len(raw) // 2], "damaged .npy file")
    add("header-only.npy", raw[:20], "damaged .npy file")
    add("scores.csv", b"0.1,0.2,0.3\n", ":1: expected 6 columns")
    add("scores.pkl", pickle.dumps([1.0, 2.0]), "not UTF-8 text")
    np.savez(d / "scores.npz", a=ok)
    files["npz"] = (d / "scores.npz", "a zip archive (.npz?)")
    np.save(d / "shape.npy", ok[:, :7])
    files["wrong-shape"] = (d / "shape.npy", f"scores have shape {(shape[0], 7)} but the test candidates have shape {shape}")
    np.save(d / "complex.npy", ok.astype(complex))
    files["complex"] = (d / "complex.npy", "scores must be a float array, not complex128")
    nan = ok.copy()
    nan[3, 5] = nan[7, 0] = np.nan
    np.save(d / "nan.npy", nan)
    files["nan"] = (d / "nan.npy", "2 scores are NaN (first: row 3, column 5)")
    files["missing"] = (d / "nope.npy", "no such scores file")
    (d / "a-directory").mkdir()
    files["directory"] = (d / "a-directory", "a directory, not a scores file")
    return files


def test_bad_scores_files_name_the_file(dataset: Path, tmp_path: Path) -> None:
    shape = PreparedDataset.load(dataset).test.candidates.shape
    json_out = tmp_path / "results.json"  # an earlier evaluation, which a failed one must leave as it is
    assert invoke("evaluate", dataset, "--baseline", "pop", "--json", json_out).exit_code == 0
    before = json_out.read_bytes()
    for name, (path, fragment) in _scores_files(tmp_path, shape).items():
        line = assert_user_error(invoke("evaluate", dataset, "--scores", path, "--json", json_out), f"{path}", fragment)
        assert line.startswith(f"error: {path}"), (name, line)
        assert "allow_pickle" not in line, line  # numpy's advice would be unsafe to follow
    assert json_out.read_bytes() == before


def test_a_npy_matrix_is_recognised_by_its_header_whatever_the_name(dataset: Path, tmp_path: Path) -> None:
    ds = PreparedDataset.load(dataset)
    scores = np.random.default_rng(1).random(ds.test.candidates.shape).astype(np.float32)
    np.save(tmp_path / "s.npy", scores)
    (tmp_path / "scores.bin").write_bytes((tmp_path / "s.npy").read_bytes())
    np.testing.assert_array_equal(read_scores(tmp_path / "scores.bin", ds, "test"), scores)
    result = invoke("evaluate", dataset, "--scores", tmp_path / "scores.bin")
    assert result.exit_code == 0, result.output


@settings(max_examples=150, deadline=None)
@given(tail=st.binary(max_size=200))
def test_random_npy_bodies_give_clean_errors_only(dataset: Path, tmp_path_factory: pytest.TempPathFactory, tail: bytes) -> None:
    f = tmp_path_factory.mktemp("npy") / "s.npy"
    f.write_bytes(b"\x93NUMPY" + tail)
    try:
        read_scores(f, PreparedDataset.load(dataset), "test")
    except XmfastError as e:
        assert str(e).startswith(str(f)) and "\n" not in str(e), str(e)


# ---- 5. a TREC run without some queries of the qrels --------------------------------------------

@pytest.fixture(scope="module")
def trec_files(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("trec")
    np.save(d / "s.npy", np.random.default_rng(2).random(PreparedDataset.load(dataset).test.candidates.shape))
    result = invoke("evaluate", dataset, "--scores", d / "s.npy", "--trec-run", d / "run", "--trec-qrels", d / "qrels")
    assert result.exit_code == 0, result.output
    return d / "run", d / "qrels"


def test_a_run_missing_queries_of_the_qrels_is_an_error(trec_files: tuple[Path, Path], tmp_path: Path) -> None:
    run, qrels = trec_files
    assert invoke("evaluate", "--trec-run", run, "--trec-qrels", qrels).exit_code == 0
    qids = [line.split()[0] for line in qrels.read_text().splitlines()]
    dropped = set(qids[:3])
    short = tmp_path / "short.run"
    short.write_text("".join(line + "\n" for line in run.read_text().splitlines() if line.split()[0] not in dropped))
    json_out = tmp_path / "results.json"  # an earlier evaluation, which a failed one must leave as it is
    assert invoke("evaluate", "--trec-run", run, "--trec-qrels", qrels, "--json", json_out).exit_code == 0
    before = json_out.read_bytes()
    assert_user_error(invoke("evaluate", "--trec-run", short, "--trec-qrels", qrels, "--json", json_out),
                      f"{short}: no lines for 3 of the {len(qids):,} queries in {qrels}", f"(first: {sorted(dropped)[0]})")
    assert json_out.read_bytes() == before
    # The library can still count them as misses, as trec_eval -c does, and says how many.
    ev = trec.evaluate_run(trec.read_run(short), trec.read_qrels(qrels), EvalConfig(), allow_missing=True)
    assert ev.info["missing_queries"] == 3 and ev.info["unretrieved"] >= 3
    assert np.all(ev.values[[sorted(qids).index(q) for q in dropped]] == 0)


def test_qrels_errors_name_the_qrels_file(trec_files: tuple[Path, Path], tmp_path: Path) -> None:
    run, qrels = trec_files
    two = tmp_path / "two.qrels"
    first = qrels.read_text().splitlines()[0].split()
    two.write_text(qrels.read_text() + f"{first[0]} 0 another-item 1\n")
    assert_user_error(invoke("evaluate", "--trec-run", run, "--trec-qrels", two),
                      f"{two}: query {first[0]} has 2 relevant documents")
    assert_user_error(invoke("evaluate", "--trec-run", tmp_path, "--trec-qrels", qrels),
                      f"{tmp_path}: a directory, not a TREC file")


# ---- 5b. recommend's user selection (xmfast.recommend.select_groups) ----------------------------


def test_select_groups_names_users_or_a_whole_market(dataset: Path, tmp_path: Path) -> None:
    ds = PreparedDataset.load(dataset)
    market_of = np.asarray(ds.group_market)
    in_groups = np.flatnonzero(market_of == ds.market_index("in"))
    assert select_groups(ds, all_users=True).tolist() == in_groups.tolist()  # the target by default
    assert select_groups(ds, all_users=True, market="uk").tolist() == np.flatnonzero(market_of == ds.market_index("uk")).tolist()
    first, second = (ds.users[int(ds.group_user[g])] for g in in_groups[:2])
    (tmp_path / "ids").write_text(f"\n{second}\n\n", encoding="utf-8")
    assert select_groups(ds, [first], tmp_path / "ids").tolist() == in_groups[:2].tolist()  # named, then the file's


@pytest.mark.parametrize(("case", "message"), [
    # called from Python, the messages name Python arguments (the CLI's own name its options)
    ("both", "give either all_users=True or the users (users=…, users_file=…), not both"),
    ("file and all", "give either all_users=True or the users (users=…, users_file=…), not both"),
    ("nobody", "name users with users=…, users_file=… or all_users=True"),
    ("market", "market 'xx' is not in the dataset (it has in, uk)"),
    ("missing file", "{ids}: cannot read user ids (No such file or directory)"),
    ("not utf-8", "{ids}: cannot read user ids (not UTF-8 text: "),
])
def test_select_groups_errors(dataset: Path, tmp_path: Path, case: str, message: str) -> None:
    ds = PreparedDataset.load(dataset)
    user = ds.users[int(ds.group_user[0])]
    ids = tmp_path / "ids"
    ids.write_bytes(b"\xff\xfe\x00" if case == "not utf-8" else f"{user}\n".encode())
    call = {
        "both": lambda: select_groups(ds, [user], all_users=True),
        "file and all": lambda: select_groups(ds, users_file=ids, all_users=True),
        "nobody": lambda: select_groups(ds),
        "market": lambda: select_groups(ds, all_users=True, market="xx"),
        "missing file": lambda: select_groups(ds, users_file=tmp_path / "none"),
        "not utf-8": lambda: select_groups(ds, users_file=ids),
    }[case]
    with pytest.raises(XmfastError) as e:
        call()
    expected = message.format(ids=tmp_path / "none" if case == "missing file" else ids)
    assert str(e.value).startswith(expected), str(e.value)


# ---- 6. no blank line before the error ----------------------------------------------------------

def test_prepare_prints_no_blank_line_before_the_error(sample_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    (data / "uk_5core.txt").write_text("userId itemId rate date\nu1 B1 five 2020-01-02\n")
    result = invoke("prepare", data, "-t", "in", "-s", "uk", "-o", tmp_path / "out")
    line = assert_user_error(result, f"{data / 'uk_5core.txt'}:2: ")
    assert result.stderr == line + "\n", repr(result.stderr)
    # And a successful run leaves standard error empty.
    ok = invoke("prepare", sample_dir, "-t", "in", "-o", tmp_path / "ok")
    assert ok.exit_code == 0 and ok.stderr == "", repr(ok.stderr)


# ---- 7. an empty .gz file ----------------------------------------------------------------------

def test_an_empty_gz_file_is_not_a_gzip_archive(sample_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(sample_dir / "in_5core.txt", data)
    empty = write_text(data / "ratings_uk_Electronics.txt.gz", b"")
    assert_user_error(invoke("prepare", data, "-t", "in", "-s", "uk", "-o", tmp_path / "out"),
                      f"{empty}: empty file (0 bytes), not a gzip archive; re-download the file")
    assert not (tmp_path / "out").exists()
    # An empty plain file still has "no ratings".
    empty.unlink()
    plain = write_text(data / "uk_5core.txt", b"")
    assert_user_error(invoke("prepare", data, "-t", "in", "-s", "uk", "-o", tmp_path / "out"),
                      f"{plain}: no ratings in file")


# ---- fuzzing the parser through the library ----------------------------------------------------

texty = st.text(alphabet="ab1 .\n\t-:2019\r,é\ufeff", max_size=200).map(str.encode)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | texty | texty.map(lambda b: BOM + b), how=st.sampled_from(["plain", "gzip", "corrupt-gzip", "cut-gzip"]))
def test_random_bytes_parse_or_raise_data_error(tmp_path_factory: pytest.TempPathFactory, data: bytes, how: str) -> None:
    if how == "gzip":
        data = gzip.compress(data)
    elif how == "corrupt-gzip":
        data = b"\x1f\x8b" + data
    elif how == "cut-gzip":
        packed = gzip.compress(data)
        data = packed[: len(packed) // 2]
    f = tmp_path_factory.mktemp("fuzz") / ("f.txt.gz" if how != "plain" else "f.txt")
    f.write_bytes(data)
    try:
        r = read_ratings([("uk", f)])
    except DataError as e:
        assert str(e).startswith(str(f)) and "\n" not in str(e), str(e)
    else:
        assert len(r) == r.files[0]["rows"] > 0


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--negatives", 99999999999, "negatives must be at most 1000, got 99999999999"),
        ("--negatives", 0, "negatives must be at least 1, got 0"),
        ("--epochs", 10**12, "epochs must be at most 1000000"),
        ("--batch-size", 2**31, "batch_size must be at most 2147483647"),
        ("--seed", 2**63, "seed must be at most 9223372036854775807"),
        ("--seed", -1, "seed must be at least 0"),
    ],
)
def test_train_settings_out_of_bounds_are_one_error_line(dataset: Path, tmp_path: Path, option: str, value: int,
                                                        message: str) -> None:
    out = tmp_path / "run"
    assert_user_error(invoke("train", dataset, "-m", "gmf", "-o", out, option, value), message)
    assert not out.exists()


@pytest.mark.parametrize("files", [[], "x", {"users.txt": 3}])
def test_manifest_files_of_the_wrong_shape(dataset: Path, tmp_path: Path, files) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"] = files
    (copy / "manifest.json").write_text(json.dumps(manifest))
    before = dir_bytes(copy)
    assert_user_error(invoke("stats", copy), "manifest.json", "'files' is not a table of file records")
    assert dir_bytes(copy) == before
