"""benchmarks/bench_models.py (issue 23) times every registered model as the leaderboard plans
it: its entries follow the registry (a model registered later appears by itself), and its timed
plan changes the number of epochs and nothing else. Planning only: nothing is trained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from xmfast.experiment import read_experiment
from xmfast.models import Model, get_model, model_names, register, unregister

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
bench = pytest.importorskip("bench_models")


class Constant(Model):
    name = "zz-constant"
    description = "a model registered after the leaderboard was written"
    trained = False

    def fit(self, dataset, config, sources):  # pragma: no cover - never fitted here
        raise AssertionError


def test_entries_are_the_registry_with_the_leaderboards_variants() -> None:
    board = read_experiment(ROOT / "experiments" / "leaderboard-forec.toml")
    entries = bench.leaderboard_entries(board.models)
    assert {get_model(e).name for e in entries} == set(model_names())
    assert entries[:4] == ["pop", "cooc", "gmf", "gmf++"]  # registry order, a model's variants together
    assert "ease++" in entries and "mf++" not in entries  # pooled only where the leaderboard pools
    register(Constant)
    try:
        assert bench.leaderboard_entries(board.models)[-1] == "zz-constant"
    finally:
        unregister("zz-constant")


def test_the_timed_plan_differs_from_the_leaderboards_only_in_epochs(sample_dir: Path, tmp_path: Path) -> None:
    board = read_experiment(ROOT / "experiments" / "leaderboard-forec.toml")
    entries = ["nmf", "forec", "acmr", "sasrec", "ease++"]
    default, timed = bench.market_plans(board, sample_dir, "in", tmp_path, entries, "cpu", 3, 1)
    assert [s.id for s in default.stages] == [s.id for s in timed.stages]
    # NMF from scratch (no GMF and MLP runs); FOREC from MAML from NMF++; ACMR's two stages
    assert [s.label for s in timed.stages] == ["dataset", "nmf", "nmf++", "maml", "forec", "acmr (pre-trained)",
                                               "acmr", "sasrec", "ease++"]
    epochs = {s.label: (d.settings["train_config"]["epochs"], s.settings["train_config"]["epochs"])
              for d, s in zip(default.stages, timed.stages) if s.kind != "prepare"}
    assert epochs == {"nmf": (25, 3), "nmf++": (25, 3), "maml": (25, 3), "forec": (25, 3),
                      "acmr (pre-trained)": (50, 1), "acmr": (50, 1), "sasrec": (100, 1), "ease++": (25, 3)}
    for d, s in zip(default.stages, timed.stages):
        if s.kind != "prepare":
            rest = {k: v for k, v in s.settings["train_config"].items() if k != "epochs"}
            assert rest == {k: v for k, v in d.settings["train_config"].items() if k != "epochs"}
            assert s.settings["model_config"] == d.settings["model_config"]
    assert bench.schedule(default.stages[5]) == "50 (patience 3)"
