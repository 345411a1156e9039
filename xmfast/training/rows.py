"""The rows a run trains on: the target's training rows, plus those of its source markets (the
``++`` variants and cross-market models), as index arrays into the prepared dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmfast.dataset import PreparedDataset
from xmfast.errors import XmfastError
from xmfast.models.schedule import Augmentation, TrainConfig

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

