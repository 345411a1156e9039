"""Published validation and test candidates (``xmfast prepare --candidates``).

A published split fixes, per evaluated user of the target market, the held-out item and the
items it is ranked against; using them instead of sampled ones makes results comparable with
the publication. Two layouts, no header, UTF-8, one line per user:

* plain: ``user<TAB>heldout<TAB>neg1<TAB>neg2…`` or ``user<TAB>heldout<TAB>neg1,neg2,…`` (the
  negatives in fields of their own, or in one comma-separated third field; ids therefore hold
  neither a tab nor a comma);
* the WSDM Cup 2022 XMRec pair: a run file ``userId<TAB>item1,item2,…`` (unlabelled candidates)
  with its qrels file ``userId<TAB>itemId<TAB>rating`` (an optional ``userId itemId rating``
  header) naming each user's positive, which must be one of that user's candidates.

How they enter the split (:func:`forced_split`): each line's held-out item becomes its (target
market, user) group's row; the ratings' own row moves out of training (rating and day kept; the
latest of repeated ones), and a pair the ratings lack (XMRec leaves held-out positives out of its
training files) becomes a new row, rated as its qrels line says (1.0 in the plain layout), dated
on the group's last training day (validation) and then on the validation day (test), so a
held-out row never precedes training. Groups of the target without a line are training-only;
other markets are split and sampled as without candidates. The negatives are taken as given (not
checked against the user's ratings): they are the publication's.

Strict rather than forgiving: filtering (k-core, reference market) runs first, on the ratings
alone, and an id it removed or no rating file holds is an error naming the line, never a skipped
user, since results on fewer users than published are not comparable with the publication.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmfast import core
from xmfast._trec_format import _lines as text_lines
from xmfast.errors import DataError, XmfastError, argument, spelled

SPLITS = ("valid", "test")
ALL_TRAINING = 2**62  # min_interactions that keeps every group training-only (as xmfast.stats does)


@dataclass(frozen=True)
class CandidateList:
    """One split's published candidates as read: original ids, one entry per line, file order."""

    split: str
    files: dict  # what the manifest records: {"file", "blake3"} (+ "qrels": the same) per split
    where: list[str]  # "path:line" of each line (the run file's, in the pair layout)
    users: list[str]
    positives: list[str]
    negatives: list[list[str]]
    ratings: list[float]  # the held-out rating if the ratings lack the pair (qrels', else 1.0)

    @property
    def width(self) -> int:
        return 1 + len(self.negatives[0])


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Numbered non-blank lines split at tabs (the line end removed)."""
    for number, line in text_lines(path, "a candidates file"):
        yield number, line.rstrip("\r\n").split("\t")


def _ids(where: str, texts: list[str], what: str) -> list[str]:
    """`texts`, refused if one is empty or has surrounding spaces (a mangled or space-separated file)."""
    if "" in texts or (" " in "".join(texts) and any(t != t.strip() for t in texts)):
        bad = next(t for t in texts if not t or t != t.strip())
        raise DataError(f"{where}: empty {what} id, or one with surrounding spaces ({bad!r})")
    return texts


def _file_record(path: Path) -> dict:
    return {"file": path.name, "blake3": core.file_digest(str(path))}


def _read_plain(split: str, path: Path) -> CandidateList:
    where, users, positives, negatives = [], [], [], []
    for number, fields in _lines(path):
        at = f"{path}:{number}"
        if len(fields) < 3:
            raise DataError(f"{at}: expected user<TAB>held-out item<TAB>negatives (tab-separated, the negatives "
                            f"in fields of their own or comma-separated), found {len(fields)} field(s)")
        if len(fields) == 3:
            negs = fields[2].split(",")
        elif any("," in f for f in fields[2:]):
            raise DataError(f"{at}: negatives both in fields of their own and comma-separated; use one or the other")
        else:
            negs = fields[2:]
        where.append(at)
        users.append(_ids(at, [fields[0]], "user")[0])
        positives.append(_ids(at, [fields[1]], "item")[0])
        negatives.append(_ids(at, negs, "item"))
    files = _file_record(path)
    return CandidateList(split, files, where, users, positives, negatives, [1.0] * len(users))


def _read_qrels(path: Path) -> dict[str, tuple[str, float, str]]:
    """{user: (item, rating, "path:line")}."""
    out: dict[str, tuple[str, float, str]] = {}
    for number, fields in _lines(path):
        at = f"{path}:{number}"
        if len(fields) != 3:
            raise DataError(f"{at}: expected userId<TAB>itemId<TAB>rating (a qrels file), found {len(fields)} field(s)")
        if not out and [f.strip().lower() for f in fields] == ["userid", "itemid", "rating"]:
            continue  # the published header
        try:
            rating = float(fields[2])
        except ValueError:
            raise DataError(f"{at}: rating {fields[2]!r} is not a number") from None
        if not np.isfinite(rating):
            raise DataError(f"{at}: rating {fields[2]!r} is not a finite number")
        user, item = _ids(at, fields[:2], "user or item")
        if user in out:
            raise DataError(f"{at}: user {user} has a second positive (first at {out[user][2]}); "
                            "one held-out item per user")
        out[user] = (item, rating, at)
    return out


def _read_pair(split: str, run: Path, qrels_path: Path) -> CandidateList:
    qrels = _read_qrels(qrels_path)
    where, users, positives, negatives, ratings = [], [], [], [], []
    for number, fields in _lines(run):
        at = f"{run}:{number}"
        if len(fields) != 2:
            raise DataError(f"{at}: expected userId<TAB>item1,item2,… (a run file), found {len(fields)} field(s)")
        user = _ids(at, [fields[0]], "user")[0]
        items = _ids(at, fields[1].split(","), "item")
        if user not in qrels:
            raise DataError(f"{at}: user {user} has no line in {qrels_path}, which names each user's positive")
        item, rating, qat = qrels.pop(user)
        if item not in items:
            raise DataError(f"{at}: the positive of user {user} ({item}, {qat}) is not among the line's candidates")
        if len(set(items)) == len(items):
            items.remove(item)  # a repeat is reported below, as in the plain layout
        where.append(at)
        users.append(user)
        positives.append(item)
        negatives.append(items)
        ratings.append(rating)
    if qrels:
        user, (_, _, qat) = next(iter(qrels.items()))
        raise DataError(f"{qat}: user {user} has no line in the run file {run}")
    files = {**_file_record(run), "qrels": _file_record(qrels_path)}
    return CandidateList(split, files, where, users, positives, negatives, ratings)


def _check_lines(c: CandidateList) -> None:
    """One line per user, no repeated candidate, the same number of candidates on every line."""
    first: dict[str, str] = {}
    for at, user, positive, negs in zip(c.where, c.users, c.positives, c.negatives):
        if user in first:
            raise DataError(f"{at}: user {user} has a second line (first at {first[user]}); one line per user")
        first[user] = at
        if len({positive, *negs}) != 1 + len(negs):
            seen = {positive}
            for item in negs:
                if item in seen:
                    what = "the held-out item, which" if item == positive else "an item that"
                    raise DataError(f"{at}: {what} appears twice among the line's candidates ({item})")
                seen.add(item)
        if len(negs) != len(c.negatives[0]):
            raise DataError(f"{at}: {1 + len(negs)} candidates, but {c.where[0]} has {c.width}; "
                            "every line must have the same number")


def _option(negatives: int) -> str:
    return argument("eval_negatives", negatives)


def read_candidates(candidates: Mapping[str, str], qrels: Mapping[str, str] | None, eval_negatives: int,
                    setting: Callable[[int], str] | None = None) -> dict[str, CandidateList]:
    """Parses and cross-checks both splits' files (before the ratings are read, so a malformed
    file is reported at once); ids are matched to the ratings later (:func:`forced_split`).
    `setting(n)` spells the number of negatives the files need where the caller sets it."""
    qrels = dict(qrels or {})
    if sorted(candidates) != sorted(SPLITS):
        raise XmfastError("published candidates need a file for each of valid and test (got "
                          f"{', '.join(sorted(candidates)) or 'none'}): give "
                          + spelled("candidates={'valid': FILE, 'test': FILE}",
                                    "--candidates valid=FILE --candidates test=FILE"))
    if qrels and sorted(qrels) != sorted(SPLITS):
        raise XmfastError("qrels come with WSDM Cup run files for both valid and test (got "
                          f"{', '.join(sorted(qrels))}): give "
                          + spelled("qrels={'valid': FILE, 'test': FILE}", "--qrels valid=FILE --qrels test=FILE"))
    out = {}
    for split in SPLITS:
        path = Path(candidates[split])
        c = _read_pair(split, path, Path(qrels[split])) if split in qrels else _read_plain(split, path)
        if not c.users:
            raise DataError(f"{path}: no candidate lines")
        _check_lines(c)
        if c.width != eval_negatives + 1:
            raise XmfastError(f"{c.where[0]}: {c.width - 1} negatives per line, but the dataset is to store "
                              f"{eval_negatives}; give {(setting or _option)(c.width - 1)}")
        out[split] = c
    valid, test = out["valid"], out["test"]
    for a, b in ((valid, test), (test, valid)):
        missing = set(a.users) - set(b.users)
        if missing:
            i = next(i for i, u in enumerate(a.users) if u in missing)
            raise DataError(f"{a.where[i]}: user {a.users[i]} has no line in the {b.split} candidates "
                            f"({b.where[0].rsplit(':', 1)[0]}); validation and test need the same users")
    return out


def check_known(lists: dict[str, CandidateList], users: core.Vocab, items: core.Vocab) -> None:
    """Every id is in the rating files read (before filtering, to tell a typo or a wrong file
    from an id that filtering removed)."""
    for c in lists.values():
        for what, vocab, ids in (("user", users, c.users), ("item", items, c.positives)):
            bad = np.flatnonzero(vocab.encode(ids) < 0)
            if bad.size:
                raise DataError(f"{c.where[bad[0]]}: {what} {ids[bad[0]]} is in none of the rating files read")
        flat = [i for negs in c.negatives for i in negs]
        bad = np.flatnonzero(items.encode(flat) < 0)
        if bad.size:
            line = int(bad[0]) // (c.width - 1)
            raise DataError(f"{c.where[line]}: item {flat[bad[0]]} is in none of the rating files read")


def _date(day: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=int(day))).isoformat()


@dataclass
class ForcedSplit:
    """The target market's split with the published held-out rows (see the module docstring)."""

    group_user: np.ndarray  # target groups, ascending user number
    train_rows: np.ndarray  # indices into the rating table, each group's rows in sequence order
    train_offsets: np.ndarray
    heldout_groups: np.ndarray
    held: dict[str, dict[str, np.ndarray]]  # split -> item, rating, day, candidates
    duplicates_dropped: int
    rows_added: int  # held-out rows the ratings lacked


