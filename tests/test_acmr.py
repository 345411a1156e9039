"""The ACMR model (issue 7, first step): shapes, the market embedding, and padding that never
changes a score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

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
    scores = m.score_sequences(hist, lengths, market, torch.tensor([1, 2, 3, 4]))
    assert scores.shape == (4,) and torch.isfinite(scores).all()  # an empty history is still scored
    assert m.score_sequences(hist, lengths, market, torch.randint(0, N_ITEMS, (4, 5))).shape == (4, 5)
    # the same history and candidate scored in two markets gives two scores
    one = hist[:1].expand(2, 6)
    s = m.score_sequences(one, torch.tensor([6, 6]), torch.tensor([0, 1]), torch.tensor([7, 7]))
    assert not torch.isclose(s[0], s[1])


def test_padding_never_changes_a_score() -> None:
    m = _model()
    real = torch.tensor([[3, 9, 4]])
    cands = torch.tensor([[1, 5, 7]])
    market = torch.tensor([2])
    base = m.score_sequences(real, torch.tensor([3]), market, cands)
    for width, filler in ((6, N_ITEMS), (6, 0), (9, 11)):  # pad item, or any item id past the length
        padded = torch.full((1, width), filler)
        padded[0, :3] = real
        torch.testing.assert_close(m.score_sequences(padded, torch.tensor([3]), market, cands), base, rtol=1e-5, atol=1e-6)
    # a user's score does not depend on the other users of the batch
    other = torch.randint(0, N_ITEMS, (1, 3))
    both = m.score_sequences(torch.cat([real, other]), torch.tensor([3, 3]), torch.tensor([2, 0]), torch.cat([cands, cands]))
    torch.testing.assert_close(both[:1], base, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_part() -> None:
    m = _model().train()
    hist = torch.randint(0, N_ITEMS, (3, 6))
    out = m.score_sequences(hist, torch.tensor([6, 2, 4]), torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]))
    torch.nn.functional.binary_cross_entropy_with_logits(out, torch.tensor([1.0, 0.0, 1.0])).backward()
    for name in ("item_embedding.weight", "market_embedding.weight", "output.weight"):
        assert m.get_parameter(name).grad is not None and m.get_parameter(name).grad.abs().sum() > 0, name
    assert m.item_embedding.weight.grad[N_ITEMS].abs().sum() == 0  # the padding row never learns


def test_bad_configuration() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ACMRConfig(embedding_dim=30, heads=8)
    with pytest.raises(ValueError, match="truncation"):
        ACMRConfig(truncation="oldest")


@pytest.mark.parametrize("path", ["keys-first", "sdpa", "core"])
def test_encoder_block_equals_torch_transformer_layer(path: str) -> None:
    """Our block is nn.TransformerEncoderLayer's maths (post-norm, ReLU), written for speed; every
    attention path (the CPU's keys-first one for training, the Rust core's for inference, and the
    fused one CUDA takes) gives it."""
    from xmfast.models.acmr import EncoderBlock

    torch.manual_seed(3)
    ref = torch.nn.TransformerEncoderLayer(16, 4, 64, 0.3, batch_first=True).eval()
    block = EncoderBlock(16, 4, 64, 0.3).eval()
    with torch.no_grad():
        block.in_proj.weight.copy_(ref.self_attn.in_proj_weight)
        block.in_proj.bias.copy_(ref.self_attn.in_proj_bias)
        block.out_proj.load_state_dict(ref.self_attn.out_proj.state_dict())
        block.ff1.load_state_dict(ref.linear1.state_dict())
        block.ff2.load_state_dict(ref.linear2.state_dict())
        block.norm1.load_state_dict(ref.norm1.state_dict())
        block.norm2.load_state_dict(ref.norm2.state_dict())
        x = torch.randn(5, 7, 16)
        padding = torch.zeros(5, 7, dtype=torch.bool)
        padding[1, 3:6] = True
        padding[4, :6] = True
        want = ref(x, src_key_padding_mask=padding)
        got = block(x, padding, attention=path)
    torch.testing.assert_close(got[~padding], want[~padding], rtol=1e-5, atol=1e-5)


def test_the_default_attention_path_per_mode() -> None:
    """CPU training and anything with autograd take torch's keys-first path (the gradients and
    the pins are torch's); inference without autograd takes the core's."""
    from xmfast.models.acmr import EncoderBlock

    block, x = EncoderBlock(8, 2, 16, 0.3), torch.zeros(1, 3, 8)
    assert block.train().path(x) == "keys-first"
    assert block.eval().path(x) == "keys-first"  # autograd on: a gradient may be asked for
    with torch.no_grad():
        assert block.path(x) == "core"
        assert block.path(x.double()) == "keys-first"  # the core takes float32
        assert block.train().path(x) == "keys-first"  # dropout on the attention weights
    with torch.inference_mode():
        assert block.eval().path(x) == "core"
        with torch.autocast("cpu", dtype=torch.bfloat16):  # --amp: the projection is bfloat16
            padding = torch.zeros(1, 3, dtype=torch.bool)
            assert block.path(block.in_proj(x)) == "keys-first"
            assert torch.isfinite(block(x, padding)).all()
    with pytest.raises(ValueError, match="attention path"):
        block(x, torch.zeros(1, 3, dtype=torch.bool), attention="flash")


@settings(max_examples=25, deadline=None)
@given(heads=st.integers(1, 4), head_dim=st.integers(1, 6), width=st.integers(1, 12), n=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_core_attention_equals_torch_on_real_positions(heads: int, head_dim: int, width: int, n: int, seed: int) -> None:
    """The core's path against torch's keys-first one: the same outputs at every real position
    (to float rounding) for any shape and padding, including sequences whose only real position
    is the last (an empty history and its candidate)."""
    from xmfast.models.acmr import EncoderBlock

    gen = torch.Generator().manual_seed(seed)
    d = heads * head_dim
    torch.manual_seed(seed)
    block = EncoderBlock(d, heads, 2 * d, 0.3).eval()
    x = torch.randn(n, width, d, generator=gen) * 3
    lengths = torch.randint(0, width, (n,), generator=gen)
    padding = torch.arange(width)[None, :] >= lengths[:, None]
    padding[:, -1] = False
    with torch.no_grad():
        want = block(x, padding, attention="keys-first")
        got = block(x, padding, attention="core")
    torch.testing.assert_close(got[~padding], want[~padding], rtol=2e-5, atol=2e-5)


@settings(max_examples=30, deadline=None)
@example(heads=8, head_dim=4, ff=4, blocks=2, width=12, n=40, seed=1)  # ACMR's shape: AVX-512 attention, 2 vectors
@example(heads=4, head_dim=4, ff=4, blocks=1, width=9, n=33, seed=2)  # one vector of 16
@given(heads=st.integers(1, 8), head_dim=st.sampled_from([1, 2, 3, 4, 5]), ff=st.integers(1, 5), blocks=st.integers(1, 3),
       width=st.integers(1, 12), n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_fused_core_blocks_equal_torch_block_by_block(heads: int, head_dim: int, ff: int, blocks: int, width: int,
                                                       n: int, seed: int) -> None:
    """`core.encoder`, every block in one call, against the same blocks one at a time on torch's
    keys-first path: the same outputs at every real position, for any shape (heads of 4
    dimensions filling vectors of 16 take the core's AVX-512 attention where the CPU has it,
    others its portable one), block count and padding; zero at padded positions."""
    from xmfast import core
    from xmfast.models.acmr import EncoderBlock

    gen = torch.Generator().manual_seed(seed)
    d = heads * head_dim
    torch.manual_seed(seed)
    stack = [EncoderBlock(d, heads, ff * d, 0.3).eval() for _ in range(blocks)]
    for block in stack:  # norms that are not the identity
        torch.nn.init.normal_(block.norm1.weight, 1.0, 0.3), torch.nn.init.normal_(block.norm2.bias, 0.0, 0.3)
    x = torch.randn(n, width, d, generator=gen) * 3
    lengths = torch.randint(0, width, (n,), generator=gen)
    padding = torch.arange(width)[None, :] >= lengths[:, None]
    padding[:, -1] = torch.rand(n, generator=gen) < 0.2  # mostly a candidate last; some sequences wholly empty
    with torch.no_grad():
        want = x
        for block in stack:
            want = block(want, padding, attention="keys-first")
        weights = [{k: v.numpy() for k, v in block.state_dict().items()} for block in stack]
        got = torch.from_numpy(core.encoder(x.numpy(), (~padding).numpy(), weights, heads, 1e-5, bool(seed % 2)))
    torch.testing.assert_close(got[~padding], want[~padding], rtol=1e-4, atol=1e-4)
    assert torch.equal(got[padding], torch.zeros_like(got[padding]))


def test_evaluation_fuses_the_blocks_and_training_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused call is evaluation's path on the CPU; a forward with autograd (training, or a
    gradient asked for in evaluation) runs torch's blocks, and wrong parameters are one error."""
    import xmfast.models.acmr as acmr
    from xmfast import core

    calls, encoder = [], core.encoder
    monkeypatch.setattr(acmr.core, "encoder", lambda *a: calls.append(a) or encoder(*a))
    m = _model()
    hist, lengths = torch.randint(0, N_ITEMS, (3, 6)), torch.tensor([6, 2, 0])
    market, cand = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])
    with torch.no_grad():
        m.score_sequences(hist, lengths, market, cand)
    assert len(calls) == 1 and len(calls[0][2]) == SMALL.blocks
    m.score_sequences(hist, lengths, market, cand).sum().backward()  # grad enabled: torch's blocks
    m.train()
    m.score_sequences(hist, lengths, market, cand)
    assert len(calls) == 1
    with pytest.raises(KeyError, match="block 0 has no `ff2.bias`"):
        weights = [{k: v.numpy() for k, v in m.blocks[0].state_dict().items() if k != "ff2.bias"}]
        encoder(np.zeros((1, 2, 16), np.float32), np.ones((1, 2), bool), weights, 4, 1e-5)
    with pytest.raises(ValueError, match="block 0: ff2"):
        weights = [{k: v.numpy()[:3] if k == "ff2.weight" else v.numpy() for k, v in m.blocks[0].state_dict().items()}]
        encoder(np.zeros((1, 2, 16), np.float32), np.ones((1, 2), bool), weights, 4, 1e-5)


