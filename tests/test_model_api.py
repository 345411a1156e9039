"""The public model API (issue 19): declarations checked when registered, the registry's errors
(a name clash, an unknown dependency, a cycle, a setting of the wrong type) as one line naming
the model and the setting, the objectives a model may declare, models without training, scores
saved as a run, and a registry that loads no torch for commands that do not train."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from xmfast.errors import XmfastError
from xmfast.models import Model, Sizes, api, get_model, model_names, register, unregister
from xmfast_cli.app import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result: Any, *fragments: str) -> str:
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "error:" in line]
    assert len(lines) == 1, out
    for f in fragments:
        assert f in out.replace("\n", " "), out
    return lines[0]


@pytest.fixture
def registered():
    """Registers classes for one test and forgets them after it."""
    names: list[str] = []

    def add(cls: type) -> type:
        register(cls)
        names.append(cls.name)
        return cls

    yield add
    for n in names:
        unregister(n)


# ---- small user models ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DotConfig:
    dim: int = 4


class Dot(nn.Module):
    """Embeddings and a dot product: the smallest trainable model."""

    def __init__(self, groups: int, items: int, dim: int) -> None:
        super().__init__()
        self.user = nn.Embedding(groups, dim)
        self.item = nn.Embedding(items, dim)
        nn.init.normal_(self.user.weight, 0, 0.1)
        nn.init.normal_(self.item.weight, 0, 0.1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.user(users) * self.item(items)).sum(-1)


def dot_model(name: str, objective: str = "bce", **attrs: Any) -> type[Model]:
    def build(self: Model, sizes: Sizes, config: DotConfig) -> nn.Module:
        return Dot(sizes.groups, sizes.items, config.dim)

    return type(f"Dot_{name}", (Model,), {"name": name, "description": f"dot product ({objective})",
                                          "config_type": DotConfig, "objective": objective, "build": build, **attrs})


# ---- declarations and the registry ------------------------------------------------------------------
def test_a_name_clash_is_one_error_naming_both(registered) -> None:
    with pytest.raises(XmfastError, match=r"model gmf: the name is taken by xmfast.models.builtin:GMF"):
        register(dot_model("gmf"))
    registered(dot_model("dot-a"))
    with pytest.raises(XmfastError, match=r"model dot-a: the name is taken by test_model_api:Dot_dot-a"):
        register(dot_model("dot-a"))


def test_an_entry_point_clash_is_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class EP:
        name, value = "gmf", "somepackage.models:MyGMF"

    monkeypatch.setattr(api, "_entry_points", lambda: [EP()])
    monkeypatch.setattr(api, "_declared", None)
    monkeypatch.setattr(api, "_registered", {})
    with pytest.raises(XmfastError, match=r"model gmf: declared twice \(xmfast.models.builtin:GMF and "
                                          r"somepackage.models:MyGMF\)"):
        get_model("gmf")
    assert get_model("mlp").name == "mlp"  # the other models are unaffected (nmf, which starts from gmf, is not)
    monkeypatch.setattr(api, "_declared", None)


def test_installed_entry_points_are_read_whenever_one_may_exist(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The registry skips importing importlib.metadata (start-up) only when no distribution can
    declare a model: a .dist-info whose entry_points.txt names the group, a zip archive on
    sys.path or a finder of its own each send it to importlib.metadata, which then finds the
    entry point."""
    import importlib.metadata
    import sys
    import zipfile

    def found() -> list[str]:
        return [ep.name for ep in importlib.metadata.entry_points(group=api.ENTRY_POINT_GROUP)]

    assert api._may_declare_models() or not found()  # never skipped where one is installed
    other = tmp_path / "other"
    (other / "other-1.0.dist-info").mkdir(parents=True)
    (other / "other-1.0.dist-info" / "METADATA").write_text("Name: other\nVersion: 1.0\n")
    (other / "other-1.0.dist-info" / "entry_points.txt").write_text("[console_scripts]\nother = other:main\n")
    monkeypatch.setattr(sys, "path", [str(other)])
    assert api._may_declare_models() is False and found() == []
    plugin = tmp_path / "plugin"
    (plugin / "plug-1.0.dist-info").mkdir(parents=True)
    (plugin / "plug-1.0.dist-info" / "METADATA").write_text("Name: plug\nVersion: 1.0\n")
    (plugin / "plug-1.0.dist-info" / "entry_points.txt").write_text("[xmfast.models]\nplugged = plug:Model\n")
    monkeypatch.setattr(sys, "path", [str(other), str(plugin)])
    assert api._may_declare_models() is True and found() == ["plugged"]
    monkeypatch.setattr(api, "_declared", None)
    assert "plugged" in model_names()
    monkeypatch.setattr(api, "_declared", None)
    upper = tmp_path / "upper"  # importlib.metadata reads metadata directories in any case
    (upper / "Upper-1.0.DIST-INFO").mkdir(parents=True)
    (upper / "Upper-1.0.DIST-INFO" / "METADATA").write_text("Name: Upper\nVersion: 1.0\n")
    (upper / "Upper-1.0.DIST-INFO" / "entry_points.txt").write_text("[xmfast.models]\nupper = upper:Model\n")
    monkeypatch.setattr(sys, "path", [str(other), str(upper)])
    assert api._may_declare_models() is True and found() == ["upper"]
    egg = tmp_path / "eggs" / "laid-1.0-py3.11.egg"  # an unpacked egg put on the path
    (egg / "EGG-INFO").mkdir(parents=True)
    (egg / "EGG-INFO" / "PKG-INFO").write_text("Name: laid\nVersion: 1.0\n")
    (egg / "EGG-INFO" / "entry_points.txt").write_text("[xmfast.models]\nlaid = laid:Model\n")
    monkeypatch.setattr(sys, "path", [str(other), str(egg)])
    assert api._may_declare_models() is True and found() == ["laid"]
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped-1.0.dist-info/METADATA", "Name: zipped\nVersion: 1.0\n")
        z.writestr("zipped-1.0.dist-info/entry_points.txt", "[xmfast.models]\nzipped = zipped:Model\n")
    monkeypatch.setattr(sys, "path", [str(other), str(archive)])
    assert api._may_declare_models() is True and found() == ["zipped"]

    class Finder:
        def find_spec(self, *args):
            return None

        def find_distributions(self, context=None):
            return iter(())

    monkeypatch.setattr(sys, "path", [str(other)])
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    assert api._may_declare_models() is True


