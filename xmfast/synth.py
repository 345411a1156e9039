"""Synthetic XMarket-format data from the Rust generator (see `xmfast.core.synthesize`).

The embedded sample in ``data/sample`` is :data:`SAMPLE` written by this code; a test checks
that regenerating it gives the committed bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xmfast import core
from xmfast._io import json_text
from xmfast.errors import U64_MAX, XmfastError, check_int
from xmfast.markets import check_market_name


@dataclass(frozen=True)
class SynthConfig:
    markets: list[str] = field(default_factory=lambda: ["uk", "de", "in"])
    ratings: int = 20_000
    items: int = 1_000
    topics: int = 40
    min_per_user: int = 5
    mean_per_user: float = 9.0
    focus: float = 0.8  # share of a user's ratings from their favourite topics
    size_decay: float = 1.0  # market m (0-based) gets a share ∝ (m + 1)^-size_decay
    seed: int = 0
    raw_category: str | None = None  # write ratings_{m}_{category}.txt.gz instead of {m}_5core.txt

    def __post_init__(self) -> None:
        # Checked here, before anything is written: the Rust generator takes these as fixed-width
        # integers and floats, where NaN would pass its comparisons and make a silent mess.
        check_int("ratings", self.ratings, 1, U64_MAX)  # the generator refuses counts too small for every market
        for name in ("items", "topics", "min_per_user"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0, U64_MAX)
        if not math.isfinite(self.mean_per_user) or self.mean_per_user < self.min_per_user:
            raise XmfastError(f"mean_per_user must be a number at least min_per_user ({self.min_per_user}), got {self.mean_per_user}")
        if not 0.0 <= self.focus <= 1.0:  # also false for NaN
            raise XmfastError(f"focus is a share, between 0 and 1, got {self.focus}")
        if not (math.isfinite(self.size_decay) and self.size_decay >= 0.0):
            raise XmfastError(f"size_decay must be a number at least 0, got {self.size_decay}")


SAMPLE = SynthConfig(markets=["uk", "de", "jp", "in"], ratings=24_000, items=1_500, topics=30, seed=2026)
"""The embedded sample: a rich market (uk), two mid-size ones and a data-poor target (in)."""


def synthesize(out_dir: Path, config: SynthConfig) -> list[dict]:
    """Writes one file per market plus ``synth.json`` (the configuration) into `out_dir`, all at
    once (a directory renamed into place): an existing `out_dir` is replaced only when it is
    synthetic data (or holds no file), and a refused request or a kill leaves no trace."""
    from xmfast import outputs
    from xmfast._io import atomic_directory

    for m in config.markets:
        check_market_name(m)
    if len(set(config.markets)) != len(config.markets):
        raise XmfastError("each market may appear only once")
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=True, kind=outputs.SYNTH_DIR) as tmp:
        try:
            files = core.synthesize(
                str(tmp), list(config.markets), ratings=config.ratings, items=config.items, topics=config.topics,
                min_per_user=config.min_per_user, mean_per_user=config.mean_per_user, focus=config.focus,
                size_decay=config.size_decay, seed=config.seed, raw_category=config.raw_category,
            )
        except ValueError as e:
            raise XmfastError(str(e)) from None
        (tmp / "synth.json").write_text(
            json_text({"generator": f"xmfast {core.__version__}", "config": asdict(config)}, indent=2, sort_keys=True)
            + "\n",
            encoding="utf-8",
        )
    return [{**f, "path": str(out_dir / Path(f["path"]).name)} for f in files]
