"""`xmfast tune`: an Optuna search over an experiment's [tune] table on the embedded sample (GMF,
two epochs per trial). A study of 8 trials with pruning finishes; interrupted mid-way (an
exception in trial 4, plus a trial left running as a SIGKILL leaves one) it resumes and completes
the budget without redoing a finished trial; no trial scores the test split; its chosen values
beat the default on validation (same seed); `xmfast run --use-tuned` trains the grid with them;
a bad [tune] table is one error line naming the table and the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xmfast import tune as tuning
from xmfast.errors import XmfastError
from xmfast.experiment import plan, read_experiment, run_experiment
from xmfast_cli.app import app

EXP = ('name = "tune"\ndata = "{data}"\nout = "{out}"\ntargets = ["in"]\nmodels = ["gmf"]\nseeds = [1]\n'
       'device = "cpu"\n[train]\nepochs = 2\n[tune]\ntrials = 8\npruner = "median"\n'
       '[tune.gmf]\nlr = {{low = 0.01, high = 0.2, log = true}}\nembedding_dim = [8, 16, 32]\n{extra}')


def experiment(tmp_path: Path, sample_dir: Path, extra: str = "") -> Path:
    file = tmp_path / "exp.toml"
    file.write_text(EXP.format(data=sample_dir, out=tmp_path / "out", extra=extra), encoding="utf-8")
    return file


def test_search_resumes_never_reads_test_and_beats_default(tmp_path: Path, sample_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    import optuna

    import xmfast.evaluation as evaluation

    exp = read_experiment(experiment(tmp_path, sample_dir))
    scored = []
    real_scorer = evaluation.evaluate_scorer

    def spy(dataset, split, *args, **kwargs):  # noqa: ANN001, ANN202 - records every split scored
        scored.append(split)
        return real_scorer(dataset, split, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_scorer", spy)
    trained = []
    real_execute = tuning._execute

    def crashing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the 4th trial dies after its first epoch
        if args[1].path.name == "default":  # the default configuration's run, before the trials
            return real_execute(*args, **kwargs)
        trained.append(args[1].path.name)
        if len(trained) == 4:
            def crash(record: dict) -> None:
                raise RuntimeError("injected crash")
            args[4].on_epoch_end = crash
        return real_execute(*args, **kwargs)

    monkeypatch.setattr(tuning, "_execute", crashing)
    with pytest.raises(RuntimeError, match="injected crash"):
        tuning.tune(exp)
    storage = tuning._storage(tuning.tune_dir(exp))
    study = optuna.load_study(study_name="gmf@in", storage=storage)
    first = {t.number: (t.state, t.value, t.params) for t in study.trials}
    assert len(first) == 4 and sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials) == 1
    study.ask()  # a trial a SIGKILL left running: on restart it is failed, not counted
    monkeypatch.setattr(tuning, "_execute", real_execute)
    trained.clear()
    monkeypatch.setattr(tuning, "_execute", lambda *a, **k: trained.append(a[1].path.name) or real_execute(*a, **k))
    summary = tuning.tune(exp)["gmf@in"]
    study = optuna.load_study(study_name="gmf@in", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 8 and states.count("FAIL") == 2
    assert states.count("PRUNED") >= 1  # the median pruner stopped some trial early
    assert len(trained) == 8 - 3  # only the trials still owed: none of the 3 finished ones again
    counted = [t.params["lr"] for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(set(counted)) == 8  # the continued search drew new values, not the first call's again
    assert {n: (t.state, t.value, t.params) for n, t in enumerate(study.trials) if n < 3} == \
        {n: v for n, v in first.items() if n < 3}
    trained.clear()
    assert tuning.tune(exp)["gmf@in"] == summary and trained == []  # the budget is spent: nothing more runs
    assert summary["trials"] == {"complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": 2}
    # the test split was never scored, and no trial has a test.json (or results.json)
    assert scored == [] and "test" not in scored
    assert not list(tuning.tune_dir(exp).rglob("test.json")) and not list(tuning.tune_dir(exp).rglob("results.json"))
    # the 8 counted trials, the crashed one and the default configuration's run
    assert len(list(tuning.tune_dir(exp).rglob("metrics.jsonl"))) == 10

    best = summary["best"]
    assert best["value"] == study.best_value and set(best["train"]) == {"lr"} and set(best["model"]) == {"embedding_dim"}
    # the default config, trained once by the search (validation only) as the grid trains it (same
    # seed): its value is the grid run's, and the chosen values beat it on validation
    run_experiment(plan(exp))
    default = json.loads((exp.out / "in" / "single" / "s1" / "gmf" / "results.json").read_text())
    assert summary["default"]["value"] == pytest.approx(default["valid"]["ndcg@10"], abs=1e-12)
    assert best["value"] > default["valid"]["ndcg@10"] and summary["chosen"] == "tuned"
    # the grid with the chosen values: a stage of another key, trained with them
    tuned = tuning.tuned_plan(exp)
    stage = next(s for s in tuned.stages if s.model == "gmf")
    assert stage.key != next(s for s in plan(exp).stages if s.model == "gmf").key
    run_experiment(tuned)
    info = json.loads((stage.path / "run.json").read_text())
    assert info["train_config"]["lr"] == best["train"]["lr"]
    assert info["model_config"]["embedding_dim"] == best["model"]["embedding_dim"]
    results = json.loads((stage.path / "results.json").read_text())
    assert results["valid"]["ndcg@10"] == pytest.approx(best["value"], abs=1e-12)  # the trial, re-made by the grid
    text = tuning.summary_markdown(exp.out)
    assert text.startswith("## Tuning: tune (protocol forec)\n")  # which experiment, in a report of several
    assert "lr [0.01, 0.2] log" in text and f"{states.count('COMPLETE')} / {states.count('PRUNED')} / 2" in text
    assert f"lr {best['train']['lr']:.4g}" in text
    gain = best["value"] - summary["default"]["value"]
    assert f"| {best['value']:.4f} | {summary['default']['value']:.4f} | {gain:+.4f} |" in text
    # `xmfast report OUT` of the tuned experiment's output has the same tuning section
    result = CliRunner().invoke(app, ["report", str(exp.out), "-o", str(tmp_path / "r.md"), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert text.strip() in (tmp_path / "r.md").read_text()
    # a summary written before the experiment's name was recorded: the same section, unnamed
    path = exp.out / "tune" / "summary.json"
    path.write_text(json.dumps({"format": "xmfast-tune", "studies": tuning.read_summary(exp.out)}))
    assert tuning.summary_markdown(exp.out) == text.replace(": tune (protocol forec)", "", 1)


@pytest.mark.parametrize(("extra", "message"), [
    ("dropout = {low = 0.0, high = 0.5}\n", "[tune.gmf] dropout: gmf has no such setting"),
    ("lr2 = 1\n", "[tune.gmf] lr2"),
    ("[tune.mlp]\nlr = [0.1]\n", "[tune.mlp]: 'mlp' is not among the experiment's models"),
    ("negatives = {low = 0, high = 4}\n", "[tune.gmf] negatives = 0"),
    ("l2 = {low = 1.0, high = 0.5}\n", "[tune.gmf] l2: low and high must be numbers with low < high"),
])
def test_bad_tune_table_is_one_error_line(tmp_path: Path, sample_dir: Path, extra: str, message: str) -> None:
    file = experiment(tmp_path, sample_dir, extra)
    result = CliRunner().invoke(app, ["tune", str(file)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0] and str(file) in lines[0], lines
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_budget_and_run_without_tuning(tmp_path: Path, sample_dir: Path) -> None:
    file = experiment(tmp_path, sample_dir)
    file.write_text(file.read_text().replace("trials = 8\n", "").replace('pruner = "median"', 'timeout = "2h"'))
    assert tuning.read_tune(read_experiment(file)).timeout == 7200.0
    file.write_text(file.read_text().replace('timeout = "2h"', 'timeout = "soon"'))
    with pytest.raises(XmfastError, match="timeout = 'soon'"):
        tuning.read_tune(read_experiment(file))
    result = CliRunner().invoke(app, ["run", str(file), "--use-tuned", "--dry-run"])
    assert result.exit_code == 2 and "summary.json: missing; run `xmfast tune" in result.output


def test_without_optuna_is_one_error_line(tmp_path: Path, sample_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed: `import optuna` raises ImportError
    result = CliRunner().invoke(app, ["tune", str(experiment(tmp_path, sample_dir))])
    assert result.exit_code == 2 and result.output.strip() == \
        'error: hyper-parameter search needs Optuna: pip install "xmfast[tune]"', result.output


def _study_states(exp) -> list[str]:  # noqa: ANN001
    import optuna

    study = optuna.load_study(study_name="gmf@in", storage=tuning._storage(tuning.tune_dir(exp)))
    return [t.state.name for t in study.trials]


def test_parallel_trials_keep_budget_and_default_that_beats_every_trial(tmp_path: Path, sample_dir: Path) -> None:
    """`--jobs 2`: two worker processes share the study and together run exactly the budget; the
    ranges hold only learning rates too small to learn, so the default configuration (lr 0.1: one
    epoch gives valid NDCG@10 0.068) beats every trial (at their initial weights: 0.053 with 8
    dimensions, 0.054 with 16): said in one line, and `--use-tuned` keeps the default settings."""
    file = experiment(tmp_path, sample_dir)
    file.write_text(file.read_text().replace("trials = 8", "trials = 2").replace("epochs = 2", "epochs = 1\nlr = 0.1").replace("[8, 16, 32]", "[8, 16]").replace(
        "lr = {low = 0.01, high = 0.2, log = true}", "lr = {low = 1e-7, high = 2e-7, log = true}"))
    result = CliRunner().invoke(app, ["tune", str(file), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    exp = read_experiment(file)
    states = _study_states(exp)
    assert states.count("COMPLETE") + states.count("PRUNED") == 2 and len(states) == 2
    summary = tuning.read_summary(exp.out)["gmf@in"]
    assert summary["chosen"] == "default" and summary["default"]["value"] > summary["best"]["value"]
    line = tuning.default_won(summary)
    assert line.startswith("gmf on in: the default configuration") and "--use-tuned` keeps the default" in line
    assert line in " ".join(result.output.split()) and line in tuning.summary_markdown(exp.out)
    assert [s.key for s in tuning.tuned_plan(exp).stages] == [s.key for s in plan(exp).stages]
    # no worker scored the test split: no trial (nor the default run) has a test.json or results.json
    assert not list(tuning.tune_dir(exp).rglob("test.json")) and not list(tuning.tune_dir(exp).rglob("results.json"))
    assert len(list(tuning.tune_dir(exp).rglob("metrics.jsonl"))) == 3


def test_dask_tasks_share_the_study_and_never_score_test(tmp_path: Path, sample_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    """`--executor dask`: the same trial worker as Dask tasks, on a cluster started here in this
    process (threads), so the spy sees every split any task scores."""
    from distributed import LocalCluster

    import xmfast.evaluation as evaluation

    file = experiment(tmp_path, sample_dir)
    file.write_text(file.read_text().replace("trials = 8", "trials = 3"))
    scored = []
    real_scorer = evaluation.evaluate_scorer
    monkeypatch.setattr(evaluation, "evaluate_scorer", lambda d, split, *a, **k: scored.append(split)
                        or real_scorer(d, split, *a, **k))
    exp = read_experiment(file)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        summary = tuning.tune(exp, address=cluster.scheduler_address, jobs=2)["gmf@in"]
    states = _study_states(exp)
    assert states.count("COMPLETE") + states.count("PRUNED") == 3 and len(states) == 3
    assert summary["trials"]["complete"] == states.count("COMPLETE") and "value" in summary["default"]
    assert scored == []
    result = CliRunner().invoke(app, ["tune", str(file), "--executor", "dask"])
    assert result.exit_code == 2 and "--executor dask needs --address HOST:PORT" in result.output


def test_sigkill_mid_trial_then_continue(tmp_path: Path, sample_dir: Path) -> None:
    """A real kill: `xmfast tune` in a process of its own, SIGKILLed while a trial runs; the next
    `xmfast tune` marks that trial failed and completes exactly the budget."""
    import os
    import signal
    import subprocess
    import sys
    import time

    file = experiment(tmp_path, sample_dir)
    file.write_text(file.read_text().replace("trials = 8", "trials = 3").replace("epochs = 2", "epochs = 12"))  # trials long enough to be seen running
    exp = read_experiment(file)
    killed = None
    for _ in range(3):  # a trial seen running may finish before the kill lands: then the search is killed again
        # from tmp_path: `python -c` puts the working directory first on sys.path, and the repository
        # root's uncompiled xmfast/ would shadow the installed package (CI installs it, no .so in the tree)
        proc = subprocess.Popen([sys.executable, "-c", "from xmfast_cli.app import main; main()", "tune", str(file)],
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, cwd=tmp_path)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            if (tuning.tune_dir(exp) / "tune.db").is_file():
                try:
                    running = _running_trials(exp)
                except Exception:  # noqa: BLE001 - the study is not made yet (no such study, no tables)
                    running = []
                if running:
                    proc.send_signal(signal.SIGKILL)
                    break
        proc.wait()
        left = _running_trials(exp) if proc.returncode == -signal.SIGKILL else []
        if left:  # what the kill interrupted: a trial the study still holds as running
            killed = left[0]
            break
    assert killed is not None, "no trial was killed while running"
    result = CliRunner().invoke(app, ["tune", str(file)])
    assert result.exit_code == 0, result.output
    states = _study_states(exp)
    assert states[killed] == "FAIL" and states.count("FAIL") == 1
    assert states.count("COMPLETE") + states.count("PRUNED") == 3


def _running_trials(exp) -> list[int]:  # noqa: ANN001
    import optuna

    study = optuna.load_study(study_name="gmf@in", storage=tuning._storage(tuning.tune_dir(exp)))
    return [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]


def test_a_pooled_variant_is_tuned_on_its_own(tmp_path: Path, sample_dir: Path) -> None:
    """[tune.ease] and [tune."ease++"] are two studies: EASE on the target alone and EASE pooled
    with the sources want different regularisations (on the sample's in, validation NDCG@10:
    alone 0.3965 at lam 30 against the default 100's 0.3896; pooled 0.5229 at 200 against 0.5222
    and 0.4990 at 30). Each trial trains the way its entry does, and `--use-tuned` gives each
    entry its own value."""
    file = tmp_path / "exp.toml"
    file.write_text(f'name = "t"\ndata = "{sample_dir}"\nout = "{tmp_path / "out"}"\ntargets = ["in"]\n'
                    'models = ["ease", "ease++"]\nseeds = [1]\ndevice = "cpu"\n[tune]\ntrials = 1\n'
                    '[tune.ease]\nlam = [30.0]\n[tune."ease++"]\nlam = [200.0]\n', encoding="utf-8")
    exp = read_experiment(file)
    trial = {name: tuning._trial_plan(exp, name, "in")[1] for name in ("ease", "ease++")}
    assert trial["ease"].sources == () and trial["ease++"].sources != ()
    result = CliRunner().invoke(app, ["tune", str(file)])
    assert result.exit_code == 0, result.output
    summary = tuning.read_summary(exp.out)
    assert set(summary) == {"ease@in", "ease++@in"}
    assert summary["ease@in"]["best"]["value"] == pytest.approx(0.3965, abs=1e-4)
    assert summary["ease++@in"]["best"]["value"] == pytest.approx(0.5229, abs=1e-4)
    assert not any(tuning.uses_default(s) for s in summary.values())
    tuned = tuning.tuned_plan(exp).by_id()
    assert tuned["in/single/s1/ease"].settings["model_config"]["lam"] == 30.0
    assert tuned["in/all/s1/ease++"].settings["model_config"]["lam"] == 200.0


def test_a_grid_tuned_a_part_at_a_time_keeps_every_part(tmp_path: Path, sample_dir: Path) -> None:
    """`xmfast tune --models A` then `--models B`: the summary holds both parts' studies (each
    call adds its own beside the earlier ones), and `run --use-tuned` uses them all."""
    file = tmp_path / "exp.toml"
    file.write_text(f'name = "t"\ndata = "{sample_dir}"\nout = "{tmp_path / "out"}"\ntargets = ["in"]\n'
                    'models = ["ease", "ease++"]\nseeds = [1]\ndevice = "cpu"\n[tune]\ntrials = 1\n'
                    '[tune.ease]\nlam = [30.0]\n[tune."ease++"]\nlam = [200.0]\n', encoding="utf-8")
    exp = read_experiment(file)
    first = CliRunner().invoke(app, ["tune", str(file), "--models", "ease++"])
    assert first.exit_code == 0, first.output
    assert set(tuning.read_summary(exp.out)) == {"ease++@in"}
    assert "--use-tuned --models ease++" in " ".join(first.output.split())
    second = CliRunner().invoke(app, ["tune", str(file), "--models", "ease"])
    assert second.exit_code == 0, second.output
    assert set(tuning.read_summary(exp.out)) == {"ease@in", "ease++@in"}
    tuned = tuning.tuned_plan(exp).by_id()
    assert (tuned["in/single/s1/ease"].settings["model_config"]["lam"],
            tuned["in/all/s1/ease++"].settings["model_config"]["lam"]) == (30.0, 200.0)
    # a part's tuned plan is the whole tuned plan's stages (what `run --use-tuned --models` trains)
    from xmfast.experiment import restrict

    part = tuning.tuned_plan(restrict(exp, models=["ease++"])).stages
    assert [s.id for s in part] == ["in/dataset", "in/all/s1/ease++"] and all(tuned[s.id].key == s.key for s in part)
    # the study belongs to the file's first seed, whatever part is asked for
    assert tuning._trial_plan(restrict(exp, seeds=[1]), "ease", "in")[1].seed == 1
    assert "--seeds" not in CliRunner().invoke(app, ["tune", "--help"]).output
    # a table removed from the file: its study is neither applied nor kept in the summary (ease++
    # reads [model.ease] again, where ease's study put 30, not its own study's 200)
    file.write_text(file.read_text().replace('[tune."ease++"]\nlam = [200.0]\n', ""), encoding="utf-8")
    exp = read_experiment(file)
    assert tuning.tuned_plan(exp).by_id()["in/all/s1/ease++"].settings["model_config"]["lam"] == 30.0
    with pytest.raises(XmfastError, match=r"no \[tune.MODEL\] table searches ease\+\+ \(the file's tables: ease;"):
        tuning.read_tune(restrict(exp, models=["ease++"]))
    # a damaged summary is rewritten by the next search, from the studies it runs
    (exp.out / "tune" / "summary.json").write_text('{"format": "xmfast-tune"}', encoding="utf-8")
    third = CliRunner().invoke(app, ["tune", str(file)])
    assert third.exit_code == 0, third.output
    assert set(tuning.read_summary(exp.out)) == {"ease@in"}


def test_a_baseline_study_continues_across_training_settings_but_not_another_metric(
        tmp_path: Path, sample_dir: Path) -> None:
    """EASE's stage keys no [train] setting (it reads none), so a changed `epochs` continues its
    study; the metric the study maximises is [train] monitor, so changing it is another study
    (an error saying so), as it is for a trained model through its stage key."""
    file = tmp_path / "exp.toml"
    body = (f'name = "t"\ndata = "{sample_dir}"\nout = "{tmp_path / "out"}"\ntargets = ["in"]\n'
            'models = ["ease"]\nseeds = [1]\ndevice = "cpu"\n[train]\nepochs = 2\n[tune]\ntrials = 1\n'
            '[tune.ease]\nlam = [30.0, 60.0]\n')
    file.write_text(body, encoding="utf-8")
    assert CliRunner().invoke(app, ["tune", str(file)]).exit_code == 0
    file.write_text(body.replace("epochs = 2", "epochs = 3").replace("trials = 1", "trials = 2"), encoding="utf-8")
    more = CliRunner().invoke(app, ["tune", str(file)])
    assert more.exit_code == 0, more.output
    import optuna

    study = optuna.load_study(study_name="ease@in", storage=tuning._storage(tuning.tune_dir(read_experiment(file))))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    file.write_text(body.replace("epochs = 2", 'epochs = 2\nmonitor = "hr@10"'), encoding="utf-8")
    other = CliRunner().invoke(app, ["tune", str(file)])
    assert other.exit_code == 2 and "study ease@in was made with another search space or other settings" in \
        " ".join(other.output.split()), other.output


def test_the_median_pruners_patience_is_set_in_the_tune_table(tmp_path: Path, sample_dir: Path) -> None:
    """`startup_trials` finished trials before any is pruned, `warmup_epochs` whole epochs a trial
    runs before it can be: checked on the pruner Optuna is given, with trials reported by hand."""
    import optuna

    file = experiment(tmp_path, sample_dir)
    file.write_text(file.read_text().replace('pruner = "median"', 'pruner = "median"\nstartup_trials = 1\n'
                                                                   'warmup_epochs = 1'))
    spec = tuning.read_tune(read_experiment(file))
    assert (spec.startup_trials, spec.warmup_epochs) == (1, 1)
    study = optuna.create_study(direction="maximize", pruner=tuning._pruner(spec))
    good = study.ask()
    for epoch in (1, 2):
        good.report(0.5, epoch)
    study.tell(good, 0.5)
    bad = study.ask()
    bad.report(0.1, 1)
    assert not bad.should_prune()  # epoch 1 is the warm-up
    bad.report(0.1, 2)
    assert bad.should_prune()  # below the one finished trial's median at epoch 2
    default = tuning.read_tune(read_experiment(experiment(tmp_path, sample_dir)))
    assert (default.startup_trials, default.warmup_epochs) == (2, 0)
    fresh = optuna.create_study(direction="maximize", pruner=tuning._pruner(default))
    first = fresh.ask()
    first.report(0.5, 1)
    fresh.tell(first, 0.5)
    early = fresh.ask()
    early.report(0.1, 1)
    assert not early.should_prune()  # one finished trial of the two the default waits for


@pytest.mark.parametrize(("setting", "message"), [
    ("startup_trials = -1", "startup_trials = -1: expected a whole number of at least 0"),
    ("warmup_epochs = 1.5", "warmup_epochs = 1.5: expected a whole number"),
    ('pruner = "halving"\nwarmup_epochs = 1', "warmup_epochs: only the median pruner reads it"),
])
def test_bad_pruner_patience_is_one_error(tmp_path: Path, sample_dir: Path, setting: str, message: str) -> None:
    file = experiment(tmp_path, sample_dir)
    file.write_text(file.read_text().replace('pruner = "median"', setting if "pruner" in setting
                                             else f'pruner = "median"\n{setting}'))
    with pytest.raises(XmfastError, match=re.escape(message)):
        tuning.read_tune(read_experiment(file))


@pytest.mark.parametrize(("dim", "value", "edge"), [
    (tuning.Dimension("embedding_dim", "model", choices=(32, 64, 128)), 128, "largest"),
    (tuning.Dimension("embedding_dim", "model", choices=(32, 64, 128)), 32, "smallest"),
    (tuning.Dimension("embedding_dim", "model", choices=(32, 64, 128)), 64, None),
    (tuning.Dimension("similarity", "model", choices=("cosine", "asymmetric")), "asymmetric", None),
    (tuning.Dimension("flag", "model", choices=(True, False)), True, None),
    # log range [1e-4, 1e-2]: 0.0095 is at 0.989 of its log width, 1.1e-4 at 0.021, 1e-3 at 0.5
    (tuning.Dimension("lr", "train", low=1e-4, high=1e-2, log=True), 0.0095, "largest"),
    (tuning.Dimension("lr", "train", low=1e-4, high=1e-2, log=True), 1.1e-4, "smallest"),
    (tuning.Dimension("lr", "train", low=1e-4, high=1e-2, log=True), 1e-3, None),
    # the same values on a linear range: 0.0095 is at 0.955 of [0, 0.01], 0.0009 at 0.09
    (tuning.Dimension("lr", "train", low=0.0, high=0.01), 0.0095, "largest"),
    (tuning.Dimension("lr", "train", low=0.0, high=0.01), 0.0009, None),
    # a linear range from 0 (shrinkage, dropout) cannot be widened below it
    (tuning.Dimension("shrink", "model", low=0.0, high=200.0), 3.7, None),
    (tuning.Dimension("shrink", "model", low=10.0, high=200.0), 11.0, "smallest"),
    (tuning.Dimension("negatives", "train", low=1, high=20, integer=True), 20, "largest"),
    (tuning.Dimension("negatives", "train", low=1, high=20, integer=True), 19, None),
])
def test_a_choice_at_the_end_of_its_range_is_named(dim: tuning.Dimension, value: object, edge: str | None) -> None:
    assert dim.edge(value) == edge


def test_the_edge_note_in_the_summary_and_the_report(tmp_path: Path) -> None:
    study = {"model": "mf", "entry": "mf", "target": "ca", "monitor": "ndcg@10",
             "space": {"lr": "[0.001, 0.1] log", "embedding_dim": "{32, 64, 128}"},
             "trials": {"complete": 20, "pruned": 0, "failed": 0}, "default": {"value": 0.41},
             "chosen": "tuned", "edges": {"embedding_dim": "largest"},
             "best": {"number": 3, "value": 0.46, "train": {"lr": 0.004276}, "model": {"embedding_dim": 128}}}
    line = ("mf on ca: chosen at the end of its range, embedding_dim 128 (largest searched); unless that end is "
            "the setting's own limit, a wider range may do better")
    assert tuning.edge_note(study) == line
    assert tuning.edge_note({**study, "chosen": "default"}) == ""  # the grid keeps the default: no chosen value
    assert tuning.edge_note({k: v for k, v in study.items() if k != "edges"}) == ""  # a summary written before
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "summary.json").write_text(json.dumps({"format": "xmfast-tune", "studies": {"mf@ca": study}}))
    assert tuning.summary_markdown(tmp_path).rstrip().endswith(line)
