"""Training: every trained model of the registry becomes a run directory through this package.

* :mod:`~xmfast.training.engine` — the entry points: :func:`train`, :func:`resume`, :func:`load_scorer`;
* :mod:`~xmfast.training.loop` — the epoch loop (negatives, batches, validation, early stopping);
* :mod:`~xmfast.training.objectives` — BPR, sampled softmax and a model's own loss, on row batches;
* :mod:`~xmfast.training.meta` — MAML's meta-learning engine;
* :mod:`~xmfast.training.sequence` — batches of history models bucketed by length (ACMR);
* :mod:`~xmfast.training.finetuning` — :func:`finetune`, one run per market from a finished run;
* :mod:`~xmfast.training.checkpoints` — checkpoints read as untrusted input, the runs a model starts from;
* :mod:`~xmfast.training.rows` — the training rows of a run (target and sources);
* :mod:`~xmfast.training.distributed` — several processes under torchrun.
"""

from xmfast.models.schedule import TrainConfig
from xmfast.training.checkpoints import (
    CHECKPOINT_VERSION,
    StartingRun,
    describe_pretrained,
    find_pretrained,
    pretrained_record,
    read_checkpoint,
)
from xmfast.training.engine import load_scorer, resume, run_info, run_train_config, train, trainer_for
from xmfast.training.finetuning import finetune
from xmfast.training.loop import ModelScorer, Trainer, TrainObserver, TrainResult, _adam, resolve_device  # noqa: F401 - _adam: for tests
from xmfast.training.meta import MAMLTrainer
from xmfast.training.objectives import Batch
from xmfast.evaluation import RUN_EVAL as FINAL_EVAL
from xmfast.training.rows import resolve_sources, training_rows, training_view
from xmfast.training.sequence import SequenceTrainer

__all__ = [
    "CHECKPOINT_VERSION", "FINAL_EVAL", "Batch", "MAMLTrainer", "ModelScorer", "SequenceTrainer", "StartingRun",
    "TrainConfig", "TrainObserver", "TrainResult", "Trainer", "describe_pretrained", "finetune", "find_pretrained",
    "load_scorer", "pretrained_record", "read_checkpoint", "resolve_device", "resolve_sources", "resume", "run_info",
    "run_train_config", "train", "trainer_for", "training_rows", "training_view",
]
