"""Published candidates (`xmfast prepare --candidates`, xmfast/candidates.py): a hand-made case
written out in full, the round trip through the stored candidates of a normal prepare, the WSDM
Cup run+qrels layout, the pipeline through `evaluate --baseline pop`, and each error as one
`error:` line naming file and line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_text
from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError
from xmfast.prepare import PrepareConfig, prepare
from xmfast_cli.app import app

# Target `in` (u3 has no line: training only) and source `uk` (split and sampled as always).
IN = """userId itemId rate date
u1 a 5.0 2020-01-01
u1 b 4.0 2020-01-02
u1 c 3.0 2020-01-03
u1 d 2.0 2020-01-04
u2 a 1.0 2020-01-01
u2 b 2.0 2020-01-02
u2 e 4.5 2020-01-05
u3 c 4.0 2020-01-01
u3 d 5.0 2020-01-02
u3 e 1.0 2020-01-03
"""
UK = """userId itemId rate date
v1 a 5.0 2020-02-01
v1 f 4.0 2020-02-02
v1 g 3.0 2020-02-03
v2 b 5.0 2020-02-01
v2 h 4.0 2020-02-02
v2 i 3.0 2020-02-03
v2 j 2.0 2020-02-04
"""
# u2's test item g is not among u2's ratings (a row the ratings lack, as in XMRec's files).
VALID = "u1\tc\te,f\nu2\te\tc\td\n"  # both plain spellings: comma-separated, fields of their own
TEST = "u2\tg\tc,f\nu1\td\te,g\n"  # another order than VALID: rows are stored by group


def invoke(*args: str | Path):
    return CliRunner().invoke(app, [str(a) for a in args])


def day(date: str) -> int:
    return int(np.datetime64(date, "D").astype(np.int64))


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    write_text(d / "in_5core.txt", IN)
    write_text(d / "uk_5core.txt", UK)
    return d


def files(tmp_path: Path, valid: str = VALID, test: str = TEST) -> tuple[Path, Path]:
    return write_text(tmp_path / "valid.tsv", valid), write_text(tmp_path / "test.tsv", test)


def ids(vocab, codes) -> list:
    return [ids(vocab, c) for c in codes] if np.ndim(codes) > 1 else [vocab[int(c)] for c in codes]


def target_rows(d: PreparedDataset, held) -> np.ndarray:
    return np.asarray(d.group_market)[np.asarray(held.group)] == 0


def test_hand_made_case(data: Path, tmp_path: Path) -> None:
    valid, test = files(tmp_path)
    config = PrepareConfig(target="in", sources=["uk"], eval_negatives=2,
                           candidates={"valid": str(valid), "test": str(test)})
    d = prepare(data, tmp_path / "ds", config)
    assert ids(d.users, d.group_user) == ["u1", "u2", "u3", "v1", "v2"]
    assert list(d.group_market) == [0, 0, 0, 1, 1]
    # u1 and u2 lose their held-out rows (u2 none: g was not among its ratings); u3 keeps all
    assert list(d.train_offsets) == [0, 2, 4, 7, 8, 10]
    assert ids(d.items, d.train_item) == ["a", "b", "a", "b", "c", "d", "e", "a", "b", "h"]
    assert list(d.valid.group) == list(d.test.group) == [0, 1, 3, 4]
    t = target_rows(d, d.valid)
    assert ids(d.items, d.valid.item[t]) == ["c", "e"] and ids(d.items, d.test.item[t]) == ["d", "g"]
    assert ids(d.items, d.valid.candidates[t]) == [["c", "e", "f"], ["e", "c", "d"]]
    assert ids(d.items, d.test.candidates[t]) == [["d", "e", "g"], ["g", "c", "f"]]
    # the moved rows keep rating and date; the added one is an implicit positive on u2's last date
    assert list(d.valid.rating[t]) == [3.0, 4.5] and list(d.test.rating[t]) == [2.0, 1.0]
    assert list(d.valid.day[t]) == [day("2020-01-03"), day("2020-01-05")]
    assert list(d.test.day[t]) == [day("2020-01-04"), day("2020-01-05")]
    assert sorted(ids(d.items, d.catalog("in"))) == ["a", "b", "c", "d", "e", "g"]  # g joins in's items
    # the source market is split and sampled as without candidates (as uk alone: per-user streams)
    plain = prepare(data, None, PrepareConfig(target="uk", eval_negatives=2))
    s = ~t
    for part in ("valid", "test"):
        a, b = getattr(d, part), getattr(plain, part)
        assert ids(d.items, a.candidates[s]) == ids(plain.items, b.candidates)
    assert ids(d.items, d.valid.item[s]) == ["f", "i"] and ids(d.items, d.test.item[s]) == ["g", "j"]
    m = d.manifest
    assert m["counts"]["published_groups"] == 2 and m["counts"]["heldout_rows_added"] == 1
    assert m["settings"]["candidates"]["valid"]["file"] == "valid.tsv" and "qrels" not in m["settings"]
    # a different candidate file is a different dataset; a moved copy of the same is the same one
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    v2, t2 = files(moved)
    again = prepare(data, None, PrepareConfig(target="in", sources=["uk"], eval_negatives=2,
                                              candidates={"valid": str(v2), "test": str(t2)}))
    assert again.manifest["input_fingerprint"] == m["input_fingerprint"]
    v3, t3 = files(moved, valid=VALID.replace("e,f", "f,e"))
    other = prepare(data, None, PrepareConfig(target="in", sources=["uk"], eval_negatives=2,
                                              candidates={"valid": str(v3), "test": str(t3)}))
    assert other.manifest["input_fingerprint"] != m["input_fingerprint"]
    # without candidates the settings (and so every fingerprint made before) are as they were
    assert "candidates" not in plain.manifest["settings"] and "qrels" not in plain.manifest["settings"]


def write_stored(d: PreparedDataset, where: Path, seps: tuple[str, str] = (",", ",")) -> dict[str, str]:
    """The target's stored candidates of `d` as plain candidate files (lines in reverse order)."""
    paths = {}
    for part, sep in zip(("valid", "test"), seps):
        held = getattr(d, part)
        t = target_rows(d, held)
        lines = [f"{d.users[int(d.group_user[g])]}\t{d.items[int(c[0])]}\t" + sep.join(d.items[int(i)] for i in c[1:])
                 for g, c in zip(held.group[t], held.candidates[t])]
        paths[part] = str(write_text(where / f"{part}.tsv", "\n".join(lines[::-1]) + "\n"))
    return paths


