"""The market-aware NCF models (MA-GMF, MA-MLP, MA-NMF; Bhargav et al., ECIR 2023): shapes and
gradients, hand-computed scores, what the market embedding does (and does not) change, MA-NMF's
start from its branch runs, learning on a synthetic set with market-specific preferences, a
seeded run repeated, and the grid the planner makes of them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError
from xmfast.experiment import plan, read_experiment
from xmfast.models import Sizes, get_model, ncf
from xmfast.models.market_aware import MAGMF, MAMLP
from xmfast.models.settings import MAGMFConfig, MAMLPConfig, MANMFConfig
from xmfast.prepare import PrepareConfig, prepare
from xmfast.training import TrainConfig, load_scorer, train

GROUPS, ITEMS, MARKETS = 6, 9, 3
GROUP_MARKET = np.array([0, 1, 2, 0, 1, 2])
RANDOM = {"market_init": "random", "init": "pytorch"}  # every market embedding different


def build(name: str, config=None, markets: np.ndarray = GROUP_MARKET) -> torch.nn.Module:
    model = get_model(name)
    module = model.build(Sizes(GROUPS, ITEMS, MARKETS), config or model.config_type())

    class View:  # what attach reads from a dataset
        group_market = markets.astype(np.uint16)

    model.attach(module, View())
    return module


def random_configs() -> dict[str, object]:
    return {"magmf": MAGMFConfig(**RANDOM), "mamlp": MAMLPConfig(**RANDOM),
            "manmf": MANMFConfig(gmf=MAGMFConfig(**RANDOM), mlp=MAMLPConfig(**RANDOM))}


# ---- the modules ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["magmf", "mamlp", "manmf"])
def test_one_logit_per_pair_and_every_parameter_gets_a_gradient(name: str) -> None:
    torch.manual_seed(0)
    module = build(name, random_configs()[name])
    keys, items = torch.tensor([0, 1, 2, 3, 5]), torch.tensor([0, 8, 3, 3, 1])
    out = module(keys, items)
    assert out.shape == (5,) and out.dtype == torch.float32
    torch.nn.functional.binary_cross_entropy_with_logits(out, torch.ones(5)).backward()
    market = dict(module.named_modules())["gmf" if name == "manmf" else ""].market_embedding
    assert market.weight.shape == (MARKETS, 8)
    heads = {"gmf.output.weight", "gmf.output.bias", "mlp.output.weight", "mlp.output.bias"}
    for pname, p in module.named_parameters():
        if name == "manmf" and pname in heads:
            continue  # NMF's own output layer replaces the branch heads
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert not any(k.endswith("group_market") for k in module.state_dict())  # the dataset's, not the weights


def _set_gmf(m: MAGMF) -> None:
    with torch.no_grad():
        m.user_embedding.weight[:2] = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
        m.item_embedding.weight[:3] = torch.tensor([[3.0, 1.0], [0.0, 2.0], [-1.0, 4.0]])
        m.market_embedding.weight[:2] = torch.tensor([[2.0, 1.0], [1.0, -1.0]])
        m.output.weight.copy_(torch.tensor([[0.5, -0.25]]))
        m.output.bias.fill_(0.1)


def _set_mlp(m: MAMLP) -> None:
    with torch.no_grad():
        m.user_embedding.weight[:2] = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
        m.item_embedding.weight[:3] = torch.tensor([[3.0, 1.0], [0.0, 2.0], [-1.0, 4.0]])
        m.market_embedding.weight[:2] = torch.tensor([[2.0, 1.0], [1.0, -1.0]])
        m.tower[0].weight.copy_(torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]]))
        m.tower[0].bias.copy_(torch.tensor([0.0, 0.5]))
        m.output.weight.copy_(torch.tensor([[1.0, 2.0]]))
        m.output.bias.fill_(-1.0)


def test_scores_by_hand() -> None:
    keys, items = torch.tensor([0, 1]), torch.tensor([0, 2])  # key 0 in market 0, key 1 in market 1
    markets = np.array([0, 1, 2, 0, 1, 2])
    gmf = build("magmf", MAGMFConfig(embedding_dim=2), markets)
    _set_gmf(gmf)
    # key 0, item 0: q ⊙ m0 = (3*2, 1*1) = (6, 1); p ⊙ that = (6, 2); · (0.5, -0.25) + 0.1 = 2.6
    # key 1, item 2: q ⊙ m1 = (-1, -4); p ⊙ that = (-0.5, 4); · (0.5, -0.25) + 0.1 = -1.15
    assert torch.allclose(gmf(keys, items), torch.tensor([2.6, -1.15]))
    mlp = build("mamlp", MAMLPConfig(layers=(4, 2)), markets)
    _set_mlp(mlp)
    # key 0: x = (1, 2, 6, 1); tower (1+6, 2-1) + (0, 0.5) = (7, 1.5), ReLU; 7 + 2*1.5 - 1 = 9
    # key 1: x = (0.5, -1, -1, -4); (0.5-1, -1+4) + (0, 0.5) = (-0.5, 3.5) -> (0, 3.5); 0 + 7 - 1 = 6
    assert torch.allclose(mlp(keys, items), torch.tensor([9.0, 6.0]))
    nmf = build("manmf", MANMFConfig(gmf=MAGMFConfig(embedding_dim=2), mlp=MAMLPConfig(layers=(4, 2))), markets)
    assert nmf.mlp.market_embedding is nmf.gmf.market_embedding  # one market embedding for both branches
    _set_gmf(nmf.gmf)
    _set_mlp(nmf.mlp)
    with torch.no_grad():
        nmf.output.weight.copy_(torch.tensor([[1.0, -1.0, 0.5, 2.0]]))  # [MLP features, GMF features]
        nmf.output.bias.fill_(0.25)
    # key 0: (7, 1.5, 6, 2) · w + 0.25 = 7 - 1.5 + 3 + 4 + 0.25 = 12.75
    # key 1: (0, 3.5, -0.5, 4) · w + 0.25 = -3.5 - 0.25 + 8 + 0.25 = 4.5
    assert torch.allclose(nmf(keys, items), torch.tensor([12.75, 4.5]))


@pytest.mark.parametrize("name", ["magmf", "mamlp", "manmf"])
def test_the_market_changes_the_score_and_nothing_else_when_markets_are_equal(name: str) -> None:
    torch.manual_seed(1)
    config = random_configs()[name]
    module = build(name, config)
    keys, items = torch.arange(GROUPS), torch.tensor([4, 1, 7, 0, 2, 5])
    moved = build(name, config, np.array([1, 2, 0, 1, 2, 0]))  # the same keys, each in another market
    moved.load_state_dict(module.state_dict())
    with torch.no_grad():
        here, there = module(keys, items), moved(keys, items)
    assert torch.all((here - there).abs() > 1e-6)  # the same (user, item) scores differently per market
    # every market the same vector: the market a key is in changes nothing
    markets = [m for m in module.modules() if isinstance(m, (MAGMF, MAMLP))]
    with torch.no_grad():
        for m in markets:
            m.market_embedding.weight.copy_(torch.tensor([0.5, -2.0, 1.5, 1.0, 3.0, -0.5, 2.0, 1.0]))
        moved.load_state_dict(module.state_dict())
        assert torch.equal(module(keys, items), moved(keys, items))
        # every market the identity (market_init "ones"): exactly the market-blind model
        for m in markets:
            m.market_embedding.weight.fill_(1.0)
        blind = {"magmf": ncf.GMF, "mamlp": ncf.MLP, "manmf": ncf.NMF}[name](GROUPS, ITEMS, config)
        missing, unexpected = blind.load_state_dict(module.state_dict(), strict=False)
        assert not missing and all("market_embedding" in k for k in unexpected)
        assert torch.equal(module(keys, items), blind(keys, items))


def test_market_init_ones_starts_as_the_identity_and_random_follows_init() -> None:
    torch.manual_seed(0)
    assert torch.equal(build("magmf").market_embedding.weight, torch.ones(MARKETS, 8))
    normal = build("magmf", MAGMFConfig(market_init="random")).market_embedding.weight
    assert 0.001 < normal.std() < 0.05  # N(0, init_std²), init_std 0.01
    pytorch = build("magmf", MAGMFConfig(market_init="random", init="pytorch")).market_embedding.weight
    assert 0.5 < pytorch.std() < 2.0  # PyTorch's N(0, 1), the authors' code
    with pytest.raises(ValueError, match="market_init must be ones or random"):
        MAGMFConfig(market_init="zeros")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shared_market needs the branches' embeddings of one width"):
        MANMFConfig(gmf=MAGMFConfig(embedding_dim=4))


@pytest.mark.parametrize("shared", [True, False])
def test_manmf_starts_from_its_branch_runs(shared: bool) -> None:
    torch.manual_seed(2)
    gmf, mlp = build("magmf", MAGMFConfig(**RANDOM)), build("mamlp", MAMLPConfig(**RANDOM))
    nmf = build("manmf", MANMFConfig(gmf=MAGMFConfig(**RANDOM), mlp=MAMLPConfig(**RANDOM), shared_market=shared))
    nmf.load_pretrained(gmf, mlp)
    assert torch.equal(nmf.gmf.user_embedding.weight, gmf.user_embedding.weight)
    assert torch.equal(nmf.mlp.item_embedding.weight, mlp.item_embedding.weight)
    # shared: the MA-MLP run's markets in both branches (the authors' code); else each its own
    assert torch.equal(nmf.mlp.market_embedding.weight, mlp.market_embedding.weight)
    assert torch.equal(nmf.gmf.market_embedding.weight, (mlp if shared else gmf).market_embedding.weight)


def test_mamlp_from_gmf_takes_the_user_item_and_market_embeddings() -> None:
    from xmfast.models.market_aware import embeddings_from_magmf

    torch.manual_seed(3)
    gmf, mlp = build("magmf", MAGMFConfig(**RANDOM)), build("mamlp", MAMLPConfig(**RANDOM))
    embeddings_from_magmf(mlp, gmf)
    for part in ("user_embedding", "item_embedding", "market_embedding"):
        assert torch.equal(getattr(mlp, part).weight, getattr(gmf, part).weight), part


# ---- training --------------------------------------------------------------------------------------
def _synthetic(directory: Path) -> Path:
    """Two markets sharing 120 items in 6 clusters of 20; each user buys 8 items of one cluster,
    but which cluster a user's taste leads to depends on the market (a taste-c user buys cluster
    c in src, cluster (c + 3) mod 6 in tgt). Every item is about as popular as any other, so
    popularity ranks at random."""
    rng = np.random.default_rng(0)
    directory.mkdir()
    for market, users, shift in (("src", 300, 0), ("tgt", 120, 3)):
        lines = ["userId itemId rate date"]
        for u in range(users):
            cluster = (u % 6 + shift) % 6
            for day, item in enumerate(rng.choice(20, size=8, replace=False) + 20 * cluster):
                lines.append(f"{market}{u} I{item:03d} 5.0 2020-01-{day + 1:02d}")
        (directory / f"{market}_5core.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> PreparedDataset:
    root = tmp_path_factory.mktemp("market-aware")
    return prepare(_synthetic(root / "raw"), root / "ds", PrepareConfig(target="tgt", sources="all", eval_negatives=30))


FAST = TrainConfig(epochs=6, batch_size=256, seed=3, sources=("all",), device="cpu")


def test_each_learns_market_specific_tastes_far_above_popularity(synthetic: PreparedDataset, tmp_path: Path,
                                                                   one_thread: None) -> None:
    pop = train(synthetic, tmp_path / "pop", "pop")
    # MA-MLP from the MA-GMF run, as the authors train it: from N(0, 0.01²) the MLP tower (market-
    # aware or not) learns too slowly on this set for a quick test
    from_gmf = MAMLPConfig(from_gmf=True)
    configs = {"magmf": MAGMFConfig(), "mamlp": from_gmf, "manmf": MANMFConfig(mlp=from_gmf)}
    results = {name: train(synthetic, tmp_path / name, name, config, config=FAST) for name, config in configs.items()}
    floor = pop.test.aggregate()["ndcg@10"]
    assert floor < 0.2
    for name, result in results.items():
        assert result.test.aggregate()["ndcg@10"] > floor + 0.25, (name, result.test.aggregate(), floor)
    assert set(results["mamlp"].run.info["pretrained"]) == {"gmf"}
    # MA-NMF found its branch runs beside it, and a loaded run scores as it was evaluated (its
    # keys' markets attached again)
    assert set(results["manmf"].run.info["pretrained"]) == {"gmf", "mlp"}
    run = results["manmf"].run
    scorer = load_scorer(run, synthetic, device="cpu")
    held = synthetic.test
    scores = scorer.score(np.asarray(held.group), np.asarray(held.candidates))
    logged = torch.load(run.best_checkpoint, weights_only=True)["model"]
    assert logged["gmf.market_embedding.weight"].equal(logged["mlp.market_embedding.weight"])
    ranks = (scores[:, 1:] > scores[:, :1]).sum(axis=1)
    assert np.mean(ranks < 10) == pytest.approx(results["manmf"].test.aggregate()["hr@10"])
    # the markets learned apart from each other
    src, tgt = logged["gmf.market_embedding.weight"][[synthetic.market_index("src"), synthetic.market_index("tgt")]]
    assert not torch.allclose(src, tgt, atol=1e-3)


def test_a_seeded_run_repeats_exactly(synthetic: PreparedDataset, tmp_path: Path, one_thread: None) -> None:
    config = replace(FAST, epochs=2)
    a = train(synthetic, tmp_path / "a", "mamlp", config=config)
    b = train(synthetic, tmp_path / "b", "mamlp", config=config)
    assert a.test.aggregate() == b.test.aggregate()
    wa = torch.load(a.run.best_checkpoint, weights_only=True)["model"]
    wb = torch.load(b.run.best_checkpoint, weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_without_sources_is_refused(synthetic: PreparedDataset, tmp_path: Path) -> None:
    with pytest.raises(XmfastError, match="magmf learns across markets: give source markets"):
        train(synthetic, tmp_path / "alone", "magmf", config=replace(FAST, sources=()))
    assert get_model("magmf").train_config().sources == ("all",)  # the paper's global model by default


# ---- the planner -------------------------------------------------------------------------------------
def test_grid_plans_manmf_after_its_branches_on_the_pooled_markets(sample_dir: Path, tmp_path: Path) -> None:
    def planned(body: str):
        path = tmp_path / "e.toml"
        path.write_text(f'data = "{sample_dir}"\nout = "{tmp_path / "out"}"\ntargets = ["in"]\nseeds = [1]\n' + body,
                        encoding="utf-8")
        return plan(read_experiment(path))

    p = planned('models = ["manmf"]\n')
    assert [s.id for s in p.stages] == ["in/dataset", "in/all/s1/magmf", "in/all/s1/mamlp", "in/all/s1/manmf"]
    by = p.by_id()
    assert by["in/all/s1/manmf"].pretrained == {"gmf": "in/all/s1/magmf", "mlp": "in/all/s1/mamlp"}
    assert set(by["in/all/s1/mamlp"].deps) == {"in/dataset"}  # from_gmf is off by default
    assert [by[i].label for i in ("in/all/s1/magmf", "in/all/s1/manmf")] == ["magmf", "manmf"]  # not magmf++
    assert by["in/all/s1/manmf"].settings["model_config"]["gmf"] == by["in/all/s1/magmf"].settings["model_config"]
    # the original recipe: MA-MLP starts from MA-GMF, as in the authors' code
    p = planned('models = ["mamlp"]\n[train]\nrecipe = "original"\n')
    assert [s.id for s in p.stages] == ["in/dataset", "in/all/s1/magmf", "in/all/s1/mamlp"]
    assert p.by_id()["in/all/s1/mamlp"].pretrained == {"gmf": "in/all/s1/magmf"}
    assert p.by_id()["in/all/s1/mamlp"].settings["train_config"]["select"] == "last"
    # one run per source market with "each"
    p = planned('sources = "each"\nmodels = ["magmf"]\n')
    assert [s.id for s in p.stages if s.kind == "train"] == [f"in/src-{m}/s1/magmf" for m in ("de", "jp", "uk")]
    with pytest.raises(XmfastError, match="magmf has no pooled variant"):
        planned('models = ["magmf++"]\n')
