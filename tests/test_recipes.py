"""Training recipes (issue 24): each setting of the `original` recipe changes exactly what it
names, the recipe is a bundle of those settings that explicit ones override, a seeded
original-recipe run is deterministic, and settings added later keep finished stages' keys."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError
from xmfast.models import get_model, with_recipe
from xmfast.models.settings import FORECConfig, GMFConfig, MAMLConfig, MAMLModelConfig, MLPConfig, NMFConfig
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run, key_plain
from xmfast.training import TrainConfig, Trainer, train
from xmfast.training.checkpoints import EarlyStopping
from xmfast.training.engine import trainer_for
from xmfast_cli.app import app

FAST = TrainConfig(epochs=2, batch_size=256, seed=7)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> PreparedDataset:
    return prepare(sample_dir, tmp_path_factory.mktemp("prepared") / "in", PrepareConfig(target="in", sources="all"))


@pytest.fixture(scope="module")
def branches(sample: PreparedDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GMF and an MLP run (3 epochs each) side by side, for the runs that start from them."""
    out = tmp_path_factory.mktemp("branches")
    assert train(sample, out / "gmf", "gmf", config=replace(FAST, epochs=3))
    assert train(sample, out / "mlp", "mlp", config=replace(FAST, epochs=3))
    return out


def _trainer(sample: PreparedDataset, tmp_path: Path, model: str, model_config=None, config=FAST, **kw) -> Trainer:
    spec = get_model(model)
    run = Run.create(tmp_path / f"r-{model}-{len(list(tmp_path.iterdir()))}", {"model": model})
    return trainer_for(spec)(sample, run, spec, model_config or spec.config_type(), config, **kw)


# ---- the recipe as a bundle ----------------------------------------------------------------------
def test_a_recipe_is_its_settings_and_explicit_settings_override_it() -> None:
    gmf = get_model("gmf")
    original = gmf.train_config(recipe="original")
    assert (original.resample_negatives, original.select, original.start_checkpoint) == (False, "last", "last")
    assert (original.sampling, original.epoch_length) == ("equal", "largest")
    assert gmf.train_config(recipe="original", select="best").select == "best"  # given beats the recipe
    assert gmf.train_config() == TrainConfig()  # xmfast's recipe is the defaults
    assert gmf.config_from({}, "original").init == "pytorch"
    assert gmf.config_from({"init": "normal"}, "original").init == "normal"
    maml = get_model("maml")
    assert (maml.train_config(recipe="original").batch_size, maml.train_config(recipe="original").lr) == (20, 0.01)
    assert maml.config_from({}, "original").maml == MAMLConfig(test_adaptation_steps=1, test_adaptation_batch=20)
    forec = get_model("forec").finetune_config(recipe="original")
    assert (forec.batch_size, forec.select, forec.lr, forec.l2) == (20, "last", 0.01, 1e-3)
    acmr = get_model("acmr")
    assert acmr.train_config(recipe="original").patience_reset is False
    assert acmr.config_from({}, "original").embedding_norm is True
    assert acmr.config_from({}, "original").leave_out_own_item is False
    with pytest.raises(XmfastError, match=r"model gmf has no recipe 'paper' \(its recipes: xmfast, original\)"):
        gmf.train_config(recipe="paper")
    assert get_model("pop").train_config(recipe="original").recipe == "original"  # nothing to change, accepted
    assert with_recipe("nmf++", "original") == "nmf++ (original)"
    assert with_recipe("acmr (pre-trained)", "original") == "acmr (pre-trained, original)"
    assert with_recipe("gmf", "xmfast") == "gmf"