def test_a_broken_entry_point_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    class EP:
        name, value = "ghost", "no_such_package_xyz.models:Ghost"

    monkeypatch.setattr(api, "_entry_points", lambda: [EP()])
    monkeypatch.setattr(api, "_declared", None)
    assert "ghost" in model_names()  # listed without being loaded
    with pytest.raises(XmfastError, match=r"model ghost: cannot load no_such_package_xyz.models:Ghost "
                                          r"\(ModuleNotFoundError"):
        get_model("ghost")
    monkeypatch.setattr(api, "_declared", None)


def test_unknown_dependency_and_cycles_are_refused(registered) -> None:
    registered(dot_model("needs-ghost", starts_from={"x": "ghost"}))
    with pytest.raises(XmfastError, match=r"model needs-ghost: starts from unknown model 'ghost'"):
        get_model("needs-ghost")
    registered(dot_model("ping", starts_from={"pong": "pong"}))
    registered(dot_model("pong", starts_from={"ping": "ping"}))
    with pytest.raises(XmfastError, match=r"model ping: its starting runs form a cycle \(ping -> pong -> ping\)"):
        get_model("ping")


@pytest.mark.parametrize(("attrs", "message"), [
    ({"name": "Bad Name"}, "model name 'Bad Name' must be lower-case"),
    ({"name": "x++"}, "must be lower-case"),
    ({"objective": "hinge"}, "model bad: objective 'hinge' is not one of bce, bpr, softmax, own"),
    ({"objective": "own"}, "model bad: objective 'own' needs a loss(module, batch) method"),
    ({"batch": "graphs"}, "model bad: batch 'graphs' is not one of pairs, histories"),
    ({"lr": 0}, "model bad: lr must be a positive number"),
    ({"starts_from": {"base": "gmf"}}, "model bad: starts_from maps slot names"),
    ({"fine_tunes": "gmf"}, "model bad: fine_tunes must be a tuple"),
    ({"trained": False}, "model bad: trained = False needs fit"),
])
def test_bad_declarations_are_refused_when_registered(attrs: dict, message: str) -> None:
    cls = dot_model("bad")
    for k, v in attrs.items():
        setattr(cls, k, v)
    with pytest.raises(XmfastError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        register(cls)


def test_a_config_without_defaults_is_refused() -> None:
    @dataclass(frozen=True)
    class NoDefault:
        dim: int

    cls = dot_model("nodefault", config_type=NoDefault)
    with pytest.raises(XmfastError, match="model nodefault: config_type NoDefault needs a default for every setting"):
        register(cls)


def test_registry_loads_no_torch(tmp_path: Path) -> None:
    """Listing models, reading their settings and labels, planning: no torch import."""
    code = ("import sys\nfrom xmfast.models import get_model, model_names, label_of\n"
            "from xmfast.configs import setting_options\n"
            "for n in model_names():\n    m = get_model(n); setting_options(m.config_type)\n"
            "label_of({'model': 'gmf', 'train_config': {'sources': ['de']}})\n"
            "from xmfast import experiment\n"
            f"experiment.plan(experiment.read_experiment({str(ROOT / 'experiments' / 'quickstart.toml')!r}))\n"
            "print('torch' in sys.modules)")
    # not from the repository root, where `python -c` would import the source tree before the installed package
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", out.stderr


def test_labels_come_from_the_declarations() -> None:
    def label(model: str, sources: list[str], base: bool = False) -> str:
        return api.label_of({"model": model, "train_config": {"sources": sources},
                             "pretrained": {"base": "x"} if base else {}})

    assert [label("gmf", []), label("gmf", ["de"]), label("maml", ["de"]), label("cooc", ["de"]), label("pop", [])] \
        == ["gmf", "gmf++", "maml", "cooc", "pop"]
    assert [label("acmr", ["de"]), label("acmr", [], base=True), label("forec", [], base=True)] \
        == ["acmr (pre-trained)", "acmr", "forec"]
    assert label("gone", ["de"]) == "gone++"  # a model no longer installed keeps its runs' name


# ---- settings as options -----------------------------------------------------------------------------
def test_settings_become_options_from_the_dataclass() -> None:
    from xmfast.configs import parse_setting_options

    nmf = get_model("nmf")
    values, runs = parse_setting_options(nmf, ["--embedding-dim", "16", "--no-pretrained", "--mlp.layers=8,4",
                                               "--alpha", "0.25", "--gmf-run", "r1"])
    assert values == {"gmf": {"embedding_dim": 16}, "pretrained": False, "mlp": {"layers": (8, 4)}, "alpha": 0.25}
    assert runs == {"gmf": Path("r1")}
    assert nmf.config_from(values).mlp.layers == (8, 4)
    values, _ = parse_setting_options(get_model("cooc"), ["--cooc.markets", "de,uk", "--max-history", "none"])
    assert values == {"markets": ("de", "uk"), "max_history": None}


@pytest.mark.parametrize(("args", "message"), [
    (["-m", "gmf", "--alpha", "0.2"], "--alpha is not a setting of model gmf (its settings: --embedding-dim, --init, --init-std"),
    (["-m", "gmf", "--embedding-dim", "abc"], "--embedding-dim: expected an integer, got 'abc'"),
    (["-m", "nmf", "--layers", "16,x"], "--layers: expected comma-separated integers, got '16,x'"),
    (["-m", "nmf", "--pretrained=maybe"], "--pretrained: expected true or false, got 'maybe'"),
    (["-m", "gmf", "--embedding-dim", "0"], "model gmf: embedding_dim must be positive, got 0"),
    (["-m", "gmf", "--gmf-run", "x"], "--gmf-run is not a setting of model gmf"),
    (["-m", "nmf", "--no-pretrained", "--gmf-run", "x"], "--gmf-run: model nmf starts from no trained run"),
    (["-m", "nosuch"], "unknown model 'nosuch' (known: pop, cooc, gmf"),
])
def test_model_option_mistakes_are_one_error(dataset: Path, tmp_path: Path, args: list[str], message: str) -> None:
    assert_user_error(invoke("train", dataset, "-o", tmp_path / "r", "--epochs", "1", *args), message)
    assert not (tmp_path / "r").exists()


def test_a_config_file_value_of_the_wrong_type_names_model_and_setting(dataset: Path, tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('model = "gmf"\n[gmf]\nembedding_dim = true\n')
    assert_user_error(invoke("train", dataset, "--config", f, "-o", tmp_path / "r"),
                      "model gmf: setting embedding_dim must be an integer, got true")


# ---- objectives --------------------------------------------------------------------------------------
def test_row_losses_match_hand_computation() -> None:
    from xmfast.training.objectives import Batch, row_loss

    class Table(nn.Module):  # score(u, i) = table[u, i]
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]))

        def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            return self.table[u, i]

    batch = Batch(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[1, 2], [0, 2]]), torch.tensor([0, 0]))
    diffs = np.array([2 - 0, 2 - (-1), 1.5 - 0.5, 1.5 - 0])
    bpr = float(np.mean(np.log1p(np.exp(-diffs))))
    softmax = float(np.mean([np.log(np.exp(2) + 1 + np.exp(-1)) - 2, np.log(np.exp(1.5) + np.exp(0.5) + 1) - 1.5]))
    for objective, want in (("bpr", bpr), ("softmax", softmax)):
        got = row_loss(type("M", (), {"objective": objective})(), Table(), batch)
        assert got.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("objective", ["bpr", "softmax", "own"])
