"""ACMR's released checkpoints (laowangzi/ACMR) as xmfast runs: `xmfast import-acmr`.

The authors published one pre-trained and one fine-tuned state dict per target market, with the
training log of each run. Their weights index items and markets by the order the original code
read the data: the log's source markets in its order, then the target; within a market, each new
item id of its ``*_5core.txt`` file, in file order, takes the next index from 1 (0 is padding).
The import rebuilds that vocabulary from the raw files of a prepared dataset (checked against
the dataset's recorded digests), maps the token and market rows onto xmfast's item and market
indices, renames the layers to :class:`xmfast.models.acmr.ACMR`'s (the maths is the same:
post-norm encoder blocks, embedding LayerNorm, mean of the history positions beside the
candidate position, a linear output), and writes a finished run that every command reads like a
trained ACMR run, labelled ``acmr (released)`` so that no table mistakes it for xmfast's ACMR.

Each input is checked before anything is written, each failure one error naming its file: the
checkpoint is read with ``torch.load(weights_only=True)`` (a pickle that would run code is
refused, never executed); its keys and shapes must be the architecture the log's settings
describe, its token rows the vocabulary's size and its market rows the markets' count plus one;
and the log's data statistics (users, items, ratings per market, printed in the order the
original read the markets) must agree with the dataset, market by market, so a log from another
run, an edited market order or another data directory is detected.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmfast.errors import XmfastError, argument

RELEASED_LABEL = "acmr (released)"
STAGES = {"finetune": RELEASED_LABEL, "pretrain": "acmr (released, pre-trained)"}
_STATS = re.compile(r"^(\w+): users num=(\d+), item num=(\d+), ratings=(\d+), sparsity=")
_NAME = re.compile(r"^ACMR_(\w+)_(pretrain|finetune)\.pt$")


@dataclass(frozen=True)
class ReleaseLog:
    """What a training log of the original code says: its settings (line 2) and the statistics
    it printed of each market, in the order it read them."""

    path: Path
    target: str
    sources: tuple[str, ...]
    settings: dict[str, Any]
    stats: dict[str, tuple[int, int, int]]  # market -> (users, items, ratings)

    @property
    def order(self) -> tuple[str, ...]:
        """The markets in the order the original indexed them: the sources as logged, then the target."""
        return (*self.sources, self.target)


def read_log(path: Path) -> ReleaseLog:
    """Parses a log of laowangzi/ACMR's train_model.py (see :class:`ReleaseLog`)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise XmfastError(f"{path}: cannot read the ACMR log ({e.__class__.__name__}); give the log of the run "
                          "that wrote the checkpoint (logs/MKT.log of the release)") from None
    try:
        settings = ast.literal_eval(lines[1]) if len(lines) > 1 else None
    except (ValueError, SyntaxError):
        settings = None
    if not isinstance(settings, dict) or not isinstance(settings.get("tgt_mkt"), list) \
            or not isinstance(settings.get("src_mkt"), list) or len(settings["tgt_mkt"]) != 1:
        raise XmfastError(f"{path}, line 2: not the original's settings (a Python dict with tgt_mkt and src_mkt); "
                          "give the log of the run that wrote the checkpoint")
    target, sources = str(settings["tgt_mkt"][0]), tuple(map(str, settings["src_mkt"]))
    order = (*sources, target)
    if len(set(order)) != len(order):
        raise XmfastError(f"{path}, line 2: a market appears twice in src_mkt + tgt_mkt ({', '.join(order)})")
    stats: dict[str, tuple[int, int, int]] = {}
    seen: list[str] = []
    for n, line in enumerate(lines, 1):
        m = _STATS.match(line)
        if m and len(seen) < len(order):
            seen.append(m.group(1))
            stats[m.group(1)] = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
            if seen != list(order[:len(seen)]):
                raise XmfastError(
                    f"{path}, line {n}: the statistics of {m.group(1)} where the original, reading the markets in "
                    f"line 2's order ({', '.join(order)}), printed {order[len(seen) - 1]}: the market order on "
                    "line 2 is not the one the run used (edited?); the weights cannot be mapped")
    if len(seen) < len(order):
        raise XmfastError(f"{path}: {len(seen)} market statistics lines ('MKT: users num=…'), expected one per "
                          f"market of line 2 ({len(order)}); give the complete log of the run")
    return ReleaseLog(path, target, sources, settings, stats)


