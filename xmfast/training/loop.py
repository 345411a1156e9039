"""The training loop: per-epoch negatives, validation, early stopping, checkpoints and exact
resumption. Every trained model of the registry goes through it (or a subclass a model names,
MAML's); what it optimises is the model's declared objective (see :mod:`xmfast.training.objectives`).

How an epoch is built. The training rows (target market, plus source rows for the ``++``
variants) and their groups live as arrays. Each epoch the Rust sampler draws `k` negatives per
row keyed by (seed, epoch) into a buffer kept across epochs; the rows and negatives are
``rows × (1 + k)`` labelled instances, and a permutation drawn from a generator seeded by (seed,
epoch) orders them into batches. One Rust call writes the instances in that order (keys, items,
labels; buffers reused across epochs), they reach the device in one copy, and each batch is a
contiguous slice of them: no per-sample Dataset or DataLoader, no per-batch gather, and the loss
is read back from the device once every 64 batches. Because every random choice of an epoch is
a function of (seed, epoch), resuming from the checkpoint of epoch `e` replays epochs `e+1…`
exactly as an uninterrupted run would.

Sampling of the ``++`` variants (FOREC's options):

* ``concat``: all instances of all markets in one shuffled stream;
* ``equal``: batches alternate between markets (target, source 1, source 2, …); an epoch is one
  pass over the target's instances, and each source contributes as many batches as the target,
  drawn from its own reshuffled instances (cycling when it has fewer).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xmfast import core
from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError, argument
from xmfast.evaluation import Evaluation, standings
from xmfast.models import Model, Sizes
from xmfast.models.schedule import TrainConfig
from xmfast.runs import Run
from xmfast.training import distributed
from xmfast.training.checkpoints import (
    CHECKPOINT_VERSION,
    EarlyStopping,
    _first_line,
    initialise,
    load_weights,
    pretrained_record,
    read_checkpoint,
)
from xmfast.training.objectives import Batch, row_loss
from xmfast.runs import evaluate_run_splits, write_results
from xmfast.training.rows import resolve_sources, training_rows, training_view


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise XmfastError(f"{argument('device', name)}: CUDA is not available on this machine (use cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise XmfastError(f"{argument('device', name)}: {e}") from None




class ModelScorer:
    """Scores (group, item) pairs with a torch model, in batches, without gradients; implements
    :class:`xmfast.evaluation.Scorer`."""

    meaning = "the model's logit for the user and the item (its raw output, before any sigmoid)"

    def __init__(self, model: nn.Module, device: torch.device, *, batch_pairs: int | None = None, amp: bool = False):
        self.model = model
        self.device = device
        # A model may say how many pairs it scores at once (ACMR: each pair is a sequence).
        self.batch_pairs = batch_pairs or getattr(model, "scoring_batch", 1 << 18)
        self.amp = amp and device.type == "cuda"

    @torch.no_grad()
    def _pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        out = np.empty(users.size, dtype=np.float32)
        for start in range(0, users.size, self.batch_pairs):
            u = torch.from_numpy(users[start : start + self.batch_pairs]).to(self.device)
            i = torch.from_numpy(items[start : start + self.batch_pairs]).to(self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                logits = self.model(u, i)
            out[start : start + u.shape[0]] = logits.float().cpu().numpy()
        self.model.train(was_training)
        return out

    def score(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        users = np.repeat(np.asarray(groups, dtype=np.int64), items.shape[1])
        return self._pairs(users, items.ravel()).reshape(items.shape)

    def score_all(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        groups = np.asarray(groups, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        users = np.repeat(groups, items.size)
        return self._pairs(users, np.tile(items, groups.size)).reshape(groups.size, items.size)


def _adam(model: nn.Module, lr: float, l2: float, device: torch.device, capturable: bool) -> torch.optim.Adam:
    """FOREC's optimiser (Adam, L2 as weight decay), with the fused kernel that updates all
    parameters in one pass: on the CPU about 1.5× faster per training step than the default, on
    CUDA a few kernels instead of dozens per step (a CUDA graph needs it capturable)."""
    params = [p for p in model.parameters() if p.requires_grad]  # frozen weights stay untouched
    if device.type in ("cpu", "cuda"):
        try:
            extra = {"capturable": True} if capturable else {}
            return torch.optim.Adam(params, lr=lr, weight_decay=l2, fused=True, **extra)
        except (RuntimeError, TypeError, ValueError):  # a torch without the fused kernel here
            pass
    return torch.optim.Adam(params, lr=lr, weight_decay=l2, capturable=capturable)


class _GraphStep:
    """The training step of full batches as one CUDA graph (see PyTorch's "whole network
    capture"). The first `WARMUP` full batches run eagerly on a side stream (they create Adam's
    state and let lazy initialisation happen outside the capture); the next one is captured and
    every later one is a copy of its indices into static buffers plus one replay. Every batch is
    still one real optimiser step, in order, so training is the same as without the graph."""

    WARMUP = 3

    def __init__(self, trainer: Trainer, size: int) -> None:
        dev = trainer.device
        self.trainer = trainer
        self.u = torch.zeros(size, dtype=torch.long, device=dev)
        self.i = torch.zeros(size, dtype=torch.long, device=dev)
        self.y = torch.zeros(size, dtype=torch.float32, device=dev)
        self.warm = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None

    def step(self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.u.copy_(users)
        self.i.copy_(items)
        self.y.copy_(labels)
        if self.graph is None and self.warm < self.WARMUP:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self.trainer._step(self.u, self.i, self.y)
            torch.cuda.current_stream().wait_stream(side)
            self.warm += 1
            return loss
        if self.graph is None:
            t = self.trainer
            t.optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.amp, cache_enabled=False):
                    logits = t.model(self.u, self.i)
                loss = t.loss_fn(logits.float(), self.y)
                loss.backward()
                t.optimizer.step()
            self.loss = loss.detach()
        self.graph.replay()
        assert self.loss is not None
        return self.loss.clone()


# ---- observer ------------------------------------------------------------------------------------
class TrainObserver:
    """Hooks for progress display; the engine calls them, the CLI draws bars. All no-ops here."""

    def on_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, epoch: int, batches: int) -> None: ...
    def on_batch(self, mean_loss: float | None, instances: int) -> None: ...
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...
    def on_message(self, text: str) -> None: ...
    def on_finish(self, result: TrainResult) -> None:
        """The run finished and was evaluated (not called for one stopped or interrupted).
        Optional: the trainer calls it only on observers that have it."""


@dataclass
class TrainResult:
    run: Run
    epochs_run: int
    selected_epoch: int
    valid: Evaluation
    test: Evaluation
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)



class _LossSum:
    """An epoch's summed loss, ∑ loss × instances in float64 in batch order, read back from the
    device every `EVERY` batches (one transfer for the lot instead of a tensor update per batch);
    the same sum, to the last bit, as adding each batch's loss on the device."""

    EVERY = 64

    def __init__(self) -> None:
        self.total, self.seen, self.batches = 0.0, 0, 0
        self._pending: list[tuple[torch.Tensor, int]] = []

    def add(self, loss: torch.Tensor, n: int) -> float | None:
        """Counts a batch's (detached) mean loss over `n` instances; every `EVERY` batches returns
        the running mean, otherwise None."""
        self._pending.append((loss, n))
        self.seen += n
        self.batches += 1
        if self.batches % self.EVERY:
            return None
        self._flush()
        return self.total / self.seen

    def _flush(self) -> None:
        if self._pending:
            values = torch.stack([loss for loss, _ in self._pending]).tolist()
            for value, (_, n) in zip(values, self._pending):
                self.total += value * n
            self._pending.clear()

    def mean(self) -> float:
        self._flush()
        return self.total / max(self.seen, 1)