def test_settings_added_later_stay_out_of_stage_keys_at_their_defaults() -> None:
    """A finished experiment stays cached after settings are added: the quickstart's gmf stage
    keys are the ones they had before recipes existed (recorded from commit fe1dfdf)."""
    from xmfast.experiment import plan, read_experiment

    root = Path(__file__).resolve().parents[1]
    p = plan(_quickstart_as_recorded(read_experiment(root / "experiments" / "quickstart.toml")))
    keys = {s.id: s.key for s in p.stages}
    assert {k: keys[k] for k in KEYS_BEFORE_RECIPES} == KEYS_BEFORE_RECIPES
    assert "recipe" not in key_plain(TrainConfig()) and "init" not in key_plain(GMFConfig())
    assert key_plain(replace(TrainConfig(), recipe="original"))["recipe"] == "original"


def _quickstart_as_recorded(exp):  # noqa: ANN001, ANN202 - an Experiment
    """The quickstart as it was when these keys were recorded: its ACMR had 2 blocks (1 since the
    quickstart trains every built-in, to keep it within CI's time)."""
    return replace(exp, model_settings={**exp.model_settings, "acmr": {**exp.model_settings["acmr"], "blocks": 2}})


KEYS_BEFORE_RECIPES = {  # the whole chain's keys: forec's digest covers gmf, mlp, nmf++ and maml
    "in/single/s1/gmf": "969de44b5d84bebf23d390e7f38499454cd7dfadec9a87589828ba48803a03ba",
    "in/all/s1/forec": "a233f7205eb98d9e54996a5ba64c3cfbf9d92ed667d1a9cab3603f0b8892f628",
    # changed deliberately (issue 23): ACMR's embedding LayerNorm is on by default, as the original
    # code's, so an ACMR stage with the defaults is another experiment than before (it was
    # 6cdfad1afa450e10f04d33fb49ceb4f429a64403e845dc673855161d1aa1890c with the norm off); a stage
    # with embedding_norm = false keeps that old key (test below)
    "in/all/s1/acmr": "e34db6514ab88982a83e959d25db19f0088d81cacd7ac0f11a2896d3b1c39640",
}


def test_acmr_embedding_norm_is_on_by_default_and_off_in_records_without_it() -> None:
    """The default changed, a record's meaning did not: run.json and stage settings written
    before `embedding_norm` existed read back with it off, and a stage with it off keeps the key
    it had before the setting existed."""

    from xmfast.experiment import plan, read_experiment
    from xmfast.runs import to_plain

    acmr = get_model("acmr")
    assert acmr.config_from({}).embedding_norm is True
    old_record = {k: v for k, v in to_plain(acmr.config_from({})).items() if k != "embedding_norm"}
    assert acmr.config_from(old_record, recorded=True).embedding_norm is False
    assert acmr.config_from({**old_record, "embedding_norm": True}, recorded=True).embedding_norm is True
    assert "embedding_norm" not in key_plain(replace(acmr.config_from({}), embedding_norm=False))
    assert key_plain(acmr.config_from({}))["embedding_norm"] is True
    root = Path(__file__).resolve().parents[1]
    exp = _quickstart_as_recorded(read_experiment(root / "experiments" / "quickstart.toml"))
    exp = replace(exp, model_settings={**exp.model_settings,
                                       "acmr": {**exp.model_settings["acmr"], "embedding_norm": False}})
    keys = {s.id: s.key for s in plan(exp).stages}
    assert keys["in/all/s1/acmr"] == "6cdfad1afa450e10f04d33fb49ceb4f429a64403e845dc673855161d1aa1890c"


