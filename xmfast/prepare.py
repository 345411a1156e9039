"""Building a prepared dataset from XMarket rating files.

Steps, all in the Rust core: read the target and source files (shared vocabularies) →
optionally keep only ratings at or above a threshold → optionally restrict items to a reference
market's k-core (FOREC restricted every market to the US 10/25-core) → per-market k-core →
renumber ids densely → leave-one-out split per (market, user) → sample and store the evaluation
candidates.

:class:`PrepareConfig` takes its settings as given. The command line and experiment files first
fill the settings a user left unset with the defaults of the data (:func:`data_defaults`): none
for processed 5-core files, FOREC's preprocessing (:data:`FOREC_RAW`) for XMarket's raw files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xmfast import core
from xmfast._added import added, at_added_default
from xmfast._io import digest_json
from xmfast.dataset import FORMAT, FORMAT_VERSION, HeldOut, PreparedDataset, Protocol
from xmfast.errors import DataError, XmfastError, argument, check_int
from xmfast.markets import DataSource, Found, check_market_name, resolve_markets
from xmfast.ratings import Ratings

PROTOCOLS: tuple[str, ...] = ("forec", "acmr")


@dataclass(frozen=True)
class KCore:
    """k-core thresholds, counted per market. 1/1 means no filtering."""

    min_user: int = 1
    min_item: int = 1
    fixpoint: bool = False  # False: one pass, items then users (FOREC); True: until stable

    def __post_init__(self) -> None:
        check_int("k-core threshold min_user", self.min_user)
        check_int("k-core threshold min_item", self.min_item)


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that determines a prepared dataset (saved in its manifest)."""

    target: str
    sources: Sequence[str] | Literal["all"] = ()
    protocol: Protocol = "forec"
    seed: int = 42
    kcore: KCore = field(default_factory=KCore)
    # Restrict every market to the items of this market's k-core (e.g. "us" with 10/25); "none"
    # is None (a TOML file cannot write None).
    reference_market: str | None = None
    reference_kcore: KCore = field(default_factory=lambda: KCore(10, 25))
    dedup: bool = False  # drop repeated (market, user, item) rows, keeping the first
    eval_negatives: int = 99
    min_interactions: int = 3  # groups with fewer rows are training-only
    category: str | None = None  # which raw category to read when several are present
    # Whether the reference market's own ratings are restricted to its k-core's items too.
    # FOREC's are not: its us_5core.txt is the 5-core of all US ratings (31,125 items against
    # the 24,522 of the US 10/25-core it restricted the other markets to).
    restrict_reference: bool = added(True)
    # Keep only ratings >= this as implicit positives, before any other filtering. None: every
    # rating is a positive (as FOREC and ACMR do).
    min_rating: float | None = added(None)

    def __post_init__(self) -> None:
        if self.reference_market == "none":
            object.__setattr__(self, "reference_market", None)
        if self.min_rating is not None and (
                isinstance(self.min_rating, bool) or not isinstance(self.min_rating, (int, float))
                or not math.isfinite(self.min_rating)):
            raise XmfastError(f"{argument('min_rating', None)} must be a finite number, got {self.min_rating!r}")
        if self.min_rating is not None:  # 4 and 4.0 are one setting, and one fingerprint
            object.__setattr__(self, "min_rating", float(self.min_rating))
        if self.protocol not in PROTOCOLS:
            raise XmfastError(f"unknown protocol {self.protocol!r} (expected forec or acmr)")
        check_int("the number of evaluation negatives", self.eval_negatives)
        if self.min_interactions < 3:
            raise XmfastError("min_interactions must be at least 3 (train, validation, test)")
        check_int("min_interactions", self.min_interactions, 3)
        if not 0 <= self.seed < 2**63:
            raise XmfastError("seed must be between 0 and 2^63-1")


# FOREC's preprocessing of XMarket's raw files (prepare_data.ipynb in its repository), the
# defaults of settings left unset on such files: every market restricted to the items of the
# US 10/25-core (the US itself only to its own k-core), then one k-core pass per market, items
# then users, at 7 ("5-core, +1 validation and +1 test"). This rule made the released
# {market}_5core.txt files from the raw Electronics ones.
FOREC_RAW: dict[str, Any] = {
    "reference_market": "us",
    "reference_kcore": KCore(10, 25),
    "restrict_reference": False,
    "kcore": KCore(7, 7),
}


def data_defaults(data: DataSource | Path, category: str | None = None) -> dict[str, Any]:
    """The PrepareConfig settings the files of `data` default to: :data:`FOREC_RAW` when
    the files found are XMarket's raw ones (all of them), none otherwise (processed 5-core
    files are already filtered; a mix of both gets none either)."""
    return _defaults(DataSource.of(data).find(category))


def _defaults(found: Found) -> dict[str, Any]:
    return dict(FOREC_RAW) if all(f.layout == "raw" for f in found.values()) else {}


