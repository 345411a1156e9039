"""EASE-mix (issue 23 item 3, our own cross-market model): the score by hand, the prior alone is
ease++ bit for bit, the held-out view and the weight fit (gradient, a planted mix recovered), and
through the real paths it beats pop, runs in a grid and under `xmfast tune`."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.optimize import check_grad
from test_baselines_plus import F32, fake_dataset, invoke, write_clustered

from xmfast.models import get_model
from xmfast.models.easemix import (
    EaseMixScorer,
    Features,
    fit_weights,
    holdout_view,
    softmax_loss,
)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xmfast.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("clustered-mix")
    prepare(write_clustered(root / "data"), root / "ds", PrepareConfig(target="t", sources="all", eval_negatives=30))
    return root


def dated(ds: SimpleNamespace, days: list[list[int]]) -> SimpleNamespace:
    """fake_dataset plus what popularity and `recent` read: each training row's market and day."""
    sizes = np.diff(ds.train_offsets.astype(np.int64))
    ds.train_market = lambda: np.repeat(ds.group_market, sizes)
    ds.market_index = ds.markets.index
    ds.train_day = np.array([d for h in days for d in h], dtype=np.int32)
    return ds


def test_the_score_by_hand() -> None:
    # test_ease_by_hand's X = [[1,1,0],[0,1,1],[1,1,1]] in the target alone, λ = 1:
    # B = [[0,.5,0],[.5,0,.5],[0,.5,0]], item 3 in no history (inactive). Group 2 holds 0, 1, 2
    # (last 2, on day 500): ease++ = ease = [.5, 1, .5, 0], pop = [2, 3, 2, 0], last = B[2] =
    # [0, .5, 0, 0], and within 180 days of day 500 only item 2's ratings (days 400, 500): recent
    # = log(1 + [0, 0, 2, 0]).
    ds = dated(fake_dataset([[0, 1], [1, 2], [0, 1, 2]], [0, 0, 0], 4), [[10, 20], [100, 400], [15, 30, 500]])
    config = get_model("easemix").config_from({"lam": 1.0, "features": ["ease", "pop", "last", "recent"]})
    assert config.window == 180
    features = Features.fit(ds, config, ())
    scorer = EaseMixScorer(features, np.array([1.0, 2.0, 4.0, 8.0]), "")
    ln = np.log
    expected = np.array([[.5 + .5 + 2 * ln(3), 1 + 1 + 2 * ln(4) + 4 * .5, .5 + .5 + 2 * ln(3) + 8 * ln(3), 0.0]])
    assert scorer.score_all(np.array([2]), np.arange(4)) == pytest.approx(expected, **F32)
    # group 0 holds 0, 1 (last 1, day 20): ease++ = ease = B[0] + B[1] = [.5, .5, .5, 0], last =
    # B[1] = [.5, 0, .5, 0]; within days −160…200: items 0 (10, 15) and 1 (20, 30, 100), not 2
    assert scorer.score(np.array([0, 2]), np.array([[2, 3], [1, 0]])) == pytest.approx(
        np.array([[.5 + .5 + 2 * ln(3) + 4 * .5, 0.0], expected[0, [1, 0]]]), **F32)
    assert features.recent(np.array([0]), np.arange(4)) == pytest.approx(np.array([[ln(3), ln(4), 0, 0]]))
    assert features.residual(np.array([0]), np.array([[0, 2]])).shape == (1, 2, 4)


def test_the_prior_alone_is_ease_plus_plus_bit_for_bit(clustered: Path) -> None:
    from xmfast.dataset import PreparedDataset

    ds = PreparedDataset.load(clustered / "ds")
    model = get_model("easemix")
    ease = get_model("ease").fit(ds, get_model("ease").config_type(), ("all",))
    groups, candidates = ds.test.group, ds.test.candidates
    reference = ease.score(groups, candidates)
    fitted = model.fit(ds, model.config_type(), ("all",))
    assert fitted.weights.shape == (3,) and fitted.weights.any()
    zeroed = EaseMixScorer(fitted.features, np.zeros(3), "")
    assert np.array_equal(zeroed.score(groups, candidates), reference)
    alone = model.fit(ds, model.config_from({"features": []}), ("all",))
    assert np.array_equal(alone.score(groups, candidates), reference)
    assert np.array_equal(alone.score_all(groups[:3], np.arange(ds.n_items)),
                          ease.score_all(groups[:3], np.arange(ds.n_items)))
    assert not np.array_equal(fitted.score(groups, candidates), reference)