def _encode(c: CandidateList, users: core.Vocab, items: core.Vocab, group_user: np.ndarray, target: str,
            filtered: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A file's lines as (target group, held-out item, negatives) numbers; an id the filtered
    ratings lack is an error naming its line (:func:`check_known` already refused ids that no
    rating file holds)."""
    u = users.encode(c.users)
    pos = items.encode(c.positives)
    neg = items.encode([i for negs in c.negatives for i in negs]).reshape(len(c.users), c.width - 1)
    missing = [(what, i, ids[i]) for what, ids, codes in (("user", c.users, u), ("item", c.positives, pos))
               for i in np.flatnonzero(codes < 0)[:1]]
    missing += [("item", i, c.negatives[i][j]) for i, j in zip(*(x[:1] for x in np.nonzero(neg < 0)))]
    if missing:
        what, i, name = min(missing, key=lambda m: m[1])
        raise DataError(f"{c.where[i]}: {what} {name} is not in the ratings left after filtering ({filtered}); "
                        "lower the thresholds or leave the filter out")
    g = np.searchsorted(group_user, u)
    absent = (g >= group_user.size) | (group_user[np.minimum(g, group_user.size - 1)] != u)
    if absent.any():
        i = int(np.flatnonzero(absent)[0])
        raise DataError(f"{c.where[i]}: user {c.users[i]} has no rating in market {target}"
                        f"{' after filtering (' + filtered + ')' if filtered != 'none' else ''}")
    return g, pos, neg


def forced_split(lists: dict[str, CandidateList], users: core.Vocab, items: core.Vocab, market: np.ndarray,
                 user: np.ndarray, item: np.ndarray, rating: np.ndarray, day: np.ndarray, *, target: str,
                 order: str, seed: int, dedup: bool, min_interactions: int, market_keys: np.ndarray,
                 user_keys: np.ndarray, filtered: str) -> ForcedSplit:
    """Splits the target market's rows (market code 0) with the published held-out items;
    `filtered` says what filtering ran, for an id it removed."""
    rows = np.flatnonzero(market == 0)
    s = core.leave_one_out(
        market[rows], user[rows], item[rows], day[rows], order=order, seed=seed, dedup=dedup,
        min_interactions=ALL_TRAINING, market_keys=market_keys, user_keys=user_keys,
    )
    group_user, offsets, sequence = s["group_user"], s["train_offsets"].astype(np.int64), rows[s["train_rows"]]
    coded = {split: _encode(c, users, items, group_user, target, filtered) for split, c in lists.items()}

    # Per group, the rows the lines take (positions in `sequence`): test first (the latest
    # occurrence of its item), then validation (the latest one the test left).
    n_groups = group_user.size
    taken = {split: np.full(n_groups, -1, dtype=np.int64) for split in SPLITS}
    line_of = {split: np.full(n_groups, -1, dtype=np.int64) for split in SPLITS}
    for split in ("test", "valid"):
        c = lists[split]
        g, pos, _ = coded[split]
        line_of[split][g] = np.arange(g.size)
        for i in range(g.size):
            start = offsets[g[i]]
            p = start + np.flatnonzero(item[sequence[start:offsets[g[i] + 1]]] == pos[i])
            p = p[p != taken["test"][g[i]]]
            if p.size:
                taken[split][g[i]] = p[-1]
            elif split == "valid" and taken["test"][g[i]] >= 0 and pos[i] == item[sequence[taken["test"][g[i]]]]:
                raise DataError(f"{c.where[i]}: user {c.users[i]}'s validation and test items are both "
                                f"{c.positives[i]}, which the ratings of market {target} hold only once")
    heldout = np.flatnonzero(line_of["valid"] >= 0)  # ascending group: the order of the stored arrays
    keep = np.ones(sequence.size, dtype=bool)
    for split in SPLITS:
        keep[taken[split][taken[split] >= 0]] = False
    group_of_position = np.repeat(np.arange(n_groups), np.diff(offsets))
    train_rows = sequence[keep]
    train_offsets = np.zeros(n_groups + 1, dtype=np.uint64)
    np.cumsum(np.bincount(group_of_position[keep], minlength=n_groups), out=train_offsets[1:])
    sizes = np.diff(train_offsets).astype(np.int64)
    none = np.iinfo(np.int64).min
    last_day = np.full(n_groups, none, dtype=np.int64)
    nonempty = sizes > 0
    if train_rows.size:
        last_day[nonempty] = np.maximum.reduceat(day[train_rows].astype(np.int64),
                                                 train_offsets[:-1][nonempty].astype(np.int64))
    rows_added = 0
    previous_day = last_day
    held: dict[str, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        c = lists[split]
        _, pos, neg = coded[split]
        lines = line_of[split][heldout]
        t = np.where(taken[split][heldout] >= 0, sequence[np.maximum(taken[split][heldout], 0)], -1)
        have = t >= 0
        rows_added += int((~have).sum())
        ratings = np.where(have, rating[np.maximum(t, 0)], np.asarray(c.ratings, dtype=np.float32)[lines])
        days = np.where(have, day[np.maximum(t, 0)], np.where(previous_day[heldout] == none, 0, previous_day[heldout]))
        if order == "temporal":
            early = np.flatnonzero(days < previous_day[heldout])
            if early.size:
                k = int(early[0])
                i = int(lines[k])
                before = "its training rows" if split == "valid" else "its validation item"
                raise DataError(
                    f"{c.where[i]}: user {c.users[i]}'s held-out item {c.positives[i]} was rated on "
                    f"{_date(days[k])}, before the last of {before} ({_date(previous_day[heldout][k])}); protocol "
                    "forec holds out each user's latest items (use protocol acmr, whose order is random, "
                    "for a split that is not by date)")
        full = np.zeros(n_groups, dtype=np.int64)
        full[heldout] = days
        previous_day = np.where(line_of[split] >= 0, full, previous_day)
        held[split] = {
            "item": pos[lines].astype(np.uint32), "rating": ratings.astype(np.float32),
            "day": days.astype(np.int32),
            "candidates": np.ascontiguousarray(np.column_stack([pos[lines], neg[lines]]).astype(np.uint32)),
        }
    short = np.flatnonzero(sizes[heldout] < min_interactions - 2)
    if short.size:
        i = int(line_of["valid"][heldout[short[0]]])
        c = lists["valid"]
        raise DataError(f"{c.where[i]}: user {c.users[i]} has {int(sizes[heldout[short[0]]])} rating(s) in market "
                        f"{target} besides the held-out items; an evaluated user needs at least "
                        f"{min_interactions - 2} (min_interactions {min_interactions})")
    return ForcedSplit(group_user, train_rows, train_offsets, heldout.astype(np.uint32), held,
                       int(s["duplicates_dropped"]), rows_added)
