"""The ACMR model (issue 7, first step): shapes, the market embedding, and padding that never
changes a score."""

from __future__ import annotations

import pytest
import torch

from xmfast.models.acmr import ACMR, ACMRConfig

N_ITEMS, N_MARKETS = 20, 3
SMALL = ACMRConfig(embedding_dim=16, blocks=2, heads=4, dropout=0.0, history=6)


def _model() -> ACMR:
    torch.manual_seed(0)
    return ACMR(N_ITEMS, N_MARKETS, SMALL).eval()


def test_shapes_and_market_embedding() -> None:
    m = _model()
    assert m.item_embedding.weight.shape == (N_ITEMS + 1, 16)  # + the padding item
    assert m.market_embedding.weight.shape == (N_MARKETS, 16)
    hist = torch.randint(0, N_ITEMS, (4, 6))
    lengths = torch.tensor([6, 3, 1, 0])
    market = torch.tensor([0, 1, 2, 0])
    scores = m(hist, lengths, market, torch.tensor([1, 2, 3, 4]))
    assert scores.shape == (4,) and torch.isfinite(scores).all()  # an empty history is still scored
    assert m(hist, lengths, market, torch.randint(0, N_ITEMS, (4, 5))).shape == (4, 5)
    # the same history and candidate scored in two markets gives two scores
    one = hist[:1].expand(2, 6)
    s = m(one, torch.tensor([6, 6]), torch.tensor([0, 1]), torch.tensor([7, 7]))
    assert not torch.isclose(s[0], s[1])


def test_padding_never_changes_a_score() -> None:
    m = _model()
    real = torch.tensor([[3, 9, 4]])
    cands = torch.tensor([[1, 5, 7]])
    market = torch.tensor([2])
    base = m(real, torch.tensor([3]), market, cands)
    for width, filler in ((6, N_ITEMS), (6, 0), (9, 11)):  # pad item, or any item id past the length
        padded = torch.full((1, width), filler)
        padded[0, :3] = real
        torch.testing.assert_close(m(padded, torch.tensor([3]), market, cands), base, rtol=1e-5, atol=1e-6)
    # a user's score does not depend on the other users of the batch
    other = torch.randint(0, N_ITEMS, (1, 3))
    both = m(torch.cat([real, other]), torch.tensor([3, 3]), torch.tensor([2, 0]), torch.cat([cands, cands]))
    torch.testing.assert_close(both[:1], base, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_part() -> None:
    m = _model().train()
    hist = torch.randint(0, N_ITEMS, (3, 6))
    out = m(hist, torch.tensor([6, 2, 4]), torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]))
    torch.nn.functional.binary_cross_entropy_with_logits(out, torch.tensor([1.0, 0.0, 1.0])).backward()
    for name in ("item_embedding.weight", "market_embedding.weight", "output.weight"):
        assert m.get_parameter(name).grad is not None and m.get_parameter(name).grad.abs().sum() > 0, name
    assert m.item_embedding.weight.grad[N_ITEMS].abs().sum() == 0  # the padding row never learns


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ACMRConfig(embedding_dim=30, heads=8)
    with pytest.raises(ValueError, match="truncation"):
        ACMRConfig(truncation="oldest")
