"""xmfast/models/threads.py: on any number of CPU threads, the outputs and gradients of a
one-thread run — for its LayerNorm (against torch's on one thread) and for whole ACMR and SASRec
steps — so that these transformers, trained on two threads, give the pinned results, which were
made on one (what `xmfast run --jobs 2` relies on: each of its stages has one thread, a serial
run has them all)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pinned import SETTINGS, _observed, pinned  # the pinned runs' settings, what they compare
from threadpoolctl import threadpool_limits
from torch import nn

from xmfast.models import get_model
from xmfast.models.api import Sizes
from xmfast.models.acmr import ACMR
from xmfast.models.sasrec import SASRec
from xmfast.models.settings import ACMRConfig, SASRecConfig
from xmfast.models.threads import LayerNorm, one_thread_backward
from xmfast.prepare import PrepareConfig, prepare
from xmfast.training import train


def _grads(norm: nn.Module, x: torch.Tensor, g: torch.Tensor, threads: int) -> list[torch.Tensor]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = x.clone().requires_grad_(True)
        out = norm(x)
        out.backward(g)
        return [out.detach(), x.grad, norm.weight.grad, norm.bias.grad]
    finally:
        torch.set_num_threads(before)
        norm.zero_grad(set_to_none=True)


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 3000), width=st.sampled_from([1, 7, 8, 32, 33]), eps=st.sampled_from([1e-5, 1e-8]),
       seed=st.integers(0, 2**16))
def test_two_threads_give_the_bits_of_a_one_thread_torch_layer_norm(rows: int, width: int, eps: float,
                                                                    seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, g = torch.randn(rows, 3, width, generator=gen), torch.randn(rows, 3, width, generator=gen)
    reference = nn.LayerNorm(width, eps=eps)
    with torch.no_grad():
        reference.weight.normal_(generator=gen)
        reference.bias.normal_(generator=gen)
    ours = LayerNorm(width, eps=eps)
    ours.load_state_dict(reference.state_dict())
    expected = _grads(reference, x, g, threads=1)
    for got in (_grads(ours, x, g, threads=2), _grads(ours, x, g, threads=1)):
        assert all(torch.equal(a, b) for a, b in zip(expected, got))


def _sdpa_grads(threads: int, ours: bool) -> list[torch.Tensor]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(512, 2, 12, 8, generator=gen).requires_grad_() for _ in range(3))
        torch.manual_seed(1)  # the dropout draws

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.2)

        out = one_thread_backward(attend, q, k, v) if ours else attend(q, k, v)
        out.backward(torch.randn(out.shape, generator=gen))
        return [out.detach(), q.grad, k.grad, v.grad]
    finally:
        torch.set_num_threads(before)


def test_attention_with_dropout_gets_the_one_thread_gradients() -> None:
    expected = _sdpa_grads(1, ours=False)
    assert all(torch.equal(a, b) for a, b in zip(expected, _sdpa_grads(2, ours=True)))


def _linear_grads(threads: int, linear: type[nn.Linear]) -> list[torch.Tensor]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        layer = linear(32, 96)
        x = torch.randn(4096, 32, generator=gen).requires_grad_()
        out = layer(x)
        out.backward(torch.randn(out.shape, generator=gen))
        return [out.detach(), x.grad, layer.weight.grad, layer.bias.grad]
    finally:
        torch.set_num_threads(before)


def test_a_linear_weight_gradient_is_the_one_thread_one() -> None:
    from xmfast.models.threads import Linear

    expected = _linear_grads(1, nn.Linear)
    assert all(torch.equal(a, b) for a, b in zip(expected, _linear_grads(2, Linear)))


def test_a_one_output_product_is_the_one_thread_one() -> None:
    """An output layer (one output: a matrix-vector product) scores every row as on one thread,
    at every batch size from 590 to 699 rows (on Intel family 6 model 207 with torch 2.15, about
    70 of them gave other last bits on two threads: a training's last, partial batch), with and
    without autograd, and its gradients too."""
    from xmfast.models.threads import Linear

    torch.manual_seed(0)
    layer = Linear(16, 1)
    before = torch.get_num_threads()
    try:
        for rows in range(590, 700):
            x = torch.randn(rows, 16)
            out = {}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                with torch.no_grad():
                    scores = layer(x)
                layer.zero_grad()
                xg = x.clone().requires_grad_()
                layer(xg).sum().backward()
                out[threads] = (scores, layer.weight.grad.clone(), xg.grad.clone())
            assert all(torch.equal(a, b) for a, b in zip(out[1], out[2])), rows
    finally:
        torch.set_num_threads(before)


def test_torch_itself_depends_on_the_thread_count() -> None:
    """Why the module exists: some of the gradients it guards differ between one thread and two
    (which ones depends on the CPU and its BLAS: LayerNorm's parameters' here and on the
    earlier machines, attention's query on those, a linear map's weight on Intel family 6 model
    207), while the outputs and the other gradients never do. If the first assertion ever
    fails, torch's kernels became thread-independent and the module can go."""
    gen = torch.Generator().manual_seed(0)
    x, g = torch.randn(4096, 32, generator=gen), torch.randn(4096, 32, generator=gen)
    norm = nn.LayerNorm(32)
    norm_one, norm_two = _grads(norm, x, g, threads=1), _grads(norm, x, g, threads=2)
    sdpa_one, sdpa_two = _sdpa_grads(1, ours=False), _sdpa_grads(2, ours=False)
    linear_one, linear_two = _linear_grads(1, nn.Linear), _linear_grads(2, nn.Linear)
    assert not (torch.equal(norm_one[2], norm_two[2]) and torch.equal(norm_one[3], norm_two[3])
                and torch.equal(sdpa_one[1], sdpa_two[1]) and torch.equal(linear_one[2], linear_two[2]))
    assert torch.equal(norm_one[1], norm_two[1])  # the input gradient is the same
    assert torch.equal(sdpa_one[0], sdpa_two[0]) and torch.equal(sdpa_one[3], sdpa_two[3])  # output, value gradient
    assert all(torch.equal(linear_one[i], linear_two[i]) for i in (0, 1, 3))  # output, input and bias gradients


def _model_step(name: str, threads: int) -> dict[str, torch.Tensor]:
    """The gradients of one training-mode step (dropout on, seeded) of a small ACMR or SASRec on
    random sequences, or of an NCF model on random pairs, on `threads` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        if name == "acmr":
            model = ACMR(200, 3, ACMRConfig(embedding_dim=16, blocks=2, heads=2, history=12))
            history = torch.randint(0, 201, (512, 12))
            lengths, market = torch.randint(1, 13, (512,)), torch.randint(0, 3, (512,))
            logits = model.score_sequences(history, lengths, market, torch.randint(0, 200, (512, 3)))
            loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.rand(512, 3).round())
        elif name == "sasrec":
            model = SASRec(200, 3, SASRecConfig(embedding_dim=16, blocks=2, heads=2, history=12))
            states = model.encode(torch.randint(0, 200, (512, 12)), torch.randint(0, 3, (512,)))
            loss = (states * torch.randn(states.shape)).sum()
        else:  # the NCF family at FOREC's widths, a batch of 4,096
            spec = get_model(name)
            model = spec.build(Sizes(groups=300, items=200, markets=2), spec.config_type())
            users, items = torch.randint(0, 300, (4096,)), torch.randint(0, 200, (4096,))
            loss = nn.functional.binary_cross_entropy_with_logits(model(users, items), torch.rand(4096).round())
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["acmr", "sasrec", "gmf", "mlp", "nmf"])
def test_a_step_has_the_same_gradients_on_one_and_two_threads(name: str) -> None:
    one, two = _model_step(name, 1), _model_step(name, 2)
    assert len(one) >= 3 and one.keys() == two.keys()
    assert [n for n in one if not torch.equal(one[n], two[n])] == []


def _maml(threads: int, first_order: bool) -> tuple[dict[str, torch.Tensor], float, dict[str, torch.Tensor], int]:
    """A meta-gradient (4 markets, 300 support and 300 query rows each) and a test-time adaptation
    of an NMF at FOREC's widths on `threads` torch threads, and the thread count after them."""
    from xmfast.models.maml import Tasks, adapt, meta_gradients, weights_of
    from xmfast.models.settings import MAMLConfig

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        spec = get_model("nmf")
        model = spec.build(Sizes(groups=3000, items=2000, markets=4), spec.config_type())
        gen = torch.Generator().manual_seed(1)
        pick = lambda n: torch.randint(0, n, (4, 300), generator=gen)  # noqa: E731
        labels = lambda: torch.rand(4, 300, generator=gen).round()  # noqa: E731
        tasks = Tasks(pick(3000), pick(2000), labels(), pick(3000), pick(2000), labels())
        config = MAMLConfig(first_order=first_order)
        grads, loss = meta_gradients(model, tasks, config)
        weights = {k: v.detach() for k, v in weights_of(model).items()}
        adapted = adapt(model, weights, tasks.query_users[0], tasks.query_items[0], tasks.query_labels[0], config,
                        steps=2)
        return grads, loss, adapted, torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_gives_the_same_bits_on_one_and_two_threads(first_order: bool) -> None:
    """MAML's meta-gradients (second order, and first) and adaptations are a one-thread run's on
    two threads: without `cpu_one_thread` four to five linear weights' meta-gradients differed on
    Intel family 6 models 167 and 207. The thread count is the caller's again after each."""
    g1, loss1, a1, after1 = _maml(1, first_order)
    g2, loss2, a2, after2 = _maml(2, first_order)
    assert (after1, after2) == (1, 2)
    assert loss1 == loss2 and g1.keys() == g2.keys() and len(g1) >= 10
    assert [n for n in g1 if not torch.equal(g1[n], g2[n])] == []
    assert [n for n in a1 if not torch.equal(a1[n], a2[n])] == []


def test_one_thread_is_for_the_cpu_only() -> None:
    from xmfast.models.threads import cpu_one_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with cpu_one_thread("cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with cpu_one_thread(torch.device("meta")):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # about a minute of training (8 on a loaded machine): the step test above is the quick check
@pytest.mark.parametrize("name", ["acmr", "sasrec"])
def test_transformers_trained_on_two_threads_give_the_pinned_one_thread_results(
        name: str, sample_dir: Path, tmp_path: Path) -> None:
    s = SETTINGS["runs"][name]
    ds = prepare(sample_dir, tmp_path / "ds", PrepareConfig(**SETTINGS["prepare"]))
    spec = get_model(s["model"])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        # numpy's BLAS on one thread as in the pinned runs, and only it: limiting OpenMP too would
        # make torch report one thread while its MKL (set by torch.set_num_threads) kept two
        with threadpool_limits(1, user_api="blas"):
            train(ds, tmp_path / name, s["model"], spec.config_type(**s["config"]), spec.train_config(**s["train"]))
    finally:
        torch.set_num_threads(threads)
    assert _observed(tmp_path / name) == pinned()[name]
