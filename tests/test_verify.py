"""Issue 18, items 3 and 5 ("no wrong number in silence"): every load of a prepared dataset is
verified against its manifest and names the file that differs; options that cannot apply are
refused; results files are strict JSON; scores compare exactly whatever their dtype; synth,
the rating parser and config files refuse what they would otherwise get silently wrong.

Each test reproduces a case that exited 0 with wrong figures (or a traceback) before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_cli import assert_user_error, invoke
from xmfast import core
from xmfast._io import digest_file, digest_json
from xmfast.dataset import PreparedDataset
from xmfast.errors import DatasetError


@pytest.fixture()
def copy(dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "ds"))


def manifest_of(ds: Path) -> dict:
    return json.loads((ds / "manifest.json").read_text())


def write_manifest(ds: Path, manifest: dict) -> None:
    (ds / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def rerecord(ds: Path, *names: str) -> None:
    """Records the current digests, shapes and dtypes of `names` and a matching fingerprint, as a
    careless tool (or a bug) that rewrites a dataset consistently would: only the content
    checks can then tell."""
    m = manifest_of(ds)
    for name in names:
        info = m["files"][name]
        if name.endswith(".npy"):
            a = np.load(ds / name, mmap_mode="r")
            info.update(shape=list(a.shape), dtype=str(a.dtype))
        info.update(blake2b=digest_file(ds / name), blake3=core.file_digest(str(ds / name)))
    plain = {n: {k: v for k, v in i.items() if k != "blake3"} for n, i in m["files"].items()}
    m["fingerprint"] = digest_json({"files": plain, "settings": m["settings"]})
    write_manifest(ds, m)


# ---- every load verifies the dataset --------------------------------------------------------

def test_swapped_valid_and_test_items_are_named(copy: Path) -> None:
    valid, test = copy / "valid_item.npy", copy / "test_item.npy"
    a, b = valid.read_bytes(), test.read_bytes()
    valid.write_bytes(b)
    test.write_bytes(a)
    assert_user_error(invoke("evaluate", copy, "--baseline", "pop"), f"{valid}: content differs from the digest")
    # Re-recorded so the digests agree, the candidate lists still tell.
    rerecord(copy, "valid_item.npy", "test_item.npy")
    assert_user_error(invoke("evaluate", copy, "--baseline", "pop"),
                      f"{valid}: differs from column 0 of valid_candidates.npy")


def test_a_reordered_market_list_is_named(copy: Path) -> None:
    m = manifest_of(copy)
    assert m["markets"] == ["in", "uk"]
    m["markets"] = ["uk", "in"]  # outside the fingerprint: every market would be relabelled
    write_manifest(copy, m)
    assert_user_error(invoke("evaluate", copy, "--baseline", "pop"),
                      f"{copy / 'manifest.json'}: the market list ['uk', 'in'] is not the target then the sources")
    # Reordering the settings too breaks the fingerprint.
    m["settings"]["target"], m["settings"]["sources"] = "uk", ["in"]
    write_manifest(copy, m)
    assert_user_error(invoke("stats", copy), "manifest.json: the file records or settings do not match the fingerprint")


def test_a_truncated_items_list_is_named(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = copy / "items.txt"
    lines = items.read_text().splitlines(keepends=True)
    items.write_text("".join(lines[: len(lines) // 2]))
    error = assert_user_error(invoke("evaluate", copy, "--baseline", "pop"), f"{items}: {len(lines) // 2:,} ids, ")
    assert f"the manifest counts {len(lines)} (truncated or edited)" in error
    # Even under the opt-out (a count: no data read).
    monkeypatch.setenv("XMFAST_VERIFY", "shapes")
    assert_user_error(invoke("stats", copy), f"{items}: {len(lines) // 2:,} ids, ")


@pytest.mark.parametrize(("name", "what"), [("train_item.npy", "item id"), ("test_candidates.npy", "item id"),
                                            ("group_user.npy", "user id"), ("group_market.npy", "market code"),
                                            ("valid_group.npy", "group")])
def test_out_of_range_ids_are_named_not_an_index_error(copy: Path, name: str, what: str) -> None:
    a = np.load(copy / name)
    a.flat[a.size // 2] = np.iinfo(a.dtype).max  # before: an IndexError inside numpy or torch
    np.save(copy / name, a)
    rerecord(copy, name)
    assert_user_error(invoke("evaluate", copy, "--baseline", "pop"), f"{copy / name}: holds {what} {np.iinfo(a.dtype).max}")


def test_offsets_must_be_monotone_and_end_at_the_rows(copy: Path) -> None:
    o = np.load(copy / "train_offsets.npy")
    o[1], o[2] = o[2], o[1]
    np.save(copy / "train_offsets.npy", o)
    rerecord(copy, "train_offsets.npy")
    assert_user_error(invoke("stats", copy), "train_offsets.npy: offsets are not monotone")


def test_a_file_of_another_dtype_or_shape_is_named(copy: Path) -> None:
    a = np.load(copy / "train_day.npy").astype(np.int64)
    np.save(copy / "train_day.npy", a)
    assert_user_error(invoke("stats", copy), "train_day.npy: shape", "differ from the manifest's")
    rerecord(copy, "train_day.npy")
    assert_user_error(invoke("stats", copy), "train_day.npy: dtype int64, but a prepared dataset stores int32 here")
    np.save(copy / "train_day.npy", a[:-1].astype(np.int32))
    rerecord(copy, "train_day.npy")
    assert_user_error(invoke("stats", copy), "train_day.npy: shape", "does not fit the other arrays")


def test_the_opt_out_says_what_it_skips(copy: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    f = copy / "train_rating.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x40
    f.write_bytes(bytes(data))
    assert_user_error(invoke("stats", copy), f"{f}: content differs")
    monkeypatch.setenv("XMFAST_VERIFY", "shapes")
    PreparedDataset.load(copy)
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and note.startswith(f"note: XMFAST_VERIFY=shapes: {copy}: shapes, dtypes and ")
    assert "file digests, id ranges, offsets and candidate columns are not checked" in note
    monkeypatch.setenv("XMFAST_VERIFY", "none")
    assert_user_error(invoke("stats", copy), "XMFAST_VERIFY='none': expected full (the default) or shapes")


def test_manifests_without_blake3_still_load_and_verify(copy: Path) -> None:
    """Datasets written before blake3 was recorded: their blake2b digests are checked, and
    their fingerprint (which never covered blake3) is the one a fresh prepare records."""
    m = manifest_of(copy)
    for info in m["files"].values():
        info.pop("blake3")
    write_manifest(copy, m)
    assert PreparedDataset.load(copy).fingerprint == m["fingerprint"]
    f = copy / "users.txt"
    text = f.read_bytes()
    f.write_bytes(text[:-2] + bytes([text[-2] ^ 1]) + text[-1:])
    with pytest.raises(DatasetError, match=r"users\.txt: content differs from the digest"):
        PreparedDataset.load(copy)


def test_a_fresh_manifest_records_both_digests(dataset: Path) -> None:
    m = manifest_of(dataset)
    for name, info in m["files"].items():
        assert info["blake3"] == core.file_digest(str(dataset / name)) and info["blake2b"] == digest_file(dataset / name)
    plain = {n: {k: v for k, v in i.items() if k != "blake3"} for n, i in m["files"].items()}
    assert m["fingerprint"] == digest_json({"files": plain, "settings": m["settings"]})


# ---- wrong numbers that exited 0 --------------------------------------------------------------

@pytest.fixture(scope="module")
def pop_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "pop"
    result = invoke("train", dataset, "-m", "pop", "-o", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("option", [["--scores", "s.npy"], ["--baseline", "cooc"], ["--baseline", "pop"]])
def test_evaluate_a_run_refuses_options_it_would_ignore(pop_run: Path, dataset: Path, tmp_path: Path,
                                                        option: list[str]) -> None:
    """Before: the run's own figures were printed, under the run's name, as if they were the
    scores' or the baseline's."""
    np.save(tmp_path / "s.npy", np.zeros(PreparedDataset.load(dataset).test.candidates.shape, dtype=np.float32))
    args = [tmp_path / a if a.endswith(".npy") else a for a in option]
    assert_user_error(invoke("evaluate", pop_run, *args),
                      f"{option[0]} does not apply to a run ({pop_run} is evaluated with its own model)",
                      f"xmfast evaluate {dataset.resolve()} {option[0]}")


def test_cooc_markets_without_the_cooc_baseline_is_refused(dataset: Path) -> None:
    """A setting of another model is refused by name, never ignored (issue 19: settings come
    from the model's configuration)."""
    assert_user_error(invoke("evaluate", dataset, "--baseline", "pop", "--cooc.markets", "uk"),
                      "--cooc.markets is not a setting of model pop (its settings: none")
    assert_user_error(invoke("evaluate", dataset, "--cooc.markets", "uk", "--scores", "x.npy"),
                      "No such option: --cooc.markets")


@pytest.fixture(scope="module")
def no_test_users(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A target market where every user has 2 ratings: no one survives into validation/test."""
    data = tmp_path_factory.mktemp("thin") / "raw"
    data.mkdir()
    shutil.copy(sample_dir / "uk_5core.txt", data / "uk_5core.txt")
    rows = [f"thin{u} B00O1P9KJX 4.0 2020-01-0{d}" for u in range(20) for d in (1, 2)]
    (data / "in_5core.txt").write_text("userId itemId rate date\n" + "\n".join(rows) + "\n")
    out = data.parent / "ds"  # beside the data: never inside an input
    result = invoke("prepare", data, "-t", "in", "-s", "uk", "-o", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("model", ["pop", "gmf"])
def test_training_a_target_without_test_users_is_refused(no_test_users: Path, tmp_path: Path, model: str) -> None:
    """Before: "0 test users" and a results.json holding the literal NaN (not JSON)."""
    out = tmp_path / "run"
    assert_user_error(invoke("train", no_test_users, "-m", model, "-o", out),
                      f"{no_test_users}: market in has no validation or test users")
    assert not out.exists()


def test_an_evaluation_without_queries_writes_null_not_nan(no_test_users: Path, tmp_path: Path) -> None:
    from xmfast._io import loads_strict

    result = invoke("evaluate", no_test_users, "--baseline", "pop", "--markets", "in", "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    assert "n/a" in result.output and "nan" not in result.output
    data = loads_strict((tmp_path / "e.json").read_text())
    assert data["queries"] == 0 and data["overall"] == {m: None for m in data["metrics"]}


def test_results_and_metrics_files_are_read_as_strict_json(pop_run: Path, tmp_path: Path) -> None:
    from xmfast.errors import XmfastError
    from xmfast.evaluation import read_results
    from xmfast.runs import Run

    run = Path(shutil.copytree(pop_run, tmp_path / "run"))
    results = run / "results.json"
    results.write_text(results.read_text().replace('"test": {', '"test": {"hr@99": NaN, ', 1))
    with pytest.raises(XmfastError, match=r"results\.json: not a JSON results file \(NaN is not a JSON number"):
        Run.open(run).results()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "loss": Infinity}\n')
    with pytest.raises(XmfastError, match=r"metrics\.jsonl, line 1: not JSON \(Infinity is not a JSON number"):
        Run.open(run).read_metrics()
    (tmp_path / "e.json").write_text('{"format": "xmfast-evaluation", "overall": {"mrr": -Infinity}}')
    with pytest.raises(XmfastError, match=r"e\.json: not a JSON results file"):
        read_results(tmp_path / "e.json")


def test_written_json_never_holds_nan(tmp_path: Path) -> None:
    from xmfast._io import loads_strict, write_json_atomic

    write_json_atomic(tmp_path / "x.json", {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.float64(2)})
    assert loads_strict((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.5], "c": 2.0}


@pytest.mark.parametrize("dtype", [np.int64, np.uint64])
def test_integer_scores_beyond_2_53_are_ranked_exactly(dataset: Path, tmp_path: Path, dtype: type) -> None:
    """Before: cast to float64, 2^53 + 1 and 2^53 became equal and every positive lost its ties."""
    shape = PreparedDataset.load(dataset).test.candidates.shape
    base = 2**53 if dtype is np.int64 else 2**64 - 101
    scores = np.full(shape, base, dtype=dtype)
    scores[:, 1:] += np.arange(shape[1] - 1, dtype=dtype)  # distinct negatives, all below the positive
    scores[:, 0] = base + shape[1]
    np.save(tmp_path / "s.npy", scores)
    result = invoke("evaluate", dataset, "--scores", tmp_path / "s.npy", "--cutoffs", "1", "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["overall"] == {"hr@1": 1.0, "ndcg@1": 1.0, "mrr": 1.0} and data["tie_share"] == 0.0
    # And order and ties among them are kept: three negatives above the positive, one tied.
    scores[:, 0] = base + shape[1] - 5
    np.save(tmp_path / "s.npy", scores)
    assert invoke("evaluate", dataset, "--scores", tmp_path / "s.npy", "--json", tmp_path / "e.json").exit_code == 0
    records = json.loads((tmp_path / "e.json").read_text())["per_user"]
    assert {(r["greater"], r["ties"], r["rank"]) for r in records} == {(3, 1, 4)}


def test_exact_ranking_of_any_real_dtype_matches_float_ranking_of_small_values() -> None:
    from xmfast.evaluation import standings

    rng = np.random.default_rng(3)
    small = rng.integers(-50, 50, size=(200, 30))
    want = standings(small.astype(np.float64))
    for big in (small * 2**56 + 1, (small + 60).astype(np.uint64) * np.uint64(2**56) + np.uint64(1),
                small.astype(np.longdouble) + 2**60):
        got = standings(big)
        for f in ("greater", "ties", "others"):
            assert np.array_equal(getattr(got, f), getattr(want, f)), (big.dtype, f)


def test_synth_ratings_zero_is_refused(tmp_path: Path) -> None:
    """Before: `synth --ratings 0` wrote 31 ratings."""
    assert_user_error(invoke("synth", tmp_path / "s", "--ratings", "0"), "--ratings must be at least 1, got 0")
    assert_user_error(invoke("synth", tmp_path / "s", "--ratings", "3"), "ratings 3 is too few for market uk")
    assert not (tmp_path / "s").exists()


def test_a_byte_order_mark_inside_a_rating_file_is_named(sample_dir: Path, tmp_path: Path) -> None:
    """Before: two files joined with `cat` made the mark part of a user id."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(sample_dir / "in_5core.txt", data / "in_5core.txt")
    lines = (sample_dir / "uk_5core.txt").read_bytes().split(b"\n")
    lines[9] = b"\xef\xbb\xbf" + lines[9]
    (data / "uk_5core.txt").write_bytes(b"\n".join(lines))
    assert_user_error(invoke("prepare", data, "-t", "in", "-s", "uk", "-o", tmp_path / "out"),
                      f"{data / 'uk_5core.txt'}:10: a byte-order mark (U+FEFF) inside the file, not at its start")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("[gmf]\nembedding_dim = true\n", "model gmf: setting embedding_dim must be an integer, got true"),
    ("[gmf]\ninit_std = \"0.1\"\n", "model gmf: setting init_std must be a number, got \"0.1\""),
    ("[gmf]\nembedding_dim = 8.5\n", "model gmf: setting embedding_dim must be an integer, got 8.5"),
    ("[train]\nepochs = 2.0\n", "training of model gmf: setting epochs must be an integer, got 2.0"),
    ("[train]\namp = 1\n", "training of model gmf: setting amp must be true or false, got 1"),
    ("[train]\nsources = \"uk\"\n", "training of model gmf: setting sources must be a list, got \"uk\""),
])
def test_config_values_of_the_wrong_type_are_named(dataset: Path, tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "c.toml").write_text(text)
    assert_user_error(invoke("train", dataset, "-m", "gmf", "--config", tmp_path / "c.toml", "-o", tmp_path / "run"),
                      message)
    assert not (tmp_path / "run").exists()