def read_state(path: Path) -> dict[str, Any]:
    """The checkpoint's state dict, read with ``weights_only=True``: tensors and plain data only."""
    import torch

    from xmfast.training.checkpoints import load_untrusted

    path = Path(path)
    if not path.is_file():
        raise XmfastError(f"{path}: no such checkpoint file")
    state = load_untrusted(path, "a plain state dict of tensors",
                           "give one of the release's checkpoints/ACMR_MKT_{pretrain,finetune}.pt")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise XmfastError(f"{path}: not a state dict (a dict of named tensors) but a {type(state).__name__}")
    return state


def expected_shapes(log: ReleaseLog, n_items: int) -> dict[str, tuple[int, ...]]:
    """The state dict the original's ACMR has under the log's settings, for `n_items` items:
    its token table has ``n_items + 5`` rows (the original's ``item_num + 3`` with ``item_num`` =
    the last index + 1; padding row 0) and its market table one row more than the markets."""
    s = log.settings
    d, blocks = int(s.get("latent_dim", 32)), int(s.get("bert_num_blocks", 4))
    shapes: dict[str, tuple[int, ...]] = {
        "bert.embedding.token.weight": (n_items + 5, d),
        "bert.embedding.market_embedding.weight": (len(log.order) + 1, d),
        "bert.embedding.LayerNorm.weight": (d,), "bert.embedding.LayerNorm.bias": (d,),
        "out.weight": (1, 2 * d), "out.bias": (1,),
    }
    for i in range(blocks):
        p = f"bert.transformer_blocks.layers.{i}."
        shapes.update({
            p + "self_attn.in_proj_weight": (3 * d, d), p + "self_attn.in_proj_bias": (3 * d,),
            p + "self_attn.out_proj.weight": (d, d), p + "self_attn.out_proj.bias": (d,),
            p + "linear1.weight": (4 * d, d), p + "linear1.bias": (4 * d,),
            p + "linear2.weight": (d, 4 * d), p + "linear2.bias": (d,),
            p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "norm2.weight": (d,), p + "norm2.bias": (d,),
        })
    return shapes


def check_state(path: Path, state: dict[str, Any], log: ReleaseLog, n_items: int) -> None:
    """The checkpoint is the architecture of the log's settings with the vocabulary's sizes
    (``bert.encoder_layer.*``, an unused copy of a layer, is ignored)."""
    want = expected_shapes(log, n_items)
    have = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("bert.encoder_layer.")}
    missing = [k for k in want if k not in have]
    if missing:
        raise XmfastError(f"{path}: no {missing[0]} ({len(missing)} of the original ACMR's keys missing); not an "
                          f"ACMR checkpoint of {log.path}'s settings")
    extra = sorted(set(have) - set(want))
    if extra:
        raise XmfastError(f"{path}: unexpected key {extra[0]} (the log's settings have "
                          f"{log.settings.get('bert_num_blocks', 4)} blocks); not a checkpoint of {log.path}'s run")
    for key, shape in want.items():
        if have[key] != shape:
            why = {"bert.embedding.token.weight": f" ({n_items:,} items + 5, as the original sizes its vocabulary)",
                   "bert.embedding.market_embedding.weight": f" ({len(log.order)} markets + 1)"}.get(key, "")
            raise XmfastError(f"{path}: {key} has shape {list(have[key])}, expected {list(shape)}{why}; the checkpoint "
                              f"belongs to other data or settings than {log.path}")


def original_vocabulary(files: dict[str, Path], order: tuple[str, ...]) -> dict[str, int]:
    """Item id -> the original's index: markets in `order`, each file's rows in order, each new
    item id the next index from 1 (``ID_Bank.query_item_index``)."""
    vocab: dict[str, int] = {}
    for market in order:
        path = files[market]
        with open(path, encoding="utf-8") as f:
            header = f.readline().split()
            if "itemId" not in header:
                raise XmfastError(f"{path}, line 1: no itemId column (header {' '.join(header)!r}); expected an "
                                  "XMarket *_5core.txt file")
            col = header.index("itemId")
            for n, line in enumerate(f, 2):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) <= col:
                    raise XmfastError(f"{path}, line {n}: {len(parts)} fields, no itemId")
                vocab.setdefault(parts[col], len(vocab) + 1)
    return vocab


def raw_files(dataset: Any, data: Path) -> dict[str, Path]:
    """The dataset's rating files found in `data`, each checked against the digest the dataset
    recorded, so the vocabulary is built from exactly the files the dataset was prepared from."""
    from xmfast import core

    out: dict[str, Path] = {}
    for record in dataset.manifest.get("inputs", []):
        path = Path(data) / str(record["file"])
        if not path.is_file():
            raise XmfastError(f"{path}: missing; {argument('data', None, metavar='DIR')} must be the directory of the "
                              f"rating files {dataset.path} was prepared from")
        if record.get("blake3") and core.file_digest(str(path)) != record["blake3"]:
            raise XmfastError(f"{path}: differs from the file {dataset.path} was prepared from (blake3 digest); give "
                              "the directory of the same files")
        out[str(record["market"])] = path
    return out