@pytest.mark.parametrize("rows", [8, 6])
def test_core_scores_do_not_depend_on_the_padded_width(rows: int) -> None:
    """Why evaluation can cut each chunk of 512 pairs to its own width: through the core's
    attention a pair's score is the same to the bit however far its history is padded (8 rows:
    whole blocks of the matrix products; 6: a partial block too)."""
    m = _model()
    gen = torch.Generator().manual_seed(2)
    lengths = torch.randint(0, 5, (rows,), generator=gen)
    hist = torch.full((rows, 12), N_ITEMS)
    for r, n in enumerate(lengths.tolist()):
        hist[r, :n] = torch.randint(0, N_ITEMS, (n,), generator=gen)
    market, cand = torch.randint(0, N_MARKETS, (rows,), generator=gen), torch.randint(0, N_ITEMS, (rows,), generator=gen)
    with torch.no_grad():
        assert m.blocks[0].path(torch.zeros(1, 1, 16)) == "core"
        tight = m.score_sequences(hist[:, :4], lengths, market, cand)
        for width in (5, 8, 12):
            assert torch.equal(m.score_sequences(hist[:, :width], lengths, market, cand), tight)


def test_evaluation_through_the_core_ranks_as_torch_does(acmr_dataset) -> None:
    """Whole evaluation scores of a trained-looking model: the core's path (the default under
    no_grad) gives torch's scores to float rounding, and so every candidate the same rank."""
    from xmfast.models.acmr import EncoderBlock

    ds, model = _attached(acmr_dataset)
    model.eval()
    gen = torch.Generator().manual_seed(5)
    keys = torch.randint(0, ds.n_groups, (60,), generator=gen).repeat_interleave(10)
    items = torch.randint(0, ds.n_items, keys.shape, generator=gen)
    with torch.no_grad():
        assert model.blocks[0].path(model.item_embedding.weight[None]) == "core"
        core = model(keys, items)
        torch_path = EncoderBlock.path
        try:
            EncoderBlock.path = lambda self, x: "keys-first"
            want = model(keys, items)
        finally:
            EncoderBlock.path = torch_path
    torch.testing.assert_close(core, want, rtol=1e-5, atol=1e-5)
    # bits may differ; ranks must not
    assert torch.equal(torch.argsort(core.view(60, 10), dim=1, stable=True), torch.argsort(want.view(60, 10), dim=1, stable=True))


