"""`xmfast`: one subcommand per stage. Parsing and presentation only; work is in `xmfast`."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from xmfast import __version__, core
from xmfast.errors import XmfastError

app = typer.Typer(
    name="xmfast",
    help="Fast, reproducible cross-market product recommendation on XMarket.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turns user-caused errors into one `error:` line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (XmfastError, core.DataFormatError) as e:
            from rich.markup import escape

            from xmfast_cli.render import err_console

            # The message is data (file names, ids, field values): never markup or emoji codes.
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True, emoji=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"xmfast {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
) -> None:
    """Fast, reproducible cross-market product recommendation on XMarket."""


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command()
@user_errors
def prepare(
    data_dir: Annotated[Path, typer.Argument(help="Directory of XMarket rating files.")],
    target: Annotated[str, typer.Option("--target", "-t", help="Target market code, e.g. uk.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the prepared dataset to.")],
    sources: Annotated[
        str, typer.Option("--sources", "-s", help="Comma-separated source markets, 'all', or '' for none.")
    ] = "",
    protocol: Annotated[
        str, typer.Option(help="forec: temporal split, market negatives; acmr: random split, all-item negatives.")
    ] = "forec",
    seed: Annotated[int, typer.Option(help="Seed of the split (acmr) and of all negative sampling.")] = 42,
    min_user: Annotated[int, typer.Option(help="k-core: minimum ratings per user (per market).")] = 1,
    min_item: Annotated[int, typer.Option(help="k-core: minimum ratings per item (per market).")] = 1,
    fixpoint: Annotated[
        bool, typer.Option("--fixpoint/--one-pass", help="k-core to a fixpoint, or one pass (items then users).")
    ] = False,
    reference_market: Annotated[
        Optional[str], typer.Option(help="Keep only items of this market's k-core (FOREC used us).")
    ] = None,
    reference_min_user: Annotated[int, typer.Option(help="k-core of the reference market: users.")] = 10,
    reference_min_item: Annotated[int, typer.Option(help="k-core of the reference market: items.")] = 25,
    dedup: Annotated[
        bool, typer.Option("--dedup/--keep-duplicates", help="Drop repeated (market, user, item) rows.")
    ] = False,
    eval_negatives: Annotated[int, typer.Option(help="Negatives stored per validation/test interaction.")] = 99,
    category: Annotated[Optional[str], typer.Option(help="Category of raw files, when several are present.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Read, filter and split rating files; store evaluation candidates; print market statistics."""
    from xmfast.prepare import KCore, PrepareConfig
    from xmfast.prepare import prepare as run_prepare
    from xmfast.stats import market_stats
    from xmfast_cli.render import console, market_table, steps

    config = PrepareConfig(
        target=target,
        sources="all" if sources.strip() == "all" else _split_list(sources),
        protocol=protocol,  # type: ignore[arg-type]
        seed=seed,
        kcore=KCore(min_user, min_item, fixpoint),
        reference_market=reference_market,
        reference_kcore=KCore(reference_min_user, reference_min_item),
        dedup=dedup,
        eval_negatives=eval_negatives,
        category=category,
    )
    with steps("prepare") as on_step:
        dataset = run_prepare(data_dir, out, config, overwrite=overwrite, on_step=on_step)
    counts = dataset.manifest["counts"]
    console.print(market_table(market_stats(dataset, dataset.target), dataset.target, f"Prepared dataset {out}"))
    console.print(
        f"protocol [bold]{dataset.protocol}[/], {counts['evaluated_groups']:,} evaluated (market, user) groups, "
        f"{counts['train_rows']:,} training rows, {dataset.valid.candidates.shape[1] - 1} negatives per held-out item, "
        f"fingerprint {dataset.fingerprint[:16]}",
        highlight=False,
    )