def dataset_stats(dataset: Any) -> dict[str, tuple[int, int, int]]:
    """Users, items and ratings per market, as the original's log counts them (every row)."""
    group_market = np.asarray(dataset.group_market, dtype=np.int64)
    rows = np.diff(np.asarray(dataset.train_offsets, dtype=np.int64))
    held = np.zeros(dataset.n_groups, dtype=np.int64)
    for split in (dataset.valid, dataset.test):
        np.add.at(held, np.asarray(split.group, dtype=np.int64), 1)
    catalog = np.diff(np.asarray(dataset.market_item_offsets, dtype=np.int64))
    out = {}
    for m, name in enumerate(dataset.markets):
        mine = group_market == m
        out[name] = (int(mine.sum()), int(catalog[m]), int(rows[mine].sum() + held[mine].sum()))
    return out


def check_stats(log: ReleaseLog, dataset: Any) -> None:
    """The log's statistics equal the dataset's, market by market."""
    if dataset.target != log.target:
        raise XmfastError(f"{log.path}: the run's target is {log.target}, the dataset's ({dataset.path}) is "
                          f"{dataset.target}; prepare the dataset with --target {log.target} or give that target's log")
    ours = dataset_stats(dataset)
    for market in log.order:
        if market not in ours:
            raise XmfastError(f"{log.path}: market {market} is not in {dataset.path} (it has "
                              f"{', '.join(dataset.markets)}); prepare it with --sources all")
        if ours[market] != log.stats[market]:
            u, i, r = log.stats[market]
            du, di, dr = ours[market]
            raise XmfastError(f"{log.path}: {market} has {u:,} users, {i:,} items, {r:,} ratings in the log but "
                              f"{du:,}, {di:,}, {dr:,} in {dataset.path}: another data set or market order; prepare "
                              "the dataset from the files the run read, with no filtering")