def test_cpu_dropout_rate_scale_and_determinism() -> None:
    from xmfast.models.acmr import dropout

    x = torch.ones(200_000)
    torch.manual_seed(0)
    a = dropout(x, 0.3, True)
    torch.manual_seed(0)
    assert torch.equal(a, dropout(x, 0.3, True))  # the global generator drives it (resumable runs)
    rate = float((a == 0).float().mean())
    assert abs(rate - 77 / 256) < 0.005  # 0.3 rounded to 1/256
    assert torch.allclose(torch.unique(a), torch.tensor([0.0, 256 / 179]))  # kept values rescaled
    assert abs(float(a.mean()) - 1.0) < 0.01
    assert dropout(x, 0.3, False) is x and dropout(x, 0.0, True) is x


def _attached(dataset_path):
    from xmfast.dataset import PreparedDataset

    ds = PreparedDataset.load(dataset_path)
    torch.manual_seed(0)
    model = ACMR(ds.n_items, len(ds.markets), SMALL)
    model.attach(ds, training_rows=np.arange(int(np.asarray(ds.train_offsets)[-1])))
    return ds, model


@pytest.fixture(scope="module")
def acmr_dataset(tmp_path_factory: pytest.TempPathFactory, sample_dir):
    from xmfast.prepare import PrepareConfig, prepare

    path = tmp_path_factory.mktemp("acmr") / "ds"
    prepare(sample_dir, path, PrepareConfig(target="in", sources="all", protocol="acmr"))
    return path