def test_an_acmr_run_from_before_embedding_norm_loads_evaluates_and_fine_tunes_without_it(
        sample: PreparedDataset, tmp_path: Path) -> None:
    """A run.json without `embedding_norm` (written before it existed; its checkpoint has no
    norm weights) is evaluated, fine-tuned from and reported as a run without the norm."""
    import json

    from xmfast.models.acmr import ACMR
    from xmfast.report import read_run
    from xmfast.training import finetune
    from xmfast.training.checkpoints import CHECKPOINT_VERSION
    from xmfast.training.engine import load_scorer, run_info

    acmr = get_model("acmr")
    tiny = acmr.config_from({"embedding_dim": 8, "blocks": 1, "heads": 2, "history": 4, "embedding_norm": False})
    info = run_info(sample, acmr, tiny, acmr.train_config(sources=("all",), seed=7))
    del info["model_config"]["embedding_norm"]  # as an older version wrote it
    run = Run.create(tmp_path / "pre", info)
    torch.manual_seed(0)
    weights = ACMR(sample.n_items, len(sample.markets), tiny).state_dict()
    assert not any("embedding_norm" in k for k in weights)
    torch.save({"version": CHECKPOINT_VERSION, "dataset": sample.fingerprint, "model_name": "acmr", "epoch": 1,
                "model": weights}, run.best_checkpoint)
    (run.path / "results.json").write_text(json.dumps({"model": "acmr", "selected_epoch": 1, "target": "in",
                                                       "valid": {"ndcg@10": 0.1}, "test": {"ndcg@10": 0.1}}))
    run.save_info(status="finished")
    assert load_scorer(run, run.load_dataset(), device="cpu").model.embedding_norm is None
    assert read_run(run.path).config["model.embedding_norm"] is False
    result = CliRunner().invoke(app, ["evaluate", str(run.path), "--split", "test"])
    assert result.exit_code == 0, result.output
    finetune(run.path, tmp_path / "ft", model="acmr", config=acmr.finetune_config(epochs=1, batch_size=256, seed=7))
    assert json.loads((tmp_path / "ft" / "in" / "run.json").read_text())["model_config"]["embedding_norm"] is False


# ---- each setting changes what it names -----------------------------------------------------------
def test_pytorch_init_gives_unit_embeddings_and_kaiming_linears() -> None:
    torch.manual_seed(0)
    from xmfast.models.ncf import GMF, MLP

    original = MLP(3000, 2000, MLPConfig(init="pytorch")).requires_grad_(False)  # read, not trained
    assert abs(float(original.item_embedding.weight.std()) - 1.0) < 0.02
    first = original.tower[0]
    bound = 1 / math.sqrt(first.in_features)  # PyTorch's Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(first.weight.abs().max()) <= bound and float(first.weight.std()) > bound / 3
    assert float(first.bias.abs().max()) > 0  # not zeroed
    ours = GMF(3000, 2000, GMFConfig()).requires_grad_(False)
    assert abs(float(ours.user_embedding.weight.std()) - 0.01) < 0.001 and float(ours.output.bias.abs().max()) == 0.0


def test_static_negatives_are_identical_across_epochs(sample: PreparedDataset, tmp_path: Path) -> None:
    static = _trainer(sample, tmp_path, "gmf", config=replace(FAST, resample_negatives=False))
    first, second = static._instances(1)[1].clone(), static._instances(2)[1].clone()
    assert torch.equal(first, second)
    fresh = _trainer(sample, tmp_path, "gmf")
    assert torch.equal(fresh._instances(1)[1], first)  # the static draw is epoch 1's
    assert not torch.equal(fresh._instances(2)[1], first)
    # the batches are still reshuffled every epoch
    assert not torch.equal(torch.cat(static._batches(1, static._instances(1)[3])),
                           torch.cat(static._batches(2, static._instances(2)[3])))