@app.command()
@user_errors
def stats(
    path: Annotated[Path, typer.Argument(help="A data directory of rating files, or a prepared dataset.")],
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="Market to measure overlap against.")] = None,
    markets: Annotated[str, typer.Option(help="Comma-separated markets to include (default: all found).")] = "",
    category: Annotated[Optional[str], typer.Option(help="Category of raw files, when several are present.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures as JSON here.")] = None,
) -> None:
    """Per-market statistics; for raw inputs also item and co-occurrence overlap across markets."""
    from xmfast.dataset import PreparedDataset
    from xmfast.markets import discover, resolve_markets
    from xmfast.ratings import read_ratings
    from xmfast.stats import cross_market, market_stats
    from xmfast_cli.render import console, market_table, overlap_tables

    if (path / "manifest.json").is_file():
        dataset = PreparedDataset.load(path)
        tgt = target or dataset.target
        per_market = market_stats(dataset, tgt)
        console.print(market_table(per_market, tgt, f"Prepared dataset {path}"))
        report: dict[str, Any] = {"markets": [s.as_dict() for s in per_market]}
    else:
        available = discover(path, category)
        wanted = _split_list(markets) or list(available)
        tgt = target or wanted[0]
        chosen = resolve_markets(available, tgt, [m for m in wanted if m != tgt])
        ratings = read_ratings([(m, available[m].path) for m in chosen])
        per_market = market_stats(ratings, tgt)
        cm = cross_market(ratings)
        console.print(market_table(per_market, tgt, f"Rating files in {path}"))
        for table in overlap_tables(cm):
            console.print(table)
        console.print(f"all markets together: {len(ratings.items):,} distinct items, {len(ratings):,} ratings")
        report = {
            "markets": [s.as_dict() for s in per_market],
            "distinct_items": len(ratings.items),
            "cross_market": {
                "markets": cm.markets, "shared_items": cm.shared_items, "pairs": cm.pairs,
                "shared_pairs": cm.shared_pairs,
            },
        }
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


@app.command()
@user_errors
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the files to (created if needed).")],
    markets: Annotated[str, typer.Option(help="Comma-separated market codes, largest market first.")] = "uk,de,in",
    ratings: Annotated[int, typer.Option(help="Total ratings over all markets (approximate).")] = 20_000,
    items: Annotated[int, typer.Option(help="Size of the global item catalog.")] = 1_000,
    topics: Annotated[int, typer.Option(help="Latent topics shared across markets.")] = 40,
    mean_per_user: Annotated[float, typer.Option(help="Mean ratings per user.")] = 9.0,
    min_per_user: Annotated[int, typer.Option(help="Minimum ratings per user.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed; the same settings give the same bytes.")] = 0,
    raw_category: Annotated[
        Optional[str], typer.Option(help="Write official-style ratings_{m}_{category}.txt.gz files instead.")
    ] = None,
    sample: Annotated[bool, typer.Option(help="Write the embedded sample (data/sample) and ignore the other options.")] = False,
) -> None:
    """Write a seeded synthetic dataset in XMarket format (topics shared across markets)."""
    from xmfast.synth import SAMPLE, SynthConfig, synthesize
    from xmfast_cli.render import console

    config = SAMPLE if sample else SynthConfig(
        markets=_split_list(markets), ratings=ratings, items=items, topics=topics,
        mean_per_user=mean_per_user, min_per_user=min_per_user, seed=seed, raw_category=raw_category,
    )
    files = synthesize(out_dir, config)
    for f in files:
        console.print(f"{f['market']}: {f['users']:,} users, {f['ratings']:,} ratings -> {f['path']}", highlight=False)


def _parse_cutoffs(value: str) -> tuple[int, ...]:
    try:
        cutoffs = tuple(int(v) for v in _split_list(value))
    except ValueError:
        raise XmfastError(f"--cutoffs: expected comma-separated integers, got {value!r}") from None
    return cutoffs


