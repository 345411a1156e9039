"""`xmfast run`: the planner's graph, its cache (a re-run does nothing; a changed setting re-runs
exactly what depends on it), resuming an interrupted experiment, and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xmfast.errors import XmfastError
from xmfast.experiment import plan, read_experiment, run_experiment, stage_actions
from xmfast_cli.app import app

runner = CliRunner()


def write_experiment(path: Path, sample_dir: Path, out: Path, body: str) -> Path:
    path.write_text(f'data = "{sample_dir}"\nout = "{out}"\n' + body, encoding="utf-8")
    return path


def deps_of(p, stage_id: str) -> set[str]:
    return set(p.by_id()[stage_id].deps)


def test_plan_adds_prerequisites_in_dependency_order(sample_dir: Path, tmp_path: Path) -> None:
    exp = read_experiment(write_experiment(tmp_path / "e.toml", sample_dir, tmp_path / "out",
                                           'targets = ["in"]\nmodels = ["nmf", "forec", "acmr"]\nseeds = [7]\n'))
    p = plan(exp)
    ids = [s.id for s in p.stages]
    assert ids == [
        "in/dataset",
        "in/single/s7/gmf", "in/single/s7/mlp", "in/single/s7/nmf",
        "in/all/s7/gmf++", "in/all/s7/mlp++", "in/all/s7/nmf++", "in/all/s7/maml", "in/all/s7/forec",
        "in/all/s7/acmr-pretrain", "in/all/s7/acmr",
    ]
    assert deps_of(p, "in/single/s7/nmf") == {"in/dataset", "in/single/s7/gmf", "in/single/s7/mlp"}
    assert deps_of(p, "in/all/s7/nmf++") == {"in/dataset", "in/all/s7/gmf++", "in/all/s7/mlp++"}
    assert deps_of(p, "in/all/s7/maml") == {"in/dataset", "in/all/s7/nmf++"}
    assert deps_of(p, "in/all/s7/forec") == {"in/dataset", "in/all/s7/maml"}
    assert deps_of(p, "in/all/s7/acmr") == {"in/dataset", "in/all/s7/acmr-pretrain"}
    by = p.by_id()
    assert by["in/all/s7/nmf++"].pretrained == {"gmf": "in/all/s7/gmf++", "mlp": "in/all/s7/mlp++"}
    assert by["in/all/s7/forec"].kind == "finetune" and by["in/all/s7/acmr"].kind == "finetune"
    # every dependency comes before its dependent
    seen: set[str] = set()
    for s in p.stages:
        assert set(s.deps) <= seen
        seen.add(s.id)
    # NMF's branches are the GMF and MLP settings (one place for each hyper-parameter)
    assert by["in/single/s7/nmf"].settings["model_config"]["gmf"] == by["in/single/s7/gmf"].settings["model_config"]
    assert by["in/all/s7/maml"].settings["model_config"]["nmf"] == by["in/all/s7/nmf++"].settings["model_config"]


def test_each_source_and_all_targets(sample_dir: Path, tmp_path: Path) -> None:
    exp = read_experiment(write_experiment(tmp_path / "e.toml", sample_dir, tmp_path / "out",
                                           'sources = "each"\nmodels = ["pop", "nmf++"]\nseeds = [1, 2]\n'))
    p = plan(exp)
    targets = sorted({s.target for s in p.stages})
    assert targets == ["de", "in", "jp", "uk"]  # "all": every market of the sample
    in_nmf = sorted(s.id for s in p.stages if s.target == "in" and s.label == "nmf++")
    assert in_nmf == [f"in/src-{m}/s{seed}/nmf++" for m in ("de", "jp", "uk") for seed in (1, 2)]
    assert all(s.sources == (s.setting[4:],) for s in p.stages if s.label == "nmf++")
    assert len({s.key for s in p.stages}) == len(p.stages)  # keys tell stages apart


def test_run_caches_and_reruns_only_what_a_change_touches(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    body = 'targets = ["in"]\nmodels = ["pop", "nmf"]\nseeds = [1]\ndevice = "cpu"\n[train]\nepochs = 1\n'
    path = write_experiment(tmp_path / "e.toml", sample_dir, out, body)
    first = run_experiment(plan(read_experiment(path)))
    assert sorted(first.executed) == ["in/dataset", "in/single/s1/gmf", "in/single/s1/mlp", "in/single/s1/nmf",
                                      "in/single/s1/pop"]
    results = json.loads((out / "in/single/s1/nmf/results.json").read_text())
    assert results["model"] == "nmf" and 0 <= results["test"]["ndcg@10"] <= 1
    run_info = json.loads((out / "in/single/s1/nmf/run.json").read_text())
    assert Path(run_info["pretrained"]["gmf"]) == (out / "in/single/s1/gmf").resolve()

    again = run_experiment(plan(read_experiment(path)))
    assert again.executed == []
    assert set(again.actions.values()) == {"cached"}

    # a setting of NMF alone: only NMF runs again
    write_experiment(path, sample_dir, out, body + "[model.nmf]\nalpha = 0.3\n")
    assert run_experiment(plan(read_experiment(path))).executed == ["in/single/s1/nmf"]
    # a setting of GMF: GMF and the NMF that starts from it, not MLP or pop
    write_experiment(path, sample_dir, out, body + "[model.nmf]\nalpha = 0.3\n[train.gmf]\nlr = 0.002\n")
    assert run_experiment(plan(read_experiment(path))).executed == ["in/single/s1/gmf", "in/single/s1/nmf"]
    # the split's seed: everything
    write_experiment(path, sample_dir, out, body + "[model.nmf]\nalpha = 0.3\n[train.gmf]\nlr = 0.002\n"
                     "[prepare]\nseed = 5\n")
    assert len(run_experiment(plan(read_experiment(path))).executed) == 5
    # the device says where a run trains, not what it is: nothing re-runs
    write_experiment(path, sample_dir, out, body.replace('"cpu"', '"auto"') + "[model.nmf]\nalpha = 0.3\n"
                     "[train.gmf]\nlr = 0.002\n[prepare]\nseed = 5\n")
    assert run_experiment(plan(read_experiment(path))).executed == []


def test_the_cache_follows_the_rating_files_content_not_their_times(sample_dir: Path, tmp_path: Path) -> None:
    import os
    import shutil

    data = tmp_path / "data"
    shutil.copytree(sample_dir, data)
    out = tmp_path / "out"
    path = write_experiment(tmp_path / "e.toml", data, out,
                            'targets = ["in"]\nmodels = ["pop"]\nseeds = [1]\ndevice = "cpu"\n')
    assert run_experiment(plan(read_experiment(path))).executed == ["in/dataset", "in/single/s1/pop"]
    # a fresh copy of the same files (new modification times): everything is still cached
    shutil.rmtree(data)
    shutil.copytree(sample_dir, data, copy_function=shutil.copyfile)
    for f in data.iterdir():
        os.utime(f, ns=(1, 1))
    assert set(stage_actions(plan(read_experiment(path))).values()) == {"cached"}
    # one changed rating (same size, same time): the dataset and what depends on it run again
    uk = data / "uk_5core.txt"
    stat = uk.stat()
    lines = uk.read_text(encoding="utf-8").splitlines(keepends=True)
    user, item, rate, date = lines[1].split(" ")
    lines[1] = " ".join([user, item, "1.0" if rate != "1.0" else "2.0", date])
    uk.write_text("".join(lines), encoding="utf-8")
    os.utime(uk, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert uk.stat().st_size == stat.st_size
    assert run_experiment(plan(read_experiment(path))).executed == ["in/dataset", "in/single/s1/pop"]


def test_a_deleted_output_is_made_again(sample_dir: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "out"
    path = write_experiment(tmp_path / "e.toml", sample_dir, out,
                            'targets = ["in"]\nmodels = ["gmf"]\nseeds = [1]\ndevice = "cpu"\n[train]\nepochs = 1\n')
    run_experiment(plan(read_experiment(path)))
    shutil.rmtree(out / "in/single/s1/gmf")
    assert run_experiment(plan(read_experiment(path))).executed == ["in/single/s1/gmf"]


def test_an_interrupted_experiment_continues_where_it_stopped(sample_dir: Path, tmp_path: Path) -> None:
    body = 'targets = ["in"]\nmodels = ["gmf"]\nseeds = [3]\ndevice = "cpu"\n[train]\nepochs = 3\n'
    whole = write_experiment(tmp_path / "a.toml", sample_dir, tmp_path / "a", body)
    run_experiment(plan(read_experiment(whole)))

    broken = write_experiment(tmp_path / "b.toml", sample_dir, tmp_path / "b", body)
    p = plan(read_experiment(broken))
    stopped = run_experiment(p, stop_after=1)  # as if killed after epoch 1's checkpoint
    assert stopped.executed == ["in/dataset", "in/single/s3/gmf"]
    assert stage_actions(p)["in/single/s3/gmf"] == "resume"
    assert stage_actions(p)["in/dataset"] == "cached"
    done = run_experiment(plan(read_experiment(broken)))
    assert done.actions["in/single/s3/gmf"] == "resume" and done.executed == ["in/single/s3/gmf"]
    a = json.loads((tmp_path / "a/in/single/s3/gmf/results.json").read_text())
    b = json.loads((tmp_path / "b/in/single/s3/gmf/results.json").read_text())
    assert a["test"] == b["test"] and a["selected_epoch"] == b["selected_epoch"]


def test_fine_tuning_stages_run(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = write_experiment(
        tmp_path / "e.toml", sample_dir, out,
        'targets = ["in"]\nsources = ["de"]\nmodels = ["forec", "acmr"]\nseeds = [1]\ndevice = "cpu"\n'
        "[train]\nepochs = 1\n[finetune.forec]\nepochs = 1\n[finetune.acmr]\nepochs = 1\n"
        "[model.acmr]\nembedding_dim = 8\nblocks = 1\nheads = 2\nhistory = 10\n",
    )
    result = run_experiment(plan(read_experiment(path)))
    assert "in/src-de/s1/forec" in result.executed and "in/src-de/s1/acmr" in result.executed
    forec = json.loads((out / "in/src-de/s1/forec/in/run.json").read_text())
    assert forec["model"] == "forec" and Path(forec["pretrained"]["base"]) == (out / "in/src-de/s1/maml").resolve()
    acmr = json.loads((out / "in/src-de/s1/acmr/in/run.json").read_text())
    assert acmr["model"] == "acmr" and acmr["train_config"]["epochs"] == 1
    assert (out / "in/src-de/s1/acmr/in/results.json").is_file()
    assert run_experiment(plan(read_experiment(path))).executed == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('models = ["gmf"]\ncolour = 1\n', "unknown key 'colour'"),
        ('models = ["gmff"]\n', "unknown model 'gmff'"),
        ('models = ["gmf"]\ntargets = ["zz"]\n', "target 'zz' has no rating file in"),
        ('models = ["gmf"]\ntargets = ["z z"]\n', "target 'z z': a market name is letters, digits, _ and - only"),
        ('models = ["gmf"]\ntargets = ["fr"]\n', "target 'fr' has no rating file"),
        ('models = ["gmf"]\n[train]\nepochz = 3\n', "[train]: unknown setting 'epochz'"),
        # a typo under [train] is reported there, not under the [train.NAME] it is merged into
        ('models = ["gmf"]\n[train]\nepoch = 3\n[train.acmr]\nepochs = 2\n', "[train]: unknown setting 'epoch'"),
        ('models = ["gmf"]\n[train]\nepochs = 3\n[train.acmr]\nepoch = 2\n', "[train.acmr]: unknown setting 'epoch'"),
        ('models = ["gmf"]\n[model.nmf]\nalfa = 3\n', "[model.nmf]: unknown setting 'alfa'"),
        ('models = ["gmf"]\n[finetune.gmf]\nepochs = 3\n', "gmf has no fine-tuning stage (models made by fine-tuning: forec, acmr"),
        ('models = ["gmf"]\nseeds = [1, 1]\n', "distinct"),
        ('models = ["gmf"]\nprotocol = "x"\n', "protocol must be forec or acmr"),
        ('models = ["gmf"]\n[prepare]\ntarget = "uk"\n', "cannot set 'target'"),
        ('models = ["maml"]\n[model."maml++"]\nlr = 1\n', '[model."maml++"]: maml has no pooled variant; its runs '
         'trained with the sources read [model.maml]'),
        ('models = ["forec"]\n[model."forec++"]\nlr = 1\n', "forec has no pooled variant"),
        ('models = ["gmf"]\n[model."gmff++"]\nalpha = 1\n', "unknown model 'gmff++'"),
        ('models = ["gmf"]\n[finetune."forec++"]\nepochs = 1\n', "(known: " ),
        ('models = ["nmf++"]\n[model."nmf++"]\ngmf = {}\n', '[model."nmf++"] cannot set \'gmf\''),
        ('models = ["maml"]\n[model.maml]\nnmf = {}\n', '[model.maml] cannot set \'nmf\': it is the settings of the nmf '
         'run maml starts from; set them in [model.nmf] (or [model."nmf++"] for its run trained with the sources)'),
        ('models = ["ease++"]\n[model."ease++"]\nlam = -1.0\n', '[model."ease++"]: '),
        # a bad key of [model.ease] is reported there, also when [model."ease++"] comes first
        ('models = ["ease++"]\n[model."ease++"]\nlam = 3.0\n[model.ease]\nlamb = 1.0\n', "[model.ease]: "),
        ('models = ["gmf"]\n[train."gmf++"]\nepochz = 1\n', '[train."gmf++"]: unknown setting \'epochz\''),
    ],
)
def test_bad_experiment_files_are_one_error_line(sample_dir: Path, tmp_path: Path, body: str, message: str) -> None:
    path = write_experiment(tmp_path / "e.toml", sample_dir, tmp_path / "out", body)
    result = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(XmfastError):
        plan(read_experiment(path))


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [  # the file's first two lines are data and out
        ('models = ["gmf"]\n[train]\nepochs = "four"\n', 5, '[train]: setting epochs must be an integer, got "four"'),
        ('models = ["gmf"]\n[train]\nepochs = 0\n', 5, "[train]: epochs must be at least 1, got 0"),
        # merged tables: the line of the table that holds the bad key
        ('models = ["gmf"]\n[train]\nlr = "x"\n[train.gmf]\nepochs = 2\n', 5, '[train]: setting lr must be a number, got "x"'),
        ('models = ["gmf"]\n[train]\nepochs = 2\n[train.gmf]\n# a comment\nlr = "x"\n', 8,
         '[train.gmf]: setting lr must be a number, got "x"'),
        ('models = ["gmf++"]\n[model.gmf]\nembedding_dim = 8\n[model."gmf++"]\nembeding_dim = 4\n', 7,
         "[model.\"gmf++\"]: unknown setting 'embeding_dim' (known: embedding_dim, init, init_std)"),
        ('models = ["gmf++"]\n[model.gmf]\nembedding_dim = "8"\n[model."gmf++"]\ninit_std = 0.1\n', 5,
         '[model.gmf]: setting embedding_dim must be an integer, got "8"'),
        ('models = ["maml"]\n[model.maml]\nmaml = {inner_lr = "a"}\n', 5,
         '[model.maml]: [maml] setting inner_lr must be a number, got "a"'),
        ('models = ["maml"]\n[model.maml.maml]\nfirst_order = true\ninner_lr = "a"\n', 6,
         '[model.maml]: [maml] setting inner_lr must be a number, got "a"'),
        ('models = ["forec"]\n[finetune.forec]\nepochs = 1.5\n', 5, "[finetune.forec]: setting epochs must be an integer, got 1.5"),
        ('models = ["gmf"]\ntrain.epochs = "x"\n', 4, '[train]: setting epochs must be an integer, got "x"'),
    ],
)
def test_a_bad_setting_is_named_with_its_line(sample_dir: Path, tmp_path: Path, body: str, line: int,
                                             message: str) -> None:
    """The contract for bad input (one `error:` line naming the file, the line and what is
    wrong), for settings whose table and key the reader knows: FILE:LINE, the table as written,
    the setting, and no Python class name (TrainConfig, GMFConfig)."""
    path = write_experiment(tmp_path / "e.toml", sample_dir, tmp_path / "out", body)
    result = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {path}:{line}: {message}\n"
    assert "Config" not in result.output


def test_the_line_of_a_setting_is_read_from_the_tables_and_keys() -> None:
    from xmfast.experiment import setting_line

    def line(text: str, table: tuple[str, ...], path: tuple[str, ...]) -> int | None:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(text)
        try:
            return setting_line(Path(f.name), table, path)
        finally:
            Path(f.name).unlink()

    text = ('name = "x"\n[train]\nepochs = 3\n[train.acmr]\n  epochs=2 # two\n[model."gmf++"]\n'
            "'embedding_dim' = 8\n[[model.list]]\nepochs = 9\n")
    assert line(text, ("train",), ("epochs",)) == 3
    assert line(text, ("train", "acmr"), ("epochs",)) == 5
    assert line(text, ("model", "gmf++"), ("embedding_dim",)) == 7
    assert line(text, ("model", "gmf"), ("embedding_dim",)) is None
    assert line(text, ("train",), ("lr",)) is None
    assert setting_line(None, ("train",), ("epochs",)) is None
    assert setting_line(Path("/nonexistent/e.toml"), ("train",), ("epochs",)) is None


def test_a_training_setting_re_runs_the_trained_models_only(sample_dir: Path, tmp_path: Path) -> None:
    """pop and EASE read no [train] setting but their sources and seed: a changed `epochs` or `lr`
    re-runs GMF, not them; a changed seed or model setting still re-runs them."""
    out = tmp_path / "out"
    body = 'targets = ["in"]\nmodels = ["pop", "ease", "gmf"]\nseeds = [1]\ndevice = "cpu"\n[train]\nepochs = 1\n'
    path = write_experiment(tmp_path / "e.toml", sample_dir, out, body)
    run_experiment(plan(read_experiment(path)))
    write_experiment(path, sample_dir, out, body.replace("epochs = 1", "epochs = 2\nlr = 0.002"))
    actions = stage_actions(plan(read_experiment(path)))
    assert {k: v for k, v in actions.items() if k != "in/dataset"} == {
        "in/single/s1/pop": "cached", "in/single/s1/ease": "cached", "in/single/s1/gmf": "run"}
    write_experiment(path, sample_dir, out, body.replace("seeds = [1]", "seeds = [2]") + "[model.ease]\nlam = 50.0\n")
    actions = stage_actions(plan(read_experiment(path)))
    assert actions["in/single/s2/pop"] == "run" and actions["in/single/s2/ease"] == "run"
    write_experiment(path, sample_dir, out, body + "[model.ease]\nlam = 50.0\n")
    assert stage_actions(plan(read_experiment(path)))["in/single/s1/ease"] == "run"


def test_cli_dry_run_then_run_then_report(sample_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = write_experiment(tmp_path / "e.toml", sample_dir, out,
                            'name = "tiny"\ntargets = ["in"]\nmodels = ["pop", "gmf"]\nseeds = [1, 2]\n'
                            'device = "cpu"\n[train]\nepochs = 1\n')
    dry = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "in/single/s2/gmf" in dry.output and "5 to run" in dry.output
    assert not out.exists()  # a dry run writes nothing
    done = runner.invoke(app, ["run", str(path)])
    assert done.exit_code == 0, done.output
    assert "5 stages, 5 run, 0 reused" in done.output
    report = (out / "report.md").read_text()
    assert "| gmf | – | 1, 2 |" in report and "report-plots/bars.png" in report
    dry = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert "0 to run" in dry.output and "cached" in dry.output


def test_experiment_paths_are_relative_to_the_file(sample_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`data` and `out` in the file are relative to the file's directory, whatever the current
    directory; `--out` on the command line is relative to the current directory."""
    (tmp_path / "grid" / "exps").mkdir(parents=True)
    file = tmp_path / "grid" / "exps" / "e.toml"
    file.write_text('data = "../data"\nout = "../runs/e"\nmodels = ["pop"]\ntargets = ["in"]\n', encoding="utf-8")
    import shutil

    shutil.copytree(sample_dir, tmp_path / "grid" / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    exp = read_experiment(Path("../grid/exps/e.toml"))
    assert exp.data.dir.resolve() == tmp_path / "grid" / "data" and exp.out.resolve() == tmp_path / "grid" / "runs" / "e"
    assert plan(exp).stages[0].path.resolve() == tmp_path / "grid" / "runs" / "e" / "in" / "dataset"
    assert read_experiment(file, out=Path("mine")).out.resolve() == elsewhere / "mine"
    dry = runner.invoke(app, ["run", str(file), "--dry-run", "--out", "mine"])
    assert dry.exit_code == 0 and "mine" in dry.output, dry.output


def test_shipped_experiment_files_plan_from_any_directory(sample_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`xmfast run experiments/quickstart.toml` reads the embedded sample and writes runs/quickstart
    of the repository, from the repository root (as the README runs it) or anywhere else."""
    root = Path(__file__).resolve().parents[1]
    for cwd in (root, tmp_path):
        monkeypatch.chdir(cwd)
        exp = read_experiment(root / "experiments" / "quickstart.toml")
        assert exp.data.dir.resolve() == sample_dir.resolve() and exp.out.resolve() == root / "runs" / "quickstart", cwd
        dry = runner.invoke(app, ["run", str(root / "experiments" / "quickstart.toml"), "--dry-run"])
        assert dry.exit_code == 0 and "in/all/s3/forec" in dry.output, dry.output
    monkeypatch.chdir(root)
    assert read_experiment(Path("experiments/quickstart.toml")).out == Path("runs/quickstart")


def test_shipped_experiment_files_plan(xmarket_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The files in experiments/ read and plan from any directory (here: not the repository root)."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    counts = {}
    for name in ("quickstart", "xmarket", "xmarket-acmr", "forec-pairwise", "acmr", "acmr-shortcut", "forec-original",
                 "forec-xmfast", "leaderboard-forec", "leaderboard-acmr"):
        p = plan(read_experiment(root / "experiments" / f"{name}.toml"))
        counts[name] = len(p.stages)
        assert p.stages[0].kind == "prepare"
    # quickstart and the leaderboards (7 markets): dataset + 3 seeds × (pop, cooc, ease, ease++, itemknn,
    # itemknn++, mf, gmf, mlp, nmf, gmf++, mlp++, nmf++, maml, forec, magmf, mamlp, manmf, acmr ×2, sasrec,
    # easemix)
    assert counts["quickstart"] == 1 + 3 * 22
    assert counts["leaderboard-forec"] == counts["leaderboard-acmr"] == 7 * (1 + 3 * 22)
    for name, protocol in (("leaderboard-forec", "forec"), ("leaderboard-acmr", "acmr")):
        exp = read_experiment(root / "experiments" / f"{name}.toml")
        assert exp.protocol == protocol and exp.models == read_experiment(root / "experiments" / "quickstart.toml").models
    # xmarket: 7 × (dataset + 3 × 10); acmr: 7 × (dataset + pop, cooc, pre-train, fine-tune)
    assert counts["xmarket"] == 7 * (1 + 3 * 10) and counts["acmr"] == 7 * 5
    # xmarket-acmr: jp and in × (dataset + pre-train, fine-tune), one seed
    assert counts["xmarket-acmr"] == 2 * 3
    # acmr-shortcut: jp and in × (dataset + pre-train, fine-tune), with the original code's histories
    assert counts["acmr-shortcut"] == 2 * 3
    shortcut = plan(read_experiment(root / "experiments" / "acmr-shortcut.toml"))
    assert all(s.settings["model_config"]["leave_out_own_item"] is False for s in shortcut.stages if s.kind != "prepare")
    # pairwise: 7 targets × (dataset + 3 seeds × (pop, gmf, mlp, nmf + 6 sources × 5))
    assert counts["forec-pairwise"] == 7 * (1 + 3 * (4 + 6 * 5))
    # the recipes: jp, in, mx × (dataset + 3 seeds × (gmf, mlp, nmf, gmf++, mlp++, nmf++, maml, forec [+ pop, cooc]))
    assert counts["forec-original"] == 3 * (1 + 3 * 8) and counts["forec-xmfast"] == 3 * (1 + 3 * 10)
    original = plan(read_experiment(root / "experiments" / "forec-original.toml"))
    trained = [s for s in original.stages if s.kind != "prepare"]
    assert all(s.settings["train_config"]["recipe"] == "original" for s in trained)
    assert deps_of(original, "jp/single/s1/mlp") == {"jp/dataset", "jp/single/s1/gmf"}  # MLP from GMF
    forec = original.by_id()["jp/src-de/s1/forec"].settings
    assert forec["train_config"]["batch_size"] == 20 and forec["model_config"]["output_from_base"] is True
    xm = plan(read_experiment(root / "experiments" / "forec-xmfast.toml"))
    assert all("recipe" not in s.settings.get("train_config", {}) for s in xm.stages)


def test_run_refuses_torchrun(sample_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_experiment(tmp_path / "e.toml", sample_dir, tmp_path / "out", 'models = ["gmf"]\n')
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "without torchrun" in result.output
    assert not (tmp_path / "out").exists()


def test_a_stage_another_process_finished_meanwhile_is_not_run_again(sample_dir: Path, tmp_path: Path) -> None:
    """Two `xmfast run`s of one experiment (say one per target): a stage the other process
    finished after this one made its plan is taken as cached, not trained again over the run
    a later stage of the other process may be reading."""
    from xmfast import experiment

    out = tmp_path / "out"
    body = 'targets = ["in"]\nmodels = ["gmf", "mlp"]\nseeds = [1]\ndevice = "cpu"\n[train]\nepochs = 1\n'
    p = plan(read_experiment(write_experiment(tmp_path / "e.toml", sample_dir, out, body)))
    started: list[str] = []

    class Other(experiment.ExperimentObserver):
        def on_stage_start(self, stage, action, index, total) -> None:
            started.append(stage.id)
            if stage.id == "in/single/s1/gmf":  # meanwhile the other process finishes mlp
                other = plan(read_experiment(tmp_path / "e.toml"))
                mlp = other.by_id()["in/single/s1/mlp"]
                experiment._execute(other.experiment, mlp, "run", other.by_id(), None, None)
                experiment.write_json_atomic(experiment._ledger_path(other.experiment, mlp),
                                             {"id": mlp.id, "key": mlp.key, "status": "finished"})

    order = [s.id for s in p.stages]
    assert order.index("in/single/s1/gmf") < order.index("in/single/s1/mlp")
    result = run_experiment(p, observer=Other())
    assert "in/single/s1/mlp" not in started and "in/single/s1/mlp" not in result.executed
    assert result.actions["in/single/s1/mlp"] == "cached"
    assert (out / "in/single/s1/mlp/results.json").is_file()


def test_a_pooled_variant_has_settings_of_its_own(sample_dir: Path, tmp_path: Path) -> None:
    """[model.NAME++] and [train.NAME++] apply over [model.NAME] and [train.NAME] to the runs
    trained with the sources (a ++ entry and the runs a pooled or cross-market model starts
    from), never to the single-market run, whose stage key does not change."""
    base = 'targets = ["in"]\nmodels = ["ease", "ease++", "gmf", "nmf++", "maml"]\nseeds = [1]\n[model.ease]\nlam = 10.0\n'
    plain = plan(read_experiment(write_experiment(tmp_path / "a.toml", sample_dir, tmp_path / "out", base))).by_id()
    pooled = plan(read_experiment(write_experiment(
        tmp_path / "b.toml", sample_dir, tmp_path / "out",
        base + '[model."ease++"]\nlam = 500.0\n[model."gmf++"]\nembedding_dim = 16\n[train."gmf++"]\nepochs = 3\n'))).by_id()
    model = {i: s.settings["model_config"] for i, s in pooled.items() if s.kind != "prepare"}
    assert model["in/single/s1/ease"]["lam"] == 10.0 and model["in/all/s1/ease++"]["lam"] == 500.0
    assert plain["in/all/s1/ease++"].settings["model_config"]["lam"] == 10.0
    assert model["in/single/s1/gmf"]["embedding_dim"] == 8 and model["in/all/s1/gmf++"]["embedding_dim"] == 16
    assert model["in/all/s1/nmf++"]["gmf"] == model["in/all/s1/gmf++"]  # NMF's branch is the run it starts from
    assert model["in/all/s1/maml"]["nmf"] == model["in/all/s1/nmf++"]
    assert pooled["in/all/s1/gmf++"].settings["train_config"]["epochs"] == 3
    assert pooled["in/single/s1/gmf"].settings["train_config"]["epochs"] == plain["in/single/s1/gmf"].settings["train_config"]["epochs"]
    for same in ("in/dataset", "in/single/s1/ease", "in/single/s1/gmf"):
        assert pooled[same].key == plain[same].key, same
    for changed in ("in/all/s1/ease++", "in/all/s1/gmf++", "in/all/s1/nmf++", "in/all/s1/maml"):
        assert pooled[changed].key != plain[changed].key, changed


def test_part_of_a_grid_has_the_whole_grids_stages(sample_dir: Path, tmp_path: Path) -> None:
    """`xmfast run --models/--targets/--seeds` plans a part of the file's grid: each of its
    stages is the whole grid's stage (same id, same key), so the whole file reuses them."""
    from xmfast.experiment import restrict

    file = write_experiment(tmp_path / "e.toml", sample_dir, tmp_path / "out",
                            'targets = ["in", "jp"]\nmodels = ["pop", "ease", "ease++", "nmf++"]\nseeds = [1, 2]\n'
                            '[tune]\ntrials = 1\n[tune.ease]\nlam = [1.0]\n[tune."ease++"]\nlam = [2.0]\n'
                            '[tune.nmf]\nalpha = [0.5]\n')
    exp = read_experiment(file)
    whole = {s.id: s.key for s in plan(exp).stages}
    part = restrict(exp, models=["ease++", "nmf++"], targets=["jp"], seeds=[2])
    ids = [s.id for s in plan(part).stages]
    assert sorted(ids) == ["jp/all/s2/ease++", "jp/all/s2/gmf++", "jp/all/s2/mlp++", "jp/all/s2/nmf++", "jp/dataset"]
    assert all(whole[s.id] == s.key for s in plan(part).stages)
    # a [tune.NAME] table goes with the entry it searches: ease's with ease, nmf's with nmf++
    assert sorted(k for k, v in part.tune.items() if isinstance(v, dict)) == ["ease++", "nmf"]
    assert sorted(k for k, v in restrict(exp, models=["ease"]).tune.items() if isinstance(v, dict)) == ["ease"]
    for kwargs, message in ((dict(models=["easy"]), "--models easy: 'easy' is not among the file's models"),
                            (dict(models=[]), "--models : name at least one of the file's models"),
                            (dict(seeds=[3]), "--seeds 3: 3 is not among the file's seeds (1, 2)"),
                            (dict(targets=["uk"]), "--targets uk: 'uk' is not among the file's targets (in, jp)")):
        with pytest.raises(XmfastError, match=re.escape(message)):
            restrict(exp, **kwargs)
    result = runner.invoke(app, ["run", str(file), "--dry-run", "--models", "pop", "--seeds", "x"])
    assert result.exit_code == 2 and "--seeds x: expected whole numbers" in result.output
    result = runner.invoke(app, ["run", str(file), "--dry-run", "--models", "pop", "--targets", "in"])
    assert result.exit_code == 0 and "in/single/s1/pop" in result.output and "jp/" not in result.output, result.output