def test_epoch_length_largest_cycles_the_target_over_the_largest_market(sample: PreparedDataset, tmp_path: Path) -> None:
    config = replace(FAST, sources=("uk",), sampling="equal", batch_size=64)
    counts = {}
    for length in ("target", "largest"):
        t = _trainer(sample, tmp_path, "gmf", config=replace(config, epoch_length=length))
        market = t._instances(1)[3]
        batches = t._batches(1, market)
        per = [int((market == m).sum()) for m in range(2)]
        counts[length] = len(batches)
        steps = -(-per[0] // 64) if length == "target" else -(-max(per) // 64)
        assert len(batches) == 2 * steps  # alternating target, uk
        uk = torch.cat([b for b in batches if bool((market[b] == 1).all())])
        if length == "largest":  # every uk instance once, the target's cycled
            assert sorted(uk.tolist()) == torch.nonzero(market == 1).squeeze(1).tolist()
    assert counts["largest"] > counts["target"]  # uk is the sample's largest market


def test_mlp_from_gmf_starts_from_the_gmf_runs_embeddings(sample: PreparedDataset, branches: Path, tmp_path: Path) -> None:
    gmf = Run.open(branches / "gmf")
    t = _trainer(sample, tmp_path, "mlp", MLPConfig(from_gmf=True), pretrained={"gmf": gmf})
    best = torch.load(gmf.best_checkpoint, weights_only=True)["model"]
    assert torch.equal(t.model.user_embedding.weight, best["user_embedding.weight"])
    assert torch.equal(t.model.item_embedding.weight, best["item_embedding.weight"])
    assert get_model("mlp").requires(MLPConfig(from_gmf=True)) == {"gmf": "gmf"}
    assert get_model("mlp").requires(MLPConfig()) == {}
    with pytest.raises(XmfastError, match="embedding_dim 8 is not the MLP's 16"):
        _trainer(sample, tmp_path, "mlp", MLPConfig(layers=(32, 16), from_gmf=True), pretrained={"gmf": gmf})


def test_start_checkpoint_last_loads_last_pt(sample: PreparedDataset, branches: Path, tmp_path: Path) -> None:
    """NMF's branches come from last.pt with start_checkpoint last, from best.pt otherwise; best.pt
    is altered here so the two cannot coincide."""
    runs = tmp_path / "runs"
    for name in ("gmf", "mlp"):
        shutil.copytree(branches / name, runs / name)
    gmf = Run.open(runs / "gmf")
    best = torch.load(gmf.best_checkpoint, weights_only=True)
    best["model"] = {k: v + 1.0 for k, v in best["model"].items()}
    torch.save(best, gmf.best_checkpoint)
    last = torch.load(gmf.last_checkpoint, weights_only=True)["model"]
    pretrained = {"gmf": gmf, "mlp": Run.open(runs / "mlp")}
    for checkpoint, expected in (("last", last), ("best", best["model"])):
        t = _trainer(sample, tmp_path, "nmf", config=replace(FAST, start_checkpoint=checkpoint), pretrained=pretrained)
        assert torch.equal(t.model.gmf.item_embedding.weight, expected["item_embedding.weight"]), checkpoint
        assert t.pretrained["gmf"]["checkpoint"] == f"{checkpoint}.pt"  # recorded in run.json as such


def test_copy_tower_bias_off_keeps_the_towers_own_biases(sample: PreparedDataset, branches: Path, tmp_path: Path) -> None:
    pretrained = {"gmf": Run.open(branches / "gmf"), "mlp": Run.open(branches / "mlp")}
    mlp = torch.load(Run.open(branches / "mlp").best_checkpoint, weights_only=True)["model"]
    config = NMFConfig(mlp=MLPConfig(init="pytorch"), copy_tower_bias=False)
    with pytest.raises(XmfastError, match="do not match NMF's configuration"):  # the runs were trained with init normal
        _trainer(sample, tmp_path, "nmf", config, pretrained=pretrained)
    torch.manual_seed(FAST.seed)
    t = _trainer(sample, tmp_path, "nmf", NMFConfig(copy_tower_bias=False), pretrained=pretrained)
    copied = _trainer(sample, tmp_path, "nmf", NMFConfig(), pretrained=pretrained)
    for i in (0, 2, 4, 6):
        assert torch.equal(t.model.mlp.tower[i].weight, mlp[f"tower.{i}.weight"])  # weights still copied
        assert torch.equal(copied.model.mlp.tower[i].bias, mlp[f"tower.{i}.bias"])
        assert float(t.model.mlp.tower[i].bias.detach().abs().max()) == 0.0  # init normal: zero biases, not the run's
    assert float(mlp["tower.0.bias"].abs().max()) > 0


def test_patience_without_reset_counts_every_epoch_without_improvement() -> None:
    values = [0.1, 0.05, 0.2, 0.15, 0.12]
    reset, total = EarlyStopping(), EarlyStopping()
    stale_reset, stale_total = [], []
    for epoch, v in enumerate(values, 1):
        reset.update(epoch, v)
        total.update(epoch, v, reset=False)
        stale_reset.append(reset.stale)
        stale_total.append(total.stale)
    assert stale_reset == [0, 1, 0, 1, 2]
    assert stale_total == [0, 1, 1, 2, 3]  # ACMR's counter: patience 2 stops after epoch 4, not 5
    assert reset.best_epoch == total.best_epoch == 3


def test_maml_test_adaptation_batch_adapts_on_that_many_validation_instances(
        sample: PreparedDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xmfast.training import meta

    seen: list[tuple[int, float]] = []
    real = meta.adapt

    def spy(model, weights, users, items, labels, config, steps=None):
        seen.append((int(users.shape[0]), float(labels.sum())))
        return real(model, weights, users, items, labels, config, steps=steps)

    monkeypatch.setattr(meta, "adapt", spy)
    for batch in (0, 20):
        config = MAMLModelConfig(maml=MAMLConfig(test_adaptation_steps=1, test_adaptation_batch=batch))
        t = _trainer(sample, tmp_path, "maml", config, config=replace(FAST, sources=("uk",), batch_size=20))
        scorer = t._test_scorer(object())
        assert scorer is not None
    users = len(_trainer(sample, tmp_path, "gmf").valid_groups)
    assert seen[0] == (users * (1 + FAST.negatives), users)  # every held-out item with k negatives
    assert seen[1][0] == 20 and seen[1][1] <= 20


def test_forec_output_from_base_loads_the_nmf_output_layer() -> None:
    from xmfast.models.forec import FOREC
    from xmfast.models.ncf import NMF

    nmf = NMF(50, 40)
    with torch.no_grad():
        nmf.output.weight.normal_()
    forec = FOREC(50, 40, FORECConfig(head=(32, 16), output_from_base=True, init="pytorch"))
    forec.fork(nmf.state_dict())
    assert torch.equal(forec.output.weight, nmf.output.weight) and torch.equal(forec.output.bias, nmf.output.bias)
    assert [m.out_features for m in forec.head if isinstance(m, torch.nn.Linear)] == [32, 16]
    plain = FOREC(50, 40, FORECConfig())
    plain.fork(nmf.state_dict())
    assert not torch.equal(plain.output.weight, nmf.output.weight)
    with pytest.raises(ValueError, match="head's last width to be the NMF's joined width 16"):
        FORECConfig(head=(32,), output_from_base=True)


def test_acmr_embedding_norm_is_a_layernorm_on_the_embeddings_only_when_set() -> None:
    from xmfast.models.acmr import ACMR
    from xmfast.models.settings import ACMRConfig

    small = dict(embedding_dim=8, blocks=1, heads=2, history=4, dropout=0.0)
    plain = ACMR(30, 2, ACMRConfig(**small, embedding_norm=False))
    normed = ACMR(30, 2, ACMRConfig(**small))
    assert not any("embedding_norm" in k for k in plain.state_dict())  # older runs still load
    assert {"embedding_norm.weight", "embedding_norm.bias"} <= set(normed.state_dict())
    normed.load_state_dict({**plain.state_dict(), **{k: v for k, v in normed.state_dict().items()
                                                     if k.startswith("embedding_norm")}})
    normed.eval(), plain.eval()
    hist = torch.tensor([[1, 2, 3, 30], [4, 5, 30, 30]])
    args = (hist, torch.tensor([3, 2]), torch.tensor([0, 1]), torch.tensor([7, 8]))
    a, b = plain.score_sequences(*args), normed.score_sequences(*args)
    assert not torch.allclose(a, b)
    with torch.no_grad():  # by hand: the same network with the embeddings layer-normed first
        x = plain.item_embedding(torch.tensor([[1, 2, 3, 7]])) + plain.market_embedding(torch.tensor([0]))[:, None]
        y = torch.nn.functional.layer_norm(x, (8,), eps=1e-5)
        real = torch.tensor([[True, True, True, True]])
        h = y
        for block in plain.blocks:
            h = block(h, ~real)
        user = h[:, :3].mean(1)
        expected = plain.output(torch.cat([user, h[:, 3]], -1)).squeeze(-1)
    assert torch.allclose(b[0], expected[0], atol=1e-5)


# ---- whole runs ----------------------------------------------------------------------------------
def test_an_original_recipe_run_is_deterministic_and_labelled(sample: PreparedDataset, tmp_path: Path) -> None:
    gmf = get_model("gmf")
    config = gmf.train_config(recipe="original", epochs=2, batch_size=256, seed=3)
    model_config = gmf.config_from({}, "original")
    a = train(sample, tmp_path / "a", "gmf", model_config, config)
    b = train(sample, tmp_path / "b", "gmf", model_config, config)
    ours = train(sample, tmp_path / "c", "gmf", config=replace(FAST, epochs=2, batch_size=256, seed=3))
    assert a and b and ours
    assert a.run.read_metrics() == b.run.read_metrics() or [r["loss"] for r in a.run.read_metrics()] == [
        r["loss"] for r in b.run.read_metrics()]
    assert a.test.aggregate() == b.test.aggregate()
    assert a.test.aggregate() != ours.test.aggregate()
    assert a.selected_epoch == 2  # select last
    assert a.run.info["label"] == "gmf (original)" and ours.run.info["label"] == "gmf"


def test_cli_recipe_option_and_models_listing(sample: PreparedDataset, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "gmf"
    result = runner.invoke(app, ["train", str(sample.path), "-m", "gmf", "-o", str(out), "--recipe", "original",
                                 "--epochs", "1", "--fresh-negatives"])
    assert result.exit_code == 0, result.output
    info = Run.open(out).info
    assert info["train_config"]["recipe"] == "original" and info["train_config"]["resample_negatives"] is True
    assert info["train_config"]["select"] == "last" and info["model_config"]["init"] == "pytorch"
    bad = runner.invoke(app, ["train", str(sample.path), "-m", "gmf", "-o", str(tmp_path / "x"), "--recipe", "paper"])
    assert bad.exit_code == 2 and "error: model gmf has no recipe 'paper'" in bad.output
    assert not (tmp_path / "x").exists()
    listing = runner.invoke(app, ["models", "mlp"])
    assert "recipe original (--recipe original):" in listing.output and "from_gmf = True" in listing.output


def test_the_loop_stops_where_a_never_reset_patience_counter_says(sample: PreparedDataset, tmp_path: Path) -> None:
    """With patience_reset off, training stops once `patience` epochs in all failed to improve,
    computed here by hand from the run's own validation log."""
    config = replace(FAST, epochs=12, patience=5, patience_reset=False, batch_size=512)
    result = train(sample, tmp_path / "total", "gmf", config=config)
    reset = train(sample, tmp_path / "reset", "gmf", config=replace(config, patience_reset=True))
    assert result is not None and reset is not None
    values = [r["valid"]["ndcg@10"] for r in reset.run.read_metrics()]
    best, misses, stop = -math.inf, 0, len(values)
    for epoch, v in enumerate(values, 1):
        if v > best:
            best = v
        else:
            misses += 1
        if misses >= 5:
            stop = epoch
            break
    assert result.epochs_run == stop and result.stopped_early
    # this seed's curve dips, recovers and dips again: a reset counter never reaches 5
    assert reset.epochs_run > stop