def test_keyed_scores_equal_the_sequences_they_stand_for(acmr_dataset) -> None:
    ds, model = _attached(acmr_dataset)
    model.eval()
    groups = torch.arange(0, ds.n_groups, 5)
    items = torch.randint(0, ds.n_items, groups.shape)
    hist, lengths = ds.padded_histories(groups.numpy().astype(np.uint32), SMALL.history, SMALL.truncation)
    market = torch.from_numpy(np.asarray(ds.group_market, dtype=np.int64))[groups]
    want = model.score_sequences(torch.from_numpy(hist.astype(np.int64)), torch.from_numpy(lengths.astype(np.int64)),
                                 market, items)
    with torch.no_grad():
        whole = model(groups, items)
        model.eval_chunk = 7  # sorted by length and cut per chunk: the same scores
        chunked = model(groups, items)
    torch.testing.assert_close(whole, want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    # training keys are rows: the row's history lacks the row's own item
    model.train()
    rows = np.arange(0, int(np.asarray(ds.train_offsets)[-1]), 11)
    hist, lengths = ds.training_row_histories(rows, SMALL.history, SMALL.truncation)
    assert np.array_equal(model.train_history[rows].numpy(), hist.astype(np.int64))
    with pytest.raises(RuntimeError, match="attach"):
        ACMR(ds.n_items, len(ds.markets), SMALL)(torch.tensor([0]), torch.tensor([1]))


def _whole_chunks(model: ACMR, keys: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Evaluation scores as ACMR computed them before pieces (issue 25): up to one chunk whole in
    the given order, more sorted by length and each chunk whole at its width."""
    lengths, market, table = model.group_lengths[keys], model.group_market[keys], model.group_history
    if keys.numel() <= model.eval_chunk:
        return model.score_sequences(table[keys, : int(lengths.max())], lengths, market, items)
    out = torch.empty(keys.shape[0])
    for chunk in torch.argsort(lengths).split(model.eval_chunk):
        width = int(lengths[chunk[-1]])
        out[chunk] = model.score_sequences(table[keys[chunk], :width], lengths[chunk], market[chunk], items[chunk])
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_pieces_score_bit_for_bit_as_whole_chunks(acmr_dataset, threads: int) -> None:
    """Pieces of a multiple of 4 rows leave every row's bits as they were (see ACMR.eval_piece),
    also when they run on two Python threads of one torch thread each against two torch threads."""
    ds, model = _attached(acmr_dataset)
    model.eval()
    gen = torch.Generator().manual_seed(3)
    keys = torch.randint(0, ds.n_groups, (100,), generator=gen).repeat_interleave(6)  # 6 candidates each
    items = torch.randint(0, ds.n_items, keys.shape, generator=gen)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            model.eval_chunk, model.eval_piece = 128, 12  # 5 chunks, the last of 88 rows: pieces of 12 and 4
            assert torch.equal(model(keys, items), _whole_chunks(model, keys, items))
            model.eval_chunk = 4096  # one chunk, in the given order
            assert torch.equal(model(keys, items), _whole_chunks(model, keys, items))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_the_original_codes_training_histories_contain_the_rows_own_item(acmr_dataset) -> None:
    from dataclasses import replace

    from xmfast.dataset import PreparedDataset

    ds = PreparedDataset.load(acmr_dataset)
    item = np.asarray(ds.train_item).astype(np.int64)
    group = ds.train_group().astype(np.int64)
    rows = np.arange(item.size)
    offsets = np.asarray(ds.train_offsets).astype(np.int64)
    width = int(np.diff(offsets).max())  # wide enough that no history is cut
    # a row's item elsewhere in its group's history: the same item rated twice (no --dedup)
    repeated = np.array([(item[offsets[g]:offsets[g + 1]] == item[r]).sum() > 1 for r, g in zip(rows, group)])
    assert 0 < repeated.sum() < rows.size / 10
    for leave_out in (True, False):
        config = replace(SMALL, history=width, leave_out_own_item=leave_out)
        model = ACMR(ds.n_items, len(ds.markets), config)
        model.attach(ds, training_rows=rows)
        hist = model.train_history.numpy()
        own = (hist == item[:, None]).any(axis=1)
        if leave_out:  # the row's own position is left out, a repeat of its item is not
            assert np.array_equal(own, repeated)
        else:  # the group's whole history, the same for every row of the group, own item included
            assert own.all()
            assert np.array_equal(hist, model.group_history.numpy()[group])


def test_core_attention_refuses_mismatched_shapes() -> None:
    from xmfast import core

    qkv = np.zeros((2, 3, 24), np.float32)
    with pytest.raises(ValueError, match="attention"):
        core.attention(qkv, np.ones((2, 4), bool), 2, 1.0)  # real's width differs
    with pytest.raises(ValueError, match="attention"):
        core.attention(qkv, np.ones((2, 3), bool), 5, 1.0)  # 24 is not 3 · 5 · head_dim
    with pytest.raises(ValueError, match="contiguous"):
        core.attention(np.zeros((2, 3, 48), np.float32)[:, :, ::2], np.ones((2, 3), bool), 2, 1.0)
    out = core.attention(np.ones((2, 3, 24), np.float32), np.array([[True, False, True], [False] * 3]), 2, 1.0)
    assert out.shape == (2, 3, 8) and out.dtype == np.float32
    assert (out[0, [0, 2]] == 1.0).all() and (out[0, 1] == 0).all() and (out[1] == 0).all()
