"""The effect of each training choice of FOREC's original recipe, one at a time, on test NDCG@10.

Each variant is xmfast's recipe with one setting of the original recipe turned on, trained from
the same runs as the xmfast rows of experiments/forec-xmfast.toml (same dataset, same seeds, the
same GMF/MLP/NMF++/MAML runs to start from), so the difference to that row is the choice's
effect alone. The last rows compare the two whole recipes (experiments/forec-original.toml).
It writes the table into docs/recipes.md between its markers and prints it.

    xmfast run experiments/forec-xmfast.toml && xmfast run experiments/forec-original.toml
    python docs/recipe_effects.py                  # about 20 minutes on 2 CPU cores
    TARGETS="jp" python docs/recipe_effects.py     # one target
"""

from __future__ import annotations

import json
import os
import re
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xmfast.dataset import PreparedDataset
from xmfast.models import get_model
from xmfast.runs import Run
from xmfast.training import finetune, train

ROOT = Path(__file__).resolve().parents[1]
XMFAST = ROOT / "runs" / "forec-xmfast"
ORIGINAL = ROOT / "runs" / "forec-original"
OUT = ROOT / "runs" / "recipe-effects"
TARGETS = os.environ.get("TARGETS", "jp in").split()
SEEDS = (1, 2, 3)


@dataclass(frozen=True)
class Choice:
    name: str  # the choice, as the table says it
    original: str  # what FOREC's code does
    xmfast: str  # what xmfast does by default
    model: str  # the row it changes: gmf, mlp, nmf, nmf++, maml, forec
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig settings
    settings: dict[str, Any] = field(default_factory=dict)  # model settings
    # The runs it starts from get the training settings too (NMF++ takes GMF++ and MLP++ runs
    # trained with its own sampling).
    branches_too: bool = False


CHOICES = [
    Choice("initialisation", "PyTorch's defaults: N(0, 1) embeddings, Kaiming-uniform layers", "N(0, 0.01²), zero biases",
           "gmf", settings={"init": "pytorch"}),
    Choice("training negatives", "drawn once before training", "drawn anew every epoch", "gmf",
           train={"resample_negatives": False}),
    Choice("reported epoch", "the last", "the best on validation", "gmf", train={"select": "last"}),
    Choice("MLP start", "GMF's trained embeddings", "its own initialisation", "mlp", settings={"from_gmf": True}),
    Choice("NMF's branches", "the GMF and MLP runs' last epochs", "their best epochs", "nmf",
           train={"start_checkpoint": "last"}),
    Choice("NMF tower biases", "not copied (left at initialisation)", "copied from the MLP run", "nmf",
           settings={"copy_tower_bias": False}),
    Choice("++ sampling", "markets alternate batch by batch over the largest market's batches",
           "one shuffled stream of all markets", "nmf++", train={"sampling": "equal", "epoch_length": "largest"},
           branches_too=True),
    Choice("MAML test-time adaptation", "one step on 20 random validation instances", "none", "maml",
           settings={"maml": {"test_adaptation_steps": 1, "test_adaptation_batch": 20}}),
    Choice("FOREC head", "widths [16→32→16], PyTorch's init, output layer from the NMF's", "[16→16→32→16], N(0, 0.01²)",
           "forec", settings={"head": (32, 16), "init": "pytorch", "output_from_base": True}),
    Choice("FOREC fine-tuning batches", "20 instances, last epoch", "1024 instances, best epoch", "forec",
           train={"batch_size": 20, "select": "last"}),
]
WHOLE = ["gmf", "mlp", "nmf", "nmf++", "maml", "forec"]  # rows of the whole-recipe comparison


def run_dir(root: Path, target: str, model: str, seed: int) -> Path:
    """A run of an experiment with source de (see experiments/forec-*.toml)."""
    setting = "src-de" if model in ("nmf++", "maml", "forec", "gmf++", "mlp++") else "single"
    return root / target / setting / f"s{seed}" / model


