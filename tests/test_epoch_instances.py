"""The pointwise epoch's instances (issue 25 item 4): written in batch order by one Rust call
(``core.gather_instances``) they are, batch for batch, the instances the engine gathered before
(``Trainer._instances`` indexed by each of ``Trainer._batches``), for every sampling mode and
augmentation; and the epoch's loss is summed as it was, to the last bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xmfast import core
from xmfast.models import get_model
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.training import TrainConfig, Trainer
from xmfast.training.loop import _LossSum


@pytest.fixture(scope="module")
def sample_in(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path):
    return prepare(sample_dir, tmp_path_factory.mktemp("prepared") / "in", PrepareConfig(target="in", sources="all"))


@pytest.mark.parametrize("settings", [
    {"sources": ("all",)},
    {"sources": ("uk", "de"), "sampling": "equal"},
    {"sources": ("all",), "augmentation": "selected", "negatives": 3},
    {"sources": ("all",), "sampling": "equal", "epoch_length": "largest", "resample_negatives": False},
])
def test_epoch_instances_are_the_gathered_batches(sample_in, tmp_path: Path, settings: dict) -> None:
    config = TrainConfig(batch_size=100, seed=3, **settings)
    t = Trainer(sample_in, Run.create(tmp_path / "gmf", {"model": "gmf"}), get_model("gmf"),
                get_model("gmf").config_type(), config)
    for epoch in (1, 2):
        users, items, labels, sizes = t._epoch_instances(epoch)
        u0, i0, y0, market = t._instances(epoch)
        batches = t._batches(epoch, market)
        assert sizes == [b.shape[0] for b in batches]  # batch b: the next sizes[b] instances
        index = torch.cat(batches)
        assert torch.equal(users, u0[index]) and torch.equal(items, i0[index]) and torch.equal(labels, y0[index])
        if config.sampling == "concat":  # one pass: each row's positive once, then its negatives
            assert int(labels.sum()) == len(t.rows) and users.shape[0] == len(t.rows) * (1 + config.negatives)


def test_gather_instances_by_hand_and_bad_order() -> None:
    """2 rows (keys 5, 6; items 50, 60), k = 2, negatives drawn for 3 rows of which rows 2 and 0 train."""
    negatives = np.array([[1, 2], [3, 4], [7, 8]], dtype=np.uint32)
    keys, items, rows = np.array([5, 6]), np.array([50, 60]), np.array([2, 0])
    order = np.array([5, 0, 2, 1, 4, 3])  # instances 2, 3: row 0's negatives (7, 8); 4, 5: row 1's (1, 2)
    out = np.zeros(6, dtype=np.int64), np.zeros(6, dtype=np.int64), np.zeros(6, dtype=np.float32)
    core.gather_instances(order, keys, items, negatives, rows, *out)
    assert out[0].tolist() == [6, 5, 5, 6, 6, 5]
    assert out[1].tolist() == [2, 50, 7, 60, 1, 8]
    assert out[2].tolist() == [0, 1, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="instance 6 is outside 0..6"):
        core.gather_instances(np.array([6]), keys, items, negatives, rows, *(a[:1] for a in out))


def test_loss_sum_equals_the_device_sum_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    losses = [torch.rand((), generator=gen) * 3 for _ in range(150)]
    sizes = [1024] * 149 + [77]
    total = torch.zeros((), dtype=torch.float64)
    s = _LossSum()
    shown = []
    for number, (loss, n) in enumerate(zip(losses, sizes), 1):
        total += loss.double() * n
        mean = s.add(loss, n)
        if number % 64 == 0:
            shown.append(mean == float(total) / sum(sizes[:number]))
        else:
            assert mean is None
    assert shown == [True, True]
    assert s.mean() == float(total) / sum(sizes) and s.seen == sum(sizes)
