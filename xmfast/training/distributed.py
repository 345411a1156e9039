"""Data-parallel training across processes: ``torchrun --nproc-per-node N xmfast train …``.

torchrun starts N processes and gives each RANK, LOCAL_RANK and WORLD_SIZE (and the rendezvous
address) in its environment; :func:`init` joins them into one ``torch.distributed`` process group
(``env://``): NCCL when the run trains on CUDA (each process on GPU ``LOCAL_RANK``), gloo on the
CPU. Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) nothing here does anything and training
is exactly what it is in a single process.

How the training engine (:mod:`xmfast.training`) divides the work:

* every rank builds the same epoch: the same negatives and the same global batch order, both
  functions of (seed, epoch); rank `r` of `w` then takes the instances ``r::w`` of every global
  batch (its negatives are those of its own rows, so no two ranks train on the same negative),
  so every rank runs the same number of steps;
* the model is wrapped in :class:`torch.nn.parallel.DistributedDataParallel`; a rank's loss is
  the sum of its instances' losses times ``w / batch``, so DDP's mean over ranks of the
  gradients is the gradient of the whole batch's mean loss, as in one process, however unequal
  the shards (a rank left without an instance of a short last batch contributes zero);
* MAML: the ranks take the markets (tasks) of each meta-step in turn (task ``t`` on rank
  ``t % w``); the meta-loss of a rank's tasks runs through DDP (a module whose forward is the
  meta-loss), weighted so that the mean over ranks is the meta-gradient of all tasks; a rank
  without a task (more ranks than markets) takes part with zero weight;
* rank 0 alone creates the run directory, holds its lock, validates, writes checkpoints,
  metrics and results; it broadcasts each epoch's validation metrics so that every rank makes the
  same early-stopping decision, and the final results, so every rank returns them. Other ranks
  never write to the run directory (they read the dataset, pretrained runs and, on resume, the
  last checkpoint, so these must be at the same paths on every node).
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

from xmfast.errors import XmfastError, argument

T = TypeVar("T")


class RankZeroError(XmfastError):
    """Rank 0's error, raised again on the other ranks (the CLI prints it on rank 0 only)."""

    shown_by_rank0 = True


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def active() -> bool:
    """True inside an initialised process group of more than one process."""
    if not torch.distributed.is_available():
        return False
    dist = _dist()
    return bool(dist.is_initialized() and dist.get_world_size() > 1)


def rank() -> int:
    return _dist().get_rank() if active() else 0


def world_size() -> int:
    return _dist().get_world_size() if active() else 1


def is_main() -> bool:
    """True in a single process, or on rank 0 of a distributed run: the process that writes."""
    return rank() == 0


def launched() -> bool:
    """True when started by torchrun (or any launcher setting WORLD_SIZE) with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init(device: str = "auto") -> None:
    """Joins torchrun's process group when launched by it with WORLD_SIZE > 1 (idempotent; a
    no-op otherwise, or when the caller has initialised a group already). `device` is the
    training's device setting: CUDA means NCCL and GPU LOCAL_RANK, the CPU means gloo."""
    if not launched():
        return
    if not torch.distributed.is_available():
        raise XmfastError("WORLD_SIZE > 1 but this torch has no torch.distributed; run one process")
    dist = _dist()
    if dist.is_initialized():
        return
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise XmfastError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set; "
                          "start distributed training with torchrun")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise XmfastError(f"{argument('device', device)}: CUDA is not available on this machine (use cpu or auto)")
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise XmfastError(f"LOCAL_RANK {local} but this node has {torch.cuda.device_count()} GPU(s); "
                              "give torchrun at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    atexit.register(_shutdown)


def _shutdown() -> None:
    dist = _dist()
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """The device of this process: under a distributed run a CUDA device is GPU LOCAL_RANK."""
    if active() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (picklable objects)."""
    if not active():
        return value
    box = [value if is_main() else None]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Runs `fn` on rank 0 only and returns its value on every rank; an error it raises is raised
    on every rank (an XmfastError with the same message), so no rank waits for a rank that failed."""
    if not active():
        return fn()
    outcome: tuple[str, Any]
    if is_main():
        try:
            outcome = ("ok", fn())
        except XmfastError as e:
            broadcast(("error", str(e)))
            raise
        except BaseException as e:
            broadcast(("crash", f"{type(e).__name__}: {e}"))
            raise
        broadcast(outcome)
        return outcome[1]
    kind, value = broadcast(None)
    if kind == "error":
        raise RankZeroError(value)
    if kind == "crash":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


@contextlib.contextmanager
def writing(run: Any) -> Iterator[None]:
    """The run's write lock (:meth:`xmfast.runs.Run.writing`), held by rank 0 alone; a failure
    to take it is an error on every rank."""
    if not active():
        with run.writing():
            yield
        return
    with contextlib.ExitStack() as stack:
        on_main(lambda: stack.enter_context(run.writing()) and None)
        yield


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of `tensor` (in place; returned)."""
    if active():
        _dist().all_reduce(tensor, op=_dist().ReduceOp.SUM)
    return tensor


def sync_parameters(module: torch.nn.Module) -> None:
    """Copies rank 0's parameters to every rank (DDP does this itself when it wraps a module)."""
    if not active():
        return
    for p in module.parameters():
        _dist().broadcast(p.data, src=0)


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` in DistributedDataParallel. Buffers are not synchronised: the models' buffers are
    data tables (ACMR's histories) that every rank builds identically from the dataset. The
    graph is static (every step uses the same parameters), which lets DDP find once the
    parameters a forward never uses (NMF's branch heads): their gradients stay None, as in one
    process."""
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():
        # torch >= 2.10 deprecates broadcast_buffers for forward_sync_buffers, which would
        # still broadcast the buffers once at construction; False skips that too.
        warnings.simplefilter("ignore", FutureWarning)
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False, static_graph=True)
