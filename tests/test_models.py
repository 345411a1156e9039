"""The NCF models (GMF, MLP, NMF): shapes, gradients, hand-computed outputs, NMF's initialisation
from GMF and MLP by value, and configuration parsing (dataclasses, TOML, CLI overrides)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xmfast.configs import experiment_configs, read_config_file
from xmfast.errors import XmfastError
from xmfast.models import get_model, model_names
from xmfast.models.ncf import GMF, MLP, NMF, GMFConfig, MLPConfig, NMFConfig

N_USERS, N_ITEMS = 7, 11


def _batch(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, N_USERS, (n,), generator=g), torch.randint(0, N_ITEMS, (n,), generator=g)


@pytest.mark.parametrize("model", [GMF(N_USERS, N_ITEMS), MLP(N_USERS, N_ITEMS), NMF(N_USERS, N_ITEMS)])
def test_every_model_maps_a_batch_to_one_logit_per_pair_and_every_parameter_gets_a_gradient(model) -> None:
    users, items = _batch(5)
    out = model(users, items)
    assert out.shape == (5,) and out.dtype == torch.float32
    torch.nn.functional.binary_cross_entropy_with_logits(out, torch.ones(5)).backward()
    used = {"gmf.output.weight", "gmf.output.bias", "mlp.output.weight", "mlp.output.bias"}
    for name, p in model.named_parameters():
        if isinstance(model, NMF) and name in used:
            assert p.grad is None  # NMF's own output layer replaces the branch heads
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} received no gradient"


def test_gmf_output_is_the_weighted_elementwise_product_by_hand() -> None:
    m = GMF(2, 3, GMFConfig(embedding_dim=2))
    with torch.no_grad():
        m.user_embedding.weight.copy_(torch.tensor([[1.0, 2.0], [0.5, -1.0]]))
        m.item_embedding.weight.copy_(torch.tensor([[3.0, 1.0], [0.0, 2.0], [-1.0, 4.0]]))
        m.output.weight.copy_(torch.tensor([[0.5, -0.25]]))
        m.output.bias.fill_(0.1)
    # user 0, item 0: (1*3, 2*1) · (0.5, -0.25) + 0.1 = 1.5 - 0.5 + 0.1 = 1.1
    # user 1, item 2: (0.5*-1, -1*4) · (0.5, -0.25) + 0.1 = -0.25 + 1 + 0.1 = 0.85
    out = m(torch.tensor([0, 1]), torch.tensor([0, 2]))
    assert torch.allclose(out, torch.tensor([1.1, 0.85]))


def test_mlp_tower_has_the_configured_widths_and_relu_between() -> None:
    m = MLP(N_USERS, N_ITEMS, MLPConfig(layers=(16, 64, 32, 16, 8)))
    linears = [x for x in m.tower if isinstance(x, torch.nn.Linear)]
    assert [(x.in_features, x.out_features) for x in linears] == [(16, 64), (64, 32), (32, 16), (16, 8)]
    assert sum(isinstance(x, torch.nn.ReLU) for x in m.tower) == 4
    assert m.user_embedding.embedding_dim == 8 and m.output.in_features == 8


def test_nmf_initialised_from_gmf_and_mlp_reproduces_the_mix_of_their_logits() -> None:
    torch.manual_seed(1)
    gmf, mlp = GMF(N_USERS, N_ITEMS), MLP(N_USERS, N_ITEMS)
    for module in (gmf, mlp):  # move off the tiny initial weights so the check is not trivial
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0, 0.5)
    nmf = NMF(N_USERS, N_ITEMS, NMFConfig(alpha=0.5))
    nmf.load_pretrained(gmf, mlp)
    # Values copied exactly.
    assert torch.equal(nmf.gmf.user_embedding.weight, gmf.user_embedding.weight)
    assert torch.equal(nmf.mlp.item_embedding.weight, mlp.item_embedding.weight)
    assert torch.equal(nmf.mlp.tower[0].weight, mlp.tower[0].weight)
    # Output layer: [0.5 · MLP head, 0.5 · GMF head], bias the mean.
    assert torch.allclose(nmf.output.weight[:, :8], 0.5 * mlp.output.weight)
    assert torch.allclose(nmf.output.weight[:, 8:], 0.5 * gmf.output.weight)
    assert torch.allclose(nmf.output.bias, 0.5 * (mlp.output.bias + gmf.output.bias))
    # Hence NMF's logit is the mean of the two models' logits.
    users, items = _batch(20)
    with torch.no_grad():
        assert torch.allclose(nmf(users, items), 0.5 * (gmf(users, items) + mlp(users, items)), atol=1e-6)
    # alpha weights the MLP head.
    nmf3 = NMF(N_USERS, N_ITEMS, NMFConfig(alpha=0.75))
    nmf3.load_pretrained(gmf, mlp)
    with torch.no_grad():
        assert torch.allclose(nmf3(users, items), 0.75 * mlp(users, items) + 0.25 * gmf(users, items), atol=1e-6)


def test_nmf_refuses_branches_of_another_shape() -> None:
    with pytest.raises(ValueError, match="do not match"):
        NMF(N_USERS, N_ITEMS).load_pretrained(GMF(N_USERS, N_ITEMS, GMFConfig(embedding_dim=4)), MLP(N_USERS, N_ITEMS))


def test_bad_hyper_parameters_are_errors() -> None:
    with pytest.raises(ValueError, match="even"):
        MLPConfig(layers=(15, 8))
    with pytest.raises(ValueError, match="positive"):
        GMFConfig(embedding_dim=0)
    with pytest.raises(ValueError, match="alpha"):
        NMFConfig(alpha=1.5)


def test_registry_names_and_plus_plus_aliases() -> None:
    assert model_names()[:8] == ["pop", "cooc", "gmf", "mlp", "nmf", "maml", "forec", "acmr"]
    assert get_model("NMF++").name == "nmf" and get_model("gmf").lr == 0.005
    assert get_model("mlp").lr == 0.01 and get_model("nmf").requires(NMFConfig()) == {"gmf": "gmf", "mlp": "mlp"}
    assert get_model("nmf").requires(NMFConfig(pretrained=False)) == {}
    with pytest.raises(XmfastError, match="unknown model 'svd'"):
        get_model("svd")


def test_configs_layer_defaults_file_and_options(tmp_path: Path) -> None:
    f = tmp_path / "exp.toml"
    f.write_text(
        'model = "nmf"\n[train]\nepochs = 3\nsources = ["de"]\nlr = 0.002\n'
        "[nmf]\nalpha = 0.25\n[nmf.mlp]\nlayers = [8, 16, 4]\n"
    )
    name, spec, mc, tc = experiment_configs(None, read_config_file(f), train_overrides={"epochs": 5, "seed": None})
    assert (name, spec.name) == ("nmf", "nmf")
    assert tc.epochs == 5 and tc.lr == 0.002 and tc.sources == ("de",) and tc.seed == 42  # option > file > default
    assert mc.alpha == 0.25 and mc.mlp.layers == (8, 16, 4) and mc.gmf == GMFConfig()
    # ++ alias: sources all unless given
    _, _, _, tc2 = experiment_configs("gmf++", None)
    assert tc2.sources == ("all",)
    # options (nested values) are laid over the file's table
    _, _, mc3, _ = experiment_configs("nmf", read_config_file(f), model_overrides={"gmf": {"embedding_dim": 16}})
    assert mc3.gmf.embedding_dim == 16 and mc3.mlp.layers == (8, 16, 4) and mc3.alpha == 0.25


@pytest.mark.parametrize(
    ("text", "model_overrides", "message"),
    [
        ("[train]\nepoch = 3\n", {}, "unknown setting 'epoch' for TrainConfig"),
        ("[gmf]\ndim = 3\n", {}, "unknown setting 'dim' for GMFConfig"),
        ("[tran]\nepochs = 3\n", {}, "unknown key or table 'tran'"),
        ("[train]\nsampling = 'mixed'\n", {}, "sampling must be concat or equal"),
        ("", {"alpha": 0.3}, "model gmf: unknown setting 'alpha' for GMFConfig"),
    ],
)
def test_config_mistakes_are_one_clear_error(tmp_path: Path, text: str, model_overrides: dict, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(XmfastError, match=message.replace("(", r"\(")):
        experiment_configs("gmf", read_config_file(f), model_overrides=model_overrides)


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text("[train\nepochs = 3\n")
    with pytest.raises(XmfastError, match=r"broken.toml: not valid TOML"):
        read_config_file(f)
