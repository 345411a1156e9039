"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) with a market
embedding: the sequential baseline of CAT-SR (KDD 2024) and DCMPT (AAAI 2026).

A sequence is a group's training items in the dataset's order (the protocol's: by date under
``forec``, seeded at random under ``acmr``). Each position's input is the item's embedding
(scaled by √d, as SASRec) plus a learned position embedding plus the embedding of the
sequence's market; causal self-attention blocks read it, so the hidden state at position t sees
items 0…t only, and its dot product with an item's embedding (the same table as the input's)
scores that item as the next one. Blocks are pre-LN: x + Attn(LN(x)), then x + FFN(LN(x)), and a
LayerNorm after the last block. SASRec's code is pre-LN too but adds the residual to the
*normalised* input; here the residual stream is the un-normalised one, the usual pre-LN form.

Sequences are right-padded, so causality alone keeps padding out of every real position (no
padding mask), and a batch is cut to its longest sequence.

How the engine feeds it (``batch = "histories"``: a key is a training row). :meth:`SASRec.attach`
cuts every group's run rows into *windows* of at most `history` inputs, aligned at the sequence's
end: the last window's inputs are the `history` items before the group's last row, the window
before it ends where that one starts, and so on, so every row but a group's first is the target
of exactly one position of one window (a group's first row has no history and is never a target).
In training mode ``module(rows, items)`` encodes each distinct window of the batch once and scores
each row's items with the hidden state just before the row; :class:`xmfast.training.sequence.
WindowTrainer` makes batches of whole windows so no window is encoded twice. In evaluation mode a
key is a group: its most recent `history` training items (the project's padded histories, the same
for the validation and the test query, as ACMR's) are encoded once per distinct group of a call,
and every candidate is scored with the last position's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmfast.models.acmr import dropout
from xmfast.models.threads import LayerNorm, Linear, one_thread_backward
from xmfast.models.settings import SASRecConfig

if TYPE_CHECKING:
    from xmfast.dataset import PreparedDataset


class CausalBlock(nn.Module):
    """Pre-LN causal self-attention and a position-wise feed-forward of width d (SASRec's)."""

    def __init__(self, d: int, heads: int, p: float) -> None:
        super().__init__()
        self.heads, self.p = heads, p
        self.norm1 = LayerNorm(d, eps=1e-8)
        self.in_proj = Linear(d, 3 * d)
        self.out_proj = Linear(d, d)
        self.norm2 = LayerNorm(d, eps=1e-8)
        self.ff1 = Linear(d, d)
        self.ff2 = Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        h = self.heads
        q, k, v = self.in_proj(self.norm1(x)).view(b, length, 3, h, d // h).permute(2, 0, 3, 1, 4)
        p = self.p if self.training else 0.0
        attended = one_thread_backward(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p),
                                       q, k, v)
        x = x + dropout(self.out_proj(attended.transpose(1, 2).reshape(b, length, d)), self.p, self.training)
        y = self.ff2(dropout(F.relu(self.ff1(self.norm2(x))), self.p, self.training))
        return x + dropout(y, self.p, self.training)


class SASRec(nn.Module):
    eval_chunk = 4096  # distinct groups encoded at once in evaluation

    def __init__(self, n_items: int, n_markets: int, config: SASRecConfig = SASRecConfig()) -> None:
        super().__init__()
        self.config = config
        self.n_items = n_items
        d = config.embedding_dim
        # Item n_items pads (as in PreparedDataset.padded_histories); its embedding stays zero.
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=n_items)
        self.position_embedding = nn.Embedding(config.history, d)
        self.market_embedding = nn.Embedding(n_markets, d)
        for table in (self.item_embedding, self.position_embedding, self.market_embedding):
            nn.init.normal_(table.weight, 0.0, d**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()
        self.blocks = nn.ModuleList(CausalBlock(d, config.heads, config.dropout) for _ in range(config.blocks))
        self.final_norm = LayerNorm(d, eps=1e-8)
        # History tables (attach): per training row its window and position there; the windows;
        # per group its recent items. Non-persistent: rebuilt from the dataset, never checkpointed.
        for name, shape in (("row_window", (0,)), ("row_offset", (0,)), ("window_items", (0, 0)),
                            ("window_lengths", (0,)), ("window_first", (0,)), ("window_market", (0,)),
                            ("group_items", (0, 0)), ("group_lengths", (0,)), ("group_market", (0,))):
            self.register_buffer(name, torch.zeros(shape, dtype=torch.long), persistent=False)

    # ---- history tables ----------------------------------------------------------------------------
    def attach(self, dataset: PreparedDataset, training_rows: np.ndarray | None = None) -> None:
        """Every group's recent history (evaluation) and, given the run's training rows (indices
        into the dataset's training arrays, ascending), the training windows (module docstring)."""
        width = self.config.history
        dev = self.item_embedding.weight.device
        group_market = np.asarray(dataset.group_market, dtype=np.int64)
        if group_market.max(initial=0) >= self.market_embedding.num_embeddings:
            raise ValueError(f"the dataset has more markets than the model's {self.market_embedding.num_embeddings}")
        items, lengths = dataset.padded_histories(np.arange(dataset.n_groups, dtype=np.uint32), width, "recent")
        tensors: dict[str, Any] = {"group_items": items, "group_lengths": lengths, "group_market": group_market}
        if training_rows is not None:
            rows = np.asarray(training_rows, dtype=np.int64)
            group = dataset.train_group()[rows].astype(np.int64)
            row_item = np.asarray(dataset.train_item, dtype=np.int64)[rows]
            tensors.update(training_windows(group, row_item, width, dataset.n_items))
            tensors["window_market"] = group_market[tensors.pop("window_group")]
        for name, value in tensors.items():
            setattr(self, name, torch.from_numpy(np.asarray(value).astype(np.int64)).to(dev))

    # ---- scoring ------------------------------------------------------------------------------------
    def encode(self, items: torch.Tensor, market: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, d) of right-padded sequences `items` (B, L) in markets `market`."""
        length = items.shape[1]
        x = self.item_embedding(items) * self.config.embedding_dim**0.5
        x = x + self.position_embedding.weight[:length] + self.market_embedding(market)[:, None, :]
        x = dropout(x, self.config.dropout, self.training)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def states(self, keys: torch.Tensor) -> torch.Tensor:
        """The state (n, d) that scores each key's next item: in training mode a key is a training
        row (the state just before it in its window), in evaluation mode a group (the state after
        its last history item). Each distinct window or group is encoded once."""
        if self.training:
            if self.row_window.shape[0] == 0:
                raise RuntimeError("SASRec has no training windows; call attach(dataset, rows) first")
            window = self.row_window[keys]
            if bool((window < 0).any()):
                raise ValueError("a group's first training row has no history and is never a target")
            unique, inverse = torch.unique(window, return_inverse=True)
            width = int(self.window_lengths[unique].max())
            hidden = self.encode(self.window_items[unique, :width], self.window_market[unique])
            return hidden[inverse, self.row_offset[keys]]
        if self.group_items.shape[0] == 0:
            raise RuntimeError("SASRec has no history table; call attach(dataset) first")
        unique, inverse = torch.unique(keys, return_inverse=True)
        last = (self.group_lengths[unique] - 1).clamp(min=0)  # an empty history reads its padding position
        out = torch.empty(unique.shape[0], self.config.embedding_dim, device=keys.device)
        for part in torch.arange(unique.shape[0], device=keys.device).split(self.eval_chunk):
            groups = unique[part]
            width = int(last[part].max()) + 1
            hidden = self.encode(self.group_items[groups, :width], self.group_market[groups])
            out[part] = hidden[torch.arange(part.shape[0], device=keys.device), last[part]].float()
        return out[inverse]

    def forward(self, keys: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of `items` ((n,) or (n, c)) as the next item of each key (see :meth:`states`)."""
        state = self.states(keys)
        target = self.item_embedding(items)
        if items.dim() == 1:
            return (state * target).sum(-1)
        return torch.einsum("nd,ncd->nc", state.to(target.dtype), target)

    def training_windows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per window (on the CPU): its first target row (key), its number of target rows (the
        keys after it) and its length, for batches of whole windows."""
        window = self.row_window.cpu()
        rows = torch.bincount(window[window >= 0], minlength=self.window_lengths.shape[0])
        return self.window_first.cpu(), rows, self.window_lengths.cpu()


def training_windows(group: np.ndarray, item: np.ndarray, width: int, pad: int) -> dict[str, np.ndarray]:
    """The windows of training rows given in sequence order, group by group (`group`, `item`: one
    entry per row): ``row_window`` (-1 for a group's first row), ``row_offset`` (the input
    position whose state predicts the row), ``window_items`` (W, width) padded with `pad`,
    ``window_lengths``, ``window_first`` (its first target row) and ``window_group``. Windows are
    aligned at each group's end (module docstring)."""
    n = group.shape[0]
    key = np.arange(n, dtype=np.int64)
    first = np.r_[True, group[1:] != group[:-1]] if n else np.zeros(0, dtype=bool)
    start = np.maximum.accumulate(np.where(first, key, 0)) if n else key
    size = np.diff(np.r_[np.flatnonzero(first), n])[np.cumsum(first) - 1] if n else key
    t = key - start  # position of the row in its group's sequence
    target = t >= 1
    j = (size - 1 - t) // width  # windows counted from the group's end
    a = np.maximum(0, size - 1 - width * (j + 1))  # the window's first input position
    new = target & (first | np.r_[True, j[1:] != j[:-1]] | ~np.r_[False, target[:-1]])
    window = np.where(target, np.cumsum(new) - 1, -1)
    heads = np.flatnonzero(new)
    lengths = (size - 1 - j * width)[heads] - a[heads]
    begin = (start + a)[heads]
    positions = begin[:, None] + np.arange(width)[None, :]
    real = np.arange(width)[None, :] < lengths[:, None]
    items = np.where(real, item[np.minimum(positions, max(n - 1, 0))], pad) if n else np.zeros((0, width), np.int64)
    return {"row_window": window, "row_offset": np.where(target, t - 1 - a, 0), "window_items": items,
            "window_lengths": lengths, "window_first": heads, "window_group": group[heads]}


def loss(module: Any, batch: Any) -> torch.Tensor:
    """The configured loss of a :class:`xmfast.training.Batch`: each row's positive against its
    sampled negatives, target-market rows weighted by `target_weight`."""
    config: SASRecConfig = getattr(module, "module", module).config  # under DistributedDataParallel: .module
    logits = module(batch.keys, torch.cat([batch.positives[:, None], batch.negatives], dim=1)).float()
    if config.loss == "softmax":
        per_row = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device),
                                  reduction="none")
    else:
        per_row = -F.logsigmoid(logits[:, 0]) - F.logsigmoid(-logits[:, 1:]).sum(1)
    if config.target_weight == 1.0:
        return per_row.mean()
    weight = torch.where(batch.markets == 0, config.target_weight, 1.0).to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum()