def test_the_held_out_view_drops_each_target_users_last_training_item(clustered: Path) -> None:
    from xmfast.dataset import PreparedDataset

    ds = PreparedDataset.load(clustered / "ds")
    view, rows = holdout_view(ds)
    target = ds.market_index("t")
    for g in range(ds.n_groups):
        history, kept = ds.history(g), view.history(g)
        if ds.group_market[g] == target:
            assert kept.tolist() == history[:-1].tolist()
            assert int(ds.train_offsets[g + 1]) - 1 in rows
        else:
            assert kept.tolist() == history.tolist()
    assert rows.size == int((ds.group_market == target).sum())
    assert view.train_rating.size == view.train_day.size == ds.train_item.size - rows.size


def test_the_loss_gradient_and_a_planted_mix_is_recovered() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6, 3))
    for ridge in (0.0, 0.1):
        assert check_grad(lambda w, r=ridge: softmax_loss(w, x, r)[0], lambda w, r=ridge: softmax_loss(w, x, r)[1],
                          np.array([0.3, -0.2, 0.5])) < 1e-6
    # rows whose positive is drawn from softmax(2·prior − 1·f1 + 0.5·f2): the fit finds those weights
    n, c = 4000, 20
    prior, feats = rng.normal(size=(n, c)), rng.normal(size=(n, c, 2))
    logits = 2 * prior - feats[..., 0] + 0.5 * feats[..., 1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    pick = np.array([rng.choice(c, p=row) for row in p])
    order = np.argsort(np.arange(c)[None, :] != pick[:, None], axis=1, kind="stable")  # the positive first
    w0, w = fit_weights(np.take_along_axis(prior, order, 1), np.take_along_axis(feats, order[..., None], 1), 0.0)
    assert w0 == pytest.approx(2.0, abs=0.15) and w == pytest.approx([-1.0, 0.5], abs=0.1)
    # the prior's weight stays positive even when the data says otherwise
    w0, _ = fit_weights(-np.take_along_axis(prior, order, 1), np.take_along_axis(feats, order[..., None], 1), 0.0)
    assert 0 < w0 < 1e-5  # at its bound (1e-6 before the inputs are rescaled)


def test_settings_are_checked() -> None:
    model = get_model("easemix")
    for bad in ({"features": ["pop", "pop"]}, {"features": ["cooc"]}, {"lam": 0.0}, {"holdout_negatives": 0},
                {"ridge": -1.0}, {"window": -1}):
        with pytest.raises(Exception, match="easemix|holdout_negatives|ridge|window"):
            model.config_from(bad)


def test_it_beats_pop_and_ease_plus_plus_runs_in_a_grid_and_under_tune(clustered: Path) -> None:
    from xmfast import tune as tuning
    from xmfast.experiment import plan, read_experiment, run_experiment

    ds, runs = clustered / "ds", clustered / "runs"
    invoke("train", ds, "-m", "pop", "-o", runs / "pop")
    invoke("train", ds, "-m", "easemix", "-o", runs / "easemix")
    ndcg = {name: json.loads((runs / name / "results.json").read_text())["test"]["ndcg@10"]
            for name in ("pop", "easemix")}
    assert ndcg["easemix"] > ndcg["pop"] + 0.2, ndcg
    assert json.loads((runs / "easemix" / "run.json").read_text())["label"] == "easemix"
    assert "+" in invoke("recommend", runs / "easemix", "--user", "t0-0")  # the fitted weights, named

    file = clustered / "grid.toml"
    file.write_text(f'''name = "mix"\ndata = "{clustered / 'data'}"\nout = "{clustered / 'grid'}"\ntargets = ["t"]
sources = "all"\nmodels = ["pop", "ease++", "easemix"]\nseeds = [1]\ndevice = "cpu"
[prepare]\neval_negatives = 30
[tune]\ntrials = 1\n[tune.easemix]\nlam = {{low = 1.0, high = 1000.0, log = true}}\nridge = [1e-4, 1e-2]
''', encoding="utf-8")
    exp = read_experiment(file)
    assert "t/all/s1/easemix" in {s.id for s in plan(exp).stages}
    summary = tuning.tune(exp)["easemix@t"]
    assert summary["trials"]["complete"] == 1 and set(summary["best"]["model"]) == {"lam", "ridge"}
    assert not list(tuning.tune_dir(exp).rglob("test.json"))
    run_experiment(tuning.tuned_plan(exp))  # the report of a grid is test_baselines_plus's
    info = json.loads((clustered / "grid" / "t" / "all" / "s1" / "easemix" / "run.json").read_text())
    assert info["label"] == "easemix" and info["status"] == "finished"
    assert set(info["model_config"]) >= {"lam", "ridge"} and info["train_config"]["sources"]