def assert_same_arrays(d: PreparedDataset, e: PreparedDataset) -> None:
    for name, array in d.arrays().items():
        assert np.array_equal(array, e.arrays()[name]), name


@pytest.mark.parametrize("protocol", ["forec", "acmr"])
def test_round_trip_through_the_stored_candidates(sample_dir: Path, tmp_path: Path, protocol: str) -> None:
    """The target's stored candidates of a normal prepare, written out and given back: the same
    split and candidate arrays, bit for bit (the sources' sampled ones included)."""
    d = prepare(sample_dir, None, PrepareConfig(target="in", sources="all", protocol=protocol))
    paths = write_stored(d, tmp_path, (",", "\t"))
    r = invoke("prepare", sample_dir, "-t", "in", "-s", "all", "--protocol", protocol, "-o", tmp_path / "ds",
               "--candidates", f"valid={paths['valid']}", "--candidates", f"test={paths['test']}")
    assert r.exit_code == 0, r.output
    assert "published candidates: 320 in users" in r.output
    e = PreparedDataset.load(tmp_path / "ds")
    assert_same_arrays(d, e)
    assert e.manifest["counts"]["heldout_rows_added"] == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_with_repeats_and_same_day_ratings(tmp_path: Path, seed: int) -> None:
    """Random ratings full of repeated (user, item) pairs and same-day ties: the round trip holds
    under both protocols, with and without dedup (the held-out rows taken are the ones the
    split held out: the latest occurrence, the test's first)."""
    rng = np.random.default_rng(seed)
    data = tmp_path / "data"  # the candidate files go beside it, not into it
    data.mkdir()
    for m, n_items in (("in", 40), ("uk", 60)):
        rows = [f"{m}u{rng.integers(30)} i{rng.integers(n_items)} {rng.integers(1, 6)}.0 2020-01-0{rng.integers(1, 6)}"
                for _ in range(400)]
        write_text(data / f"{m}_5core.txt", "userId itemId rate date\n" + "\n".join(rows) + "\n")
    for protocol in ("forec", "acmr"):
        for dedup in (False, True):
            config = dict(target="in", sources="all", protocol=protocol, dedup=dedup, eval_negatives=5, seed=seed)
            d = prepare(data, None, PrepareConfig(**config))
            assert d.manifest["counts"]["duplicates_dropped"] > 0 or not dedup
            e = prepare(data, None, PrepareConfig(**config, candidates=write_stored(d, tmp_path)))
            assert_same_arrays(d, e)
            assert e.manifest["counts"]["duplicates_dropped"] == d.manifest["counts"]["duplicates_dropped"]


