"""Training curves and hyper-parameters for TensorBoard (``--tensorboard DIR``).

:class:`TensorBoardLog` is a training observer: each epoch it writes the run's mean training
loss (``train/loss``), its time (``train/epoch_seconds``) and every validation metric the run
records (``valid/hr@10``, ``valid/ndcg@10``, the monitored one) at step = epoch, the same
numbers as the run's ``metrics.jsonl``; when the run finishes, its hyper-parameters through
TensorBoard's hparams plugin with the final validation and test metrics as ``final/valid/…``
and ``final/test/…`` scalars.

The hyper-parameters are written with TensorBoard's own ``hparams_pb`` (one session-start
summary in the run's directory), not ``SummaryWriter.add_hparams``: that one writes an
*experiment* summary into a new sub-run per call, and the HPARAMS tab takes the columns of the
first experiment summary it finds, so in a directory of many runs (an experiment's GMF, NMF and
MAML stages, whose settings differ) the other runs' settings and metrics would be missing. With
session-start summaries only, TensorBoard builds the table from every run: the union of their
settings as columns, and their scalars (curves and final metrics) as metrics.

A run's curves are rewritten from its ``metrics.jsonl`` whenever its training starts: a
resumed run's log holds exactly the epochs up to its checkpoint (see ``Trainer.restore``), so
its curves continue with each epoch once and in order, whatever point a kill interrupted, and a
run trained again from scratch replaces its old curves. Only TensorBoard's event files
(``events.out.tfevents.*``) in the run's own directory are removed for that.

tensorboard is an optional dependency (``pip install "xmfast[tensorboard]"``), imported only
when a log is made."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from xmfast.errors import XmfastError, argument

EVENTS = "events.out.tfevents.*"


def _missing() -> XmfastError:
    return XmfastError(f'{argument("tensorboard", None)} needs the tensorboard package: '
                       'pip install "xmfast[tensorboard]"')


def require(logdir: Path) -> None:
    """Refuses (one error line, before anything is written) where tensorboard is not installed,
    without importing it, or where `logdir` could not be made: its first existing ancestor must
    be a writable directory."""
    import importlib.util
    import os

    try:
        found = importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):  # a None entry in sys.modules: refused as missing
        found = False
    if not found:
        raise _missing()
    there = Path(logdir).absolute()
    while not there.exists() and not there.is_symlink() and there != there.parent:
        there = there.parent
    if not there.is_dir() or not os.access(there, os.W_OK | os.X_OK):
        what = "is not a directory" if not there.is_dir() else "is not writable"
        raise XmfastError(f"{argument('tensorboard', None)}: {there} {what}; give a directory where TensorBoard's "
                          "logs can be written")


def _summary_writer() -> Any:
    """torch's SummaryWriter class, or one error line saying how to install tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise _missing() from None
    return SummaryWriter


def flat_hparams(run_info: dict[str, Any], learning_rate: float | None = None) -> dict[str, str | bool | int | float]:
    """A run's settings as TensorBoard hyper-parameters: ``model``, the model's settings under
    its name (nested ones dotted: ``nmf.gmf.embedding_dim``) and the training settings under
    ``train.`` (``lr`` as the rate used when the model's own default applies). Values TensorBoard
    does not take become strings: lists comma-joined (``16,64,32``), None as ``none``."""
    model = run_info["model"]
    out: dict[str, str | bool | int | float] = {"model": model}
    train = dict(run_info["train_config"])
    if train.get("lr") is None and learning_rate is not None:
        train["lr"] = learning_rate

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                add(f"{prefix}.{key}", item)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        elif value is None:
            out[prefix] = "none"
        elif isinstance(value, (list, tuple)):
            out[prefix] = ",".join(str(v) for v in value)
        else:
            out[prefix] = str(value)

    add(model, run_info["model_config"])
    add("train", train)
    return out


class TensorBoardLog:
    """A training observer writing one run's curves and hyper-parameters under `logdir` (see
    the module docstring). Made before the run starts, so a missing tensorboard is an error
    before anything is written."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = Path(logdir)
        require(self.logdir)
        self._writer_type = _summary_writer()
        self._writer: Any = None
        self._trainer: Any = None

    def on_start(self, trainer: Any) -> None:
        self.close()
        self._trainer = trainer
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # made unwritable since the check, or a full disk
            raise XmfastError(f"{self.logdir}: cannot write TensorBoard's log here ({e.strerror})") from None
        for old in self.logdir.glob(EVENTS):
            if old.is_file():
                old.unlink()
        self._writer = self._writer_type(log_dir=str(self.logdir))
        for record in trainer.run.read_metrics():
            if record["epoch"] <= trainer.epoch:
                self._epoch(record)
        self._writer.flush()

    def _epoch(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"])
        self._writer.add_scalar("train/loss", record["loss"], step)
        self._writer.add_scalar("train/epoch_seconds", record["seconds"], step)
        for name, value in record["valid"].items():
            if value is not None:
                self._writer.add_scalar(f"valid/{name}", value, step)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self._epoch(record)
        self._writer.flush()  # a kill loses no finished epoch (the writer buffers otherwise)

    def on_finish(self, result: Any) -> None:
        """The hyper-parameters and the final metrics, at the last epoch's step."""
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        trainer = self._trainer
        step = int(result.epochs_run)
        for split, evaluation in (("valid", result.valid), ("test", result.test)):
            for name, value in (evaluation.aggregate() if evaluation is not None else {}).items():
                if value is not None:  # a split with no query computed nothing
                    self._writer.add_scalar(f"final/{split}/{name}", value, step)
        rate = trainer.config.learning_rate(trainer.spec)
        self._writer.file_writer.add_summary(hparams_pb(flat_hparams(trainer.run.info, rate),
                                                        start_time_secs=time.time()), step)
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_epoch_start(self, epoch: int, batches: int) -> None: ...
    def on_batch(self, mean_loss: float | None, instances: int) -> None: ...
    def on_message(self, text: str) -> None: ...


class Observers:
    """Several training observers as one: each hook goes to each observer that has it (the
    CLI's progress bars, a TensorBoard log, …)."""

    def __init__(self, *observers: Any) -> None:
        self.observers = [o for o in observers if o is not None]

    def _call(self, hook: str, *args: Any) -> None:
        for o in self.observers:
            method = getattr(o, hook, None)
            if method is not None:
                method(*args)

    def on_start(self, trainer: Any) -> None:
        self._call("on_start", trainer)

    def on_epoch_start(self, epoch: int, batches: int) -> None:
        self._call("on_epoch_start", epoch, batches)

    def on_batch(self, mean_loss: float | None, instances: int) -> None:
        self._call("on_batch", mean_loss, instances)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self._call("on_epoch_end", record)

    def on_finish(self, result: Any) -> None:
        self._call("on_finish", result)

    def on_message(self, text: str) -> None:
        self._call("on_message", text)


def with_tensorboard(observer: Any, logdir: Path | None) -> Any:
    """`observer`, joined by a TensorBoard log under `logdir` when one is given."""
    return observer if logdir is None else Observers(observer, TensorBoardLog(logdir))


__all__ = ["Observers", "TensorBoardLog", "flat_hparams", "require", "with_tensorboard"]
