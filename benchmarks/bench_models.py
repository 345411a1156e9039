"""What each classical baseline costs (issue 23): per model and target market, the time to fit
a model without training (pop, cooc, EASE, ItemKNN; alone and pooled with all other markets)
and the time of one training epoch of the trained ones (MF with BPR, GMF beside it for scale),
on the real XMarket files with the machine's cores.

A fit is timed from the prepared dataset to a scorer (EASE: the Gram matrix, its Cholesky
inverse and B; ItemKNN: the co-occurrence counts, similarities and top-k), median of `--repeat`
after `--warmup` untimed ones; an epoch is the engine's own `seconds` in metrics.jsonl (negatives, batches,
steps; validation not included), median over `--epochs`.

    python benchmarks/bench_models.py                          # in, jp, uk; every model
    python benchmarks/bench_models.py --markets in,mx --repeat 3 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from _common import REAL_DATA, OtherLoad, console, fmt_s, print_machine, repeat, table

from xmfast.models import get_model
from xmfast.prepare import PrepareConfig, prepare

FITTED = (("pop", ()), ("cooc", ("all",)), ("ease", ()), ("ease", ("all",)), ("itemknn", ()), ("itemknn", ("all",)))
TRAINED = (("mf", ()), ("mf", ("all",)), ("gmf", ()), ("gmf", ("all",)))


def label(model: str, sources: tuple[str, ...]) -> str:
    return get_model(model).label(sources=bool(sources), fine_tuned=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REAL_DATA)
    parser.add_argument("--markets", default="in,jp,uk", help="target markets, each with all others as sources")
    parser.add_argument("--repeat", type=int, default=3, help="timed fits per model (after one warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed fits before the timed ones")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trained model")
    args = parser.parse_args()
    print_machine()
    load = OtherLoad()
    import torch

    from xmfast.training import train

    rows: dict[str, dict[str, str]] = {}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for market in args.markets.split(","):
            ds = prepare(args.data, Path(tmp) / market, PrepareConfig(target=market, sources="all"))
            sizes[market] = f"{int((ds.train_market() == ds.market_index(market)).sum()):,} rows"
            for model, sources in FITTED:
                spec = get_model(model)
                resolved = tuple(m for m in ds.markets if m != market) if sources else ()
                times = repeat(lambda: spec.fit(ds, spec.config_type(), resolved), args.repeat, args.warmup)
                rows.setdefault(f"{label(model, sources)} (fit)", {})[market] = fmt_s(statistics.median(times))
            for model, sources in TRAINED:
                spec = get_model(model)
                out = Path(tmp) / f"{market}-{label(model, sources)}"
                config = spec.train_config(epochs=args.epochs, sources=sources, device="cpu", seed=1)
                train(ds, out, model, spec.config_type(), config)
                seconds = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
                rows.setdefault(f"{label(model, sources)} (epoch)", {})[market] = fmt_s(statistics.median(seconds))
    markets = args.markets.split(",")
    t = table(f"Fit or epoch time, median (torch threads {torch.get_num_threads()})",
              ["model", *[f"{m} ({sizes[m]})" for m in markets]])
    for name, by_market in rows.items():
        t.add_row(name, *[by_market[m] for m in markets])
    console.print(t)
    load.report()


if __name__ == "__main__":
    main()
