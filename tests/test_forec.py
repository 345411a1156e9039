"""FOREC (xmfast finetune): the fork's frozen and trainable parameter sets, frozen weights
bit-identical through fine-tuning, independent forks for two markets, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from xmfast.errors import XmfastError
from xmfast.models.forec import FOREC, FORECConfig
from xmfast.models.ncf import NMF
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.training import TrainConfig, finetune, train
from xmfast_cli.app import app


def test_fork_copies_the_network_and_freezes_all_but_the_last_layers() -> None:
    torch.manual_seed(0)
    nmf = NMF(5, 7)
    model = FOREC(5, 7, FORECConfig(unfreeze=3, head=(16, 32, 16)))
    model.fork(nmf.state_dict())
    assert all(torch.equal(model.base.state_dict()[k], v) for k, v in nmf.state_dict().items())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # tower linears are tower.0, .2, .4, .6 (ReLUs between): the last three stay trainable
    assert trainable == {
        "base.mlp.tower.2.weight", "base.mlp.tower.2.bias", "base.mlp.tower.4.weight", "base.mlp.tower.4.bias",
        "base.mlp.tower.6.weight", "base.mlp.tower.6.bias",
        "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias", "head.4.weight", "head.4.bias",
        "output.weight", "output.bias",
    }
    assert [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)] == [16, 32, 16]
    assert model.head[0].in_features == 16 and model.output.in_features == 16  # 8 (tower) + 8 (GMF)
    none = FOREC(5, 7, FORECConfig(unfreeze=0))
    assert {n for n, p in none.named_parameters() if p.requires_grad} == {
        n for n, _ in none.named_parameters() if n.startswith(("head.", "output."))
    }
    out = model(torch.tensor([0, 1, 4]), torch.tensor([6, 2, 0]))
    assert out.shape == (3,)
    with pytest.raises(ValueError, match="unfreeze"):
        FORECConfig(unfreeze=5)


@pytest.fixture(scope="module")
def maml_run(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("forec")
    ds = prepare(sample_dir, root / "ds", PrepareConfig(target="in", sources="all"))
    config = TrainConfig(epochs=2, batch_size=256, seed=1, sources=("de",))
    for m in ("gmf", "mlp", "nmf", "maml"):
        assert train(ds, root / "runs" / m, m, config=config) is not None
    return root / "runs" / "maml"


def test_fine_tuning_keeps_frozen_weights_bit_identical_and_forks_are_independent(maml_run: Path, tmp_path: Path) -> None:
    results = finetune(maml_run, tmp_path / "forec", ["in", "de"], model="forec", config=TrainConfig(epochs=2, batch_size=256, lr=0.01, l2=1e-3))
    assert set(results) == {"in", "de"}
    base = torch.load(maml_run / "checkpoints" / "best.pt", weights_only=True)["model"]
    states = {m: torch.load(tmp_path / "forec" / m / "checkpoints" / "last.pt", weights_only=False)["model"] for m in results}
    probe = FOREC(3, 3)
    frozen = [n for n, p in probe.named_parameters() if not p.requires_grad]
    trainable_base = [n for n, p in probe.named_parameters() if p.requires_grad and n.startswith("base.")]
    for m, state in states.items():
        for name in frozen:
            assert torch.equal(state[name], base[name[len("base."):]]), (m, name)  # bit-identical
        assert any(not torch.equal(state[n], base[n[len("base."):]]) for n in trainable_base)
    # the two forks trained apart: their heads differ
    assert not torch.equal(states["in"]["output.weight"], states["de"]["output.weight"])
    for m in ("in", "de"):
        run = Run.open(tmp_path / "forec" / m)
        assert run.info["target"] == m and run.info["model"] == "forec" and run.status == "finished"
        test = json.loads((tmp_path / "forec" / m / "test.json").read_text())
        assert set(test["per_market"]) == {m}  # evaluated on that market's candidates
        assert run.load_dataset().target == m


def test_finetune_errors(maml_run: Path, tmp_path: Path) -> None:
    with pytest.raises(XmfastError, match="market 'xx' is not in the dataset"):
        finetune(maml_run, tmp_path / "f", ["xx"], model="forec")
    with pytest.raises(XmfastError, match="forec fine-tunes a finished maml or nmf run"):
        finetune(maml_run.parent / "gmf", tmp_path / "f", model="forec")
    ds = Run.open(maml_run).load_dataset()
    with pytest.raises(XmfastError, match=r"made from a trained run by xmfast.training.finetune\(RUN, OUT, model=.forec.\)"):
        train(ds, tmp_path / "x", "forec")


def test_cli_finetune_all_markets_of_the_run(maml_run: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["finetune", str(maml_run), "--markets", "all", "-o", str(tmp_path / "f"), "--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["de", "in"]
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "f" / "de"), "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["overall"] == json.loads((tmp_path / "f" / "de" / "test.json").read_text())["overall"]
    r = CliRunner().invoke(app, ["finetune", str(maml_run), "-o", str(tmp_path / "g"), "--head", "16,x"])
    assert r.exit_code == 2 and "error: --head: expected comma-separated integers, got '16,x'" in r.output


def test_finetune_can_fork_an_nmf_plus_plus_run(maml_run: Path, tmp_path: Path) -> None:
    nmf_run = maml_run.parent / "nmf"
    results = finetune(nmf_run, tmp_path / "f", None, model="forec", config=TrainConfig(epochs=1, batch_size=256, lr=0.01, l2=1e-3))
    assert list(results) == ["in"]
    base = torch.load(nmf_run / "checkpoints" / "best.pt", weights_only=True)["model"]
    state = torch.load(tmp_path / "f" / "in" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert torch.equal(state["base.gmf.user_embedding.weight"], base["gmf.user_embedding.weight"])
    assert Run.open(tmp_path / "f" / "in").info["pretrained"]["base"] == str(nmf_run.resolve())
    # FOREC forked from NMF++ and from MAML, same seed and settings: two rows of a report, the legend
    # saying what differs (before, the report refused them as "the same model, settings and seed")
    finetune(maml_run, tmp_path / "m", None, model="forec", config=TrainConfig(epochs=1, batch_size=256, lr=0.01, l2=1e-3))
    from xmfast.report import build_report, collect_runs

    report = build_report(collect_runs([tmp_path / "f" / "in", tmp_path / "m" / "in"]), published=[])
    rows = [r for r in report.sections[0].rows if r.label == "forec"]
    assert len(rows) == 2 and len({r.settings for r in rows}) == 2
    assert all("base.model" in text for text in report.sections[0].legend.values()), report.sections[0].legend


def test_an_interrupted_fork_resumes_to_the_uninterrupted_result(maml_run: Path, tmp_path: Path) -> None:
    from xmfast.training import resume

    config = TrainConfig(epochs=3, batch_size=256, lr=0.01, l2=1e-3)
    whole = finetune(maml_run, tmp_path / "whole", ["de"], model="forec", config=config)["de"]
    cut = finetune(maml_run, tmp_path / "cut", ["de"], model="forec", config=config, stop_after=1)
    assert cut == {"de": None} and Run.open(tmp_path / "cut" / "de").status == "interrupted"
    resumed = resume(tmp_path / "cut" / "de")
    assert whole is not None and resumed is not None
    assert resumed.test.aggregate() == whole.test.aggregate()
    assert [r["loss"] for r in resumed.run.read_metrics()] == [r["loss"] for r in whole.run.read_metrics()]
