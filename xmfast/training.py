"""The training engine: pointwise training with per-epoch negatives, validation, early stopping,
checkpoints and exact resumption. Every neural model of xmfast trains through it.

How an epoch is built. The training rows (target market, plus source rows for the ``++``
variants) and their groups live as tensors on the device. Each epoch the Rust sampler draws `k`
negatives per row keyed by (seed, epoch), the rows and negatives become ``rows × (1 + k)``
labelled instances, and a permutation drawn from a generator seeded by (seed, epoch) orders them
into batches that are plain index slices: no per-sample Dataset or DataLoader. Because every
random choice of an epoch is a function of (seed, epoch), resuming from the checkpoint of epoch
`e` replays epochs `e+1…` exactly as an uninterrupted run would.

Sampling of the ``++`` variants (FOREC's options):

* ``concat``: all instances of all markets in one shuffled stream;
* ``equal``: batches alternate between markets (target, source 1, source 2, …); an epoch is one
  pass over the target's instances, and each source contributes as many batches as the target,
  drawn from its own reshuffled instances (cycling when it has fewer).
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from xmfast import core, distributed
from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError, check_int
from xmfast.evaluation import EvalConfig, Evaluation, evaluate_scorer, standings
from xmfast.models import ModelSpec, get_model
from xmfast.runs import Run, for_market, to_plain

Augmentation = Literal["full", "selected"]
Sampling = Literal["concat", "equal"]
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (FOREC's defaults). `lr` None means the model's own default
    (0.005 for GMF, 0.01 for MLP and NMF)."""

    epochs: int = 25
    batch_size: int = 1024
    lr: float | None = None
    l2: float = 1e-7
    negatives: int = 4
    seed: int = 42
    patience: int | None = None  # None: train all epochs (FOREC); n: stop after n epochs without improvement
    monitor: str = "ndcg@10"  # validation metric for early stopping and the best checkpoint
    select: Literal["best", "last"] = "best"  # which checkpoint the final results use
    sources: tuple[str, ...] = ()  # source markets whose rows augment the target (the ++ variants)
    augmentation: Augmentation = "full"
    sampling: Sampling = "concat"
    # The sources' validation and test items become training rows too (ACMR's pre-training uses
    # the source markets in full); the run can then only be evaluated on its target market.
    sources_in_full: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bfloat16 autocast on CUDA (ignored on CPU). Off by default: FOREC's models have 8-wide
    # embeddings, so a step is bound by kernel launches, not arithmetic, and bf16 buys nothing.
    amp: bool = False
    # On CUDA, full batches replay one captured CUDA graph of the whole training step (forward,
    # loss, backward, Adam): a step of these small models is otherwise ~100 tiny kernel launches.
    cuda_graphs: bool = True
    eval_batch: int = 4096  # validation queries scored at once

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        # bounds a user can mistype past: the Rust sampler takes u32 counts and a u64 seed, and
        # `negatives` rows × k negatives are held in memory every epoch
        for name, high in (("epochs", 1_000_000), ("batch_size", 2**31 - 1), ("negatives", 1000),
                           ("eval_batch", 2**24)):
            check_int(name, getattr(self, name), 1, high)
        check_int("seed", self.seed, 0, 2**63 - 1)
        if self.patience is not None and self.patience < 1:
            raise XmfastError(f"patience must be at least 1 (or none), got {self.patience}")
        if self.augmentation not in ("full", "selected"):
            raise XmfastError(f"augmentation must be full or selected, got {self.augmentation!r}")
        if self.sampling not in ("concat", "equal"):
            raise XmfastError(f"sampling must be concat or equal, got {self.sampling!r}")
        if self.select not in ("best", "last"):
            raise XmfastError(f"select must be best or last, got {self.select!r}")
        if self.lr is not None and not self.lr > 0:
            raise XmfastError(f"lr must be positive, got {self.lr}")
        if self.l2 < 0:
            raise XmfastError(f"l2 must be non-negative, got {self.l2}")
        EvalConfig(cutoffs=(_cutoff_of(self.monitor),), measures=(self.monitor.split("@")[0],))

    def learning_rate(self, spec: ModelSpec) -> float:
        return self.lr if self.lr is not None else spec.default_lr


