"""ACMR (Hu et al., Information Systems 2024): attention over a user's cross-market history.

Every position of the input sequence is an item embedding plus a **market embedding** of the
market the interaction belongs to, so an item's representation has a market-agnostic part (the
item) and a market-specific part (the market): the paper's remedy for negative transfer. The
sequence is the user's history (up to `history` items, padded) followed by one candidate
position. A transformer encoder reads it with padded positions masked out; the user vector is
the mean of the encoded *history* positions, the candidate vector is the encoded candidate
position, and a linear layer on [user vector, candidate vector] gives the logit.

Padding never changes a score: padded positions are excluded from attention (key padding mask)
and from the mean.

How the training engine feeds it. The engine speaks in (key, candidate) pairs, as for the NCF
models. ACMR holds two history tables (non-persistent buffers, built by :meth:`ACMR.attach` from
the prepared dataset by the Rust history builder): in training mode a key is a *training row*,
whose history is its group's history without the row's own item; in evaluation mode a key is a
*group*, whose history is its whole training history. Each batch is cut to its longest real
history, so batches of short histories (most of XMarket: the median user has 6 training items)
cost a fraction of the padded width.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmfast import core
from xmfast.models.threads import LayerNorm, Linear
from xmfast.models.settings import ACMRConfig

if TYPE_CHECKING:
    from xmfast.dataset import PreparedDataset

T = TypeVar("T")


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout. On CUDA torch's own; on the CPU torch's ``bernoulli_`` draws one random
    number per element and was the slowest operation of an ACMR step (41% of it), so the mask
    here takes 8 bytes from each 64-bit draw (3× faster). A byte keeps its element when it is
    at least round(256 p), so the drop rate is p rounded to 1/256 (0.3 → 0.3008)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    threshold = round(p * 256)
    n = x.numel()
    draws = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64)
    keep = draws.view(torch.uint8)[:n].view(x.shape) >= threshold
    return x * keep * (256.0 / (256 - threshold))


def _on_threads(fn: Callable[[T], torch.Tensor], jobs: list[T], threads: int) -> list[torch.Tensor]:
    """`fn` over `jobs` on `threads` Python threads of one torch thread each (torch's kernels
    release the GIL). For many small forwards this beats torch's own threads: no OpenMP barrier
    per operation, which on a busy machine stalls the whole operation for a time slice (3× slower
    there than one thread). One thread gives the same bits as two for these products (a test
    checks it)."""
    def one(job: T) -> torch.Tensor:
        torch.set_num_threads(1)  # OpenMP's thread count is per thread: this worker's
        return fn(job)

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, jobs))
    finally:
        torch.set_num_threads(threads)


class EncoderBlock(nn.Module):
    """One transformer encoder block with the maths of ``nn.TransformerEncoderLayer`` (post-norm,
    ReLU feed-forward, dropout on attention weights, attention output and feed-forward) — a test
    checks they agree — written out so each device gets its fast path for attention:

    * ``"sdpa"``, torch's fused ``scaled_dot_product_attention``: on CUDA;
    * ``"keys-first"``: CPU training, laid out keys-first because softmax over a short *last*
      axis (≤ 51 positions) runs 4× slower there than over the middle one, with the cheap dropout
      above;
    * ``"core"``: CPU inference (no autograd, no dropout), the Rust core's one pass per sequence
      (``xmfast.core.attention``), 3× less time than keys-first for ACMR's 8 heads of 4
      dimensions, which torch runs as thousands of tiny matrix products plus the copies that lay
      them out. Scores agree with the torch paths to float rounding, not bit for bit.

    ACMR's evaluation goes further where every block would take the core path: the whole stack
    runs in one call of ``core.encoder`` (see ``ACMR._encode_in_core``).
    """

    PATHS = ("sdpa", "keys-first", "core")

    def __init__(self, d: int, heads: int, ff: int, p: float) -> None:
        super().__init__()
        self.heads, self.p = heads, p
        self.in_proj = Linear(d, 3 * d)
        self.out_proj = Linear(d, d)
        self.ff1 = Linear(d, ff)
        self.ff2 = Linear(ff, d)
        self.norm1 = LayerNorm(d)
        self.norm2 = LayerNorm(d)

    def path(self, x: torch.Tensor) -> str:
        """The attention path `forward` takes by default for the input projection `x`."""
        if x.device.type != "cpu":
            return "sdpa"
        inference = not (self.training or torch.is_grad_enabled()) and x.dtype == torch.float32
        return "core" if inference else "keys-first"

    def forward(self, x: torch.Tensor, padding: torch.Tensor, attention: str | None = None) -> torch.Tensor:
        """`x` (B, L, d); `padding` (B, L), True where a position is padding (never attended to;
        its own output is unspecified). `attention` picks a path of `PATHS` (default:
        :meth:`path`); the tests set it to check every path on the CPU."""
        b, length, d = x.shape
        h, dh = self.heads, d // self.heads
        qkv = self.in_proj(x)
        attention = attention or self.path(qkv)  # the projection's dtype: bfloat16 under autocast
        if attention not in self.PATHS:
            raise ValueError(f"attention path must be one of {self.PATHS}, got {attention!r}")
        if attention == "core":
            # On the core's threads only where torch may use several: evaluation pieces run on
            # Python threads of one torch thread each, which the pool's threads would compete with.
            attended = core.attention(qkv.contiguous().numpy(), (~padding).numpy(), h, dh**-0.5,
                                      torch.get_num_threads() > 1)
            return self._rest(x, torch.from_numpy(attended))
        q, k, v = qkv.view(b, length, 3, h, dh).permute(2, 0, 3, 1, 4)  # each (B, h, L, dh)
        if attention == "keys-first":
            bias = torch.zeros(b, 1, length, 1, dtype=x.dtype).masked_fill_(padding[:, None, :, None], float("-inf"))
            bias = bias.expand(b, h, length, 1).reshape(b * h, length, 1)
            # scores transposed: (B·h, keys, queries), softmax over the keys (axis 1)
            scores = torch.baddbmm(bias, k.reshape(b * h, length, dh), q.reshape(b * h, length, dh).transpose(1, 2),
                                   alpha=dh**-0.5)
            weights = dropout(torch.softmax(scores, dim=1), self.p, self.training)
            attended = torch.bmm(weights.transpose(1, 2), v.reshape(b * h, length, dh)).view(b, h, length, dh)
        else:
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=~padding[:, None, None, :], dropout_p=self.p if self.training else 0.0
            )
        return self._rest(x, attended.transpose(1, 2).reshape(b, length, d))

    def _rest(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The block after attention: `attended` (B, L, d), heads side by side."""
        x = self.norm1(x + dropout(self.out_proj(attended), self.p, self.training))
        y = self.ff2(dropout(F.relu(self.ff1(x), inplace=True), self.p, self.training))
        return self.norm2(x + dropout(y, self.p, self.training))