def data_settings(data: DataSource | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` (PrepareConfig keywords) completed with :func:`data_defaults`: a setting not
    given takes the data's default, and a k-core given as a table of some of its fields
    (``{"min_user": 5}``) takes the others from the default k-core. A defaulted reference
    market that is absent is refused here, saying how to add it or turn the restriction off."""
    data = DataSource.of(data)
    found = data.find(settings.get("category"))
    defaults = _defaults(found)
    merged = {**defaults, **settings}
    for key in ("kcore", "reference_kcore"):
        if isinstance(settings.get(key), dict):
            base = defaults.get(key) or PrepareConfig.__dataclass_fields__[key].default_factory()  # type: ignore[misc]
            merged[key] = replace(base, **settings[key])
    ref = defaults.get("reference_market")
    if "reference_market" not in settings and ref is not None and ref not in found:
        k = merged["reference_kcore"]
        raise DataError(
            f"{data}: FOREC's preprocessing of raw files restricts items to the {k.min_user}/{k.min_item}-core "
            f"of {ref}, but there is no {ref} file; fetch it (xmfast download --markets {ref} --category "
            f"{next(iter(found.values())).category} --out {data}) or pass --reference-market none "
            "(reference_market = \"none\" in an experiment's [prepare])")
    return merged


Step = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def load_inputs(data: DataSource | Path, config: PrepareConfig, on_note: Step = _noop) -> tuple[list[str], Ratings]:
    """Finds and parses the files the configuration needs (reference market included);
    `on_note` hears about the data directory's files that match no rule (they are not read)."""
    data = DataSource.of(data)
    available = data.find(config.category)
    if (note := available.unmatched_note()) is not None:
        on_note(note)
    sources = config.sources if config.sources == "all" else list(config.sources)
    markets = resolve_markets(available, config.target, sources)
    to_read = list(markets)
    if config.reference_market is not None:
        check_market_name(config.reference_market, "reference market")
        if config.reference_market not in available:
            raise DataError(f"{data}: reference market {config.reference_market!r} is absent "
                            f"(markets found: {', '.join(available)})")
        if config.reference_market not in to_read:
            to_read.append(config.reference_market)
    ratings = data.read(available, to_read)
    return markets, ratings


def filter_ratings(ratings: Ratings, markets: list[str], config: PrepareConfig) -> Ratings:
    """Rating threshold, then reference-market restriction, then per-market k-core; keeps
    only `markets`."""
    if config.min_rating is not None:
        ratings = ratings.select(ratings.rating >= config.min_rating)
    if config.reference_market is not None:
        ref = ratings.drop_markets([config.reference_market]).kcore(
            config.reference_kcore.min_user, config.reference_kcore.min_item,
            fixpoint=config.reference_kcore.fixpoint,
        )
        allowed = np.ascontiguousarray(np.unique(ref.item), dtype=np.uint32)
        keep = core.restrict_items_mask(ratings.item, allowed)
        if not config.restrict_reference:
            keep |= ratings.market == ratings.market_index(config.reference_market)
        ratings = ratings.select(keep)
    ratings = ratings.drop_markets(markets)
    ratings = ratings.kcore(config.kcore.min_user, config.kcore.min_item, fixpoint=config.kcore.fixpoint)
    counts = np.bincount(ratings.market, minlength=len(markets))
    for name, n in zip(markets, counts):
        if n == 0:
            raise DataError(
                f"market {name}: no ratings left after filtering (k-core {config.kcore.min_user}/"
                f"{config.kcore.min_item}{', reference ' + config.reference_market if config.reference_market else ''}"
                f"{f', ratings >= {config.min_rating:g}' if config.min_rating is not None else ''}); "
                "lower the thresholds"
            )
    return ratings.compact()


@dataclass
class SplitTables:
    """A leave-one-out split with its rows gathered out of the rating table, so the table can be
    freed before the memory-hungry candidate sampling (see :func:`sample_candidates`)."""

    markets: list[str]
    users: core.Vocab
    items: core.Vocab
    files: list[dict]
    market_keys: np.ndarray
    user_keys: np.ndarray
    arrays: dict[str, np.ndarray]
    duplicates_dropped: int
    n_ratings: int


def split_ratings(ratings: Ratings, markets: list[str], config: PrepareConfig) -> SplitTables:
    """Leave-one-out split of filtered, compacted ratings under the configured protocol."""
    market_keys = np.array([core.stable_hash(m) for m in markets], dtype=np.uint64)
    user_keys = ratings.users.stable_hashes()
    split = core.leave_one_out(
        ratings.market, ratings.user, ratings.item, ratings.day,
        order="temporal" if config.protocol == "forec" else "random",
        seed=config.seed, dedup=config.dedup, min_interactions=config.min_interactions,
        market_keys=market_keys, user_keys=user_keys,
    )
    arrays = {name: split[name] for name in ("group_market", "group_user", "train_offsets", "heldout_groups")}
    for part, rows in (("train", split["train_rows"]), ("valid", split["valid_rows"]), ("test", split["test_rows"])):
        arrays[f"{part}_item"] = ratings.item[rows]
        arrays[f"{part}_rating"] = ratings.rating[rows]
        arrays[f"{part}_day"] = ratings.day[rows]
    arrays["market_item_offsets"], arrays["market_items"] = core.market_items(ratings.market, ratings.item, len(markets))
    return SplitTables(
        markets, ratings.users, ratings.items, ratings.files, market_keys, user_keys, arrays,
        int(split["duplicates_dropped"]), len(ratings),
    )


def build_dataset(ratings: Ratings, markets: list[str], config: PrepareConfig) -> PreparedDataset:
    """Split and candidates for filtered, compacted ratings (in memory; nothing written)."""
    return sample_candidates(split_ratings(ratings, markets, config), config)


def sample_candidates(split: SplitTables, config: PrepareConfig) -> PreparedDataset:
    """Samples the stored evaluation candidates of a split and assembles the dataset."""
    a = split.arrays
    try:
        valid_c, test_c = core.eval_candidates(
            group_market=a["group_market"], group_user=a["group_user"],
            train_offsets=a["train_offsets"], train_items=a["train_item"],
            heldout_groups=a["heldout_groups"], valid_item=a["valid_item"], test_item=a["test_item"],
            market_item_offsets=a["market_item_offsets"], market_items=a["market_items"],
            protocol=config.protocol, negatives=config.eval_negatives, seed=config.seed,
            market_keys=split.market_keys, user_keys=split.user_keys, market_names=split.markets, users=split.users,
        )
    except ValueError as e:
        raise DataError(str(e)) from None

    def held(part: str, candidates: np.ndarray) -> HeldOut:
        return HeldOut(a["heldout_groups"], a[f"{part}_item"], a[f"{part}_rating"], a[f"{part}_day"], candidates)

    markets = split.markets
    settings = _settings(config, markets)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xmfast_version": core.__version__,
        "settings": settings,
        "markets": markets,
        "inputs": [
            {"market": f["market"], "file": Path(f["path"]).name, "bytes": f["bytes"], "blake3": f["blake3"],
             "rows": f["rows"]}
            for f in split.files
        ],
        "input_fingerprint": digest_json({"settings": settings, "inputs": [f["blake3"] for f in split.files]}),
        "counts": {
            "users": len(split.users), "items": len(split.items), "ratings": split.n_ratings,
            "groups": int(a["group_user"].shape[0]), "evaluated_groups": int(a["heldout_groups"].shape[0]),
            "train_rows": int(a["train_item"].shape[0]), "duplicates_dropped": split.duplicates_dropped,
        },
    }
    return PreparedDataset(
        markets=markets, target=config.target, sources=markets[1:], protocol=config.protocol,
        users=split.users, items=split.items,
        group_market=a["group_market"], group_user=a["group_user"],
        train_offsets=a["train_offsets"], train_item=a["train_item"],
        train_rating=a["train_rating"], train_day=a["train_day"],
        valid=held("valid", valid_c), test=held("test", test_c),
        market_item_offsets=a["market_item_offsets"], market_items=a["market_items"],
        manifest=manifest,
    )


def _settings(config: PrepareConfig, markets: list[str]) -> dict:
    """The manifest's settings (inside the fingerprint): a field added after format 1 is left
    out at its default, so datasets prepared before it existed keep their fingerprint."""
    s = {k: v for k, v in asdict(config).items() if not at_added_default(config, k)}
    s["sources"] = markets[1:]
    return s


def prepare(
    data: DataSource | Path, out_dir: Path | None, config: PrepareConfig, *, overwrite: bool = False,
    on_step: Step = _noop, on_note: Step = _noop,
) -> PreparedDataset:
    """Reads, filters, splits and samples candidates; writes the dataset atomically to `out_dir`
    (unless None) and returns it. Same inputs and configuration give byte-identical output."""
    if out_dir is not None:  # before the work: refused at once, not after minutes of it
        from xmfast import outputs
        from xmfast._io import check_output

        check_output(Path(out_dir), outputs.DATASET, inputs=DataSource.of(data).inputs, overwrite=overwrite)
    on_step("read")
    markets, ratings = load_inputs(data, config, on_note)
    on_step("filter")
    ratings = filter_ratings(ratings, markets, config)
    on_step("split")
    split = split_ratings(ratings, markets, config)
    del ratings  # the split holds what it needs; freeing the table lowers peak memory by ~1 GB at 50M
    dataset = sample_candidates(split, config)
    del split
    if out_dir is None:
        return dataset
    on_step("write")
    dataset.save(Path(out_dir), overwrite=overwrite, inputs=DataSource.of(data).inputs)
    return PreparedDataset.load(Path(out_dir), just_written=True)