@app.command()
@user_errors
def evaluate(
    dataset: Annotated[
        Optional[Path], typer.Argument(help="A prepared dataset (omit when evaluating --trec-run with --trec-qrels).")
    ] = None,
    scores: Annotated[
        Optional[Path],
        typer.Option(help="Scores of the stored candidates: a .npy matrix (queries × candidates) or a TREC run file."),
    ] = None,
    baseline: Annotated[
        Optional[str], typer.Option(help="Evaluate a built-in baseline instead: pop or cooc.")
    ] = None,
    cooc_markets: Annotated[
        str, typer.Option(help="Markets whose co-occurrence the cooc baseline uses (default all).")
    ] = "",
    split: Annotated[str, typer.Option(help="valid or test.")] = "test",
    cutoffs: Annotated[str, typer.Option(help="Comma-separated cut-offs.")] = "5,10,20",
    measures: Annotated[
        str, typer.Option(help="Comma-separated measures: hr, ndcg, precision, map, mrr, auc.")
    ] = "hr,ndcg,mrr",
    ties: Annotated[
        str, typer.Option(help="pessimistic (positive loses ties), optimistic, expected (random tie order) or trec.")
    ] = "pessimistic",
    full: Annotated[
        bool, typer.Option("--full/--sampled", help="Rank every item of the market instead of the stored candidates.")
    ] = False,
    markets: Annotated[str, typer.Option(help="Only queries of these markets (default: all).")] = "",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write aggregate and per-user results here.")] = None,
    per_user: Annotated[bool, typer.Option(help="Include per-user records in --json.")] = True,
    trec_run: Annotated[
        Optional[Path], typer.Option(help="Export the scores as a TREC run (with a dataset), or read this run (without).")
    ] = None,
    trec_qrels: Annotated[
        Optional[Path], typer.Option(help="Export the held-out items as TREC qrels (with a dataset), or read them (without).")
    ] = None,
) -> None:
    """Rank held-out items and report HR, NDCG, MRR, precision, MAP and AUC per market."""
    import numpy as np

    from xmfast.evaluation import EvalConfig, evaluate_sampled, evaluate_scorer
    from xmfast_cli.render import console, progress_bar, results_table

    config = EvalConfig(
        cutoffs=_parse_cutoffs(cutoffs), measures=tuple(_split_list(measures)), ties=ties  # type: ignore[arg-type]
    )
    if dataset is None:
        from xmfast import trec

        if trec_run is None or trec_qrels is None:
            raise XmfastError("give a prepared dataset, or both --trec-run and --trec-qrels to evaluate a TREC run")
        evaluation = trec.evaluate_run(trec.read_run(trec_run), trec.read_qrels(trec_qrels), config)
        title = f"{trec_run} against {trec_qrels}"
    else:
        from xmfast.dataset import PreparedDataset

        data = PreparedDataset.load(dataset)
        market_filter = _split_list(markets) or None
        if (scores is None) == (baseline is None):
            raise XmfastError("give exactly one of --scores FILE or --baseline pop|cooc")
        if scores is not None:
            if full:
                raise XmfastError("--full needs a model to score every item; a scores file holds the stored candidates only")
            matrix = _read_scores(scores, data, split)
            evaluation = evaluate_sampled(data, split, matrix, config, markets=market_filter)  # type: ignore[arg-type]
            title = f"{scores} on {dataset} ({split})"
        else:
            scorer = _baseline(baseline, data, _split_list(cooc_markets) or None)
            with progress_bar(f"scoring {split}") as update:
                evaluation = evaluate_scorer(
                    data, split, scorer, config, full=full, markets=market_filter, progress=update  # type: ignore[arg-type]
                )
            title = f"{baseline} on {dataset} ({split}, {'full ranking' if full else 'sampled candidates'})"
            if trec_run is not None:
                from xmfast import trec

                if full:
                    raise XmfastError("--trec-run export covers the stored candidates; drop --full")
                held = data.valid if split == "valid" else data.test
                trec.write_run(trec_run, data, split, scorer.score(np.asarray(held.group), np.asarray(held.candidates)), baseline)
        if trec_qrels is not None:
            from xmfast import trec

            trec.write_qrels(trec_qrels, data, split)
        if scores is not None and trec_run is not None:
            from xmfast import trec

            trec.write_run(trec_run, data, split, matrix)
    console.print(results_table(evaluation, title))
    console.print(
        f"ties: [bold]{config.ties}[/]; {evaluation.tie_share:.1%} of queries have a tie with the positive",
        highlight=False,
    )
    if json_out is not None:
        evaluation.to_json(json_out, per_user=per_user)


def _read_scores(path: Path, dataset: Any, split: str) -> Any:
    import numpy as np

    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise XmfastError(f"{path}: no such file") from None
        except ValueError as e:
            raise XmfastError(f"{path}: not a readable .npy array ({e})") from None
    from xmfast import trec

    return trec.run_to_scores(trec.read_run(path), dataset, split, path)


def _baseline(name: str, dataset: Any, cooc_markets: Optional[list[str]]) -> Any:
    from xmfast.baselines import CooccurrenceScorer, PopularityScorer

    if name == "pop":
        return PopularityScorer(dataset)
    if name == "cooc":
        return CooccurrenceScorer(dataset, cooc_markets)
    raise XmfastError(f"unknown baseline {name!r} (expected pop or cooc)")


@app.command()
@user_errors
def compare(
    results: Annotated[list[Path], typer.Argument(help="Evaluation JSON files (from evaluate --json); the first is the reference.")],
    metrics: Annotated[str, typer.Option(help="Comma-separated metrics to compare (default: all shared).")] = "",
) -> None:
    """Put runs side by side with paired t, Wilcoxon and sign tests over users."""
    from xmfast.compare import compare_results
    from xmfast_cli.render import comparison_table, console

    if len(results) < 2:
        raise XmfastError("give at least two results files")
    for other in results[1:]:
        console.print(comparison_table(compare_results(results[0], other, _split_list(metrics) or None)))
    console.print("* Wilcoxon p < 0.05 (not corrected for multiple comparisons)", highlight=False)


def main() -> None:
    """Entry point of the `xmfast` script."""
    app()


if __name__ == "__main__":
    main()
