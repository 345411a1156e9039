"""Type stubs of the Rust extension `xmfast.core` (see rust/bindings/src/lib.rs).

Arrays are passed without copies: inputs must be C-contiguous with the stated dtype; outputs
are numpy arrays that own memory allocated in Rust. Long work runs with the GIL released.
"""

from os import PathLike
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str
XMARKET_MARKETS: list[str]

class DataFormatError(ValueError):
    """A rating file is malformed; the message is `file:line: what is wrong`."""

class Vocab:
    """Interned id strings numbered 0..len in first-appearance order."""

    def __init__(self, ids: list[str] | None = None) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> str: ...
    def __contains__(self, key: str) -> bool: ...
    def index(self, key: str) -> int: ...
    def get(self, key: str) -> int | None: ...
    def encode(self, keys: list[str]) -> npt.NDArray[np.int64]: ...
    def to_list(self) -> list[str]: ...
    def subset(self, keep: npt.NDArray[np.uint32]) -> Vocab: ...
    def stable_hashes(self) -> npt.NDArray[np.uint64]: ...
    def order_keys(self) -> npt.NDArray[np.uint32]: ...
    def write(self, path: str | PathLike[str]) -> None: ...
    @staticmethod
    def read(path: str | PathLike[str]) -> Vocab: ...

class TrainNegativeSampler:
    """`k` negatives per training row per epoch, keyed by (seed, epoch, group)."""

    def __init__(
        self,
        row_offsets: npt.NDArray[np.uint64],
        group_pool: npt.NDArray[np.uint32],
        pool_offsets: npt.NDArray[np.uint64],
        pool_items: npt.NDArray[np.uint32],
        exclude_offsets: npt.NDArray[np.uint64],
        exclude_items: npt.NDArray[np.uint32],
        k: int,
        seed: int,
    ) -> None: ...
    @property
    def rows(self) -> int: ...
    @property
    def k(self) -> int: ...
    def sample(self, epoch: int) -> npt.NDArray[np.uint32]: ...
    def sample_into(self, out: npt.NDArray[np.uint32], epoch: int) -> None: ...

def gather_instances(
    order: npt.NDArray[np.int64],
    keys: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    negatives: npt.NDArray[np.uint32],
    rows: npt.NDArray[np.int64],
    out_keys: npt.NDArray[np.int64],
    out_items: npt.NDArray[np.int64],
    out_labels: npt.NDArray[np.float32],
) -> None:
    """An epoch's pointwise instances in `order`, written into the three outputs (each as long as
    `order`): instance ``p < n`` is row ``p``'s positive (``keys[p]``, ``items[p]``, 1), instance
    ``n + r·k + c`` row ``r``'s ``c``-th negative (``keys[r]``, ``negatives[rows[r], c]``, 0)."""

def file_digest(path: str | PathLike[str]) -> str:
    """blake3 of the file's bytes on disk (hex), as ``read_ratings`` records it per input and a
    prepared dataset's manifest per file; streamed, on all cores, with the GIL released."""