class ACMR(nn.Module):
    # Pairs scored per forward in evaluation: each pair is a whole sequence with its attention.
    # A whole uk test or validation set (335,200 pairs) in one: its pairs are sorted by history
    # length all together, so each chunk below is cut to a width close to its own pairs' (in
    # batches of 65,536 a chunk held 9.8 positions per pair and 161 attention pairs, against 8.4
    # and 87 for the whole set: 1.2–1.8× the work). The pairs' keys and scores are all it holds.
    scoring_batch = 1 << 20
    # Pairs that share one width in evaluation (sorted by history length). Small, so the width is
    # the chunk's own: the core's attention touches only real positions and the linear maps work
    # row by row, so a pair's score does not depend on the width it is padded to (a test checks it).
    eval_chunk = 512
    # Sequences per forward within a chunk, at the chunk's width: a chunk of 4,096 whole was 1.4×
    # slower on the CPU (its activations fall out of cache). A multiple of 4 rows keeps every row
    # of the matrix products in the same kernel block, so pieces give a chunk's bits (the last
    # rows, in a partial block, stay the last rows of the last piece); a test checks it.
    eval_piece = 512

    def __init__(self, n_items: int, n_markets: int, config: ACMRConfig = ACMRConfig()) -> None:
        super().__init__()
        self.config = config
        self.n_items = n_items
        d = config.embedding_dim
        # Item n_items is the padding item of the history matrices (see PreparedDataset.padded_histories).
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.market_embedding = nn.Embedding(n_markets, d)
        self.blocks = nn.ModuleList(
            EncoderBlock(d, config.heads, config.ff_multiplier * d, config.dropout) for _ in range(config.blocks)
        )
        # Only when configured, so runs without it keep their state dicts.
        self.embedding_norm = LayerNorm(d, eps=1e-5) if config.embedding_norm else None
        self.output = Linear(2 * d, 1)
        nn.init.normal_(self.item_embedding.weight, 0.0, d**-0.5)
        nn.init.normal_(self.market_embedding.weight, 0.0, d**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()
        for prefix in ("train", "group"):
            self.register_buffer(f"{prefix}_history", torch.zeros(0, 0, dtype=torch.long), persistent=False)
            self.register_buffer(f"{prefix}_lengths", torch.zeros(0, dtype=torch.long), persistent=False)
            self.register_buffer(f"{prefix}_market", torch.zeros(0, dtype=torch.long), persistent=False)

    # ---- history tables ----------------------------------------------------------------------------
    def attach(self, dataset: PreparedDataset, training_rows: np.ndarray | None = None,
               market_codes: np.ndarray | None = None) -> None:
        """Builds the history tables from `dataset`: every group's history (evaluation) and, when
        given, one history per training row (indices into the dataset's training arrays), without
        the row's own item unless the configuration says otherwise (`leave_out_own_item`).
        `market_codes` maps the dataset's market index to this model's market embedding row
        (default: the same index)."""
        cfg = self.config
        cooc = None
        if cfg.truncation == "cooc":
            cooc = core.cooccurrence(
                np.asarray(dataset.train_offsets), np.asarray(dataset.train_item), np.asarray(dataset.group_market),
                list(range(len(dataset.markets))), dataset.n_items, None,
            )
        codes = np.arange(len(dataset.markets)) if market_codes is None else np.asarray(market_codes)
        if codes.max(initial=0) >= self.market_embedding.num_embeddings:
            raise ValueError(f"the dataset has more markets than the model's {self.market_embedding.num_embeddings}")
        group_market = codes[np.asarray(dataset.group_market, dtype=np.int64)]
        dev = self.item_embedding.weight.device
        groups = np.arange(dataset.n_groups, dtype=np.uint32)
        group_hist, group_lengths = dataset.padded_histories(groups, cfg.history, cfg.truncation, cfg.history_seed, cooc)
        self._set("group", group_hist, group_lengths, group_market, dev)
        if training_rows is not None:
            rows = np.asarray(training_rows, dtype=np.int64)
            row_group = dataset.train_group()[rows].astype(np.int64)
            if cfg.leave_out_own_item:
                hist, lengths = dataset.training_row_histories(rows, cfg.history, cfg.truncation, cfg.history_seed, cooc)
            else:  # the row's group's history, as built above
                hist, lengths = group_hist[row_group], group_lengths[row_group]
            self._set("train", hist, lengths, group_market[row_group], dev)

    def _set(self, prefix: str, hist: np.ndarray, lengths: np.ndarray, market: np.ndarray, dev: torch.device) -> None:
        # int32 (the core's uint32 reinterpreted, no copy; item ids < 2**31): half the memory of
        # int64 and no conversion pass (a third of attach's time on uk); embeddings take int32.
        setattr(self, f"{prefix}_history", torch.from_numpy(np.ascontiguousarray(hist).view(np.int32)).to(dev))
        setattr(self, f"{prefix}_lengths", torch.from_numpy(np.ascontiguousarray(lengths).view(np.int32)).to(dev))
        setattr(self, f"{prefix}_market", torch.from_numpy(np.asarray(market, dtype=np.int64)).to(dev))

    def training_lengths(self) -> torch.Tensor:
        """History length of every training row (for length-bucketed batches)."""
        return self.train_lengths

    def forward(self, keys: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Logits of (key, candidate) pairs: keys are training rows in training mode, groups in
        evaluation mode (see the module docstring)."""
        prefix = "train" if self.training else "group"
        table = getattr(self, f"{prefix}_history")
        if table.shape[0] == 0:
            raise RuntimeError(f"ACMR has no {prefix} history table; call attach(dataset, ...) first")
        lengths = getattr(self, f"{prefix}_lengths")[keys]
        market = getattr(self, f"{prefix}_market")[keys]
        if self.training or candidates.dim() != 1 or keys.numel() == 0:
            width = int(lengths.max()) if lengths.numel() else 0
            return self.score_sequences(table[keys, :width], lengths, market, candidates)
        # Evaluation: pairs in order of history length, in chunks each cut to its own width (up to
        # one chunk: in the given order, at the longest width), scored in pieces of that width.
        n = keys.shape[0]
        chunks = [torch.arange(n, device=keys.device)] if n <= self.eval_chunk else torch.argsort(lengths).split(self.eval_chunk)
        pieces = [(piece, int(lengths[chunk].max())) for chunk in chunks for piece in chunk.split(self.eval_piece)]
        grad = torch.is_grad_enabled()
        weights = self._core_weights()  # once for every piece

        def score(job: tuple[torch.Tensor, int]) -> torch.Tensor:
            piece, width = job
            with torch.set_grad_enabled(grad):  # grad mode is per thread
                return self.score_sequences(table[keys[piece], :width], lengths[piece], market[piece],
                                            candidates[piece], core_weights=weights).float()

        threads = torch.get_num_threads()
        if keys.device.type == "cpu" and threads > 1 and len(pieces) > 1:
            scored = _on_threads(score, pieces, threads)
        else:
            scored = [score(job) for job in pieces]
        out = torch.empty(n, device=keys.device)
        for (piece, _), logits in zip(pieces, scored):
            out[piece] = logits
        return out

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether the blocks run as one call of the core (`core.encoder`): where every block
        would take its core path (CPU inference in float32; not under CPU autocast, whose
        products would be bfloat16) and the norms share one eps."""
        return (all(block.path(x) == "core" for block in self.blocks) and not torch.is_autocast_enabled("cpu")
                and len({n.eps for block in self.blocks for n in (block.norm1, block.norm2)}) == 1)

    def _core_weights(self) -> list[dict[str, np.ndarray]]:
        """The blocks' parameters as `core.encoder` takes them (views, no copy)."""
        return [{k: v.numpy() for k, v in block.state_dict().items()} for block in self.blocks]

    def _encode_in_core(self, x: torch.Tensor, real: torch.Tensor,
                        weights: list[dict[str, np.ndarray]] | None = None) -> torch.Tensor:
        """The blocks on `x` (B, L, d) in the Rust core, fused: each sequence's real positions go
        through every block while they stay in cache, 2-3× faster than the blocks one operation
        at a time. Padded positions come back zero (torch's are unspecified; both are unread).
        `weights`: `_core_weights()`, when the caller scores many pieces with the same ones."""
        weights = self._core_weights() if weights is None else weights
        # On the core's threads only where torch may use several (see EncoderBlock.forward).
        out = core.encoder(x.contiguous().numpy(), real.numpy(), weights, self.config.heads,
                           self.blocks[0].norm1.eps, torch.get_num_threads() > 1)
        return torch.from_numpy(out)

    def score_sequences(self, history: torch.Tensor, lengths: torch.Tensor, market: torch.Tensor,
                        candidates: torch.Tensor, core_weights: list[dict[str, np.ndarray]] | None = None) -> torch.Tensor:
        """Logits of `candidates` ((B,) or (B, C)) for histories `history` (B, L) of which the
        first `lengths` positions are real, all in market `market` (B,). `core_weights`: see
        `_encode_in_core`."""
        squeeze = candidates.dim() == 1
        cand = candidates[:, None] if squeeze else candidates
        b, c = cand.shape
        length = history.shape[1]
        # One sequence per (user, candidate): the history then the candidate.
        hist = history[:, None, :].expand(b, c, length)
        seq = torch.cat([hist, cand[:, :, None]], dim=2).reshape(b * c, length + 1)
        mkt = market[:, None].expand(b, c).reshape(b * c)
        x = self.item_embedding(seq) + self.market_embedding(mkt)[:, None, :]
        if self.embedding_norm is not None:
            x = dropout(self.embedding_norm(x), self.config.dropout, self.training)
        positions = torch.arange(length + 1, device=history.device)
        real = positions[None, :] < lengths.repeat_interleave(c)[:, None]
        real[:, length] = True  # the candidate position
        if self._fused(x):
            h = self._encode_in_core(x, real, core_weights)
        else:
            h = x
            for block in self.blocks:
                h = block(h, ~real)
        hist_mask = real[:, :length, None].to(h.dtype)
        user = (h[:, :length] * hist_mask).sum(1) / hist_mask.sum(1).clamp(min=1.0)
        logits = self.output(torch.cat([user, h[:, length]], dim=-1)).reshape(b, c)
        return logits[:, 0] if squeeze else logits