def test_ndcg(run: Path) -> float | None:
    """The run's test NDCG@10 (forec's fine-tuned runs keep theirs one level down, per market),
    None while it is not finished."""
    path = run / "results.json"
    if not path.is_file():
        path = next(run.glob("*/results.json"), path)
    return float(json.loads(path.read_text())["test"]["ndcg@10"]) if path.is_file() else None


def train_variant(choice: Choice, target: str, seed: int, model: str | None = None) -> Path:
    """Trains (once) `choice`'s variant of the xmfast run of `model` (default: the choice's),
    `target` and `seed`."""
    model = model or choice.model
    slug = re.sub(r"[^a-z0-9]+", "-", choice.name.lower()).strip("-")
    out = OUT / target / slug / f"s{seed}" / model
    if (out / "results.json").is_file() or list(out.glob("*/results.json")):
        return out
    base = run_dir(XMFAST, target, model, seed)
    info = Run.open(base if model != "forec" else next(p.parent for p in base.glob("*/run.json"))).info
    name = model.removesuffix("++")
    spec = get_model(name)
    own = choice.settings if model == choice.model else {}
    model_config = spec.config_from({**info["model_config"], **own})
    config = replace(spec.train_config(**{**info["train_config"], "device": "cpu"}), **choice.train)
    if model == "forec":
        finetune(run_dir(XMFAST, target, "maml", seed), out, [target], model_config, config, model="forec",
                 overwrite=True)
        return out
    dataset = PreparedDataset.load(XMFAST / target / "dataset")
    pretrained = {slot: Path(p) for slot, p in info["pretrained"].items()}
    for slot, dep in spec.requires(model_config).items():  # a run the variant starts from and the base did not
        pretrained.setdefault(slot, run_dir(XMFAST, target, dep + ("++" if model.endswith("++") else ""), seed))
    if choice.branches_too:
        pretrained = {slot: train_variant(choice, target, seed, Path(p).name) for slot, p in pretrained.items()}
    train(dataset, out, name, model_config, config, pretrained=pretrained, overwrite=True)
    return out


def effect(pairs: list[tuple[float | None, float | None]]) -> str:
    """Mean ± std over the seeds both runs finished of (variant − base), and the two means; the
    seeds are named when not all of them have finished."""
    done = [(v, b) for v, b in pairs if v is not None and b is not None]
    if not done:
        return "not run yet"
    deltas = [v - b for v, b in done]
    spread = f" ± {statistics.stdev(deltas):.3f}" if len(deltas) > 1 else ""
    seeds = "" if len(done) == len(pairs) else f", seed{'s' if len(done) > 1 else ''} " + ", ".join(
        str(s) for s, (v, b) in zip(SEEDS, pairs) if v is not None and b is not None)
    return (f"{statistics.mean(deltas):+.3f}{spread} "
            f"({statistics.mean(b for _, b in done):.3f} → {statistics.mean(v for v, _ in done):.3f}{seeds})")


def main() -> None:
    header = ["choice", "row", "FOREC's code (recipe original)", "xmfast", *[f"{t}: Δ test NDCG@10" for t in TARGETS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for choice in CHOICES:
        cells = []
        for t in TARGETS:
            pairs = [(test_ndcg(train_variant(choice, t, s)), test_ndcg(run_dir(XMFAST, t, choice.model, s)))
                     for s in SEEDS]
            cells.append(effect(pairs))
        lines.append(f"| {choice.name} | {choice.model} | {choice.original} | {choice.xmfast} | " + " | ".join(cells) + " |")
    for model in WHOLE:
        cells = []
        for t in TARGETS:
            pairs = [(test_ndcg(run_dir(ORIGINAL, t, model, s)), test_ndcg(run_dir(XMFAST, t, model, s))) for s in SEEDS]
            cells.append(effect(pairs))
        lines.append(f"| whole recipe | {model} | recipe original | recipe xmfast | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    doc = ROOT / "docs" / "recipes.md"
    text = doc.read_text(encoding="utf-8")
    begin, end = "<!-- effects:begin -->", "<!-- effects:end -->"
    doc.write_text(text[: text.index(begin) + len(begin)] + "\n" + table + "\n" + text[text.index(end):], encoding="utf-8")


if __name__ == "__main__":
    main()