def read_ratings(sources: list[tuple[str, str | PathLike[str]]]) -> dict[str, Any]: ...
def read_inputs(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Inputs of several formats into one table with shared vocabularies (the dict
    ``read_ratings`` returns). Each input: ``market`` (str, or None: a market column decides),
    ``path``, ``kind``: ``"xmarket"``; ``"delimited"`` with ``delimiter``, ``user``/``item``/``time``
    (lists of accepted header names), ``rating``/``market_column`` (lists) and
    ``rating_required``/``market_required``; ``"columns"`` with ``batches``: dicts of ``user``,
    ``item`` (Arrow string buffers: (uint8 data, int32|int64 offsets)), ``rating`` (float32 or
    None), ``day`` (int32) or ``time_text`` (strings), ``market`` (strings or None)."""
    ...

def map_columns(header: list[str], mapping: dict[str, Any], market_given: bool) -> dict[str, int | None]:
    """Index of each role's column among ``header`` by the delimited files' rule (DataFormatError
    naming the column, the names tried and the header when one is missing)."""
    ...

def check_market_name(name: str) -> bool:
    """Whether ``name`` may name a market: letters, digits, ``_`` and ``-`` (the core's one rule)."""
    ...
def kcore_mask(
    market: npt.NDArray[np.uint16],
    user: npt.NDArray[np.uint32],
    item: npt.NDArray[np.uint32],
    min_user: int,
    min_item: int,
    fixpoint: bool = False,
) -> npt.NDArray[np.bool_]: ...
def restrict_items_mask(item: npt.NDArray[np.uint32], allowed: npt.NDArray[np.uint32]) -> npt.NDArray[np.bool_]: ...
def compact_ids(ids: npt.NDArray[np.uint32]) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]: ...
def market_items(
    market: npt.NDArray[np.uint16], item: npt.NDArray[np.uint32], n_markets: int
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint32]]: ...
def leave_one_out(
    market: npt.NDArray[np.uint16],
    user: npt.NDArray[np.uint32],
    item: npt.NDArray[np.uint32],
    day: npt.NDArray[np.int32],
    *,
    order: str = "temporal",
    seed: int = 0,
    dedup: bool = False,
    min_interactions: int = 3,
    market_keys: npt.NDArray[np.uint64] | None = None,
    user_keys: npt.NDArray[np.uint64] | None = None,
) -> dict[str, Any]: ...
def eval_candidates(
    *,
    group_market: npt.NDArray[np.uint16],
    group_user: npt.NDArray[np.uint32],
    train_offsets: npt.NDArray[np.uint64],
    train_items: npt.NDArray[np.uint32],
    heldout_groups: npt.NDArray[np.uint32],
    valid_item: npt.NDArray[np.uint32],
    test_item: npt.NDArray[np.uint32],
    market_item_offsets: npt.NDArray[np.uint64],
    market_items: npt.NDArray[np.uint32],
    protocol: str,
    negatives: int,
    seed: int,
    market_keys: npt.NDArray[np.uint64],
    user_keys: npt.NDArray[np.uint64],
    market_names: list[str],
    users: Vocab,
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]: ...
def sample_distinct(
    pool_offsets: npt.NDArray[np.uint64],
    pool_items: npt.NDArray[np.uint32],
    query_pool: npt.NDArray[np.uint32],
    exclude_offsets: npt.NDArray[np.uint64],
    exclude_items: npt.NDArray[np.uint32],
    query_keys: npt.NDArray[np.uint64],
    n: int,
    seed: int,
) -> npt.NDArray[np.uint32]: ...
def cooccurrence(
    history_offsets: npt.NDArray[np.uint64],
    history_items: npt.NDArray[np.uint32],
    group_market: npt.NDArray[np.uint16],
    markets: list[int],
    n_items: int,
    max_history: int | None = None,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint32], npt.NDArray[np.uint32]]: ...
def cooc_scores(
    cooc_indptr: npt.NDArray[np.uint64],
    cooc_indices: npt.NDArray[np.uint32],
    cooc_counts: npt.NDArray[np.uint32],
    history_offsets: npt.NDArray[np.uint64],
    history_items: npt.NDArray[np.uint32],
    groups: npt.NDArray[np.uint32],
    items: npt.NDArray[np.uint32],
) -> npt.NDArray[np.float64]: ...
def shared_pairs(
    a_indptr: npt.NDArray[np.uint64],
    a_indices: npt.NDArray[np.uint32],
    b_indptr: npt.NDArray[np.uint64],
    b_indices: npt.NDArray[np.uint32],
) -> int: ...
def synthesize(
    out_dir: str | PathLike[str],
    markets: list[str],
    *,
    ratings: int,
    items: int,
    topics: int = 40,
    min_per_user: int = 5,
    mean_per_user: float = 9.0,
    focus: float = 0.8,
    size_decay: float = 1.0,
    seed: int = 0,
    raw_category: str | None = None,
) -> list[dict[str, Any]]: ...
def standings(
    scores: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    positive: npt.NDArray[np.uint32] | None = None,
    *,
    offsets: npt.NDArray[np.uint64] | None = None,
    exclude_offsets: npt.NDArray[np.uint64] | None = None,
    exclude_items: npt.NDArray[np.uint32] | None = None,
    keys: npt.NDArray[np.uint32] | None = None,
    column_keys: npt.NDArray[np.uint32] | None = None,
) -> dict[str, npt.NDArray[np.uint32]]:
    """Per query: `greater`, `ties`, `trec_lost` and `others` (see xmfast.evaluation)."""

