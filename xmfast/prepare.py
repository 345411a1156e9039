"""Building a prepared dataset from XMarket rating files.

Steps, all in the Rust core: read the target and source files (shared vocabularies) →
optionally restrict items to a reference market's k-core (FOREC restricted every market to the
US 10/25-core) → per-market k-core → renumber ids densely → leave-one-out split per (market,
user) → sample and store the evaluation candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from xmfast import core
from xmfast._added import added, at_added_default
from xmfast._io import digest_json
from xmfast.candidates import CandidateList, check_known, forced_split, read_candidates
from xmfast.dataset import FORMAT, FORMAT_VERSION, HeldOut, PreparedDataset, Protocol
from xmfast.errors import DataError, XmfastError, argument, check_int
from xmfast.markets import check_market_code, discover, resolve_markets
from xmfast.ratings import Ratings, read_ratings

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
    # Restrict every market to the items of this market's k-core (e.g. "us" with 10/25).
    reference_market: str | None = None
    reference_kcore: KCore = field(default_factory=lambda: KCore(10, 25))
    dedup: bool = False  # drop repeated (market, user, item) rows, keeping the first
    eval_negatives: int = 99
    min_interactions: int = 3  # groups with fewer rows are training-only
    category: str | None = None  # which raw category to read when several are present
    # Published candidates instead of sampled ones (xmfast.candidates): {"valid": PATH, "test": PATH},
    # and for the WSDM Cup run layout {"valid": QRELS, "test": QRELS} naming each user's positive.
    candidates: Mapping[str, str] | None = added(None)
    qrels: Mapping[str, str] | None = added(None)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise XmfastError(f"unknown protocol {self.protocol!r} (expected forec or acmr)")
        check_int("the number of evaluation negatives", self.eval_negatives)
        if self.min_interactions < 3:
            raise XmfastError("min_interactions must be at least 3 (train, validation, test)")
        check_int("min_interactions", self.min_interactions, 3)
        if not 0 <= self.seed < 2**63:
            raise XmfastError("seed must be between 0 and 2^63-1")
        for name in ("candidates", "qrels"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, Mapping) or set(value) - {"valid", "test"}:
                    raise XmfastError(f"{name} maps the splits valid and test to files, got {value!r}")
                object.__setattr__(self, name, {k: str(Path(v)) for k, v in sorted(value.items())})
        if self.qrels and not self.candidates:
            raise XmfastError(f"qrels name the positives of published candidates: give the run files too "
                              f"({argument('candidates', None, metavar='SPLIT=FILE')})")


Step = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def load_inputs(data_dir: Path, config: PrepareConfig) -> tuple[list[str], Ratings]:
    """Finds and parses the files the configuration needs (reference market included)."""
    available = discover(Path(data_dir), config.category)
    sources = config.sources if config.sources == "all" else list(config.sources)
    markets = resolve_markets(available, config.target, sources)
    to_read = list(markets)
    if config.reference_market is not None:
        check_market_code(config.reference_market)
        if config.reference_market not in available:
            raise DataError(f"{data_dir}: reference market {config.reference_market!r} is absent")
        if config.reference_market not in to_read:
            to_read.append(config.reference_market)
    return markets, read_ratings([(m, available[m].path) for m in to_read])


def _filtering(config: PrepareConfig) -> str:
    """The filters a configuration applies, as a message names them ("none" without any)."""
    parts = []
    if config.kcore.min_user > 1 or config.kcore.min_item > 1:
        parts.append(f"k-core {config.kcore.min_user}/{config.kcore.min_item}")
    if config.reference_market is not None:
        ref = config.reference_kcore
        parts.append(f"reference market {config.reference_market} {ref.min_user}/{ref.min_item}")
    return ", ".join(parts) or "none"


def filter_ratings(ratings: Ratings, markets: list[str], config: PrepareConfig) -> Ratings:
    """Reference-market restriction, then per-market k-core; keeps only `markets`."""
    if config.reference_market is not None:
        ref = ratings.drop_markets([config.reference_market]).kcore(
            config.reference_kcore.min_user, config.reference_kcore.min_item,
            fixpoint=config.reference_kcore.fixpoint,
        )
        ratings = ratings.restrict_items(np.unique(ref.item).astype(np.uint32))
    ratings = ratings.drop_markets(markets)
    ratings = ratings.kcore(config.kcore.min_user, config.kcore.min_item, fixpoint=config.kcore.fixpoint)
    counts = np.bincount(ratings.market, minlength=len(markets))
    for name, n in zip(markets, counts):
        if n == 0:
            raise DataError(
                f"market {name}: no ratings left after filtering (k-core {config.kcore.min_user}/"
                f"{config.kcore.min_item}{', reference ' + config.reference_market if config.reference_market else ''}); "
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
    # With published candidates: the target's held-out groups come first, with these candidate
    # matrices ("valid", "test"); the files the manifest records; held-out rows the ratings lacked.
    published: dict[str, np.ndarray] | None = None
    published_files: dict | None = None
    rows_added: int = 0


def split_ratings(ratings: Ratings, markets: list[str], config: PrepareConfig,
                  published: dict[str, CandidateList] | None = None) -> SplitTables:
    """Leave-one-out split of filtered, compacted ratings under the configured protocol; with
    published candidates (`config.candidates`, read here unless `published` holds them), the
    target market's held-out rows are theirs (:func:`xmfast.candidates.forced_split`)."""
    market_keys = np.array([core.stable_hash(m) for m in markets], dtype=np.uint64)
    user_keys = ratings.users.stable_hashes()
    order = "temporal" if config.protocol == "forec" else "random"
    if config.candidates is not None and published is None:
        published = read_candidates(config.candidates, config.qrels, config.eval_negatives)
    if published is None:
        split = core.leave_one_out(
            ratings.market, ratings.user, ratings.item, ratings.day, order=order,
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
    return _published_split(ratings, markets, config, published, market_keys, user_keys, order)


def _published_split(ratings: Ratings, markets: list[str], config: PrepareConfig,
                     published: dict[str, CandidateList], market_keys: np.ndarray, user_keys: np.ndarray,
                     order: str) -> SplitTables:
    """The target (market 0, whose groups come first) split by the published lines, the other
    markets as without them; the two parts are concatenated group by group."""
    target = forced_split(
        published, ratings.users, ratings.items, ratings.market, ratings.user, ratings.item, ratings.rating,
        ratings.day, target=markets[0], order=order, seed=config.seed, dedup=config.dedup,
        min_interactions=config.min_interactions, market_keys=market_keys, user_keys=user_keys,
        filtered=_filtering(config),
    )
    rows = np.flatnonzero(ratings.market != 0)
    rest = core.leave_one_out(
        ratings.market[rows], ratings.user[rows], ratings.item[rows], ratings.day[rows], order=order,
        seed=config.seed, dedup=config.dedup, min_interactions=config.min_interactions,
        market_keys=market_keys, user_keys=user_keys,
    )
    n_target, n_target_train = target.group_user.size, target.train_rows.size
    train = np.concatenate([target.train_rows, rows[rest["train_rows"]]])
    arrays = {
        "group_market": np.concatenate([np.zeros(n_target, dtype=np.uint16), rest["group_market"]]),
        "group_user": np.concatenate([target.group_user, rest["group_user"]]).astype(np.uint32),
        "train_offsets": np.concatenate([target.train_offsets, rest["train_offsets"][1:] + np.uint64(n_target_train)]),
        "heldout_groups": np.concatenate([target.heldout_groups, rest["heldout_groups"] + np.uint32(n_target)]),
        "train_item": ratings.item[train], "train_rating": ratings.rating[train], "train_day": ratings.day[train],
    }
    for part in ("valid", "test"):
        other = rows[rest[f"{part}_rows"]]
        for column, values in (("item", ratings.item), ("rating", ratings.rating), ("day", ratings.day)):
            arrays[f"{part}_{column}"] = np.concatenate([target.held[part][column], values[other]])
    # the catalogs hold the held-out items too, as they do when the ratings hold every held-out row
    heldout_market = np.zeros(2 * target.heldout_groups.size, dtype=np.uint16)
    heldout_item = np.concatenate([target.held["valid"]["item"], target.held["test"]["item"]])
    arrays["market_item_offsets"], arrays["market_items"] = core.market_items(
        np.concatenate([ratings.market, heldout_market]), np.concatenate([ratings.item, heldout_item]), len(markets))
    return SplitTables(
        markets, ratings.users, ratings.items, ratings.files, market_keys, user_keys, arrays,
        target.duplicates_dropped + int(rest["duplicates_dropped"]), len(ratings),
        published={part: target.held[part]["candidates"] for part in ("valid", "test")},
        published_files={part: published[part].files for part in ("valid", "test")},
        rows_added=target.rows_added,
    )


def build_dataset(ratings: Ratings, markets: list[str], config: PrepareConfig) -> PreparedDataset:
    """Split and candidates for filtered, compacted ratings (in memory; nothing written)."""
    return sample_candidates(split_ratings(ratings, markets, config), config)


def sample_candidates(split: SplitTables, config: PrepareConfig) -> PreparedDataset:
    """Samples the stored evaluation candidates of a split and assembles the dataset (with
    published candidates, those of the groups they do not cover)."""
    a = split.arrays
    n_published = 0 if split.published is None else split.published["valid"].shape[0]
    sampled = slice(n_published, None)
    try:
        valid_c, test_c = core.eval_candidates(
            group_market=a["group_market"], group_user=a["group_user"],
            train_offsets=a["train_offsets"], train_items=a["train_item"],
            heldout_groups=a["heldout_groups"][sampled], valid_item=a["valid_item"][sampled],
            test_item=a["test_item"][sampled],
            market_item_offsets=a["market_item_offsets"], market_items=a["market_items"],
            protocol=config.protocol, negatives=config.eval_negatives, seed=config.seed,
            market_keys=split.market_keys, user_keys=split.user_keys, market_names=split.markets, users=split.users,
        )
    except ValueError as e:
        raise DataError(str(e)) from None
    if split.published is not None:
        valid_c = np.concatenate([split.published["valid"], valid_c])
        test_c = np.concatenate([split.published["test"], test_c])

    def held(part: str, candidates: np.ndarray) -> HeldOut:
        return HeldOut(a["heldout_groups"], a[f"{part}_item"], a[f"{part}_rating"], a[f"{part}_day"], candidates)

    markets = split.markets
    settings = _settings(config, markets, split.published_files)
    counts = {
        "users": len(split.users), "items": len(split.items), "ratings": split.n_ratings,
        "groups": int(a["group_user"].shape[0]), "evaluated_groups": int(a["heldout_groups"].shape[0]),
        "train_rows": int(a["train_item"].shape[0]), "duplicates_dropped": split.duplicates_dropped,
    }
    if split.published is not None:
        counts["published_groups"] = n_published
        counts["heldout_rows_added"] = split.rows_added
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
        "counts": counts,
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


def _settings(config: PrepareConfig, markets: list[str], published: dict | None = None) -> dict:
    """The manifest's settings (inside the fingerprint): a field added after format 1 is left
    out at its default, so datasets prepared before it existed keep their fingerprint. Published
    candidates are recorded by file name and content digest, not path: a moved copy is the same
    dataset, an edited file another."""
    s = {k: v for k, v in asdict(config).items() if not at_added_default(config, k)}
    s["sources"] = markets[1:]
    if published is not None:
        s.pop("qrels", None)
        s["candidates"] = published
    return s


def prepare(
    data_dir: Path, out_dir: Path | None, config: PrepareConfig, *, overwrite: bool = False, on_step: Step = _noop
) -> PreparedDataset:
    """Reads, filters, splits and samples candidates; writes the dataset atomically to `out_dir`
    (unless None) and returns it. Same inputs and configuration give byte-identical output."""
    inputs = [Path(data_dir), *(Path(p) for p in (*(config.candidates or {}).values(), *(config.qrels or {}).values()))]
    if out_dir is not None:  # before the work: refused at once, not after minutes of it
        from xmfast import outputs
        from xmfast._io import check_output

        check_output(Path(out_dir), outputs.DATASET, inputs=inputs, overwrite=overwrite)
    on_step("read")
    published = None
    if config.candidates is not None:  # a malformed file is reported before the ratings are read
        published = read_candidates(config.candidates, config.qrels, config.eval_negatives)
    markets, ratings = load_inputs(data_dir, config)
    if published is not None:
        check_known(published, ratings.users, ratings.items)
    on_step("filter")
    ratings = filter_ratings(ratings, markets, config)
    on_step("split")
    split = split_ratings(ratings, markets, config, published)
    del ratings  # the split holds what it needs; freeing the table lowers peak memory by ~1 GB at 50M
    dataset = sample_candidates(split, config)
    del split
    if out_dir is None:
        return dataset
    on_step("write")
    dataset.save(Path(out_dir), overwrite=overwrite, inputs=inputs)
    return PreparedDataset.load(Path(out_dir), just_written=True)