def _epoch_seed(seed: int, epoch: int) -> int:
    return core.stable_hash(f"xmfast-epoch:{seed}:{epoch}") & 0x7FFF_FFFF_FFFF_FFFF


class Trainer:
    """Trains one model of the registry (`spec`, as :func:`xmfast.models.get_model` gives it) into
    a run directory."""

    def __init__(
        self,
        dataset: PreparedDataset,
        run: Run,
        spec: Model,
        model_config: Any,
        config: TrainConfig,
        *,
        pretrained: dict[str, Run] | None = None,
        observer: TrainObserver | None = None,
        stop_after: int | None = None,
        validation_only: bool = False,
    ) -> None:
        self.dataset = dataset
        self.run = run
        self.spec = spec
        self.model_config = model_config
        self.config = config
        # Under torchrun (see xmfast.training.distributed) rank 0 alone reports progress and writes the run.
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.observer = (observer if self.main else None) or TrainObserver()
        # For tests and time-boxed jobs: return (as if interrupted) after this many epochs.
        self.stop_after = stop_after
        # A hyper-parameter search's trial (xmfast.tune): the epochs and their validation only;
        # the test split is never scored, so no test.json or results.json is written.
        self.validation_only = validation_only
        self.device = distributed.local_device(resolve_device(config.device))
        self.amp = config.amp and self.device.type == "cuda"
        self.sources = resolve_sources(dataset, config.sources)
        self.train_data = training_view(dataset, config, self.sources)
        self.rows = training_rows(self.train_data, self.sources, config.augmentation)
        if self.rows.count(dataset.target) == 0:
            raise XmfastError(f"target market {dataset.target}: no training rows")
        torch.manual_seed(config.seed)
        self.sizes = Sizes(dataset.n_groups, dataset.n_items, len(dataset.markets))
        self.model: nn.Module = spec.build(self.sizes, model_config).to(self.device)
        self.sequence = spec.batch == "histories"  # keys are training rows (see xmfast.models.acmr)
        spec.attach(self.model, self.train_data, self.rows.rows)
        # What the run starts from, as recorded when it was created (runs of older versions: as now).
        self.pretrained: dict[str, dict[str, Any]] = run.info.get("pretrained_runs") or {
            name: pretrained_record(r, checkpoint=config.start_checkpoint) for name, r in (pretrained or {}).items()}
        if pretrained:
            initialise(spec, self.model, pretrained, model_config, self.sizes, self.device,
                       checkpoint=config.start_checkpoint)
        # bce trains on shuffled (key, item) instances; the other objectives on whole rows
        self.pointwise = spec.objective == "bce"
        self.use_graphs = config.cuda_graphs and self.device.type == "cuda" and self.world == 1 and self.pointwise
        self._parallel: nn.Module | None = None  # the model in DistributedDataParallel (world > 1)
        self.optimizer = _adam(self.model, config.learning_rate(spec), config.l2, self.device, self.use_graphs)
        self._graph: _GraphStep | None = None
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.sampler = self.train_data.train_negative_sampler(k=config.negatives, seed=config.seed)
        self._negatives = np.empty((self.sampler.rows, config.negatives), dtype=np.uint32)
        # The key of an instance: its group, or for a sequence model its training row.
        keys = np.arange(len(self.rows), dtype=np.int64) if self.sequence else self.rows.group
        self._keys = keys  # host copies for core.gather_instances (see _epoch_instances)
        self._group = torch.from_numpy(keys).to(self.device)
        self._item = torch.from_numpy(self.rows.item).to(self.device)
        self._market = torch.from_numpy(self.rows.market).to(self.device)
        self._rows = self.rows.rows
        self._instance_market: torch.Tensor | None = None  # each instance's market, made on first use
        self._buffers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # the epoch's instances, reused
        self._target_code = dataset.market_index(dataset.target)
        self.valid_groups = np.flatnonzero(np.asarray(dataset.group_market)[np.asarray(dataset.valid.group)] == self._target_code)
        self.stopping = EarlyStopping()
        self.epoch = 0  # epochs finished

    # ---- one epoch -----------------------------------------------------------------------------
    def _sample_negatives(self, epoch: int) -> None:
        """This epoch's negatives into `_negatives`: drawn for (seed, epoch), or with
        ``resample_negatives`` off the first epoch's draw every time."""
        self.sampler.sample_into(self._negatives, epoch if self.config.resample_negatives else 1)

    def _instances(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Users, items, labels and market of this epoch's instances: each row, then its negatives."""
        self._sample_negatives(epoch)
        k = self.config.negatives
        negatives = torch.from_numpy(self._negatives[self._rows].astype(np.int64)).to(self.device)
        users = torch.cat([self._group, self._group.repeat_interleave(k)])
        items = torch.cat([self._item, negatives.reshape(-1)])
        labels = torch.cat([
            torch.ones(self._group.shape[0], device=self.device),
            torch.zeros(self._group.shape[0] * k, device=self.device),
        ])
        market = torch.cat([self._market, self._market.repeat_interleave(k)])
        return users, items, labels, market

    def _batches(self, epoch: int, market: torch.Tensor) -> list[torch.Tensor]:
        """Index batches of this epoch, on the device (moved in one copy, then split)."""
        order = self._batch_order(epoch, market)
        if not order:
            return []
        return list(torch.cat(order).to(self.device).split([b.shape[0] for b in order]))

    def _epoch_instances(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """This epoch's keys, items and labels in batch order on the device, and the batch sizes:
        batch `b` is the slice of the next ``sizes[b]`` instances. The same instances, in the same
        order, as :meth:`_instances` indexed by each of :meth:`_batches`, built without them."""
        self._sample_negatives(epoch)
        if self._instance_market is None:
            k = self.config.negatives
            self._instance_market = torch.from_numpy(np.concatenate([self.rows.market, np.repeat(self.rows.market, k)]))
        batches = self._batch_order(epoch, self._instance_market)
        order = torch.cat(batches) if batches else torch.zeros(0, dtype=torch.long)
        if self._buffers is None or self._buffers[0].shape[0] != order.shape[0]:
            m = order.shape[0]
            self._buffers = (np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64), np.empty(m, dtype=np.float32))
        keys, items, labels = self._buffers
        core.gather_instances(order.numpy(), self._keys, self.rows.item, self._negatives, self._rows, keys, items, labels)
        moved = [torch.from_numpy(a).to(self.device) for a in self._buffers]
        return moved[0], moved[1], moved[2], [b.shape[0] for b in batches]

    def _batch_order(self, epoch: int, market: torch.Tensor) -> list[torch.Tensor]:
        """Index batches of this epoch, built on the CPU (see the module docstring for the two
        sampling modes); a subclass may reorder them before they move to the device."""
        gen = torch.Generator().manual_seed(_epoch_seed(self.config.seed, epoch))
        size = self.config.batch_size
        n = market.shape[0]
        if self.config.sampling == "concat" or len(self.rows.markets) == 1:
            return list(torch.randperm(n, generator=gen).split(size))
        per_market = self._shuffled_by_market(market, gen)
        steps = self._epoch_steps(per_market, size)
        streams = []
        for idx in per_market:
            if idx.numel() == 0:
                continue
            own = list(idx.split(size))
            streams.append([own[b % len(own)] for b in range(steps)])
        return [stream[b] for b in range(steps) for stream in streams]

    def _epoch_steps(self, per_market: list[torch.Tensor], size: int) -> int:
        """Batches per market in an epoch of alternating markets: those of the target's instances
        or, with ``epoch_length`` largest, of the largest market's (smaller ones cycle)."""
        counts = [idx.shape[0] for idx in per_market]
        n = max(counts) if self.config.epoch_length == "largest" else counts[0]
        return max(1, -(-n // size))

    def _shuffled_by_market(self, market: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """Each market's instance indices (CPU), in an order drawn from `gen`; target first."""
        market_cpu = market.cpu()
        out = []
        for m in range(len(self.rows.markets)):
            idx = torch.nonzero(market_cpu == m).squeeze(1)
            out.append(idx[torch.randperm(idx.shape[0], generator=gen)] if idx.numel() else idx)
        return out

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bfloat16 autocast with ``--amp`` on CUDA; otherwise nothing (entering a disabled
        ``torch.autocast`` costs about as much as a GMF batch's gathers, every step)."""
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def _step(self, u: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One eager training step; returns the (detached) mean loss of the batch."""
        with self._autocast():
            logits = self.model(u, i)
        loss = self.loss_fn(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _row_batches(self, epoch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """This epoch's negatives per training row (rows × k, on the device) and its batches of
        row indices, shuffled and (with ``equal`` sampling) alternated by market like instances."""
        self._sample_negatives(epoch)
        negatives = torch.from_numpy(self._negatives[self._rows].astype(np.int64)).to(self.device)
        return negatives, self._batches(epoch, self._market)

    def _row_batch(self, negatives: torch.Tensor, index: torch.Tensor) -> Batch:
        return Batch(self._group[index], self._item[index], negatives[index], self._market[index])

    def _row_step(self, batch: Batch) -> torch.Tensor:
        with self._autocast():
            loss = row_loss(self.spec, self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _train_epoch_rows(self, epoch: int) -> tuple[float, int, float]:
        """One epoch of a row objective (bpr, softmax, own): `batch_size` rows per batch, each
        with its `negatives` items; the loss is averaged over rows."""
        start = time.perf_counter()
        if self.world > 1:
            self._seed_rank(epoch)
        negatives, batches = self._row_batches(epoch)
        self.observer.on_epoch_start(epoch, len(batches))
        self.model.train()
        module = self.model
        if self.world > 1:
            if self._parallel is None:
                self._parallel = distributed.wrap(self.model, self.device)
            module = self._parallel
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        rows = 0
        per_row = 1 + self.config.negatives
        for number, index in enumerate(batches, 1):
            n = int(index.shape[0])
            own, weight = index, 1.0
            if self.world > 1:  # this rank's share of the batch; DDP averages the ranks' gradients
                own = index[self.rank :: self.world]
                weight = own.shape[0] / n * self.world
                if own.numel() == 0:
                    own, weight = index[:1], 0.0
            batch = self._row_batch(negatives, own)
            with self._autocast():
                loss = row_loss(self.spec, module, batch)
            self.optimizer.zero_grad(set_to_none=True)
            (loss * weight if weight != 1.0 else loss).backward()
            self.optimizer.step()
            if weight:
                total += loss.detach().double() * own.shape[0]
                rows += int(own.shape[0])
            self.observer.on_batch(float(total) / rows if number % 64 == 0 and rows else None, n * per_row)
        mean, rows, seconds = self._over_ranks(total, rows, start)
        return mean, rows * per_row, seconds

    def train_epoch(self, epoch: int) -> tuple[float, int, float]:
        """One epoch; returns (mean loss, instances, seconds)."""
        if not self.pointwise:
            return self._train_epoch_rows(epoch)
        if self.world > 1:
            return self._train_epoch_sharded(epoch)
        start = time.perf_counter()
        users, items, labels, sizes = self._epoch_instances(epoch)
        self.observer.on_epoch_start(epoch, len(sizes))
        self.model.train()
        losses = _LossSum()
        size = self.config.batch_size
        for u, i, y in zip(users.split(sizes), items.split(sizes), labels.split(sizes)):
            n = int(u.shape[0])
            if self.use_graphs and n == size:
                if self._graph is None:
                    self._graph = _GraphStep(self, size)
                loss = self._graph.step(u, i, y)
            else:
                loss = self._step(u, i, y)
            # Reading the loss synchronises the device, so the display gets it every 64 batches.
            self.observer.on_batch(losses.add(loss, n), n)
        mean_loss = losses.mean()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return mean_loss, losses.seen, time.perf_counter() - start

    def _seed_rank(self, epoch: int) -> None:
        """Under torchrun: the global RNG (dropout) seeded by (seed, epoch, rank), so the ranks
        draw different masks for their shards and a resumed run draws what it would have drawn."""
        torch.manual_seed(_epoch_seed(self.config.seed, epoch) + self.rank)

    def _train_epoch_sharded(self, epoch: int) -> tuple[float, int, float]:
        """One epoch as rank `rank` of `world` (see :mod:`xmfast.training.distributed`): the global batches
        of the epoch, of which this rank trains the instances ``rank::world`` through
        DistributedDataParallel. The loss of a shard is its summed loss times ``world / batch``,
        so DDP's mean of the ranks' gradients is the gradient of the whole batch's mean loss.
        Returns the mean loss and instances over all ranks."""
        start = time.perf_counter()
        self._seed_rank(epoch)
        users, items, labels, market = self._instances(epoch)
        batches = self._batches(epoch, market)
        self.observer.on_epoch_start(epoch, len(batches))
        self.model.train()
        if self._parallel is None:
            self._parallel = distributed.wrap(self.model, self.device)
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        seen = 0
        for batch, index in enumerate(batches, 1):
            n = int(index.shape[0])
            own = index[self.rank :: self.world]
            weight = self.world / n
            if own.numel() == 0:  # a last batch smaller than the world: take part with zero weight
                own, weight = index[:1], 0.0
            with self._autocast():
                logits = self._parallel(users[own], items[own])
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels[own], reduction="sum")
            self.optimizer.zero_grad(set_to_none=True)
            (loss * weight).backward()
            self.optimizer.step()
            if weight:
                total += loss.detach().double()
                seen += int(own.shape[0])
            self.observer.on_batch(float(total) / seen if batch % 64 == 0 and seen else None, n)
        return self._over_ranks(total, seen, start)

    def _over_ranks(self, total: torch.Tensor, seen: int, start: float) -> tuple[float, int, float]:
        """An epoch's mean loss and instances summed over every rank (this rank's summed loss
        `total` over `seen` instances), and its seconds since `start`."""
        sums = distributed.all_reduce_sum(torch.stack([total, torch.tensor(float(seen), dtype=torch.float64,
                                                                            device=self.device)]))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        instances = int(sums[1].item())
        return float(sums[0].item()) / max(instances, 1), instances, time.perf_counter() - start

    def validate(self) -> dict[str, float]:
        """HR@10, NDCG@10 and the monitored metric on the target's validation candidates."""
        held = self.dataset.valid
        q = self.valid_groups
        scorer = ModelScorer(self.model, self.device, amp=self.amp)
        candidates = np.asarray(held.candidates)
        parts = [
            scorer.score(np.asarray(held.group)[q[s : s + self.config.eval_batch]], candidates[q[s : s + self.config.eval_batch]])
            for s in range(0, q.size, self.config.eval_batch)
        ]
        scores = np.concatenate(parts) if parts else np.zeros((0, candidates.shape[1]), dtype=np.float32)
        names = sorted({"hr@10", "ndcg@10", self.config.monitor})
        values = standings(scores).values(names, "pessimistic")
        return {name: float(values[:, j].mean()) if values.shape[0] else float("nan") for j, name in enumerate(names)}

    # ---- checkpoints -------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        """What a checkpoint is for: checked when it is loaded (see :func:`read_checkpoint`)."""
        return {"version": CHECKPOINT_VERSION, "dataset": self.dataset.fingerprint, "model_name": self.spec.name}

    def _state(self) -> dict[str, Any]:
        return {
            **self._identity(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "stopping": asdict(self.stopping),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def _save(self, path: Path, state: dict[str, Any]) -> None:
        tmp = path.with_name(f".{path.name}.partial")
        torch.save(state, tmp)
        tmp.replace(path)

    def restore(self) -> None:
        """Loads the run's last checkpoint (model, optimizer, RNG and early-stopping state)."""
        path = self.run.last_checkpoint
        if not path.is_file():
            raise XmfastError(f"{self.run.path}: no checkpoint to resume from (no epoch finished yet); start it again")
        # Loaded on the CPU: the RNG states must stay CPU byte tensors; model and optimizer
        # tensors are copied onto the model's device by load_state_dict.
        state = read_checkpoint(path, self.run, resumable=True)  # every rank loads it; rank 0 alone writes
        load_weights(self.model, state["model"], path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            raise XmfastError(f"{path}: its optimizer or random generator state does not fit the run's model "
                              f"({_first_line(e)}); the checkpoint belongs to another run: train the run again") from None
        self.stopping = EarlyStopping(**state["stopping"])
        self.epoch = state["epoch"]
        if self.main:
            self.run.write_metrics([r for r in self.run.read_metrics() if r["epoch"] <= self.epoch])

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult | None:
        """Trains until the epoch budget or early stopping; evaluates the selected checkpoint.
        Returns None when stopped by `stop_after` (the run stays resumable) or, with
        `validation_only`, after the last epoch (status "validated", metrics.jsonl only). Under torchrun every
        rank runs the loop; rank 0 validates (every rank gets its metrics, so all stop at the same
        epoch) and writes checkpoints, metrics and results."""
        self.observer.on_start(self)
        if self.main:
            self.run.save_info(status="running")
        stopped_early = False
        ran_now = 0
        while self.epoch < self.config.epochs:
            if self.config.patience is not None and self.stopping.stale >= self.config.patience:
                stopped_early = True
                break
            if self.stop_after is not None and ran_now >= self.stop_after:
                if self.main:
                    self.run.save_info(status="interrupted")
                return None
            epoch = self.epoch + 1
            try:
                loss, instances, seconds = self.train_epoch(epoch)
            except KeyboardInterrupt:
                if self.main:
                    self.run.save_info(status="interrupted")
                raise
            valid = self.validate() if self.world == 1 else distributed.on_main(self.validate)
            improved = self.stopping.update(epoch, valid[self.config.monitor], reset=self.config.patience_reset)
            self.epoch = epoch
            ran_now += 1
            record = {
                "epoch": epoch, "loss": loss, "instances": instances, "seconds": seconds,
                "instances_per_s": instances / seconds if seconds > 0 else None,
                "valid": valid, "best": improved,
            }
            if self.main:
                if improved:
                    self._save(self.run.best_checkpoint, {**self._identity(), "epoch": epoch,
                                                          "model": self.model.state_dict()})
                # The log line before the checkpoint: a kill between them leaves a line that
                # --resume drops (it keeps epochs up to the checkpoint's), never a missing one.
                self.run.append_metrics(record)
                self._save(self.run.last_checkpoint, self._state())
            self.observer.on_epoch_end(record)
        if self.validation_only:
            if self.main:
                self.run.save_info(status="validated")
            return None
        if self.world > 1:  # rank 0 evaluates and writes; every rank returns its results
            result = distributed.on_main(lambda: self.finish(stopped_early))
        else:
            result = self.finish(stopped_early)
        finished = getattr(self.observer, "on_finish", None)  # observers are duck-typed (the CLI's bars)
        if finished is not None:
            finished(result)
        return result

    def finish(self, stopped_early: bool = False) -> TrainResult:
        """Evaluates the selected checkpoint on validation and test (target market) and writes
        valid.json, test.json and results.json."""
        selected = self.stopping.best_epoch if self.config.select == "best" else self.epoch
        path = self.run.best_checkpoint if self.config.select == "best" else self.run.last_checkpoint
        load_weights(self.model, read_checkpoint(path, self.run)["model"], path)
        scorer = ModelScorer(self.model, self.device, amp=self.amp)
        valid, test = evaluate_run_splits(self.dataset, scorer, self.run, test_scorer=self._test_scorer(scorer))
        history = self.run.read_metrics()
        write_results(self.run, selected, valid, test, extra={"epochs_run": self.epoch, "stopped_early": stopped_early})
        return TrainResult(self.run, self.epoch, selected, valid, test, stopped_early, history)

    def _test_scorer(self, scorer: ModelScorer) -> ModelScorer:
        """The scorer of the test split (the selected model itself, unless a subclass adapts it)."""
        return scorer