def test_wsdm_cup_run_and_qrels(data: Path, tmp_path: Path) -> None:
    """Run lines hold unlabelled candidates (the positive anywhere), qrels name the positive and
    its rating (used for a row the ratings lack); the candidates keep the run's order."""
    run_v = write_text(tmp_path / "valid_run.tsv", "u1\te,c,f\nu2\tc,d,e\n")
    run_t = write_text(tmp_path / "test_run.tsv", "u2\tc,f,g\nu1\te,g,d\n")
    qrel_v = write_text(tmp_path / "valid_qrel.tsv", "userId\titemId\trating\nu2\te\t4.5\nu1\tc\t3.0\n")
    qrel_t = write_text(tmp_path / "test_qrel.tsv", "userId\titemId\trating\nu1\td\t1\nu2\tg\t4\n")
    r = invoke("prepare", data, "-t", "in", "-s", "uk", "-o", tmp_path / "ds", "--eval-negatives", "2",
               "--candidates", f"valid={run_v}", "--candidates", f"test={run_t}",
               "--qrels", f"valid={qrel_v}", "--qrels", f"test={qrel_t}")
    assert r.exit_code == 0, r.output
    d = PreparedDataset.load(tmp_path / "ds")
    t = target_rows(d, d.valid)
    assert ids(d.items, d.valid.candidates[t]) == [["c", "e", "f"], ["e", "c", "d"]]
    assert ids(d.items, d.test.candidates[t]) == [["d", "e", "g"], ["g", "c", "f"]]
    assert list(d.test.rating[t]) == [2.0, 4.0]  # u1's d: its own rating; u2's g: the qrels'
    settings = d.manifest["settings"]["candidates"]
    assert settings["test"]["file"] == "test_run.tsv" and settings["test"]["qrels"]["file"] == "test_qrel.tsv"


