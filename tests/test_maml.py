"""MAML's meta-step (xmfast.models.maml) against a hand-written reference: a GMF forward written out by
hand and plain torch.autograd, task by task, for first- and second-order MAML."""

from __future__ import annotations

import pytest
import torch

from xmfast.errors import XmfastError
from xmfast.models.maml import MAMLConfig, Tasks, adapt, meta_gradients, meta_step, weights_of
from xmfast.models.ncf import GMF, GMFConfig


def _tiny() -> tuple[GMF, Tasks]:
    torch.manual_seed(3)
    model = GMF(3, 4, GMFConfig(embedding_dim=2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)
    g = torch.Generator().manual_seed(5)
    shape = (2, 3)  # 2 tasks (markets) × 3 instances
    tasks = Tasks(
        torch.randint(0, 3, shape, generator=g), torch.randint(0, 4, shape, generator=g),
        torch.randint(0, 2, shape, generator=g).float(),
        torch.randint(0, 3, shape, generator=g), torch.randint(0, 4, shape, generator=g),
        torch.randint(0, 2, shape, generator=g).float(),
    )
    return model, tasks


def _gmf_by_hand(w: list[torch.Tensor], users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    user_emb, item_emb, out_w, out_b = w
    return (user_emb[users] * item_emb[items]) @ out_w[0] + out_b[0]


def _reference(model: GMF, tasks: Tasks, lr: float, steps: int, first_order: bool) -> list[torch.Tensor]:
    params = [model.user_embedding.weight, model.item_embedding.weight, model.output.weight, model.output.bias]
    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    total = torch.zeros(())
    for t in range(tasks.support_users.shape[0]):
        w = list(leaves)
        for _ in range(steps):
            loss = bce(_gmf_by_hand(w, tasks.support_users[t], tasks.support_items[t]), tasks.support_labels[t])
            g = torch.autograd.grad(loss, w, create_graph=not first_order)
            w = [p - lr * gi for p, gi in zip(w, g)]
        total = total + bce(_gmf_by_hand(w, tasks.query_users[t], tasks.query_items[t]), tasks.query_labels[t])
    total = total / tasks.support_users.shape[0]
    return list(torch.autograd.grad(total, leaves))


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_equals_the_hand_written_reference(first_order: bool, steps: int) -> None:
    model, tasks = _tiny()
    config = MAMLConfig(inner_lr=0.5, inner_steps=steps, first_order=first_order)
    grads, loss = meta_gradients(model, tasks, config)
    want = _reference(model, tasks, 0.5, steps, first_order)
    names = ["user_embedding.weight", "item_embedding.weight", "output.weight", "output.bias"]
    for name, w in zip(names, want):
        torch.testing.assert_close(grads[name], w, rtol=1e-5, atol=1e-6, msg=name)
    assert loss > 0


def test_second_order_differs_from_first_order() -> None:
    model, tasks = _tiny()
    second, _ = meta_gradients(model, tasks, MAMLConfig(inner_lr=0.5))
    first, _ = meta_gradients(model, tasks, MAMLConfig(inner_lr=0.5, first_order=True))
    assert any(not torch.allclose(second[k], first[k]) for k in second)


def test_adapt_is_plain_gradient_descent_on_the_support_batch() -> None:
    model, tasks = _tiny()
    w = {k: v.detach() for k, v in weights_of(model).items()}
    u, i, y = tasks.support_users[0], tasks.support_items[0], tasks.support_labels[0]
    adapted = adapt(model, w, u, i, y, MAMLConfig(inner_lr=0.25))
    leaves = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(_gmf_by_hand(leaves, u, i), y)
    g = torch.autograd.grad(loss, leaves)
    for (name, value), leaf, gi in zip(adapted.items(), leaves, g):
        torch.testing.assert_close(value, leaf - 0.25 * gi, msg=name)


def test_meta_step_moves_the_weights_by_the_optimizer_and_the_meta_gradient() -> None:
    model, tasks = _tiny()
    before = {k: v.detach().clone() for k, v in weights_of(model).items()}
    grads, _ = meta_gradients(model, tasks, MAMLConfig())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    meta_step(model, opt, tasks, MAMLConfig())
    for k, v in weights_of(model).items():
        torch.testing.assert_close(v.detach(), before[k] - 0.1 * grads[k])
        assert v.grad is None  # gradients are cleared after the step


def test_bad_settings_and_mismatched_tasks_are_errors() -> None:
    with pytest.raises(XmfastError, match="inner_steps"):
        MAMLConfig(inner_steps=0)
    with pytest.raises(XmfastError, match="inner_lr"):
        MAMLConfig(inner_lr=0)
    z = torch.zeros((2, 3), dtype=torch.long)
    with pytest.raises(XmfastError, match="agree"):
        Tasks(z, z, z.float(), z[:1], z[:1], z[:1].float())


def test_maml_run_starts_from_its_nmf_plus_plus_run_and_trains(tmp_path, sample_dir) -> None:  # noqa: ANN001
    from dataclasses import replace

    from xmfast.models import get_model
    from xmfast.prepare import PrepareConfig, prepare
    from xmfast.runs import Run
    from xmfast.training import MAMLTrainer, TrainConfig, find_pretrained, train

    ds = prepare(sample_dir, tmp_path / "ds", PrepareConfig(target="in", sources="all"))
    runs = tmp_path / "runs"
    config = TrainConfig(epochs=2, batch_size=256, seed=1, sources=("de",))
    for m in ("gmf", "mlp", "nmf"):
        assert train(ds, runs / m, m, config=config) is not None
    with pytest.raises(XmfastError, match="give source markets"):
        train(ds, runs / "maml-alone", "maml", config=replace(config, sources=()))
    spec = get_model("maml")
    cfg = spec.config_type()
    pretrained = find_pretrained(ds, spec, cfg, config, runs / "maml", None)
    assert pretrained["nmf"].path == runs / "nmf"
    trainer = MAMLTrainer(ds, Run.create(tmp_path / "probe", {"model": "maml"}), spec, cfg, config, pretrained=pretrained)
    nmf_best = torch.load(runs / "nmf" / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in nmf_best.items())
    result = train(ds, runs / "maml", "maml", config=config)
    assert result is not None and result.epochs_run == 2
    log = Run.open(runs / "maml").read_metrics()
    assert [r["epoch"] for r in log] == [1, 2] and all(r["loss"] > 0 for r in log)
    assert 0 <= result.test.aggregate()["ndcg@10"] <= 1


def test_test_adaptation_changes_only_the_test_results(tmp_path, sample_dir) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from xmfast.prepare import PrepareConfig, prepare
    from xmfast.training import TrainConfig, train
    from xmfast_cli.app import app

    ds = prepare(sample_dir, tmp_path / "ds", PrepareConfig(target="in", sources="all"))
    config = TrainConfig(epochs=1, batch_size=256, seed=1, sources=("de",))
    for m in ("gmf", "mlp", "nmf"):
        train(ds, tmp_path / "runs" / m, m, config=config)
    args = ["train", str(tmp_path / "ds"), "-m", "maml", "--sources", "de", "--epochs", "1", "--batch-size", "256", "--seed", "1"]
    plain = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "runs" / "maml0")])
    adapted = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "runs" / "maml1"), "--test-adaptation-steps", "1"])
    assert plain.exit_code == 0 and adapted.exit_code == 0, plain.output + adapted.output
    import json

    r0 = json.loads((tmp_path / "runs" / "maml0" / "results.json").read_text())
    r1 = json.loads((tmp_path / "runs" / "maml1" / "results.json").read_text())
    assert r0["valid"] == r1["valid"]  # validation: the unadapted weights
    assert r0["test"] != r1["test"]  # test: after one step on the validation interactions
    info = json.loads((tmp_path / "runs" / "maml1" / "run.json").read_text())
    assert info["model_config"]["maml"]["test_adaptation_steps"] == 1
