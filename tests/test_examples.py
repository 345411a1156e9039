"""The worked example (examples/xmfast-examples): a package of three models written only against
the public model API, installed for real and used through every command, with no file of
xmfast/ or cli/ naming them. bprmf exercises the BPR objective, pooled-pop a model without a
training loop, gmf-bias a declared dependency on a trained GMF run."""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xmfast import models
from xmfast_cli.app import app

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "xmfast-examples"
NAMES = ("bprmf", "pooled-pop", "gmf-bias")
runner = CliRunner()


def invoke(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture(scope="module", autouse=True)
def installed(tmp_path_factory: pytest.TempPathFactory):
    """pip installs the example package (from a copy: a build leaves files beside its sources)
    into a directory put on sys.path and PYTHONPATH; afterwards the registry forgets it."""
    tmp = tmp_path_factory.mktemp("examples")
    source, target = tmp / "src", tmp / "site"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # offline, with the test environment's setuptools (the [test] extra pins one that builds wheels)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(source)], capture_output=True, text=True)
    assert pip.returncode == 0, f"pip install of {PACKAGE} failed:\n{pip.stdout}{pip.stderr}"
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
        models.refresh()
        yield target
    sys.path.remove(str(target))
    for name in NAMES:
        models.unregister(name)
    for module in [m for m in sys.modules if m.split(".")[0] == "xmfast_examples"]:
        del sys.modules[module]
    models.refresh()


@pytest.fixture(scope="module")
def runs(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three models trained by `xmfast train` on the prepared sample (target in, source uk),
    with GMF first for gmf-bias."""
    out = tmp_path_factory.mktemp("runs")
    invoke("train", dataset, "-m", "bprmf", "-o", out / "bprmf", "--epochs", 3, "--embedding-dim", 8, "--lr", 0.02)
    invoke("train", dataset, "-m", "pooled-pop", "-o", out / "pooled-pop", "--sources", "uk")
    invoke("train", dataset, "-m", "gmf", "-o", out / "gmf", "--epochs", 1)
    invoke("train", dataset, "-m", "gmf-bias", "-o", out / "gmf-bias", "--epochs", 1, "--gmf-run", out / "gmf")
    return out


def test_no_file_of_xmfast_names_the_example_models() -> None:
    """What "nothing names a model" means in code: no string constant of xmfast/ or cli/ is one
    of their names (docstrings may still use bprmf as an example), nor imports their package."""
    for path in [*(ROOT / "xmfast").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in NAMES and "xmfast_examples" not in node.value, f"{path} names {node.value!r}"


def test_models_lists_and_describes_them() -> None:
    listing = invoke("models")
    for name in NAMES:
        assert name in listing
    assert "bpr" in listing.split("bprmf", 1)[1].splitlines()[0]  # its declared objective
    described = invoke("models", "gmf-bias")
    assert "--embedding-dim" in described and "gmf.embedding_dim" in described and "--gmf-run" in described


def test_bprmf_trains_on_its_bpr_loss(runs: Path) -> None:
    from xmfast.runs import Run

    run = Run.open(runs / "bprmf")
    losses = [record["loss"] for record in run.read_metrics()]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    assert losses[0] < 0.6932  # BPR starts at log 2 (equal scores) and goes down from there
    info = json.loads((runs / "bprmf" / "run.json").read_text())
    assert info["model"] == "bprmf" and info["model_config"] == {"embedding_dim": 8, "item_bias": True, "init_std": 0.01}


def test_pooled_pop_counts_the_target_and_source_rows() -> None:
    """A tiny hand-made case: counts of the target's and the sources' rows, not other markets'."""
    dataset = SimpleNamespace(markets=["a", "b", "c"], target="a", n_items=4, train_item=np.array([0, 1, 1, 2, 3, 3, 3]),
                              train_market=lambda: np.array([0, 0, 1, 1, 2, 2, 2]), market_index=["a", "b", "c"].index)
    scorer = models.get_model("pooled-pop").fit(dataset, None, ("b",))
    assert scorer.score(np.array([5, 6]), np.array([[0, 1], [3, 2]])).tolist() == [[1, 2], [0, 1]]
    assert scorer.score_all(np.array([5, 6]), np.array([1, 3])).tolist() == [[2, 0], [2, 0]]
    assert models.get_model("pooled-pop").fit(dataset, None, ("b", "c")).score_all(np.array([0]), np.arange(4)).tolist() \
        == [[1, 2, 1, 3]]


def test_pooled_pop_run_scores_are_the_counts_of_in_and_uk(runs: Path) -> None:
    from xmfast.runs import Run
    from xmfast.training import load_scorer

    run = Run.open(runs / "pooled-pop")
    dataset = run.load_dataset()
    assert run.sources == ["uk"]
    counted = Counter(int(i) for i, m in zip(dataset.train_item, dataset.train_market())
                      if dataset.markets[m] in ("in", "uk"))
    held = dataset.test
    scores = load_scorer(run, dataset).score(np.asarray(held.group), np.asarray(held.candidates))
    assert scores.tolist() == [[counted[int(i)] for i in row] for row in np.asarray(held.candidates)]


def test_gmf_bias_starts_from_the_gmf_run_weights(runs: Path) -> None:
    from xmfast.models import Sizes
    from xmfast.runs import Run
    from xmfast.training import StartingRun

    gmf = Run.open(runs / "gmf")
    dataset = gmf.load_dataset()
    sizes = Sizes(dataset.n_groups, dataset.n_items, len(dataset.markets))
    model = models.get_model("gmf-bias")
    config = model.config_type()
    module = model.build(sizes, config)
    model.attach(module, dataset)
    model.initialise(module, {"gmf": StartingRun(gmf, sizes)}, config)
    trained = torch.load(gmf.best_checkpoint, weights_only=True)["model"]
    assert trained.keys() == module.gmf.state_dict().keys()
    for key, value in module.gmf.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert torch.count_nonzero(module.market_bias) == 0
    assert module.group_market.tolist() == np.asarray(dataset.group_market).tolist()
    # the trained run records what it started from; the markets come from the dataset, not the checkpoint
    info = json.loads((runs / "gmf-bias" / "run.json").read_text())
    assert Path(info["pretrained"]["gmf"]) == gmf.path.resolve()
    saved = torch.load(Run.open(runs / "gmf-bias").best_checkpoint, weights_only=True)["model"]
    assert "group_market" not in saved
    assert torch.count_nonzero(saved["market_bias"]) > 0  # it learned biases


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_and_recommend_each_run(runs: Path, dataset: Path, name: str) -> None:
    results = json.loads((runs / name / "results.json").read_text())
    evaluated = invoke("evaluate", runs / name)
    assert f"{results['test']['ndcg@10']:.4f}" in evaluated  # the run's own figure, scored again
    user = (dataset / "users.txt").read_text().split()[0]
    top = invoke("recommend", runs / name, "--user", user, "-k", 3)
    assert f"top 3 for user {user}" in top


def test_an_experiment_grid_with_them_plans_caches_and_reports(sample_dir: Path, tmp_path: Path) -> None:
    from xmfast.experiment import plan, read_experiment

    out = tmp_path / "out"
    grid = tmp_path / "grid.toml"
    grid.write_text(f'name = "byom"\ndata = "{sample_dir}"\nout = "{out}"\ntargets = ["in"]\nsources = "all"\n'
                    'models = ["pop", "cooc", "nmf", "bprmf", "pooled-pop", "gmf-bias"]\nseeds = [1]\n'
                    'device = "cpu"\n[train]\nepochs = 1\n[model.gmf]\nembedding_dim = 4\n'
                    '[model.bprmf]\nembedding_dim = 8\n', encoding="utf-8")
    stages = plan(read_experiment(grid)).by_id()
    gmf_bias = stages["in/single/s1/gmf-bias"]
    assert set(gmf_bias.deps) == {"in/dataset", "in/single/s1/gmf"}
    assert gmf_bias.pretrained == {"gmf": "in/single/s1/gmf"}
    # its `gmf` setting is the GMF run's, set once in [model.gmf]
    assert gmf_bias.settings["model_config"]["gmf"] == stages["in/single/s1/gmf"].settings["model_config"]
    assert stages["in/single/s1/gmf"].settings["model_config"]["embedding_dim"] == 4
    assert "in/all/s1/pooled-pop" in stages  # it uses the sources by design
    assert "in/all/s1/bprmf" not in stages and "in/single/s1/bprmf" in stages
    first = invoke("run", grid)
    assert f"{len(stages)} stages, {len(stages)} run, 0 reused" in first
    again = invoke("run", grid)
    assert f"{len(stages)} stages, 0 run, {len(stages)} reused" in again
    report = (out / "report.md").read_text()
    for label in ("pop", "cooc", "nmf", *NAMES):
        assert f"| {label} |" in report, label
    invoke("report", out, "-o", tmp_path / "again.md", "--no-plots")
    again_report = (tmp_path / "again.md").read_text()
    for label in ("nmf", *NAMES):
        assert f"| {label} |" in again_report, label
    compared = invoke("compare", out / "in/single/s1/nmf", out / "in/single/s1/bprmf", "--metrics", "ndcg@10")
    bprmf = json.loads((out / "in/single/s1/bprmf/results.json").read_text())
    assert "bprmf" in compared and f"{bprmf['test']['ndcg@10']:.4f}" in compared


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_the_shipped_grid_plans_from_any_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str) -> None:
    """examples/xmfast-examples/grid.toml, as the README runs it (from the repository root), or
    from anywhere else: its paths are relative to the file."""
    from xmfast.experiment import plan, read_experiment

    monkeypatch.chdir(ROOT if where == "root" else tmp_path)
    stages = plan(read_experiment(PACKAGE / "grid.toml")).stages
    assert stages[0].path.resolve() == ROOT / "runs" / "byom" / "in" / "dataset"
    assert {s.label for s in stages} == {"dataset", "pop", "cooc", "gmf", "mlp", "nmf", *NAMES}
    assert len([s for s in stages if s.label == "gmf-bias"]) == 3  # one per seed


def test_gmf_bias_refuses_a_gmf_run_with_other_settings(runs: Path, dataset: Path) -> None:
    """Its `gmf` setting is the starting run's: another embedding size is one error, no run."""
    result = runner.invoke(app, ["train", str(dataset), "-m", "gmf-bias", "-o", str(runs / "other"),
                                 "--embedding-dim", "4", "--gmf-run", str(runs / "gmf")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot initialise gmf-bias: its gmf settings" in result.output and "'embedding_dim': 4" in result.output
    assert not (runs / "other").exists()