def test_a_baseline_evaluates_on_published_candidates(data: Path, tmp_path: Path) -> None:
    """pop on the hand-made case: in's training counts a2 b2 c1 d1 e1; u1's test [d,e,g] ranks d
    2nd (it loses the tie with e), u2's [g,c,f] ranks g 3rd."""
    valid, test = files(tmp_path)
    assert invoke("prepare", data, "-t", "in", "-s", "uk", "-o", tmp_path / "ds", "--eval-negatives", "2",
                  "--candidates", f"valid={valid}", "--candidates", f"test={test}").exit_code == 0
    r = invoke("evaluate", tmp_path / "ds", "--baseline", "pop", "--cutoffs", "1,2,3", "--json", tmp_path / "pop.json")
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "pop.json").read_text())["per_market"]["in"]
    assert (got["hr@1"], got["hr@2"], got["hr@3"]) == (0.0, 0.5, 1.0)
    assert got["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert got["ndcg@3"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(4)) / 2)


def assert_user_error(result, *fragments: str) -> None:
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    for f in fragments:
        assert f in lines[0], (f, lines[0])


ERRORS = {  # name: (valid, test, extra options, fragments of the message; "V"/"T": the file's path)
    "too few fields": ("u1\tc\nu2\te\tc,d\n", TEST, [], ["V:1:", "found 2 field(s)"]),
    "mixed spellings": ("u1\tc\te,f\tg\nu2\te\tc\td\n", TEST, [], ["V:1:", "both in fields of their own and comma"]),
    "empty id": ("u1\tc\te,,f\nu2\te\tc\td\n", TEST, [], ["V:1:", "empty item id"]),
    "positive among negatives": (VALID, "u2\tg\tc,g\nu1\td\te,g\n", [], ["T:1:", "held-out item", "twice", "(g)"]),
    "repeated negative": (VALID, "u2\tg\tc,c\nu1\td\te,g\n", [], ["T:1:", "appears twice", "(c)"]),
    "uneven lines": ("u1\tc\te,f\nu2\te\tc\n", TEST, [], ["V:2:", "2 candidates", "V:1 has 3"]),
    "second line of a user": ("u1\tc\te,f\nu1\te\tc,d\n", TEST, [], ["V:2:", "second line", "V:1"]),
    "users differ": ("u1\tc\te,f\nu3\te\tc,d\n", TEST, [], ["V:2:", "user u3 has no line in the test"]),
    "unknown item": ("u1\tc\te,zz\nu2\te\tc,d\n", TEST, [], ["V:1:", "item zz is in none of the rating files"]),
    "unknown user": ("u1\tc\te,f\nu9\te\tc,d\n", "u1\td\te,g\nu9\tg\tc,f\n", [], ["V:2:", "user u9 is in none"]),
    "user of another market": ("u1\tc\te,f\nv1\te\tc,d\n", "u1\td\te,g\nv1\tg\tc,f\n", [],
                               ["V:2:", "user v1 has no rating in market in"]),
    # k-core 4/1 keeps u1 alone: e (u2's and u3's) is gone, line 1's first id filtering removed
    "filtered out": (VALID, TEST, ["--min-user", "4"],
                     ["V:1:", "item e is not in the ratings left after filtering (k-core 4/1)"]),
    "not the latest": ("u1\tb\te,f\nu2\te\tc,d\n", TEST, [],
                       ["V:1:", "u1's held-out item b was rated on 2020-01-02", "training rows (2020-01-03)"]),
    "too few ratings": (VALID + "u4\ta\tc,d\n", TEST + "u4\tb\tc,f\n", [],
                        ["V:3:", "user u4 has 0 rating(s) in market in besides the held-out items"]),
    "negatives count": (VALID, TEST, ["--eval-negatives", "3"], ["V:1:", "2 negatives per line",
                                                                  "--eval-negatives 2"]),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_name_file_and_line_and_write_nothing(data: Path, tmp_path: Path, name: str) -> None:
    valid_text, test_text, extra, fragments = ERRORS[name]
    write_text(data / "in_5core.txt", IN + "u4 a 1.0 2020-01-01\nu4 b 1.0 2020-01-02\n")  # u4: only two ratings
    valid, test = files(tmp_path, valid_text, test_text)
    out = tmp_path / "ds"
    options = ["--eval-negatives", "2", *extra] if "--eval-negatives" not in extra else extra
    r = invoke("prepare", data, "-t", "in", "-s", "uk", "-o", out, *options,
               "--candidates", f"valid={valid}", "--candidates", f"test={test}")
    assert_user_error(r, *(f.replace("V:", f"{valid}:").replace("T:", f"{test}:") for f in fragments))
    assert not out.exists()


def test_wsdm_cup_errors_and_option_errors(data: Path, tmp_path: Path) -> None:
    run = write_text(tmp_path / "run.tsv", "u1\te,c,f\nu2\tc,d,e\n")
    qrel = write_text(tmp_path / "qrel.tsv", "u1\tc\t3\nu2\te\t4\n")
    base = ["prepare", data, "-t", "in", "-s", "uk", "-o", tmp_path / "ds", "--eval-negatives", "2"]
    both = ["--candidates", f"valid={run}", "--candidates", f"test={run}"]

    def qrels(v: Path, t: Path = qrel) -> list[str]:
        return ["--qrels", f"valid={v}", "--qrels", f"test={t}"]

    other = write_text(tmp_path / "q2.tsv", "u1\tc\t3\nu3\te\t4\n")
    assert_user_error(invoke(*base, *both, *qrels(other)), f"{run}:2:", "user u2 has no line in", "q2.tsv")
    extra = write_text(tmp_path / "q3.tsv", "u1\tc\t3\nu2\te\t4\nu3\tc\t1\n")
    assert_user_error(invoke(*base, *both, *qrels(extra)), f"{extra}:3:", "user u3 has no line in the run file")
    absent = write_text(tmp_path / "q4.tsv", "u1\tc\t3\nu2\ta\t4\n")
    assert_user_error(invoke(*base, *both, *qrels(absent)), f"{run}:2:", "positive of user u2 (a",
                      "not among the line's candidates")
    twice = write_text(tmp_path / "q5.tsv", "u1\tc\t3\nu1\te\t4\n")
    assert_user_error(invoke(*base, *both, *qrels(twice)), f"{twice}:2:", "second positive", f"{twice}:1")
    bad = write_text(tmp_path / "q6.tsv", "u1\tc\tfive\nu2\te\t4\n")
    assert_user_error(invoke(*base, *both, *qrels(bad)), f"{bad}:1:", "'five' is not a number")
    fields = write_text(tmp_path / "run2.tsv", "u1\te\tc\tf\n")
    assert_user_error(invoke(*base, "--candidates", f"valid={fields}", "--candidates", f"test={run}", *qrels(qrel)),
                      f"{fields}:1:", "a run file", "found 4 field(s)")
    assert_user_error(invoke(*base, "--candidates", f"valid={run}"), "valid and test", "--candidates test=FILE")
    assert_user_error(invoke(*base, *both, "--qrels", f"valid={qrel}"), "--qrels valid=FILE --qrels test=FILE")
    assert_user_error(invoke(*base, *qrels(qrel)), "qrels name the positives of published candidates")
    assert_user_error(invoke(*base, "--candidates", str(run)), f"--candidates {run}: expected valid|test=FILE")
    assert_user_error(invoke(*base, *both[:2], "--candidates", f"valid={run}"), "--candidates valid= is given twice")
    assert_user_error(invoke(*base, "--candidates", f"valid={tmp_path / 'no'}", "--candidates", f"test={run}"),
                      f"{tmp_path / 'no'}: no such file")
    assert not (tmp_path / "ds").exists()


def test_a_failed_prepare_leaves_the_dataset_there_untouched(data: Path, tmp_path: Path) -> None:
    valid, test = files(tmp_path)
    out = tmp_path / "ds"
    assert invoke("prepare", data, "-t", "in", "-s", "uk", "-o", out, "--eval-negatives", "2",
                  "--candidates", f"valid={valid}", "--candidates", f"test={test}").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write_text(test, "u2\tg\tc,g\nu1\td\te,g\n")
    r = invoke("prepare", data, "-t", "in", "-s", "uk", "-o", out, "--eval-negatives", "2", "--overwrite",
               "--candidates", f"valid={valid}", "--candidates", f"test={test}")
    assert_user_error(r, f"{test}:1:")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # and a candidates file is an input: never the output
    r = invoke("prepare", data, "-t", "in", "-s", "uk", "-o", tmp_path, "--eval-negatives", "2", "--overwrite",
               "--candidates", f"valid={valid}", "--candidates", f"test={test}")
    assert r.exit_code == 2 and valid.is_file()


def test_experiment_dataset_keys_leave_unset_candidates_out(sample_dir: Path) -> None:
    """A dataset stage's key is made of its settings without the fields added later at their
    default (candidates, qrels), so experiments run before they existed are not stale."""
    from xmfast.experiment import plan, read_experiment

    stage = plan(read_experiment(Path(__file__).parents[1] / "experiments" / "quickstart.toml")).stages[0]
    assert stage.kind == "prepare" and "seed" in stage.settings["prepare"]
    assert not {"candidates", "qrels"} & set(stage.settings["prepare"])


def test_an_experiment_prepares_with_published_candidates(data: Path, tmp_path: Path) -> None:
    """[prepare] candidates (files beside the experiment file) reach the dataset stage; an
    edited file makes the stage stale, a second run with the same files does nothing; several
    targets are refused (the files are one market's)."""
    from dataclasses import replace

    from xmfast.experiment import plan, read_experiment, run_experiment, stage_actions

    files(tmp_path)
    path = write_text(tmp_path / "e.toml", f'data = "{data}"\nout = "out"\ntargets = ["in"]\nmodels = ["pop"]\nseeds = [1]\ndevice = "cpu"\n'
                      '[prepare]\neval_negatives = 2\ncandidates = {valid = "valid.tsv", test = "test.tsv"}\n')
    whole = plan(read_experiment(path))
    run_experiment(replace(whole, stages=whole.stages[:1]))  # the dataset stage alone (pop would import torch)
    d = PreparedDataset.load(tmp_path / "out" / "in" / "dataset")
    t = target_rows(d, d.test)
    assert ids(d.items, d.test.candidates[t]) == [["d", "e", "g"], ["g", "c", "f"]]
    assert stage_actions(plan(read_experiment(path)))["in/dataset"] == "cached"
    files(tmp_path, valid=VALID.replace("e,f", "f,e"))
    assert stage_actions(plan(read_experiment(path)))["in/dataset"] == "run"
    text = path.read_text()
    write_text(path, text.replace('targets = ["in"]', 'targets = "all"'))
    with pytest.raises(XmfastError, match="one target market's published candidates, but the experiment has "
                                          "targets in, uk"):
        plan(read_experiment(path))
    write_text(path, text.replace("eval_negatives = 2", "eval_negatives = 3"))
    with pytest.raises(XmfastError, match=r"valid\.tsv:1: 2 negatives per line, .* give eval_negatives = 2 in "
                                          r"\[prepare\]"):
        plan(read_experiment(path))
    for table in ('{valid = "valid.tsv"}', '"valid.tsv"', '{valid = "valid.tsv", test = 1}'):
        write_text(path, text.replace('{valid = "valid.tsv", test = "test.tsv"}', table))
        with pytest.raises(XmfastError, match=r"e\.toml: \[prepare\] candidates = .*: expected a table of both"):
            plan(read_experiment(path))
