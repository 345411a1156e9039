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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xmfast import core
from xmfast._added import added, at_added_default
from xmfast._io import digest_json
from xmfast.candidates import CandidateList, check_known, forced_split, read_candidates
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
    # Published candidates instead of sampled ones (xmfast.candidates): {"valid": PATH, "test": PATH},
    # and for the WSDM Cup run layout {"valid": QRELS, "test": QRELS} naming each user's positive.
    candidates: Mapping[str, str] | None = added(None)
    qrels: Mapping[str, str] | None = added(None)

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
        for name in ("candidates", "qrels"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, Mapping) or set(value) - {"valid", "test"}:
                    raise XmfastError(f"{name} maps the splits valid and test to files, got {value!r}")
                object.__setattr__(self, name, {k: str(Path(v)) for k, v in sorted(value.items())})
        if self.qrels and not self.candidates:
            raise XmfastError(f"qrels name the positives of published candidates: give the run files too "
                              f"({argument('candidates', None, metavar='SPLIT=FILE')})")


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
    data = DataSource.of(data).ignoring(
        Path(f) for key in ("candidates", "qrels") for f in (settings.get(key) or {}).values())
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


def published_files(config: PrepareConfig) -> list[Path]:
    """The published candidate and qrels files a configuration reads (never rating files)."""
    return [Path(p) for p in (*(config.candidates or {}).values(), *(config.qrels or {}).values())]


Step = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def load_inputs(data: DataSource | Path, config: PrepareConfig, on_note: Step = _noop) -> tuple[list[str], Ratings]:
    """Finds and parses the files the configuration needs (reference market included);
    `on_note` hears about the data directory's files that match no rule (they are not read)."""
    data = DataSource.of(data).ignoring(published_files(config))
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
    data: DataSource | Path, out_dir: Path | None, config: PrepareConfig, *, overwrite: bool = False,
    on_step: Step = _noop, on_note: Step = _noop,
) -> PreparedDataset:
    """Reads, filters, splits and samples candidates; writes the dataset atomically to `out_dir`
    (unless None) and returns it. Same inputs and configuration give byte-identical output."""
    inputs = [*DataSource.of(data).inputs, *published_files(config)]
    if out_dir is not None:  # before the work: refused at once, not after minutes of it
        from xmfast import outputs
        from xmfast._io import check_output

        check_output(Path(out_dir), outputs.DATASET, inputs=inputs, overwrite=overwrite)
    on_step("read")
    published = None
    if config.candidates is not None:  # a malformed file is reported before the ratings are read
        published = read_candidates(config.candidates, config.qrels, config.eval_negatives)
    markets, ratings = load_inputs(data, config, on_note)
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