def _cutoff_of(metric: str) -> int:
    name, _, k = metric.partition("@")
    if name in ("mrr", "auc") and not k:
        return 10
    try:
        return int(k)
    except ValueError:
        raise XmfastError(f"monitor must look like ndcg@10, hr@5 or mrr, got {metric!r}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise XmfastError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise XmfastError(f"--device {name}: {e}") from None


def resolve_sources(dataset: PreparedDataset, sources: tuple[str, ...]) -> tuple[str, ...]:
    """``("all",)`` means every market of the dataset but the target."""
    if list(sources) == ["all"]:
        return tuple(m for m in dataset.markets if m != dataset.target)
    for m in sources:
        if m not in dataset.markets:
            raise XmfastError(f"source market {m!r} is not in the dataset (it has {', '.join(dataset.markets)})")
        if m == dataset.target:
            raise XmfastError(f"{m} is the target market; sources are the other markets")
    return tuple(dict.fromkeys(sources))


# ---- the training rows -------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingRows:
    """The rows one model trains on: indices into the dataset's training arrays, per market."""

    rows: np.ndarray  # int64, into train_item
    group: np.ndarray  # int64, group of each row
    item: np.ndarray  # int64
    market: np.ndarray  # int64, position in `markets` (0 = target)
    markets: tuple[str, ...]  # target first, then the sources used

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def count(self, market: str) -> int:
        return int(np.sum(self.market == self.markets.index(market)))


def training_view(dataset: PreparedDataset, config: TrainConfig, sources: tuple[str, ...]) -> PreparedDataset:
    """The dataset a run trains on: itself, or with ``sources_in_full`` the sources' held-out
    items moved into their training histories (the target's split is untouched)."""
    if config.sources_in_full and sources:
        return dataset.with_heldout_as_training(sources)
    return dataset


def training_rows(dataset: PreparedDataset, sources: tuple[str, ...], augmentation: Augmentation) -> TrainingRows:
    """The target's training rows plus those of `sources` (all of them, or with ``selected``
    only the rows whose item the target market has)."""
    markets = (dataset.target, *sources)
    codes = np.array([dataset.market_index(m) for m in markets], dtype=np.int64)
    train_group = dataset.train_group().astype(np.int64)
    row_market_code = np.asarray(dataset.group_market, dtype=np.int64)[train_group]
    position = np.full(len(dataset.markets), -1, dtype=np.int64)
    position[codes] = np.arange(codes.size)
    row_market = position[row_market_code]
    keep = row_market >= 0
    item = np.asarray(dataset.train_item, dtype=np.int64)
    if augmentation == "selected" and sources:
        in_target = np.zeros(dataset.n_items, dtype=bool)
        in_target[np.asarray(dataset.catalog(dataset.target), dtype=np.int64)] = True
        keep &= (row_market == 0) | in_target[item]
    rows = np.flatnonzero(keep)
    return TrainingRows(rows, train_group[rows], item[rows], row_market[rows], markets)


# ---- scoring with a torch model ------------------------------------------------------------------
class ModelScorer:
    """Scores (group, item) pairs with a torch model, in batches, without gradients; implements
    :class:`xmfast.evaluation.Scorer`."""

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

    def step(self, users: torch.Tensor, items: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        torch.index_select(users, 0, index, out=self.u)
        torch.index_select(items, 0, index, out=self.i)
        torch.index_select(labels, 0, index, out=self.y)
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


@dataclass
class EarlyStopping:
    """Best value of the monitored metric so far and epochs since it last improved."""

    best_value: float = -math.inf
    best_epoch: int = 0
    stale: int = 0

    def update(self, epoch: int, value: float) -> bool:
        """Records an epoch's value; True when it is a new best."""
        if value > self.best_value:
            self.best_value, self.best_epoch, self.stale = value, epoch, 0
            return True
        self.stale += 1
        return False


@dataclass
class TrainResult:
    run: Run
    epochs_run: int
    selected_epoch: int
    valid: Evaluation
    test: Evaluation
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def read_checkpoint(path: Path, run: Run | None = None, *, resumable: bool = False) -> dict[str, Any]:
    """A checkpoint's contents, or one clear error naming `path`: a missing, truncated, zeroed or
    foreign file, or (when `run` is given) a checkpoint written for another dataset or model.

    A checkpoint is untrusted input: it is read with ``weights_only=True``, which rebuilds
    tensors and plain data only (xmfast writes nothing else), so a file whose unpickling would
    run code is refused, never executed. `resumable` also checks what :meth:`Trainer.restore`
    uses (optimizer, RNG and early-stopping state), so a damaged ``last.pt`` fails here, whole."""
    import pickle
    import warnings

    if not Path(path).is_file():
        raise XmfastError(f"{path}: missing; the run has no such checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: not the user's business
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's weights-only unpickler: a forbidden name, or bytes it cannot read
        code = re.search(r"GLOBAL ([\w.]+)", str(e))
        if code:
            raise XmfastError(f"{path}: refers to {code.group(1)}, not only tensors and plain data, so it was not "
                              "written by xmfast and loading it could run code; refused: delete it and train the "
                              "run again") from None
        raise _damaged(path, e) from None
    except Exception as e:  # noqa: BLE001 - any failure to decode untrusted bytes is a damaged file
        raise _damaged(path, e) from None
    problem = _state_problem(state, resumable)
    if problem:
        raise XmfastError(f"{path}: not an xmfast checkpoint ({problem}); train the run again")
    if state.get("version") != CHECKPOINT_VERSION:
        raise XmfastError(f"{path}: checkpoint version {state.get('version')!r}, expected {CHECKPOINT_VERSION}")
    if run is not None:
        if "dataset" in state and state["dataset"] != run.dataset_fingerprint:
            raise XmfastError(f"{path}: written for dataset {str(state['dataset'])[:12]}, but the run's dataset is "
                              f"{run.dataset_fingerprint[:12]}; the checkpoint belongs to another run")
        if "model_name" in state and state["model_name"] != run.model:
            raise XmfastError(f"{path}: a {state['model_name']} checkpoint in a {run.model} run; it belongs to another run")
    return state


def _damaged(path: Path, e: Exception) -> XmfastError:
    """torch's own text is left out: it is long and advises loading with weights_only=False."""
    return XmfastError(f"{path}: not a readable checkpoint ({type(e).__name__}); the file is damaged (truncated, "
                       "zeroed or another format): train the run again")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "empty"


def _state_problem(state: Any, resumable: bool) -> str | None:
    """What is wrong with a loaded checkpoint's layout (see :meth:`Trainer._state`), or None."""
    if not isinstance(state, dict):
        return f"a {type(state).__name__}, not a dict"
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        return "no model weights"
    if not resumable:
        return None
    if not isinstance(state.get("epoch"), int) or isinstance(state["epoch"], bool) or state["epoch"] < 0:
        return "no epoch number"
    optimizer = state.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) \
            or not isinstance(optimizer.get("param_groups"), list):
        return "no optimizer state"
    stopping = state.get("stopping")
    if not isinstance(stopping, dict) or set(stopping) != {f.name for f in fields(EarlyStopping)} \
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in stopping.values()):
        return "no early-stopping state"
    rngs = [state.get("torch_rng"), *(state.get("cuda_rng") if isinstance(state.get("cuda_rng"), list) else [None])]
    if not all(isinstance(r, torch.Tensor) and r.dtype == torch.uint8 and r.dim() == 1 for r in rngs):
        return "no random generator state"
    return None


def load_weights(module: nn.Module, weights: dict[str, Any], path: Path, *, load: Any = None) -> None:
    """`module.load_state_dict(weights)` (or `load(weights)`, e.g. FOREC's fork), with a mismatch
    reported as one error naming `path`."""
    try:
        (load or module.load_state_dict)(weights)
    except RuntimeError as e:
        first = str(e).splitlines()[0].rstrip(":")
        raise XmfastError(f"{path}: its weights do not fit the run's model ({first}); the checkpoint belongs to "
                          "another model or settings") from None


def _epoch_seed(seed: int, epoch: int) -> int:
    return core.stable_hash(f"xmfast-epoch:{seed}:{epoch}") & 0x7FFF_FFFF_FFFF_FFFF


class Trainer:
    """Trains one neural model of the registry into a run directory."""

    def __init__(
        self,
        dataset: PreparedDataset,
        run: Run,
        spec: ModelSpec,
        model_config: Any,
        config: TrainConfig,
        *,
        pretrained: dict[str, Run] | None = None,
        observer: TrainObserver | None = None,
        stop_after: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.run = run
        self.spec = spec
        self.model_config = model_config
        self.config = config
        # Under torchrun (see xmfast.distributed) rank 0 alone reports progress and writes the run.
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.observer = (observer if self.main else None) or TrainObserver()
        # For tests and time-boxed jobs: return (as if interrupted) after this many epochs.
        self.stop_after = stop_after
        self.device = distributed.local_device(resolve_device(config.device))
        self.amp = config.amp and self.device.type == "cuda"
        self.sources = resolve_sources(dataset, config.sources)
        self.train_data = training_view(dataset, config, self.sources)
        self.rows = training_rows(self.train_data, self.sources, config.augmentation)
        if self.rows.count(dataset.target) == 0:
            raise XmfastError(f"target market {dataset.target}: no training rows")
        torch.manual_seed(config.seed)
        self.model: nn.Module = spec.build(dataset.n_groups, dataset.n_items, model_config,
                                           len(dataset.markets)).to(self.device)
        if spec.sequence:  # training-row and group history tables (see xmfast.models.acmr)
            self.model.attach(self.train_data, self.rows.rows)  # type: ignore[operator]
        # What the run starts from, as recorded when it was created (runs of older versions: as now).
        self.pretrained: dict[str, dict[str, Any]] = run.info.get("pretrained_runs") or {
            name: pretrained_record(r) for name, r in (pretrained or {}).items()}
        if pretrained:
            self._load_pretrained(pretrained)
        self.use_graphs = config.cuda_graphs and self.device.type == "cuda" and self.world == 1
        self._parallel: nn.Module | None = None  # the model in DistributedDataParallel (world > 1)
        self.optimizer = _adam(self.model, config.learning_rate(spec), config.l2, self.device, self.use_graphs)
        self._graph: _GraphStep | None = None
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.sampler = self.train_data.train_negative_sampler(k=config.negatives, seed=config.seed)
        self._negatives = np.empty((self.sampler.rows, config.negatives), dtype=np.uint32)
        # The key of an instance: its group, or for a sequence model its training row.
        keys = np.arange(len(self.rows), dtype=np.int64) if spec.sequence else self.rows.group
        self._group = torch.from_numpy(keys).to(self.device)
        self._item = torch.from_numpy(self.rows.item).to(self.device)
        self._market = torch.from_numpy(self.rows.market).to(self.device)
        self._rows = self.rows.rows
        self._target_code = dataset.market_index(dataset.target)
        self.valid_groups = np.flatnonzero(np.asarray(dataset.group_market)[np.asarray(dataset.valid.group)] == self._target_code)
        self.stopping = EarlyStopping()
        self.epoch = 0  # epochs finished

    # ---- setup -------------------------------------------------------------------------------
    def _load_pretrained(self, pretrained: dict[str, Run]) -> None:
        if "base" in pretrained:  # FOREC forks the network of a MAML or NMF++ run; ACMR fine-tunes its own
            path = pretrained["base"].best_checkpoint
            load_weights(self.model, read_checkpoint(path, pretrained["base"])["model"], path,
                         load=getattr(self.model, "fork", None))
            return
        if "nmf" in pretrained:  # MAML starts from the NMF++ weights as they are
            state = read_checkpoint(pretrained["nmf"].best_checkpoint, pretrained["nmf"])
            load_weights(self.model, state["model"], pretrained["nmf"].best_checkpoint)
            return
        branches = {}
        for name, run in pretrained.items():
            spec = get_model(name)
            cfg = spec.config_from(run.info["model_config"])
            module = spec.build(self.dataset.n_groups, self.dataset.n_items, cfg)
            state = read_checkpoint(run.best_checkpoint, run)
            load_weights(module, state["model"], run.best_checkpoint)
            branches[name] = module
        self.model.load_pretrained(branches["gmf"].to(self.device), branches["mlp"].to(self.device))  # type: ignore[operator]

    # ---- one epoch -----------------------------------------------------------------------------
    def _instances(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Users, items, labels and market of this epoch's instances: each row, then its negatives."""
        self.sampler.sample_into(self._negatives, epoch)
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

    def _batch_order(self, epoch: int, market: torch.Tensor) -> list[torch.Tensor]:
        """Index batches of this epoch, built on the CPU (see the module docstring for the two
        sampling modes); a subclass may reorder them before they move to the device."""
        gen = torch.Generator().manual_seed(_epoch_seed(self.config.seed, epoch))
        size = self.config.batch_size
        n = market.shape[0]
        if self.config.sampling == "concat" or len(self.rows.markets) == 1:
            return list(torch.randperm(n, generator=gen).split(size))
        per_market = self._shuffled_by_market(market, gen)
        target_batches = list(per_market[0].split(size))
        streams = [target_batches]
        for idx in per_market[1:]:
            if idx.numel() == 0:
                continue
            own = list(idx.split(size))
            streams.append([own[b % len(own)] for b in range(len(target_batches))])
        return [stream[b] for b in range(len(target_batches)) for stream in streams]

    def _shuffled_by_market(self, market: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
        """Each market's instance indices (CPU), in an order drawn from `gen`; target first."""
        market_cpu = market.cpu()
        out = []
        for m in range(len(self.rows.markets)):
            idx = torch.nonzero(market_cpu == m).squeeze(1)
            out.append(idx[torch.randperm(idx.shape[0], generator=gen)] if idx.numel() else idx)
        return out

    def _step(self, u: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One eager training step; returns the (detached) mean loss of the batch."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            logits = self.model(u, i)
        loss = self.loss_fn(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def train_epoch(self, epoch: int) -> tuple[float, int, float]:
        """One epoch; returns (mean loss, instances, seconds)."""
        if self.world > 1:
            return self._train_epoch_sharded(epoch)
        start = time.perf_counter()
        users, items, labels, market = self._instances(epoch)
        batches = self._batches(epoch, market)
        self.observer.on_epoch_start(epoch, len(batches))
        self.model.train()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        seen = batch = 0
        size = self.config.batch_size
        for index in batches:
            n = int(index.shape[0])
            if self.use_graphs and n == size:
                if self._graph is None:
                    self._graph = _GraphStep(self, size)
                loss = self._graph.step(users, items, labels, index)
            else:
                loss = self._step(users[index], items[index], labels[index])
            total += loss.double() * n
            seen += n
            batch += 1
            # Reading the loss synchronises the device, so the display gets it every 64 batches.
            self.observer.on_batch(float(total) / seen if batch % 64 == 0 else None, n)
        mean_loss = float(total) / max(seen, 1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return mean_loss, seen, time.perf_counter() - start

    def _seed_rank(self, epoch: int) -> None:
        """Under torchrun: the global RNG (dropout) seeded by (seed, epoch, rank), so the ranks
        draw different masks for their shards and a resumed run draws what it would have drawn."""
        torch.manual_seed(_epoch_seed(self.config.seed, epoch) + self.rank)

    def _train_epoch_sharded(self, epoch: int) -> tuple[float, int, float]:
        """One epoch as rank `rank` of `world` (see :mod:`xmfast.distributed`): the global batches
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
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
                logits = self._parallel(users[own], items[own])
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels[own], reduction="sum")
            self.optimizer.zero_grad(set_to_none=True)
            (loss * weight).backward()
            self.optimizer.step()
            if weight:
                total += loss.detach().double()
                seen += int(own.shape[0])
            self.observer.on_batch(float(total) / seen if batch % 64 == 0 and seen else None, n)
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
        Returns None when stopped by `stop_after` (the run stays resumable). Under torchrun every
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
            improved = self.stopping.update(epoch, valid[self.config.monitor])
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
        if self.world > 1:  # rank 0 evaluates and writes; every rank returns its results
            return distributed.on_main(lambda: self.finish(stopped_early))
        return self.finish(stopped_early)

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


class _MetaObjective(nn.Module):
    """MAML's meta-loss as a module (its forward takes a meta-batch's tensors), so that
    DistributedDataParallel can reduce its gradients under torchrun."""

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        from xmfast.maml import Tasks, meta_loss, weights_of

        return meta_loss(self.model, weights_of(self.model), Tasks(*tensors), self.config)


class MAMLTrainer(Trainer):
    """MAML across the run's markets (see :mod:`xmfast.maml`). An epoch is one pass over the
    target's instances: each meta-step takes, for every market, a support and a query batch of
    `batch_size` instances from that market's reshuffled instances (cycling through the smaller
    markets), adapts on the support batch and updates the shared weights from the query losses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if len(self.rows.markets) < 2:
            raise XmfastError("maml meta-learns across markets: give source markets (--sources de, or all)")
        self.use_graphs = False  # the meta-step is not captured; the optimiser need not be capturable
        self.optimizer = _adam(self.model, self.config.learning_rate(self.spec), self.config.l2, self.device, False)

    def _meta_epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], int,
                                               torch.Tensor]:
        """An epoch's instances with each market's indices shuffled (a function of (seed, epoch)),
        the number of meta-steps (support + query batches of the largest market) and the offsets
        that pick a step's 2 × batch instances from each market, cycling through smaller ones."""
        users, items, labels, market = self._instances(epoch)
        gen = torch.Generator().manual_seed(_epoch_seed(self.config.seed, epoch))
        per_market = [idx.to(self.device) for idx in self._shuffled_by_market(market, gen)]
        size = self.config.batch_size
        steps = max(1, -(-per_market[0].shape[0] // (2 * size)))
        self.observer.on_epoch_start(epoch, steps)
        self.model.train()
        return users, items, labels, per_market, steps, torch.arange(2 * size, device=self.device)

    def train_epoch(self, epoch: int) -> tuple[float, int, float]:
        from xmfast.maml import Tasks, meta_step

        if self.world > 1:
            return self._train_epoch_sharded(epoch)
        start = time.perf_counter()
        users, items, labels, per_market, steps, offsets = self._meta_epoch(epoch)
        size = self.config.batch_size
        total, seen = 0.0, 0
        for step in range(steps):
            picks = torch.stack([idx[(step * 2 * size + offsets) % idx.shape[0]] for idx in per_market if idx.numel()])
            support, query = picks[:, :size], picks[:, size:]
            tasks = Tasks(users[support], items[support], labels[support], users[query], items[query], labels[query])
            loss = meta_step(self.model, self.optimizer, tasks, self.model_config.maml)
            total += loss * picks.numel()
            seen += int(picks.numel())
            self.observer.on_batch(total / seen, int(picks.numel()))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return total / max(seen, 1), seen, time.perf_counter() - start

    def _train_epoch_sharded(self, epoch: int) -> tuple[float, int, float]:
        """One epoch as rank `rank` of `world`: the same meta-steps as in one process, of which
        this rank computes the tasks (markets) ``rank::world`` through DistributedDataParallel.
        A rank's meta-loss is weighted by its share of the tasks (times `world`, as DDP averages),
        so the reduced gradient is the meta-gradient of all tasks."""
        from xmfast.maml import weights_of

        start = time.perf_counter()
        self._seed_rank(epoch)
        users, items, labels, per_market, steps, offsets = self._meta_epoch(epoch)
        size = self.config.batch_size
        if self._parallel is None:
            self._parallel = distributed.wrap(_MetaObjective(self.model, self.model_config.maml), self.device)
        weights = list(weights_of(self.model).values())
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        seen = 0
        for step in range(steps):
            picks = torch.stack([idx[(step * 2 * size + offsets) % idx.shape[0]] for idx in per_market if idx.numel()])
            mine = picks[self.rank :: self.world]
            weight = mine.shape[0] / picks.shape[0] * self.world
            if mine.shape[0] == 0:  # more ranks than tasks: take part with zero weight
                mine, weight = picks[:1], 0.0
            support, query = mine[:, :size], mine[:, size:]
            loss = self._parallel(users[support], items[support], labels[support],
                                  users[query], items[query], labels[query])
            (loss * weight).backward()
            for p in weights:  # meta_step gives every weight a gradient (zero when unused)
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if weight:
                total += loss.detach().double() * mine.numel()
                seen += int(mine.numel())
            self.observer.on_batch(float(total) / seen if seen else None, int(picks.numel()))
        sums = distributed.all_reduce_sum(torch.stack([total, torch.tensor(float(seen), dtype=torch.float64,
                                                                            device=self.device)]))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        instances = int(sums[1].item())
        return float(sums[0].item()) / max(instances, 1), instances, time.perf_counter() - start

    def _test_scorer(self, scorer: ModelScorer) -> ModelScorer:
        """With `test_adaptation_steps` (as FOREC's MAML evaluation did): the selected weights
        adapted on the target's validation interactions (each held-out item, label 1, and the
        first `negatives` of its stored candidates, label 0) before scoring the test split.
        Validation results are always those of the unadapted weights."""
        from xmfast.maml import adapt, weights_of

        steps = self.model_config.maml.test_adaptation_steps
        if not steps:
            return scorer
        held = self.dataset.valid
        q = self.valid_groups
        k = self.config.negatives
        candidates = torch.from_numpy(np.asarray(held.candidates)[q][:, : 1 + k].astype(np.int64))
        groups = torch.from_numpy(np.asarray(held.group)[q].astype(np.int64))
        users = groups[:, None].expand_as(candidates).reshape(-1).to(self.device)
        items = candidates.reshape(-1).to(self.device)
        labels = torch.zeros(candidates.shape).index_fill_(1, torch.tensor([0]), 1.0).reshape(-1).to(self.device)
        weights = {name: w.detach() for name, w in weights_of(self.model).items()}
        adapted = adapt(self.model, weights, users, items, labels, self.model_config.maml, steps=steps)
        model = copy.deepcopy(self.model)
        model.load_state_dict({**self.model.state_dict(), **{n: w.detach() for n, w in adapted.items()}})
        return ModelScorer(model, self.device, amp=self.amp)


class SequenceTrainer(Trainer):
    """The engine for history models (ACMR). Instances are keyed by training row (see
    :mod:`xmfast.models.acmr`), and batches are bucketed by history length: the epoch's shuffled
    batches are taken in windows of `bucket_batches`, each window's instances sorted by history
    length and cut again into batches of the same sizes, and all batches reshuffled. A batch then
    holds histories of similar length and the model cuts it to its longest one, which on
    XMarket makes a batch about 5× narrower than the padded width. Every choice is still a
    function of (seed, epoch), so resumption stays exact. Steps run eagerly: their shapes vary."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.use_graphs = False
        self.optimizer = _adam(self.model, self.config.learning_rate(self.spec), self.config.l2, self.device, False)
        n, k = len(self.rows), self.config.negatives
        row_of_instance = torch.cat([torch.arange(n), torch.arange(n).repeat_interleave(k)])
        self._instance_length = self.model.training_lengths().cpu()[row_of_instance]  # type: ignore[operator]

    def _batch_order(self, epoch: int, market: torch.Tensor) -> list[torch.Tensor]:
        batches = super()._batch_order(epoch, market)
        window = self.model_config.bucket_batches
        if not window or (self.config.sampling == "equal" and len(self.rows.markets) > 1):
            return batches  # equal sampling keeps its market alternation
        gen = torch.Generator().manual_seed(_epoch_seed(self.config.seed, epoch) ^ 0x5EC)
        bucketed: list[torch.Tensor] = []
        for start in range(0, len(batches), window):
            part = batches[start : start + window]
            index = torch.cat(part)
            index = index[torch.argsort(self._instance_length[index], stable=True)]
            bucketed.extend(index.split([b.shape[0] for b in part]))
        order = torch.randperm(len(bucketed), generator=gen)
        return [bucketed[j] for j in order.tolist()]


def trainer_class(spec: ModelSpec) -> type[Trainer]:
    if spec.name == "maml":
        return MAMLTrainer
    return SequenceTrainer if spec.sequence else Trainer


FINAL_EVAL = EvalConfig(cutoffs=(5, 10, 20), measures=("hr", "ndcg", "mrr"))


def evaluate_run_splits(dataset: PreparedDataset, scorer: Any, run: Run, *, test_scorer: Any = None
                        ) -> tuple[Evaluation, Evaluation]:
    target = [dataset.target]
    valid = evaluate_scorer(dataset, "valid", scorer, FINAL_EVAL, markets=target)
    test = evaluate_scorer(dataset, "test", test_scorer or scorer, FINAL_EVAL, markets=target)
    for e in (valid, test):
        e.info["run"] = str(run.path)
        e.info["model"] = run.model
    valid.to_json(run.path / "valid.json")
    test.to_json(run.path / "test.json")
    return valid, test


def write_results(run: Run, selected_epoch: int | None, valid: Evaluation, test: Evaluation, extra: dict[str, Any]) -> None:
    from xmfast._io import write_json_atomic

    write_json_atomic(run.path / "results.json", {
        "model": run.model, "selected_epoch": selected_epoch, "target": valid.markets and run.info["target"],
        "valid": valid.aggregate(), "test": test.aggregate(), "queries": len(test), **extra,
    })
    run.save_info(status="finished")


# ---- the public entry points ---------------------------------------------------------------------
def run_info(dataset: PreparedDataset, spec: ModelSpec, model_config: Any, config: TrainConfig,
             pretrained: dict[str, Run] | None = None) -> dict[str, Any]:
    import platform

    return {
        "model": spec.name,
        "model_config": to_plain(model_config),
        "train_config": to_plain(replace(config, sources=resolve_sources(dataset, config.sources))),
        "dataset": {"path": str(Path(dataset.path).resolve()) if dataset.path else None,
                    "fingerprint": dataset.fingerprint, "protocol": dataset.protocol},
        "target": dataset.target,
        "pretrained": {name: str(r.path.resolve()) for name, r in (pretrained or {}).items()},
        "pretrained_runs": {name: pretrained_record(r) for name, r in (pretrained or {}).items()},
        "versions": {"xmfast": core.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "status": "created",
    }


def train(
    dataset: PreparedDataset,
    out: Path,
    model: str,
    model_config: Any = None,
    config: TrainConfig | None = None,
    *,
    pretrained: dict[str, Path] | None = None,
    overwrite: bool = False,
    observer: TrainObserver | None = None,
    stop_after: int | None = None,
) -> TrainResult | None:
    """Trains `model` on `dataset` into the run directory `out` (see :mod:`xmfast.runs`).

    Baselines (pop, cooc) are "trained" too: their run holds the configuration and results, so
    every table can list them next to the neural models. Without `config`, the model's own
    defaults apply (FOREC's for the NCF family, the paper's schedule for ACMR).

    Started by ``torchrun`` with more than one process, every process calls this and they train
    together (see :mod:`xmfast.distributed`); rank 0 writes the run, every rank returns its result."""
    spec = get_model(model)
    config = config if config is not None else spec.train_config()
    distributed.init(config.device)
    if model.endswith("++") and not config.sources:
        config = replace(config, sources=("all",))
    model_config = model_config if model_config is not None else spec.config_type()
    if not isinstance(model_config, spec.config_type):
        raise XmfastError(f"model {spec.name} takes a {spec.config_type.__name__}, not {type(model_config).__name__}")
    if dataset.path is None:
        raise XmfastError("train on a saved prepared dataset (its path and fingerprint go into the run)")
    dataset.require_evaluated_users()
    if not spec.neural:
        return distributed.on_main(lambda: _train_baseline(dataset, out, spec, model_config, config, overwrite=overwrite))
    if spec.fine_tuned:
        raise XmfastError(f"{spec.name} is made from a trained run by `xmfast finetune RUN --model {spec.name}`")
    if spec.cross_market and not resolve_sources(dataset, config.sources):
        raise XmfastError(f"{spec.name} learns across markets: give source markets (--sources de, or all)")
    def create() -> tuple[dict[str, Run], Run]:
        runs = find_pretrained(dataset, spec, model_config, config, Path(out), pretrained)
        return runs, Run.create(out, run_info(dataset, spec, model_config, config, runs), overwrite=overwrite,
                                inputs=[dataset.path, *(r.path for r in runs.values())])

    runs, run = distributed.on_main(create)
    with distributed.writing(run):
        trainer = trainer_class(spec)(dataset, run, spec, model_config, config, pretrained=runs, observer=observer,
                                      stop_after=stop_after)
        return trainer.fit()


def resume(run_path: Path, *, dataset_path: Path | None = None, observer: TrainObserver | None = None,
           stop_after: int | None = None) -> TrainResult | None:
    """Continues an interrupted run from its last checkpoint; it ends where an uninterrupted run
    with the same settings would."""
    run = Run.open(run_path)
    if run.status == "finished":
        raise XmfastError(f"{run_path}: already finished; nothing to resume")
    spec = get_model(run.model)
    if not spec.neural:
        raise XmfastError(f"{run_path}: a {spec.name} baseline has nothing to resume; train it again")
    dataset = run.load_dataset(dataset_path)
    model_config = spec.config_from(run.info["model_config"])
    config = _run_train_config(run)
    distributed.init(config.device)
    pretrained = {name: Run.open(Path(p)) for name, p in run.info.get("pretrained", {}).items()}
    with distributed.writing(run):
        trainer = trainer_class(spec)(dataset, run, spec, model_config, config, pretrained=pretrained,
                                      observer=observer, stop_after=stop_after)
        if run.finished_an_epoch:
            trainer.restore()
        else:  # killed before its first checkpoint: nothing to continue, so it starts over
            if distributed.is_main():
                run.write_metrics([])
            (observer or TrainObserver()).on_message(f"{run_path}: no epoch had finished; training it from epoch 0")
        return trainer.fit()


FOREC_TRAIN = TrainConfig(lr=0.01, l2=1e-3)
"""FOREC's fine-tuning settings: 25 epochs, lr 0.01 and L2 1e-3 for the market head."""

# What each fine-tuned model starts from.
_FINETUNE_BASES = {"forec": ("maml", "nmf"), "acmr": ("acmr",)}


def finetune(
    base: Path,
    out: Path,
    markets: list[str] | None = None,
    model_config: Any = None,
    config: TrainConfig | None = None,
    *,
    model: str = "forec",
    overwrite: bool = False,
    observer: TrainObserver | None = None,
    stop_after: int | None = None,
) -> dict[str, TrainResult | None]:
    """Fine-tunes a finished run on single markets, one run per market, `out/<market>`.

    * ``forec``: forks the network of a MAML (or NMF++) run, freezes all but the last layers,
      adds a market head and fine-tunes each fork on its market alone (lr 0.01, L2 1e-3).
    * ``acmr``: continues a pre-trained ACMR run on the market's training rows alone, with the
      pre-training's schedule (early stopping on NDCG@5).

    `markets` default to the base run's target; ``["all"]`` means its target and sources. A run
    pre-trained with the sources in full has seen their held-out items, so it is fine-tuned on
    its target only. `config` None means the model's fine-tuning defaults."""
    if model not in _FINETUNE_BASES:
        raise XmfastError(f"unknown fine-tuned model {model!r} (expected {' or '.join(_FINETUNE_BASES)})")
    base_run = Run.open(base)
    bases = _FINETUNE_BASES[model]
    if base_run.model not in bases or base_run.status != "finished":
        raise XmfastError(f"{base}: {model} fine-tunes a finished {' or '.join(bases)} run "
                          f"(this is a {base_run.status} {base_run.model} run)")
    dataset = base_run.load_dataset()
    spec = get_model(model)
    base_config = get_model(base_run.model).config_from(base_run.info["model_config"])
    if model == "forec":
        from xmfast.models.forec import FORECConfig

        nmf_config = base_config.nmf if base_run.model == "maml" else base_config
        model_config = replace(model_config or FORECConfig(), nmf=nmf_config)
    else:
        if model_config is not None and model_config != base_config:
            raise XmfastError(f"{model} fine-tuning keeps the pre-trained architecture; do not give other settings")
        model_config = base_config
    run_markets = [dataset.target, *base_run.sources]
    wanted = run_markets if markets == ["all"] else (markets or [dataset.target])
    unknown = [m for m in wanted if m not in dataset.markets]
    if unknown:
        raise XmfastError(f"market {unknown[0]!r} is not in the dataset (it has {', '.join(dataset.markets)})")
    if base_run.info["train_config"].get("sources_in_full") and base_run.sources:
        leaky = [m for m in wanted if m != dataset.target]
        if leaky:
            raise XmfastError(f"{base}: pre-trained with the held-out items of {', '.join(base_run.sources)} as "
                              f"training rows, so it cannot be evaluated on {leaky[0]}; fine-tune it on "
                              f"{dataset.target} only")
    config = replace(config, sources=()) if config is not None else spec.finetune_config()
    from xmfast import outputs
    from xmfast._io import check_output

    inputs = [base_run.path, dataset.path]
    check_output(Path(out), outputs.FINETUNE_DIR, inputs=inputs)
    distributed.init(config.device)
    for market in dict.fromkeys(wanted):
        for_market(dataset, market).require_evaluated_users()  # before any run is created
    results: dict[str, TrainResult | None] = {}
    for market in dict.fromkeys(wanted):
        data = for_market(dataset, market)
        run = distributed.on_main(lambda: Run.create(Path(out) / market, run_info(
            data, spec, model_config, config, {"base": base_run}), overwrite=overwrite, inputs=inputs))
        with distributed.writing(run):
            trainer = trainer_class(spec)(data, run, spec, model_config, config, pretrained={"base": base_run},
                                          observer=observer, stop_after=stop_after)
            results[market] = trainer.fit()  # None when stopped by `stop_after` (resumable)
    return results


def find_pretrained(dataset: PreparedDataset, spec: ModelSpec, model_config: Any, config: TrainConfig, out: Path,
                    given: dict[str, Path] | None) -> dict[str, Run]:
    """The finished runs that initialise `spec` (NMF: a GMF and an MLP run; MAML: an NMF++ run).
    Given paths are checked; missing ones are looked for among the sibling directories of `out`:
    finished runs of the right model on the same dataset, with the same sources and branch
    configuration. When more than one sibling matches (say two seeds), none is guessed: the
    error lists them with the option that names one, since the choice changes every number."""
    if not spec.pretrain or not getattr(model_config, "pretrained", True):
        return {}
    given = dict(given or {})
    sources = list(resolve_sources(dataset, config.sources))
    found: dict[str, Run] = {}
    for name in spec.pretrain:
        want_config = to_plain(getattr(model_config, name))
        if name in given:
            run = Run.open(given[name])
            problem = _pretrained_mismatch(run, name, dataset, sources, want_config, config)
            if problem:
                raise XmfastError(f"{given[name]}: cannot initialise {spec.name}: {problem}")
            found[name] = run
            continue
        candidates = []
        parent = out.resolve().parent
        for path in sorted(parent.iterdir()) if parent.is_dir() else []:
            if path.resolve() == out.resolve() or not (path / "run.json").is_file():
                continue
            try:
                run = Run.open(path)
            except XmfastError:
                continue
            if not _pretrained_mismatch(run, name, dataset, sources, want_config, config):
                candidates.append(run)
        if not candidates:
            raise XmfastError(
                f"{spec.name} starts from a trained {name} run, and none was found next to {out} (a finished "
                f"{name} run on this dataset with sources [{', '.join(sources)}], augmentation "
                f"{config.augmentation}, sampling {config.sampling} and the same {name} settings); train one "
                f"first or give it with --{name}-run"
                + (", or pass --no-pretrained" if hasattr(model_config, "pretrained") else "")
            )
        if len(candidates) > 1:
            listed = "; ".join(describe_pretrained(pretrained_record(r, digest=False)) for r in candidates)
            raise XmfastError(
                f"{spec.name} starts from a trained {name} run, and {len(candidates)} match next to {out}: {listed}; "
                f"name the one to start from with --{name}-run (e.g. --{name}-run {candidates[0].path})"
            )
        found[name] = candidates[0]
    return found


def pretrained_record(run: Run, *, digest: bool = True) -> dict[str, Any]:
    """What a run starts from, as its run.json records it (``pretrained_runs``) and the command
    prints it: the pretrained run's absolute path, model, seed, sources, selected epoch and the
    blake2b digest of the checkpoint whose weights it takes (``best.pt``), which tells whether
    that run was retrained since. With `digest` the checkpoint is read first (:func:`read_checkpoint`),
    so an unsafe or damaged one is refused before :func:`run_info`'s new run directory exists."""
    import json

    tc = run.info.get("train_config", {})
    try:
        selected = json.loads((run.path / "results.json").read_text(encoding="utf-8")).get("selected_epoch")
    except (OSError, ValueError, AttributeError):
        selected = None
    record = {"path": str(run.path.resolve()), "model": run.model, "seed": tc.get("seed"), "sources": run.sources,
              "selected_epoch": selected}
    if digest:
        from xmfast._io import digest_file

        read_checkpoint(run.best_checkpoint, run)
        record["checkpoint_blake2b"] = digest_file(run.best_checkpoint)
    return record


def describe_pretrained(record: dict[str, Any]) -> str:
    """One line for a :func:`pretrained_record`: the path first, then the settings that tell
    two candidate runs apart."""
    sources = ", ".join(record.get("sources") or []) or "none"
    text = f"{record['model']} run {record['path']} (seed {record.get('seed')}, sources {sources}"
    if record.get("selected_epoch") is not None:
        text += f", selected epoch {record['selected_epoch']}"
    if record.get("checkpoint_blake2b"):
        text += f", best.pt {record['checkpoint_blake2b'][:12]}"
    return text + ")"


def _pretrained_mismatch(run: Run, name: str, dataset: PreparedDataset, sources: list[str], want_config: Any,
                         config: TrainConfig) -> str | None:
    tc = run.info.get("train_config", {})
    if run.model != name:
        return f"it is a {run.model} run, not {name}"
    if run.status != "finished":
        return f"it is not finished (status {run.status})"
    if run.dataset_fingerprint != dataset.fingerprint:
        return "it was trained on another dataset"
    if list(tc.get("sources", [])) != sources:
        return f"its sources [{', '.join(tc.get('sources', []))}] differ from [{', '.join(sources)}]"
    if sources and (tc.get("augmentation") != config.augmentation or tc.get("sampling") != config.sampling):
        return "its augmentation or sampling differs"
    if run.info.get("model_config") != want_config:
        return f"its {name} settings {run.info.get('model_config')} differ from {want_config}"
    return None


def _train_baseline(dataset: PreparedDataset, out: Path, spec: ModelSpec, model_config: Any, config: TrainConfig,
                    *, overwrite: bool) -> TrainResult:
    run = Run.create(out, run_info(dataset, spec, model_config, config), overwrite=overwrite, inputs=[dataset.path])
    scorer = baseline_scorer(dataset, spec.name, model_config, resolve_sources(dataset, config.sources))
    with run.writing():
        valid, test = evaluate_run_splits(dataset, scorer, run)
        write_results(run, None, valid, test, extra={})
    return TrainResult(run, 0, 0, valid, test)


def baseline_scorer(dataset: PreparedDataset, name: str, model_config: Any, sources: tuple[str, ...]) -> Any:
    from xmfast.baselines import CooccurrenceScorer, PopularityScorer

    if name == "pop":
        return PopularityScorer(dataset)
    # Counts from the configured markets, else from the target and the run's sources (cooc++).
    markets = list(model_config.markets) or [dataset.target, *sources]
    return CooccurrenceScorer(dataset, markets, model_config.max_history)


def load_scorer(run: Run, dataset: PreparedDataset, *, device: str = "auto", checkpoint: Literal["best", "last"] | None = None) -> Any:
    """A scorer for a finished (or interrupted) run: its model with the selected checkpoint, or
    its baseline rebuilt from the dataset."""
    spec = get_model(run.model)
    try:
        model_config = spec.config_from(run.info["model_config"])
    except XmfastError as e:
        raise XmfastError(f"{run.path / 'run.json'}: {e}; the file was edited or belongs to another version") from None
    if not spec.neural:
        return baseline_scorer(dataset, spec.name, model_config, tuple(run.sources))
    which = checkpoint or run.info["train_config"].get("select", "best")
    path = run.best_checkpoint if which == "best" else run.last_checkpoint
    if not path.is_file():
        raise XmfastError(f"{path}: missing; the run has no {which} checkpoint (status {run.status})")
    dev = resolve_device(device)
    model = spec.build(dataset.n_groups, dataset.n_items, model_config, len(dataset.markets))
    load_weights(model, read_checkpoint(path, run)["model"], path)
    model = model.to(dev)
    if spec.sequence:
        model.attach(training_view(dataset, _run_train_config(run), tuple(run.sources)))
    return ModelScorer(model, dev)


def _run_train_config(run: Run) -> TrainConfig:
    from xmfast.models import config_from_dict

    return config_from_dict(TrainConfig, run.info["train_config"])