def test_row_objectives_train_and_learn(registered, dataset: Path, tmp_path: Path, objective: str) -> None:
    """A user's model with each row objective trains through the same engine (CLI, run
    directory, results), its loss falls and it beats an untrained model of the same seed."""
    calls: list[int] = []

    def loss(self: Model, module: nn.Module, batch: Any) -> torch.Tensor:
        calls.append(int(batch.keys.shape[0]))
        positive, negative = batch.scores(module)
        return torch.relu(1 - positive[:, None] + negative).mean()  # a hinge, the model's own

    name = f"dot-{objective}"
    registered(dot_model(name, objective, **({"loss": loss} if objective == "own" else {})))
    out = tmp_path / name
    r = invoke("train", dataset, "-m", name, "-o", out, "--epochs", "4", "--batch-size", "64", "--lr", "0.05",
               "--seed", "3", "--dim", "8")
    assert r.exit_code == 0, r.output
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and losses[-1] < losses[0]
    info = json.loads((out / "run.json").read_text())
    assert info["model"] == name and info["model_config"] == {"dim": 8}
    if objective == "own":
        assert calls and max(calls) == 64
    trained = json.loads((out / "results.json").read_text())["valid"]["ndcg@10"]
    r = invoke("train", dataset, "-m", name, "-o", tmp_path / "zero", "--epochs", "1", "--lr", "1e-9", "--seed", "3",
               "--dim", "8")
    assert r.exit_code == 0, r.output
    assert trained > json.loads((tmp_path / "zero" / "results.json").read_text())["valid"]["ndcg@10"]


