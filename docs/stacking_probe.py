"""Probe: does EASE-mix gain when tuned MF's score is one more of its features (stacking)?

docs/leaderboard-tuned.md found tuned MF the strongest baseline and EASE-mix significantly above
it nowhere: MF wins on ca and uk, EASE-mix by mean on fr, in and jp. The two are different
kinds of model (a latent factor model of the target alone; pooled item-item weights with the
user's last item), so a mix of both is the obvious next design. This probe builds it without
adding a model, to see whether it is worth one:

- MF with the leaderboard's tuned settings (the "chosen" columns of docs/leaderboard-tuned.md),
  seed 1, trained twice: on the dataset, and on EASE-mix's held-out view of it (each target
  user's last training item taken out, ``xmfast.models.easemix.holdout_view``);
- the mix's weights fitted as EASE-mix fits its own (the held-out items against 99 sampled
  items, ridge 1), the held-out MF's score a fourth feature beside ease, pop and last;
- the final score: the EASE-mix features of the whole training set plus the weighted score of
  the MF trained on all of it (the MF the leaderboard tests).

A second mix, fitted on the validation split instead, bounds what any weights of these five
signals could do: its weights have seen the validation users' answers, so it is a ceiling for
the idea, not a model. MF and EASE-mix are checked against docs/leaderboard-tuned.json (the same
datasets, fingerprints and seeds), so the comparison is with the leaderboard's own rows.

    python docs/stacking_probe.py                       # both protocols, all 7 markets: about an hour on 2 CPU cores
    PROTOCOLS=forec TARGETS="ca jp" python docs/stacking_probe.py

Outputs go to runs/stacking-probe/ (datasets, MF runs, per-user test NDCG@10); a finished
(protocol, market) is not computed again. The table goes to docs/stacking.md.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from xmfast.compare import holm, paired_t_test
from xmfast.dataset import PreparedDataset
from xmfast.evaluation import evaluate_scorer
from xmfast.models import get_model
from xmfast.models.easemix import Features, fit_easemix, fit_weights, holdout_view
from xmfast.models.settings import EaseMixConfig, MFConfig
from xmfast.prepare import PrepareConfig, prepare
from xmfast.runs import Run
from xmfast.training import load_scorer, train

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("XMARKET", ROOT.parent / "shared" / "xmarket"))
OUT = ROOT / "runs" / "stacking-probe"
DOC = ROOT / "docs" / "stacking.md"
LEADERBOARD = ROOT / "docs" / "leaderboard-tuned.json"
TUNED_DOC = ROOT / "docs" / "leaderboard-tuned.md"
MARKETS = ("ca", "de", "fr", "in", "jp", "mx", "uk")
PROTOCOLS = os.environ.get("PROTOCOLS", "forec acmr").split()
TARGETS = os.environ.get("TARGETS", " ".join(MARKETS)).split()
SEED = 1
BASELINES = ("pop", "cooc", "ease", "ease++", "itemknn", "itemknn++", "mf")
# MF's chosen (lr, l2, embedding_dim) per protocol and market: docs/leaderboard-tuned.md's tuning tables
TUNED_MF = {
    "forec": {"ca": (0.004276, 2.707e-05, 256), "de": (0.002629, 1.798e-08, 512), "fr": (0.006735, 1.777e-08, 256),
              "in": (0.004728, 2.263e-06, 512), "jp": (0.004276, 2.707e-05, 256), "mx": (0.004219, 1.226e-06, 512),
              "uk": (0.001126, 2.72e-06, 512)},
    "acmr": {"ca": (0.001466, 1.553e-07, 512), "de": (0.005621, 7.506e-06, 512), "fr": (0.002304, 4.04e-07, 512),
             "in": (0.03493, 0.0006642, 128), "jp": (0.00491, 9.635e-07, 512), "mx": (0.005621, 7.506e-06, 512),
             "uk": (0.001938, 4.211e-06, 512)},
}
ROWS = ("mf", "easemix", "stack", "stack fitted on validation")


def fail(message: str) -> None:
    """One error line and exit status 2, as every xmfast command fails."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Mix:
    """ease++ + Σ v_k·f_k (EASE-mix's features) + v_mf·MF, the scorer protocol of xmfast.evaluation."""

    def __init__(self, features: Features, weights: np.ndarray, mf: object) -> None:
        self.features, self.weights, self.mf = features, weights, mf

    def score(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        groups, items = np.asarray(groups, dtype=np.int64), np.asarray(items, dtype=np.int64)
        mf = np.asarray(self.mf.score(groups, items), dtype=np.float64)
        inputs = np.concatenate([self.features.residual(groups, items), mf[..., None]], axis=-1)
        return self.features.pooled.score(groups, items) + inputs @ self.weights

    def score_all(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        groups = np.asarray(groups, dtype=np.int64)
        return self.score(groups, np.broadcast_to(np.asarray(items, dtype=np.int64), (groups.size, np.size(items))))


def mf_scorer(dataset: PreparedDataset, out: Path, protocol: str, market: str) -> object:
    lr, l2, dim = TUNED_MF[protocol][market]
    if not (out / "run.json").is_file() or Run.open(out).status != "finished":
        train(dataset, out, "mf", MFConfig(embedding_dim=dim), get_model("mf").train_config(lr=lr, l2=l2, seed=SEED),
              overwrite=True)
    return load_scorer(Run.open(out), dataset)


def target_queries(dataset: PreparedDataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    held = dataset.valid if split == "valid" else dataset.test
    rows = np.flatnonzero(np.asarray(dataset.group_market)[np.asarray(held.group)] == dataset.market_index(dataset.target))
    return np.asarray(held.group, dtype=np.int64)[rows], np.asarray(held.candidates, dtype=np.int64)[rows]


def probe(protocol: str, market: str) -> dict:
    """The per-user test NDCG@10 of the rows, and the fitted weights, for one (protocol, market)."""
    where = OUT / protocol / market
    done = where / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.time()
    path = where / "dataset"
    if not (path / "manifest.json").is_file():
        prepare(DATA, path, PrepareConfig(target=market, sources="all", protocol=protocol, seed=42), overwrite=True)
    dataset = PreparedDataset.load(path)
    view, rows = holdout_view(dataset)
    if not (where / "held-out-view" / "manifest.json").is_file():
        view.save(where / "held-out-view", overwrite=True)
    view = PreparedDataset.load(where / "held-out-view")
    mf_view = mf_scorer(view, where / "mf-held-out", protocol, market)
    mf = mf_scorer(dataset, where / "mf", protocol, market)

    config = EaseMixConfig()
    sources = tuple(m for m in dataset.markets if m != market)
    easemix = fit_easemix(dataset, config, sources)
    # the held-out fit, as fit_easemix makes it, with MF's score as a fourth feature
    held = Features.fit(view, config, sources)
    groups = np.searchsorted(np.asarray(dataset.train_offsets).astype(np.int64), rows, side="right") - 1
    negatives = dataset.train_negative_sampler(config.holdout_negatives, config.holdout_seed).sample(0)[rows]
    candidates = np.concatenate([np.asarray(dataset.train_item)[rows, None], negatives], axis=1).astype(np.int64)
    inputs = np.concatenate([held.residual(groups, candidates),
                             np.asarray(mf_view.score(groups, candidates), dtype=np.float64)[..., None]], axis=-1)
    w0, w = fit_weights(held.pooled.score(groups, candidates), inputs, config.ridge)
    stack = w / w0
    full = easemix.features
    # the ceiling: the same five signals, weights fitted on the validation split's answers
    vg, vc = target_queries(dataset, "valid")
    inputs = np.concatenate([full.residual(vg, vc), np.asarray(mf.score(vg, vc), dtype=np.float64)[..., None]], axis=-1)
    w0, w = fit_weights(full.pooled.score(vg, vc), inputs, config.ridge)
    ceiling = w / w0

    scorers = {"mf": mf, "easemix": easemix, "stack": Mix(full, stack, mf),
               "stack fitted on validation": Mix(full, ceiling, mf)}
    result = {"users": 0, "weights": {"stack": stack.tolist(), "stack fitted on validation": ceiling.tolist()},
              "features": [*config.features, "mf"], "test": {}, "valid": {}}
    for name, scorer in scorers.items():
        for split in ("valid", "test"):
            e = evaluate_scorer(dataset, split, scorer, markets=[market])
            values = e.values[:, e.metrics.index("ndcg@10")]
            result[split][name] = values.tolist()
    result["users"] = len(result["test"]["mf"])
    result["seconds"] = round(time.time() - started)
    done.write_text(json.dumps(result))
    return result


def chosen_settings(protocol: str, label: str, market: str) -> dict:
    """The chosen settings of `label` on `market`, from docs/leaderboard-tuned.md's tuning table
    ("lam 386.2"; "shrink 72.7, neighbours 2000, similarity cosine, alpha 0.7391"); {} for a model
    without one (pop, cooc) or where the default beat every trial (the grid kept the default)."""
    text = TUNED_DOC.read_text()
    section = text.split(f"## Tuning: leaderboard-{protocol} (protocol {protocol})")[1].split("\n## ")[0]
    if f"{label} on {market}: the default configuration" in section:
        return {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 4 and cells[0] == label and cells[1] == market:
            values = {}
            for pair in cells[4].split(", "):
                key, value = pair.split(" ", 1)
                try:
                    values[key] = int(value) if value.isdigit() else float(value)
                except ValueError:
                    values[key] = value
            return values
    return {}


def best_baseline(protocol: str, market: str, board: dict) -> dict:
    """The per-user test NDCG@10 of the market's best tuned baseline (by the leaderboard's mean),
    fitted again here with the tuning table's chosen settings (MF: the probe's own run)."""
    label = max((b for b in BASELINES if b in board[(protocol, market)]), key=lambda b: board[(protocol, market)][b])
    where = OUT / protocol / market
    done = where / "best-baseline.json"
    if done.is_file():
        return json.loads(done.read_text())
    result = json.loads((where / "result.json").read_text())
    if label == "mf":
        values = result["test"]["mf"]
    else:
        dataset = PreparedDataset.load(where / "dataset")
        spec = get_model(label)
        sources = tuple(m for m in dataset.markets if m != market) if label.endswith("++") or label == "cooc" else ()
        scorer = spec.fit(dataset, spec.config_from(chosen_settings(protocol, label, market)), sources)
        e = evaluate_scorer(dataset, "test", scorer, markets=[market])
        values = e.values[:, e.metrics.index("ndcg@10")].tolist()
    ours, theirs = float(np.mean(values)), board[(protocol, market)][label]
    if abs(ours - theirs) > TOLERANCE["mf"]:
        fail(f"{protocol} {market}: {label}'s test NDCG@10 {ours:.6f} is not the leaderboard's {theirs:.6f}")
    out = {"label": label, "test": values}
    done.write_text(json.dumps(out))
    return out


def leaderboard_rows() -> dict:
    """(protocol, market) -> {label: test NDCG@10 mean} of docs/leaderboard-tuned.json."""
    out: dict = {}
    for row in json.loads(LEADERBOARD.read_text())["rows"]:
        out.setdefault((row["protocol"], row["target"]), {})[row["label"]] = row["ndcg@10 mean"]
    return out


def cell(values: list, reference: list, p: float | None) -> str:
    mean, diff = float(np.mean(values)), float(np.mean(values) - np.mean(reference))
    if p is None:
        return f"{mean:.4f}"
    return f"{mean:.4f} ({diff:+.4f}{' ✱' if p < 0.05 else ''})"


def table(protocol: str, results: dict, best: dict) -> list[str]:
    """Test NDCG@10 per market; each row's difference to the best tuned baseline, tested."""
    markets = [m for m in MARKETS if m in results]
    lines = [f"| protocol {protocol} | " + " | ".join(markets) + " | significantly above the best baseline |",
             "|---|" + "---|" * (len(markets) + 1)]
    lines.append("| best tuned baseline | " + " | ".join(
        f"{best[m]['label']} {np.mean(best[m]['test']):.4f}" for m in markets) + " | – |")
    for row in ROWS:
        tests = holm([paired_t_test(results[m]["test"][row], best[m]["test"]).p for m in markets])
        cells = [cell(results[m]["test"][row], best[m]["test"], p) for m, p in zip(markets, tests)]
        wins = sum(np.mean(results[m]["test"][row]) > np.mean(best[m]["test"]) and p < 0.05
                   for m, p in zip(markets, tests))
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {wins} of {len(markets)} |")
    lines.append("| test users | " + " | ".join(f"{results[m]['users']:,}" for m in markets) + " | |")
    return lines


# MF's settings above are the tuning tables' four significant digits, not the chosen values'
# every digit (acmr ca: 0.535930 against 0.535992); EASE-mix has no rounded setting
TOLERANCE = {"mf": 1e-3, "easemix": 1e-6}


def check(protocol: str, market: str, result: dict, board: dict) -> None:
    """MF and EASE-mix must be the leaderboard's own rows: the same datasets, settings and seed."""
    for row, tolerance in TOLERANCE.items():
        ours, theirs = float(np.mean(result["test"][row])), board[(protocol, market)][row]
        if abs(ours - theirs) > tolerance:
            fail(f"{protocol} {market}: {row}'s test NDCG@10 {ours:.6f} is not the leaderboard's "
                     f"{theirs:.6f}; the probe does not reproduce docs/leaderboard-tuned.md")


def cpu_name() -> str:
    """The CPU's model name (Linux), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    for name, given, known in (("PROTOCOLS", PROTOCOLS, TUNED_MF), ("TARGETS", TARGETS, MARKETS)):
        unknown = [v for v in given if v not in known]
        if unknown or not given:
            fail(f"{name}={' '.join(given)!r}: expected some of {' '.join(known)}")
    if not DATA.is_dir():
        fail(f"{DATA}: no such directory (the XMarket files; set XMARKET=DIR)")
    board = leaderboard_rows()
    results: dict = {}
    for protocol in PROTOCOLS:
        for market in TARGETS:
            result = probe(protocol, market)
            check(protocol, market, result, board)
            results.setdefault(protocol, {})[market] = result
            print(f"{protocol} {market}: " + ", ".join(f"{row} {np.mean(result['test'][row]):.4f}" for row in ROWS),
                  flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    doc = [DOC_HEAD.format(commit=commit, machine=cpu_name())]
    for protocol, per_market in results.items():
        best = {m: best_baseline(protocol, m, board) for m in per_market}
        doc += ["", *table(protocol, per_market, best)]
    features = EaseMixConfig().features + ("mf",)
    doc += ["", "The weights (v, relative to the pooled EASE prior's 1; the features are not standardised here):", "",
            "| protocol | market | fitted on | " + " | ".join(features) + " |", "|---|---|---|" + "---|" * len(features)]
    for protocol, per_market in results.items():
        for market, result in per_market.items():
            for which in ("stack", "stack fitted on validation"):
                fitted = "held-out training items" if which == "stack" else "validation"
                doc.append(f"| {protocol} | {market} | {fitted} | " + " | ".join(f"{v:.4g}" for v in result["weights"][which]) + " |")
    text = "\n".join(doc) + "\n"
    if set(PROTOCOLS) == {"forec", "acmr"} and set(TARGETS) == set(MARKETS):
        DOC.write_text(text)
        print(f"wrote {DOC.relative_to(ROOT)}")
    else:
        print(text)


DOC_HEAD = """# Stacking EASE-mix and tuned MF: a probe

Written by `python docs/stacking_probe.py` (its docstring says how the mix is built) at commit
{commit}, on a 2-core CPU machine ({machine}). Test NDCG@10 of the target's users, one seed (1), on the
datasets of docs/leaderboard-tuned.md. Each market's best tuned baseline is that document's (the
highest mean among pop, cooc, EASE(++), ItemKNN(++) and MF), fitted again here with its chosen
settings; it, MF and EASE-mix are checked against that document's figures. In brackets: the
difference to the best tuned baseline; ✱: significant at 0.05 by the paired t-test,
Holm-corrected over the seven markets of the protocol, as docs/leaderboard-tuned.md tests.
"stack fitted on validation" is a ceiling, not a model: its weights were fitted on the validation
users' answers."""


if __name__ == "__main__":
    main()
