"""Fuzz test of the command line (issue 18, item 7): random option values and damaged dataset,
run and results files for every reading command, asserting "exit 0 with a valid result, or exit
2 with exactly one `error:` line", never a traceback.

A small prepared dataset, a 1-epoch GMF run and a pop run are built once per module and copied
for every example, so damage never leaks between examples. Examples per test: 15 (derandomized,
so CI is stable); ``XMFAST_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_cli.py`` hunts with random
examples. Output paths are fresh files: replacing existing outputs is tested in the write-safety
tests. Focused tests of the failures the hunt found are at the end of the file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from test_cli import assert_user_error, invoke

EXAMPLES = int(os.environ.get("XMFAST_FUZZ_EXAMPLES", "15"))
# No shrinking: a failing command line is short already, and shrinking re-runs commands for minutes.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="XMFAST_FUZZ_EXAMPLES" not in os.environ,
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


# ---- the prepared world ---------------------------------------------------------------------------
def _ok(*args: Any) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """raw/ (uk, in), ds/ (target in, source uk), runs/gmf (1 epoch), runs/pop, their test
    results as gmf.json and pop.json, a TREC run and qrels, an experiment file, an empty dir."""
    base = tmp_path_factory.mktemp("fuzz-world")
    _ok("synth", base / "raw", "--markets", "uk,in", "--ratings", 1500, "--items", 200, "--seed", 3)
    _ok("prepare", base / "raw", "-t", "in", "-s", "uk", "-o", base / "ds")
    _ok("train", base / "ds", "-m", "gmf", "--epochs", 1, "--device", "cpu", "-o", base / "runs" / "gmf")
    _ok("train", base / "ds", "-m", "pop", "-o", base / "runs" / "pop")
    _ok("evaluate", base / "runs" / "gmf", "--json", base / "gmf.json")
    _ok("evaluate", base / "runs" / "pop", "--json", base / "pop.json", "--trec-run", base / "pop.run",
        "--trec-qrels", base / "pop.qrels")
    (base / "e.toml").write_text('data = "raw"\nout = "xo"\ntargets = ["in"]\nmodels = ["pop"]\n', encoding="utf-8")
    (base / "empty").mkdir()
    return base


@contextlib.contextmanager
def copy_of(world: Path) -> Iterator[Path]:
    """A fresh copy of the world whose runs point at the copied dataset (as after a move with
    the dataset alongside), removed afterwards."""
    _applied.clear()
    with tempfile.TemporaryDirectory(prefix="xmfast-fuzz-") as tmp:
        w = Path(tmp) / "w"
        shutil.copytree(world, w)
        (w / "out").mkdir()  # outputs go to fresh files in an existing directory
        for run in ("gmf", "pop"):
            info_path = w / "runs" / run / "run.json"
            info = json.loads(info_path.read_text())
            info["dataset"]["path"] = str(w / "ds")
            info_path.write_text(json.dumps(info, indent=1))
        yield w


def users_of(world: Path) -> list[str]:
    """Five user ids of the target market, in (its rating file has a header line)."""
    lines = (world / "raw" / "in_5core.txt").read_text(encoding="utf-8").splitlines()[1:]
    return list(dict.fromkeys(line.split()[0] for line in lines))[:5]


# ---- checking one invocation ---------------------------------------------------------------------
def _strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


COLLECT = os.environ.get("XMFAST_FUZZ_COLLECT")
"""When set, a file to which failures are appended (command line and the traceback's last line)
instead of failing: a long local hunt then lists every failure, not only the first."""


def check(result: Any, args: list[Any], outputs: tuple[Path, ...] = ()) -> None:
    """Exit 0 (every JSON output strict JSON), or exit 2 with one `error:` line and no traceback."""
    shown = " ".join(map(str, args)) + "".join(f"\n    after {d}" for d in _applied)
    if COLLECT:
        try:
            _check(result, shown, outputs)
        except (AssertionError, ValueError) as e:
            exc = result.exception
            where = traceback.extract_tb(exc.__traceback__)[-1] if exc is not None and exc.__traceback__ else None
            last = f"{type(exc).__name__}: {exc} at {where.filename}:{where.lineno}" if where else str(e).splitlines()[-1]
            with open(COLLECT, "a", encoding="utf-8") as f:
                f.write(f"xmfast {shown}\n    {last}\n")
        return
    _check(result, shown, outputs)


def _check(result: Any, shown: str, outputs: tuple[Path, ...]) -> None:
    if result.exit_code == 0:
        for out in outputs:
            if out.suffix == ".json" and out.is_file():
                _strict_json(out.read_text(encoding="utf-8"))
        return
    exc = result.exception
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc is not None else ""
    assert result.exit_code == 2 and isinstance(exc, SystemExit), (
        f"xmfast {shown}\nexit {result.exit_code}\n{result.output}\n{trace}")
    if result.output.startswith("Usage: "):
        return  # the option parser's own refusal (a value of the wrong type, a missing argument)
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, f"xmfast {shown}\n{result.output}"


def run_cli(*args: Any, outputs: tuple[Path, ...] = ()) -> Any:
    result = invoke(*args)
    check(result, list(args), outputs)
    return result


# ---- strategies ----------------------------------------------------------------------------------
MARKETS = ["in", "uk", "de", "us", "zz", "IN", "", "all", "in,uk", "uk,in,uk", " in ", "in,", ",", "é"]
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
INTS = st.one_of(st.integers(-3, 30), st.sampled_from([0, -1, 2**31, 2**32, 2**32 - 1, 2**63, 2**64, -2**63]))


def text_or(*choices: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(list(choices)), TEXT)


# Paths relative to a copy of the world: inputs that exist, do not exist, are files, are directories.
INPUTS = ["raw", "ds", "runs", "runs/gmf", "runs/pop", "gmf.json", "pop.json", "pop.run", "pop.qrels", "e.toml",
          "raw/in_5core.txt", "ds/manifest.json", "runs/gmf/run.json", "runs/gmf/checkpoints/best.pt", "empty",
          "missing", "missing/deeper", "ünï cødé, dir"]
input_path = st.sampled_from(INPUTS)


_applied: list[Damage] = []  # the damage of the current example, shown with a failure


@dataclass(frozen=True)
class Damage:
    """One change to one file of the world: `how` is applied to `file` (a path in the world)."""

    file: str
    how: str
    where: float  # position or fraction used by truncate/flip
    value: Any  # replacement value for a JSON field

    def apply(self, w: Path) -> None:
        _applied.append(self)
        path = w / self.file
        if not path.is_file():
            return
        data = path.read_bytes()
        at = int(self.where * len(data))
        if self.how == "truncate":
            path.write_bytes(data[:at])
        elif self.how == "zero":
            path.write_bytes(bytes(len(data)))
        elif self.how == "flip":
            if data:
                b = bytearray(data)
                b[min(at, len(b) - 1)] ^= 0xFF
                path.write_bytes(bytes(b))
        elif self.how == "delete":
            path.unlink()
        elif self.how == "garbage":
            path.write_bytes(data + b"\x00\xff garbage \n")
        elif self.how == "swap":
            others = sorted(p for p in path.parent.iterdir() if p.is_file() and p != path)
            if others:
                other = others[at % len(others)]
                a, b = path.read_bytes(), other.read_bytes()
                path.write_bytes(b)
                other.write_bytes(a)
        elif self.how == "json-field":
            try:
                doc = json.loads(data)
            except ValueError:
                return
            _replace_field(doc, self.where, self.value)
            path.write_text(json.dumps(doc), encoding="utf-8")


def _replace_field(doc: Any, where: float, value: Any) -> None:
    """Replaces one value somewhere in `doc` (the `where`-th of its fields, depth first)."""
    slots: list[tuple[Any, Any]] = []

    def walk(node: Any, depth: int) -> None:
        if depth > 3:
            return
        items = node.items() if isinstance(node, dict) else enumerate(node[:3]) if isinstance(node, list) else ()
        for k, v in items:
            slots.append((node, k))
            walk(v, depth + 1)

    walk(doc, 0)
    if slots:
        node, key = slots[int(where * len(slots)) % len(slots)]
        node[key] = value


WRONG_VALUES = [None, 0, -1, 2**70, 1.5, True, "", "x", "ünï", [], [1, "a"], {}, {"a": 1}, "in", 1e308]
HOWS = ["truncate", "zero", "flip", "delete", "garbage", "swap", "json-field"]


def damage(files: list[str]) -> st.SearchStrategy[Damage]:
    return st.builds(Damage, st.sampled_from(files), st.sampled_from(HOWS), st.floats(0, 1),
                     st.sampled_from(WRONG_VALUES))


RUN_FILES = [f"runs/{r}/{f}" for r in ("gmf", "pop") for f in ("run.json", "results.json", "test.json", "valid.json")] + [
    "runs/gmf/metrics.jsonl", "runs/gmf/checkpoints/best.pt", "runs/gmf/checkpoints/last.pt"]
RESULT_FILES = ["gmf.json", "pop.json"]
TREC_FILES = ["pop.run", "pop.qrels"]


# ---- the fuzz tests, one per command -------------------------------------------------------------
@FUZZ
@given(path=input_path, target=st.one_of(st.none(), st.sampled_from(MARKETS)), markets=st.sampled_from(MARKETS),
       category=st.one_of(st.none(), text_or("Electronics")), json_out=st.booleans(),
       hurt=st.one_of(st.none(), damage(["raw/in_5core.txt", "raw/uk_5core.txt"])))
def test_fuzz_stats(world: Path, path: str, target: str | None, markets: str, category: str | None,
                    json_out: bool, hurt: Damage | None) -> None:
    with copy_of(world) as w:
        if hurt:
            hurt.apply(w)
        args: list[Any] = ["stats", w / path, "--markets", markets]
        args += ["--target", target] if target is not None else []
        args += ["--category", category] if category is not None else []
        args += ["--json", w / "out" / "stats.json"] if json_out else []
        run_cli(*args, outputs=(w / "out" / "stats.json",))


@FUZZ
@given(paths=st.lists(st.one_of(input_path, st.sampled_from(["runs/gmf", "runs/pop", "gmf.json", "pop.json"])),
                      min_size=0, max_size=3),
       metrics=st.sampled_from(["", "ndcg@10", "hr@5,mrr", "nope", ",", "ndcg@10,ndcg@10", "auc"]),
       split=text_or("test", "valid"),
       hurt=st.one_of(st.none(), damage(RESULT_FILES + RUN_FILES)))
def test_fuzz_compare(world: Path, paths: list[str], metrics: str, split: str, hurt: Damage | None) -> None:
    with copy_of(world) as w:
        if hurt:
            hurt.apply(w)
        run_cli("compare", *[w / p for p in paths], "--metrics", metrics, "--split", split)


@FUZZ
@given(run=st.sampled_from(["runs/gmf", "runs/pop", "runs/pop", "ds", "missing", "gmf.json", "runs"]),
       users=st.lists(st.one_of(st.integers(0, 4), TEXT, st.sampled_from(["", " ", "a,b"])), max_size=3),
       users_file=st.one_of(st.none(), input_path, st.just("users.txt")),
       all_users=st.booleans(), market=st.one_of(st.none(), st.sampled_from(MARKETS)), k=INTS,
       include_known=st.booleans(), dataset=st.one_of(st.none(), input_path),
       device=st.sampled_from(["auto", "cpu", "cuda", "", "tpu", "cuda:7"]), to_file=st.booleans(),
       hurt=st.one_of(st.none(), damage(RUN_FILES + ["ds/users.txt", "ds/items.txt", "ds/manifest.json"])))
def test_fuzz_recommend(world: Path, run: str, users: list[Any], users_file: str | None, all_users: bool,
                        market: str | None, k: int, include_known: bool, dataset: str | None, device: str,
                        to_file: bool, hurt: Damage | None) -> None:
    real = users_of(world)
    with copy_of(world) as w:
        (w / "users.txt").write_text("\n".join(real[:3]) + "\n\n" + "nobody\n", encoding="utf-8")
        if hurt:
            hurt.apply(w)
        args: list[Any] = ["recommend", w / run, "-k", k, "--device", device]
        for u in users:
            args += ["--user", real[u] if isinstance(u, int) else u]
        args += ["--users-file", w / users_file] if users_file else []
        args += ["--all-users"] if all_users else []
        args += ["--market", market] if market is not None else []
        args += ["--include-known"] if include_known else []
        args += ["--dataset", w / dataset] if dataset else []
        args += ["-o", w / "out" / "recs.csv"] if to_file else []
        result = run_cli(*args)
        if result.exit_code == 0 and to_file:
            assert (w / "out" / "recs.csv").read_text().startswith("market,user,rank,item,score\n")


@FUZZ
@given(paths=st.lists(st.one_of(input_path, st.sampled_from(["runs", "runs/gmf", "runs/pop"])), max_size=3),
       title=TEXT, preface=st.one_of(st.none(), input_path), published=st.one_of(st.none(), input_path),
       hurt=st.one_of(st.none(), damage(RUN_FILES + ["ds/manifest.json"])))
def test_fuzz_report(world: Path, paths: list[str], title: str, preface: str | None, published: str | None,
                     hurt: Damage | None) -> None:
    with copy_of(world) as w:
        if hurt:
            hurt.apply(w)
        out = w / "out" / "report.md"
        args: list[Any] = ["report", *[w / p for p in paths], "-o", out, "--title", title, "--no-plots"]
        args += ["--preface", w / preface] if preface else []
        args += ["--published", w / published] if published else []
        run_cli(*args, outputs=(out.with_suffix(".json"),))


@FUZZ
@given(run=st.sampled_from(TREC_FILES + ["missing", "empty", "gmf.json", "raw/in_5core.txt"]),
       qrels=st.sampled_from(TREC_FILES + ["missing", "empty", "gmf.json", "raw/in_5core.txt"]),
       cutoffs=text_or("5,10", "0", "-1", "", "1,x", "99999999999", "4294967296", "1,1"),
       measures=text_or("hr,ndcg,mrr", "", "auc,map,precision", "nope", "hr,hr"),
       ties=text_or("pessimistic", "optimistic", "expected", "trec"),
       extra=st.lists(st.sampled_from([["--split", "valid"], ["--markets", "in"], ["--full"], ["--baseline", "pop"],
                                       ["--scores", "pop.run"], ["--cooc-markets", "uk"], ["--no-per-user"]]), max_size=2),
       json_out=st.booleans(), hurt=st.one_of(st.none(), damage(TREC_FILES)),
       lines=st.lists(TEXT, max_size=3))
def test_fuzz_evaluate_trec(world: Path, run: str, qrels: str, cutoffs: str, measures: str, ties: str,
                            extra: list[list[str]], json_out: bool, hurt: Damage | None, lines: list[str]) -> None:
    with copy_of(world) as w:
        if hurt:
            hurt.apply(w)
        if lines and (w / run).is_file():
            with open(w / run, "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        out = w / "out" / "eval.json"
        args: list[Any] = ["evaluate", "--trec-run", w / run, "--trec-qrels", w / qrels, "--cutoffs", cutoffs,
                           "--measures", measures, "--ties", ties]
        for e in extra:
            args += [e[0], *(w / v if v.endswith(".run") else v for v in e[1:])]
        args += ["--json", out] if json_out else []
        run_cli(*args, outputs=(out,))


@FUZZ
@given(markets=st.sampled_from(MARKETS), category=text_or("Electronics", "Home_and_Kitchen", "../x", ""),
       base=st.sampled_from(["", "not a url", "http://[::1", "http://127.0.0.1:1", "ftp://127.0.0.1:1", "file://MIRROR",
                             "file:///nonexistent", "http://", "gopher://x", "MIRROR"]),
       out=st.sampled_from(["dl", "raw/in_5core.txt", "empty", "ünï"]), overwrite=st.booleans())
def test_fuzz_download(world: Path, markets: str, category: str, base: str, out: str, overwrite: bool) -> None:
    """Only local URLs (a file:// mirror, refused connections to 127.0.0.1): nothing leaves the machine."""
    with copy_of(world) as w:
        mirror = w / "mirror" / "in" / "Electronics"
        mirror.mkdir(parents=True)
        (mirror / "ratings_in_Electronics.txt.gz").write_bytes(b"not gzip")
        args: list[Any] = ["download", "--markets", markets, "--category", category, "-o", w / out,
                           "--base-url", base.replace("MIRROR", str(w / "mirror"))]
        run_cli(*args, *(["--overwrite"] if overwrite else []))


_EXPERIMENT_KEYS = ["name", "data", "out", "protocol", "targets", "sources", "models", "seeds", "device", "description"]
_TABLES = {"prepare": ["seed", "kcore", "reference_market", "dedup", "eval_negatives", "category", "min_user"],
           "train": ["epochs", "batch_size", "lr", "seed", "device", "sources", "gmf"],
           "model.gmf": ["embedding_dim", "init_std", "layers"], "model.nmf": ["alpha", "gmf"],
           "finetune.forec": ["epochs", "unfreeze"], "model": ["gmf", "zz"], "finetune": ["forec", "bogus"]}
TOML_VALUES = st.sampled_from([5, -1, 0, 2**40, 1.5, True, "x", "", "all", "each", "in", "zz", "raw", "missing",
                               "forec", "acmr", "pop", ["in"], ["zz"], ["uk", "in"], [], [1, 2], ["pop", "gmf"],
                               {"min_user": 2}, {"min_user": "x"}, {}, {"a": 1}])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


@FUZZ
@given(top=st.dictionaries(st.sampled_from(_EXPERIMENT_KEYS + ["bogus"]), TOML_VALUES, max_size=4),
       drop=st.lists(st.sampled_from(["data", "out", "targets", "models"]), max_size=2),
       tables=st.dictionaries(st.sampled_from(sorted(_TABLES)), st.data(), max_size=2),
       hurt=st.one_of(st.none(), damage(["raw/in_5core.txt", "raw/uk_5core.txt", "e.toml"])),
       as_path=st.sampled_from(["e.toml", "e.toml", "e.toml", "raw", "missing.toml", "raw/in_5core.txt"]))
def test_fuzz_run_dry(world: Path, top: dict[str, Any], drop: list[str], tables: dict[str, Any],
                      hurt: Damage | None, as_path: str) -> None:
    """Experiment files with wrong types, unknown keys, missing keys, damaged data (a dry run:
    reading, checking and planning every stage)."""
    values: dict[str, Any] = {"data": "raw", "out": "xo", "targets": ["in"], "models": ["pop"]}
    for key in drop:
        values.pop(key, None)
    values.update(top)
    with copy_of(world) as w:
        for key in ("data", "out"):  # paths in the file are relative to where xmfast runs: anchor them
            if isinstance(values.get(key), str):
                values[key] = str(w / values[key])
        lines = [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        for name, data in tables.items():
            settings_ = data.draw(st.dictionaries(st.sampled_from(_TABLES[name]), TOML_VALUES, max_size=2))
            lines += [f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in settings_.items()]
        (w / "e.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if hurt:
            hurt.apply(w)
        run_cli("run", w / as_path, "--dry-run")


RUN_RECORDS = [f for f in RUN_FILES if not f.endswith(".pt")]
DATASET_FILES = [f"ds/{name}" for name in ("manifest.json", "users.txt", "items.txt", "test_item.npy", "test_candidates.npy",
                                           "train_offsets.npy", "group_market.npy", "market_item_offsets.npy")]


def _read_damaged(world: Path, hurt: Damage, command: str) -> None:
    user = users_of(world)[0]
    with copy_of(world) as w:
        hurt.apply(w)
        out = w / "out" / "x.json"
        args: list[Any] = {
            "stats": ["stats", w / "ds", "--json", out],
            "evaluate-run": ["evaluate", w / "runs" / "gmf", "--json", out],
            "evaluate-pop": ["evaluate", w / "ds", "--baseline", "pop", "--json", out],
            "recommend": ["recommend", w / "runs" / "gmf", "--user", user],
            "report": ["report", w / "runs", "-o", w / "out" / "r.md", "--no-plots"],
            "compare": ["compare", w / "runs" / "pop", w / "runs" / "gmf"],
        }[command]
        run_cli(*args, outputs=(out, w / "out" / "r.json"))


@FUZZ
@given(hurt=damage(RUN_RECORDS), command=st.sampled_from(["evaluate-run", "recommend", "report", "compare"]))
def test_fuzz_damaged_run_records(world: Path, hurt: Damage, command: str) -> None:
    """One damaged JSON record of a run (run.json, results, per-user results, the epoch log),
    then a command that reads it."""
    _read_damaged(world, hurt, command)


@FUZZ
@given(hurt=damage(DATASET_FILES + ["runs/gmf/checkpoints/best.pt", "runs/gmf/checkpoints/last.pt"]),
       command=st.sampled_from(["stats", "evaluate-run", "evaluate-pop", "recommend", "report", "compare"]))
def test_fuzz_damaged_dataset_and_checkpoints(world: Path, hurt: Damage, command: str) -> None:
    """One damaged file of the prepared dataset or a checkpoint, then a command that reads it."""
    _read_damaged(world, hurt, command)


# ---- what the hunt found, each as a focused test -------------------------------------------------
def test_compare_refuses_a_directory_that_is_not_one_run(world: Path, tmp_path: Path) -> None:
    forec = tmp_path / "forec"  # a fine-tuning output: one run per market
    shutil.copytree(world / "runs" / "pop", forec / "in")
    assert_user_error(invoke("compare", world / "gmf.json", forec),
                      f"{forec}: a directory of runs (in), not one run; give one of them, e.g. {forec / 'in'}")
    assert_user_error(invoke("compare", world / "gmf.json", world / "raw"),
                      f"{world / 'raw'}: a directory that is not a run (no run.json)")


def test_compare_refuses_the_same_results_twice_and_an_unfinished_run(world: Path, tmp_path: Path) -> None:
    gmf = world / "runs" / "gmf"
    assert_user_error(invoke("compare", gmf, gmf),
                      f"{gmf / 'test.json'}: the same results as the reference {gmf / 'test.json'}")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(gmf, unfinished)
    (unfinished / "test.json").unlink()
    assert_user_error(invoke("compare", world / "runs" / "pop", unfinished),
                      f"{unfinished}: the run has no test.json (not finished?)")


def test_compare_names_a_damaged_per_user_record(world: Path, tmp_path: Path) -> None:
    data = json.loads((world / "pop.json").read_text())
    data["per_user"][3]["ndcg@10"] = "x"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert_user_error(invoke("compare", world / "gmf.json", bad),
                      f"{bad}: per-user record 4 lacks its market, user or a number for each of")


def test_recommend_users_file_that_is_a_directory(world: Path) -> None:
    assert_user_error(invoke("recommend", world / "runs" / "pop", "--users-file", world / "raw"),
                      f"{world / 'raw'}: cannot read user ids (Is a directory)")


def test_report_names_an_evaluation_json_and_paths_without_runs(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    # The evaluate --json file used to be left out without a word.
    assert_user_error(invoke("report", world / "runs", world / "gmf.json", "-o", out),
                      f"{world / 'gmf.json'}: an `xmfast evaluate --json` file; a report reads run directories "
                      "only: give the run it evaluates")
    assert_user_error(invoke("report", world / "runs", world / "empty", "-o", out),
                      f"{world / 'empty'}: no finished runs under it")
    assert_user_error(invoke("report", world / "raw" / "in_5core.txt", "-o", out),
                      "in_5core.txt: a file, not a run directory")
    assert not out.exists()


def test_report_preface_or_published_that_is_a_directory(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    assert_user_error(invoke("report", world / "runs", "-o", out, "--preface", world / "raw"),
                      f"{world / 'raw'}: cannot read the preface (Is a directory)")
    assert_user_error(invoke("report", world / "runs", "-o", out, "--published", world / "raw"),
                      f"{world / 'raw'}: cannot read it (Is a directory)")
    bad = tmp_path / "published.toml"
    bad.write_text("figures = 5\n")
    assert_user_error(invoke("report", world / "runs", "-o", out, "--published", bad),
                      f"{bad}: not a published-figures file")


def test_report_names_a_damaged_results_file(world: Path, tmp_path: Path) -> None:
    run = tmp_path / "gmf"
    shutil.copytree(world / "runs" / "gmf", run)
    results = json.loads((run / "results.json").read_text())
    del results["valid"]  # was a KeyError traceback
    (run / "results.json").write_text(json.dumps(results))
    assert_user_error(invoke("report", run, "-o", tmp_path / "r.md"),
                      f"{run / 'results.json'}: 'valid' is not a table of metric values")


def test_stats_target_not_in_the_dataset(world: Path) -> None:
    # It printed an overlap column of zeros.
    assert_user_error(invoke("stats", world / "ds", "--target", "de"),
                      "market 'de' is not in the data (it has in, uk); choose --target among them")


def test_evaluate_trec_empty_qrels_and_options_that_do_not_apply(world: Path, tmp_path: Path) -> None:
    run, qrels = world / "pop.run", world / "pop.qrels"
    empty = tmp_path / "empty.qrels"
    empty.write_text("")
    # An empty qrels file gave a table of NaN and exit 0.
    assert_user_error(invoke("evaluate", "--trec-run", run, "--trec-qrels", empty), f"{empty}: no queries")
    for option in (["--split", "valid"], ["--full"], ["--markets", "in"], ["--baseline", "pop"]):
        assert_user_error(invoke("evaluate", "--trec-run", run, "--trec-qrels", qrels, *option),
                          f"{option[0]}: only with a prepared dataset or run")
    assert_user_error(invoke("evaluate", "--trec-run", run, "--trec-qrels", qrels, "--measures", ""),
                      "--measures: name at least one")


@pytest.mark.parametrize("url", ["", "not a url", "http://[::1", "gopher://x/"])
def test_download_base_url_urllib_cannot_open(tmp_path: Path, url: str) -> None:
    assert_user_error(invoke("download", "--markets", "uk", "-o", tmp_path / "dl", "--base-url", url),
                      f"--base-url {url!r}: expected an http(s) or ftp URL")
    assert not (tmp_path / "dl").exists()


def test_download_out_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_text("mine")
    assert_user_error(invoke("download", "--markets", "uk", "-o", file, "--base-url", "http://127.0.0.1:1"),
                      f"{file}: exists and is not a directory")
    assert file.read_text() == "mine"


@pytest.mark.parametrize(("text", "message"), [
    (b"\xff\xfe", "not valid TOML ('utf-8' codec can't decode"),
    (b'data = "raw"\nout = "xo"\n[model]\ngmf = 1\n', "[model] gmf = 1: expected a table of settings, [model.gmf]"),
    (b'data = "raw"\nout = "xo"\n[finetune]\nforec = "x"\n', "[finetune] forec = 'x': expected a table of settings"),
    (b'data = "raw"\nout = "xo"\n[prepare]\nkcore = 5\n', "[prepare]: kcore = 5: expected a table such as"),
    (b'data = "raw"\nout = "xo"\n[prepare]\nkcore = {bogus = 1}\n', "[prepare]: KCore.__init__() got an unexpected"),
])
def test_run_damaged_experiment_files(tmp_path: Path, text: bytes, message: str) -> None:
    path = tmp_path / "e.toml"
    path.write_bytes(text)
    assert_user_error(invoke("run", path, "--dry-run"), f"{path}: ", message)


def test_run_given_a_directory(world: Path) -> None:
    assert_user_error(invoke("run", world / "raw", "--dry-run"),
                      f"{world / 'raw'}: cannot read the config file (Is a directory)")


def test_run_refuses_a_target_listed_as_its_own_source(world: Path, tmp_path: Path) -> None:
    # The plan accepted it; the training stage failed only after the dataset was prepared.
    path = tmp_path / "e.toml"
    path.write_text(f'data = "{world / "raw"}"\nout = "{tmp_path / "xo"}"\ntargets = ["in"]\nsources = ["in"]\n'
                    'models = ["gmf++"]\n', encoding="utf-8")
    assert_user_error(invoke("run", path, "--dry-run"), f"{path}: 'in' is both a target and a source")


def test_recommend_all_users_with_named_users(world: Path) -> None:
    # The named user was ignored in silence: every user of the market was recommended for.
    assert_user_error(invoke("recommend", world / "runs" / "pop", "--all-users", "--user", users_of(world)[0]),
                      "give either --all-users or the users (--user, --users-file), not both")