# ---- models without training, scores saved as runs ---------------------------------------------------
class Constant(Model):
    """Scores every item by its index: no training, and an exactly known ranking."""

    name = "by-index"
    description = "item index as the score"
    trained = False

    def fit(self, dataset: Any, config: Any, sources: tuple[str, ...]) -> Any:
        class Scorer:
            def score(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
                return np.asarray(items, dtype=np.float64)

            def score_all(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
                return np.tile(np.asarray(items, dtype=np.float64), (len(groups), 1))

        return Scorer()


def test_a_scorer_model_trains_evaluates_and_saved_scores_report_the_same(registered, dataset: Path,
                                                                           tmp_path: Path) -> None:
    """A model without a training loop goes through train, evaluate --baseline and recommend; its
    scores written to a file and saved with --save-run give the same test figures, and report
    and compare read that saved run like a trained one."""
    from xmfast.dataset import PreparedDataset

    registered(Constant)
    run = tmp_path / "by-index"
    assert invoke("train", dataset, "-m", "by-index", "-o", run).exit_code == 0
    results = json.loads((run / "results.json").read_text())
    data = PreparedDataset.load(dataset)
    scores = np.asarray(data.test.candidates, dtype=np.float64)  # the same scores, computed "elsewhere"
    np.save(tmp_path / "s.npy", scores)
    saved = tmp_path / "saved"
    r = invoke("evaluate", dataset, "--scores", tmp_path / "s.npy", "--save-run", saved, "--label", "mine")
    assert r.exit_code == 0, r.output
    assert json.loads((saved / "results.json").read_text())["test"] == results["test"]
    r = invoke("evaluate", dataset, "--baseline", "by-index", "--json", tmp_path / "e.json", "--markets", "in")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["overall"]["ndcg@10"] == results["test"]["ndcg@10"]
    r = invoke("report", run, saved, "-o", tmp_path / "rep" / "report.md", "--no-plots", "--reference", "by-index")
    assert r.exit_code == 0, r.output
    rows = {row["model"]: row for row in json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]}
    assert rows["mine"]["ndcg@10 mean"] == rows["by-index"]["ndcg@10 mean"] == results["test"]["ndcg@10"]
    assert rows["mine"]["vs by-index diff"] == 0.0 and rows["by-index"]["vs by-index diff"] is None
    r = invoke("compare", run, saved)
    assert r.exit_code == 0 and "+0.0000" in r.output or "0.0000" in r.output, r.output
    # a saved run has no model: commands that need one say so
    assert_user_error(invoke("recommend", saved, "--user", "x"), "saved from the scores file", "no model to score with")
    assert_user_error(invoke("evaluate", dataset, "--scores", tmp_path / "s.npy", "--label", "x"),
                      "--label describes the run --save-run writes")
    assert_user_error(invoke("evaluate", dataset, "--baseline", "gmf"), "--baseline gmf: gmf is trained")


def test_report_and_compare_refuse_what_they_cannot_use(dataset: Path, tmp_path: Path) -> None:
    r = invoke("train", dataset, "-m", "pop", "-o", tmp_path / "pop")
    assert r.exit_code == 0, r.output
    assert invoke("evaluate", tmp_path / "pop", "--json", tmp_path / "pop.json").exit_code == 0
    assert_user_error(invoke("report", tmp_path / "pop", tmp_path / "pop.json", "-o", tmp_path / "r.md"),
                      "an `xmfast evaluate --json` file; a report reads run directories only")
    (tmp_path / "empty").mkdir()
    assert_user_error(invoke("report", tmp_path / "pop", tmp_path / "empty", "-o", tmp_path / "r.md"),
                      "no finished runs under it")
    assert_user_error(invoke("compare", tmp_path / "pop", dataset), "a directory that is not a run")
    assert_user_error(invoke("report", tmp_path / "pop", "-o", tmp_path / "r.md", "--reference", "nosuch"),
                      "--reference nosuch: no run of nosuch without sources among the runs (rows that can be the "
                      "reference: pop)")
    assert not (tmp_path / "r.md").exists()


def test_settings_that_make_no_network_are_one_error_and_no_run(registered, dataset: Path, tmp_path: Path) -> None:
    """A user's model whose settings cannot build its network (a negative width torch refuses)
    is one error naming the model, found before any run directory is written (before: a
    traceback and a run left "running")."""
    registered(dot_model("dot-neg"))
    assert_user_error(invoke("train", dataset, "-m", "dot-neg", "-o", tmp_path / "r", "--dim", "-3"),
                      "model dot-neg: its settings make no network (RuntimeError: ")
    assert not (tmp_path / "r").exists()