def mapped_state(state: dict[str, Any], log: ReleaseLog, dataset: Any, vocab: dict[str, int]) -> dict[str, Any]:
    """The checkpoint as :class:`xmfast.models.acmr.ACMR`'s state dict on `dataset`'s indices."""
    import torch

    items = dataset.items.to_list()
    missing = [i for i in items if i not in vocab]
    if missing:
        raise XmfastError(f"{log.path}: item {missing[0]} of the dataset is in none of the markets the log names")
    extra = [m for m in dataset.markets if m not in log.order]
    if extra:
        raise XmfastError(f"{log.path}: the dataset {dataset.path} has market {extra[0]}, which the run never read; "
                          f"prepare it with the log's markets only ({', '.join(log.order)})")
    index = torch.tensor([vocab[i] for i in items] + [0])  # xmfast's padding row n_items <- the original's row 0
    markets = torch.tensor([log.order.index(m) for m in dataset.markets])
    out = {
        "item_embedding.weight": state["bert.embedding.token.weight"][index],
        "market_embedding.weight": state["bert.embedding.market_embedding.weight"][markets],
        "embedding_norm.weight": state["bert.embedding.LayerNorm.weight"],
        "embedding_norm.bias": state["bert.embedding.LayerNorm.bias"],
        "output.weight": state["out.weight"], "output.bias": state["out.bias"],
    }
    names = {"self_attn.in_proj_weight": "in_proj.weight", "self_attn.in_proj_bias": "in_proj.bias",
             "self_attn.out_proj.weight": "out_proj.weight", "self_attn.out_proj.bias": "out_proj.bias",
             "linear1.weight": "ff1.weight", "linear1.bias": "ff1.bias", "linear2.weight": "ff2.weight",
             "linear2.bias": "ff2.bias", "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
             "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias"}
    for i in range(int(log.settings.get("bert_num_blocks", 4))):
        for theirs, ours in names.items():
            out[f"blocks.{i}.{ours}"] = state[f"bert.transformer_blocks.layers.{i}.{theirs}"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def model_config(log: ReleaseLog) -> Any:
    """xmfast's ACMR settings that are the original's under the log's settings."""
    from xmfast.models import get_model

    s = log.settings
    return get_model("acmr").config_from({
        "embedding_dim": int(s.get("latent_dim", 32)), "blocks": int(s.get("bert_num_blocks", 4)),
        "heads": int(s.get("bert_num_heads", 8)), "ff_multiplier": 4, "dropout": float(s.get("dropout", 0.3)),
        "history": int(s.get("bert_max_len", 51)) - 1, "truncation": "random", "embedding_norm": True,
    })


def released_model(checkpoint: Path, log_path: Path, dataset: Any, data: Path) -> tuple[Any, dict[str, Any], str]:
    """Every check (see the module docstring), then xmfast's ACMR settings, its state dict on
    `dataset`'s indices and the label the run gets (``acmr (released)``, or ``acmr (released,
    pre-trained)`` for a ``*_pretrain.pt``)."""
    checkpoint, log_path = Path(checkpoint), Path(log_path)
    log = read_log(log_path)
    named = _NAME.match(checkpoint.name)
    if named and named.group(1) != log.target:
        raise XmfastError(f"{checkpoint}: a checkpoint for target {named.group(1)}, but {log_path} is the log of the "
                          f"{log.target} run; give logs/{named.group(1).upper()}.log")
    check_stats(log, dataset)
    vocab = original_vocabulary(raw_files(dataset, Path(data)), log.order)
    state = read_state(checkpoint)
    check_state(checkpoint, state, log, len(vocab))
    label = STAGES[named.group(2)] if named else RELEASED_LABEL
    return model_config(log), mapped_state(state, log, dataset, vocab), label


def import_release(checkpoint: Path, log_path: Path, dataset_path: Path, data: Path, out: Path, *,
                   overwrite: bool = False, device: str = "auto") -> Any:
    """Checks the inputs (see the module docstring), then writes the run at `out` with its test
    evaluation (test.json, results.json); returns the :class:`xmfast.runs.Run`."""
    import platform

    import torch

    from xmfast import core
    from xmfast._io import digest_file, write_json_atomic
    from xmfast.dataset import PreparedDataset
    from xmfast.evaluation import RUN_EVAL, evaluate_scorer
    from xmfast.models import get_model
    from xmfast.runs import Run, to_plain
    from xmfast.training.checkpoints import CHECKPOINT_VERSION
    from xmfast.training.engine import load_scorer

    checkpoint, log_path = Path(checkpoint), Path(log_path)
    dataset = PreparedDataset.load(Path(dataset_path))
    config, weights, label = released_model(checkpoint, log_path, dataset, data)
    spec = get_model("acmr")
    sources = tuple(m for m in dataset.markets if m != dataset.target)
    train_config = spec.train_config(sources=sources, seed=0)
    info = {
        "model": spec.name,
        "label": label,
        "model_config": to_plain(config),
        "train_config": to_plain(train_config),
        "dataset": {"path": str(Path(dataset_path).resolve()), "fingerprint": dataset.fingerprint,
                    "protocol": dataset.protocol},
        "target": dataset.target,
        "pretrained": {},
        "imported": {"from": "laowangzi/ACMR (released weights)", "checkpoint": str(checkpoint.resolve()),
                     "checkpoint_blake2b": digest_file(checkpoint), "log": str(log_path.resolve()),
                     "log_blake2b": digest_file(log_path)},
        "versions": {"xmfast": core.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "status": "created",
    }
    run = Run.create(out, info, overwrite=overwrite, inputs=[Path(dataset_path), checkpoint, log_path])
    with run.writing():
        tmp = run.best_checkpoint.with_name(".best.pt.partial")
        torch.save({"version": CHECKPOINT_VERSION, "dataset": dataset.fingerprint, "model_name": spec.name,
                    "epoch": 0, "model": weights}, tmp)
        tmp.replace(run.best_checkpoint)
        # the test split only: nothing is selected on validation (a released model is what it is),
        # and each evaluation scores every candidate with a whole sequence (minutes per market on a CPU)
        prepared = run.load_dataset()
        test = evaluate_scorer(prepared, "test", load_scorer(run, prepared, device=device), RUN_EVAL,
                               markets=[prepared.target])
        test.info.update({"run": str(run.path), "model": run.model})
        test.to_json(run.path / "test.json")
        write_json_atomic(run.path / "results.json", {
            "model": run.model, "selected_epoch": None, "target": prepared.target, "valid": {}, "test": test.aggregate(),
            "queries": len(test), "imported": True,
        })
        run.save_info(status="finished")
    return run


__all__ = ["RELEASED_LABEL", "ReleaseLog", "check_state", "check_stats", "import_release", "mapped_state",
           "original_vocabulary", "read_log", "read_state", "released_model"]