def metric_values(
    greater: npt.NDArray[np.uint32],
    ties: npt.NDArray[np.uint32],
    trec_lost: npt.NDArray[np.uint32],
    others: npt.NDArray[np.uint32],
    metrics: list[str],
    policy: str = "pessimistic",
) -> tuple[list[str], npt.NDArray[np.float64]]: ...
def column_means(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Means of a C-contiguous 2-d matrix's columns, the rows added in order: numpy's
    ``mean(axis=0)`` to the bit when there are two or more columns."""
    ...
def top_k(
    scores: npt.NDArray[np.float32] | npt.NDArray[np.float64],
    k: int,
    *,
    exclude_offsets: npt.NDArray[np.uint64] | None = None,
    exclude_items: npt.NDArray[np.uint32] | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32] | npt.NDArray[np.float64]]: ...
def padded_histories(
    history_offsets: npt.NDArray[np.uint64],
    history_items: npt.NDArray[np.uint32],
    rows: npt.NDArray[np.uint32],
    width: int,
    pad: int,
    rule: str = "recent",
    seed: int = 0,
    keys: npt.NDArray[np.uint64] | None = None,
    cooc_indptr: npt.NDArray[np.uint64] | None = None,
    cooc_indices: npt.NDArray[np.uint32] | None = None,
    cooc_counts: npt.NDArray[np.uint32] | None = None,
    leave_out: npt.NDArray[np.uint32] | None = None,
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    """Fixed-width histories of `rows` (left-aligned, time order, padded with `pad`) and the
    length kept of each; longer ones are cut by `rule`: recent, random (keyed by `keys`) or cooc.
    `leave_out[r]` drops that position of row r's history first (2**32 - 1: none)."""
    ...
def attention(
    qkv: npt.NDArray[np.float32], real: npt.NDArray[np.bool_], heads: int, scale: float, parallel: bool = True
) -> npt.NDArray[np.float32]:
    """Multi-head self-attention of padded sequences, forward only: `qkv` (n, width, 3·d) as an
    input projection writes it, `real` (n, width); (n, width, d), each real position's softmax over
    the real keys of `scale`·q·k applied to v, zero at padded positions. `parallel`: on the core's
    threads (False: the calling thread only). Releases the GIL."""
    ...
def encoder(
    x: npt.NDArray[np.float32],
    real: npt.NDArray[np.bool_],
    blocks: list[dict[str, npt.NDArray[np.float32]]],
    heads: int,
    eps: float,
    parallel: bool = True,
) -> npt.NDArray[np.float32]:
    """Post-norm transformer encoder blocks (``nn.TransformerEncoderLayer``'s maths, ReLU, in
    evaluation) on padded sequences, all blocks in one call: `x` (n, width, d), `real` (n, width);
    `blocks` one dict per block of float32 arrays named as ACMR's ``EncoderBlock`` state dict
    (``in_proj.weight`` (3d, d), ``in_proj.bias``, ``out_proj.*``, ``ff1.*``, ``ff2.*``, ``norm1.*``,
    ``norm2.*``), `eps` the norms'. Returns (n, width, d): every real position's output, zero at
    padded positions, which are never attended to. KeyError names a missing parameter, ValueError
    a wrong shape. `parallel`: on the core's threads. Releases the GIL."""
    ...
def parse_date(text: str) -> int: ...
def format_date(day: int) -> str: ...
def t_two_sided_p(t: float, df: float) -> float: ...
def stable_hash(text: str) -> int: ...
def num_threads() -> int: ...
def _panic_for_tests(message: str) -> None: ...