def test_config_values_of_the_wrong_type_in_an_experiment_are_named(tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    sample = Path(__file__).resolve().parents[1] / "data" / "sample"  # paths are relative to the file: give it whole
    exp.write_text(f'name = "x"\ndata = "{sample}"\nout = "runs"\ntargets = ["in"]\nmodels = ["nmf"]\n'
                   '[model.nmf]\nalpha = "half"\n')
    assert_user_error(invoke("run", exp, "--dry-run"), "[model.nmf]: setting alpha must be a number, got \"half\"")
    # Nested tables name their path; a float for an int and ints for floats are told apart.
    from xmfast.models import get_model

    with pytest.raises(Exception, match=r"model nmf \[gmf\]: setting embedding_dim must be an integer, got 8\.0"):
        get_model("nmf").config_from({"gmf": {"embedding_dim": 8.0}})
    assert get_model("nmf").config_from({"alpha": 1}).alpha == 1.0


def test_a_run_json_field_of_the_wrong_type_is_named(pop_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(pop_run, tmp_path / "run"))
    info = json.loads((run / "run.json").read_text())
    info["model_config"] = "x"
    (run / "run.json").write_text(json.dumps(info))
    assert_user_error(invoke("evaluate", run), f"{run / 'run.json'}: model_config is \"x\", not a table")
    info["model_config"], info["dataset"]["fingerprint"] = {}, 12
    (run / "run.json").write_text(json.dumps(info))
    assert_user_error(invoke("evaluate", run), "run.json: dataset.fingerprint is 12, not a string")


def test_a_process_verifies_an_unchanged_dataset_once(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`xmfast run` loads the dataset for every stage: hashed once, unless a file changed since."""
    from xmfast import dataset as d

    PreparedDataset.load(copy)
    calls = []
    monkeypatch.setattr(d, "_check_digests", lambda *a: calls.append(a))
    PreparedDataset.load(copy)
    assert calls == []
    f = copy / "test_rating.npy"
    f.write_bytes(f.read_bytes())  # same bytes, new modification time: verified again
    PreparedDataset.load(copy)
    assert len(calls) == 1
