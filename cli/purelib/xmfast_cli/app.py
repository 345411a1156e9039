"""`xmfast`: one subcommand per stage. Parsing and presentation only; work is in `xmfast`."""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from xmfast import __version__, core
from xmfast.errors import XmfastError

F = TypeVar("F", bound=Callable[..., Any])


# The library's argument names whose option is spelled otherwise (xmfast.errors.argument).
PYTHON_TO_OPTION = {"users": "--user"}


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_DEFER = object()  # a value the plain conversion leaves to typer


def _plain_leaf(param: Any, ctx: Any, annotation: Any, value: Any) -> Any:
    """`value` converted to `annotation` as typer's pydantic adapter converts it, for the plain
    types xmfast's options have (str, int, float, Path, all without bounds); `_DEFER` for anything
    else, including every value the adapter would refuse, so that typer still words the error."""
    info = param.type_descriptor.parameter_info
    if info.parser is not None or info.min is not None or info.max is not None:
        return _DEFER
    if annotation is str:
        return value if isinstance(value, str) else _DEFER
    if annotation is int or annotation is float:
        if type(value) is annotation:
            return value
        if isinstance(value, str) and (_INT if annotation is int else _FLOAT).fullmatch(value):
            try:
                return annotation(value)
            except ValueError:  # an integer of over 4,300 digits (Python's limit): typer words it
                return _DEFER
        return _DEFER
    if annotation is Path and info.path_type is None:
        if isinstance(value, str) and value:
            value = Path(value)
        if not isinstance(value, Path):
            return _DEFER
        from typer._param_types import coerce_cli_path  # the adapter's own checks (exists=, …)

        try:
            return coerce_cli_path(value, info, path_type=Path, param=param, ctx=ctx)
        except ValueError:  # a NUL byte, which typer words in its own way
            return _DEFER
    return _DEFER


class _PlainCoercion:
    """Converts a command-line value without pydantic. typer 0.29 converts every value through a
    pydantic TypeAdapter, and importing pydantic and building the adapters took 0.1-0.2 s of each
    command's start-up (issue 25); xmfast's options are plain types, converted here exactly as the
    adapter would (tests/test_cli_coercion.py compares the two). Anything else, and every value
    that fails, goes to typer's own conversion, so its errors are typer's."""

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        multi = param.multiple or param.nargs == -1
        if value is None:
            return () if multi else None
        desc = param.type_descriptor
        if desc.is_list and isinstance(value, (list, tuple)):
            (element,) = desc.annotation.__args__
            out = [_plain_leaf(param, ctx, element, v) for v in value]
            if all(v is not _DEFER for v in out):
                return out
        elif not desc.is_list and not desc.is_tuple and not desc.is_file:
            out = _plain_leaf(param, ctx, desc.annotation, value)
            if out is not _DEFER:
                return out
        return typer.core._TyperParameter.get_runtime_param(param).coerce(value, param=param, ctx=ctx)


_PLAIN = _PlainCoercion()


def _plain_runtime_param(self: Any) -> _PlainCoercion:
    """`get_runtime_param` of the classes below: their values go through :class:`_PlainCoercion`."""
    return _PLAIN


class _Argument(typer.core.TyperArgument):
    """An argument shown by its name in capitals, `DATA_DIR` or `[DATASET]` (optional) or
    `RUNS...`: not typer's `{data_dir}`, and typed by its element (`<path>`, not `<list[Path]>`)."""

    get_runtime_param = _plain_runtime_param

    @property
    def display_name_raw(self) -> str:
        return self.metavar or (self.name or "").upper()

    def _usage_display_name(self) -> str:
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return name if self.required else f"[{name}]"

    def display_type_rich(self, ctx: Any) -> Optional[str]:
        return _element_type(self, ctx)


class _Option(typer.core.TyperOption):
    """An option whose help shows the type of the value it takes: none for a flag (not
    `<bool>`), the element's for a repeatable one (`<str>...`, not `<list[str]>`)."""

    get_runtime_param = _plain_runtime_param

    def display_type_rich(self, ctx: Any) -> Optional[str]:
        if self.is_flag:
            return None
        return _element_type(self, ctx) + ("..." if self.multiple else "")


def _element_type(param: Any, ctx: Any) -> str:
    import typing

    desc = param.type_descriptor
    if not desc.is_list:
        return str(param.display_type(ctx))
    (element,) = typing.get_args(desc.annotation)
    return "<path>" if isinstance(element, type) and issubclass(element, Path) else f"<{param._bare_type(element)}>"


# Below this many columns a command's help is laid out as click lays it out (names above their
# text when long, the text wrapped beside them): rich's option table keeps seven columns of names,
# short names, negative flags and types whole, which left `xmfast prepare` 19 columns of text at 80.
RICH_HELP_MIN_WIDTH = 100


def _help_width() -> int:
    """The width rich would draw the help at: typer's TERMINAL_WIDTH, else COLUMNS or the terminal."""
    import os
    import shutil

    fixed = os.environ.get("TERMINAL_WIDTH", "")
    return int(fixed) if fixed.isdigit() else shutil.get_terminal_size().columns


def _reflowed(text: str) -> str:
    """Line breaks inside a paragraph of prose taken out, so that the help wraps at the terminal's
    width, not at the source's (rich keeps a docstring's breaks: a line broken at 100 columns in the
    source showed as a line and a stub at 80). Paragraphs with an indented or bulleted line stay."""
    paragraphs = text.split("\n\n")
    return "\n\n".join(
        p if any(line[:1].isspace() or line.lstrip().startswith(("- ", "* ")) for line in p.splitlines()[1:])
        else " ".join(line.strip() for line in p.splitlines())
        for p in paragraphs)


class _Command(typer.core.TyperCommand):
    """Every command's help as written: its text and its parameters' are escaped, so that rich
    shows `[train]` instead of reading it as markup, and parameters are shown by the classes above.
    On a terminal narrower than RICH_HELP_MIN_WIDTH the help is click's plain layout, unescaped."""

    def __init__(self, *args: Any, help: Optional[str] = None, **kwargs: Any) -> None:  # noqa: A002
        from rich.markup import escape

        help = _reflowed(help) if help else help  # noqa: A001
        self._written: dict[Any, Optional[str]] = {self: help}
        super().__init__(*args, help=escape(help) if help else help, **kwargs)
        for param in self.params:
            if getattr(param, "help", None):
                self._written[param] = param.help  # type: ignore[attr-defined]
                param.help = escape(param.help)  # type: ignore[attr-defined]

    def get_params(self, ctx: Any) -> list[Any]:
        return _ours(super().get_params(ctx))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if _help_width() >= RICH_HELP_MIN_WIDTH:
            super().format_help(ctx, formatter)
            return
        shown, mode = {owner: owner.help for owner in self._written}, self.rich_markup_mode
        try:
            for owner, text in self._written.items():
                owner.help = text
            self.rich_markup_mode = None  # typer's plain (click) layout
            super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = mode
            for owner, text in shown.items():
                owner.help = text


class _Group(typer.core.TyperGroup):
    """The top level (`--version`, `--help`), its options of the classes above too."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _ours(super().get_params(ctx))


def _ours(params: list[Any]) -> list[Any]:
    """typer's own parameter classes, re-classed in place as the classes above (the --help option
    is added in get_params, so this is where every parameter can be reached)."""
    for param in params:
        if type(param) is typer.core.TyperArgument:
            param.__class__ = _Argument
        elif type(param) is typer.core.TyperOption:
            param.__class__ = _Option
    return params


app = typer.Typer(
    name="xmfast",
    help="Fast, reproducible cross-market product recommendation on XMarket.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    cls=_Group,
)


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """`app.command` with the help shown as written (see :class:`_Command`)."""
    return app.command(*args, cls=_Command, **kwargs)


INTERRUPTED = 130  # 128 + SIGINT: the status a shell gives a command stopped by Ctrl-C
_ARGV: list[str] = []  # the arguments main() was given, for "run the same command again"


class _Interrupted(Exception):
    """Ctrl-C, with one sentence of what was saved and the command that continues."""


@contextlib.contextmanager
def _on_interrupt(describe: Callable[[], str]) -> Iterator[None]:
    """Turns Ctrl-C (KeyboardInterrupt) inside the block into the sentence `describe()` gives,
    read from what is on disk once the work has stopped."""
    try:
        yield
    except KeyboardInterrupt:
        raise _Interrupted(describe()) from None


def _quoted(*words: Any) -> str:
    """A command line to copy: quoted as a shell reads it, between backticks."""
    import shlex

    return "`" + shlex.join(str(w) for w in words) + "`"


def _same_command() -> str:
    """The command line being run, to give again (a command that writes whole outputs or none)."""
    return _quoted("xmfast", *_ARGV) if _ARGV else "the same command"


def _run_interrupted(path: Path, start: str, tensorboard: Optional[Path] = None) -> str:
    """What a Ctrl-C left of the run at `path`, and the command that continues it: `train
    --resume` for any unfinished run (one stopped before its first epoch ended starts from epoch
    0), `start` when no run was created. With `tensorboard`, the resume logs there too."""
    from xmfast.runs import Run

    try:
        run = Run.open(path)
    except XmfastError:
        return f"no run was saved at {path}; start it with {start}"
    if run.status == "finished":
        return f"run {path} is finished; nothing to continue"
    done, epochs = run.last_epoch(), run.info["train_config"].get("epochs")
    again = _quoted('xmfast', 'train', '--resume', path, *(["--tensorboard", tensorboard] if tensorboard else []))
    if done:
        return (f"run {path} interrupted after epoch {done} of {epochs}; its checkpoint is saved; continue it "
                f"with {again}")
    return f"run {path} interrupted before its first epoch ended; start it (from epoch 0) with {again}"


def _say_interrupted(message: str) -> None:
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun every rank gets Ctrl-C; rank 0 speaks
        return
    from rich.markup import escape

    from xmfast_cli.render import err_console

    err_console.print(f"[bold yellow]interrupted:[/] {escape(message)}", highlight=False, soft_wrap=True, emoji=False)


def user_errors(func: F) -> F:
    """Turns user-caused errors into one `error:` line on stderr and exit status 2, and Ctrl-C
    into one `interrupted:` line (what was saved, the command that continues) and status 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from xmfast.errors import cli_options

        try:
            with cli_options(PYTHON_TO_OPTION):  # messages name this command line's options
                return func(*args, **kwargs)
        except _Interrupted as e:
            _say_interrupted(str(e))
            raise typer.Exit(INTERRUPTED) from None
        except KeyboardInterrupt:  # outside a command's own account: its outputs are whole or absent
            _say_interrupted(f"every output is written whole or not at all; run {_same_command()} again")
            raise typer.Exit(INTERRUPTED) from None
        except (XmfastError, core.DataFormatError) as e:
            if getattr(e, "shown_by_rank0", False):  # under torchrun: rank 0's error, printed there
                raise typer.Exit(2) from None
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


def _data_source(data_dir: Path | None, files: list[str] | None, columns: str) -> Any:
    """The rating files a command reads: a directory and/or `--file` entries, with `--columns`."""
    from xmfast.markets import DataSource, parse_columns, parse_file_option

    return DataSource(data_dir, tuple(parse_file_option(f) for f in files or ()), tuple(parse_columns(columns).items()))


def _warn(line: str) -> None:
    from xmfast_cli.render import err_console

    err_console.print(f"warning: {line}", highlight=False, markup=False, soft_wrap=True)


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _split_files(values: list[str], option: str, keys: tuple[str, ...]) -> Optional[dict[str, str]]:
    """`KEY=PATH` values of a repeatable option as {KEY: PATH} (None when none was given)."""
    out: dict[str, str] = {}
    for value in values:
        key, sep, path = value.partition("=")
        if not sep or key not in keys or not path:
            raise XmfastError(f"{option} {value}: expected {'|'.join(keys)}=FILE, e.g. {option} {keys[0]}=FILE")
        if key in out:
            raise XmfastError(f"{option} {key}= is given twice ({out[key]} and {path})")
        out[key] = path
    return out or None


def _check_output(path: Optional[Path], kind: str, *inputs: Optional[Path]) -> None:
    """Refuses an output path before any work (see xmfast.outputs): `kind` names the artefact."""
    if path is not None:
        from xmfast import outputs
        from xmfast._io import check_output

        check_output(path, getattr(outputs, kind), inputs=inputs)


def _check_ints(options: dict[str, int], low: int = 1, high: Optional[int] = None) -> None:
    """Integer options bound for the Rust core's fixed-width integers (u32 unless `high`), checked
    under the option's own name before any work starts."""
    from xmfast.errors import U32_MAX, check_int

    for name, value in options.items():
        check_int(name, value, low, U32_MAX if high is None else high)


PartModels = Annotated[Optional[str], typer.Option(
    "--models", help="Only these of the file's models (comma-separated, e.g. ease,ease++): the same outputs and "
                     "stage keys, so the whole file reuses them.")]
PartTargets = Annotated[Optional[str], typer.Option("--targets", help="Only these of the file's targets (comma-separated).")]
PartSeeds = Annotated[Optional[str], typer.Option("--seeds", help="Only these of the file's seeds (comma-separated).")]


def _part(exp: Any, models: Optional[str], targets: Optional[str], seeds: Optional[str]) -> Any:
    """The experiment restricted by --models/--targets/--seeds (xmfast.experiment.restrict)."""
    from xmfast.experiment import restrict

    if seeds is not None:
        try:
            seed_list: Optional[list[int]] = [int(v) for v in _split_list(seeds)]
        except ValueError:
            raise XmfastError(f"--seeds {seeds}: expected whole numbers separated by commas, e.g. --seeds 1,2") from None
    else:
        seed_list = None
    return restrict(exp, models=None if models is None else _split_list(models),
                    targets=None if targets is None else _split_list(targets), seeds=seed_list)


def _part_args(models: Optional[str], targets: Optional[str], seeds: Optional[str]) -> list[Any]:
    """The --models/--targets/--seeds options as given, for "run the same command again"."""
    return [*(["--models", models] if models is not None else []), *(["--targets", targets] if targets is not None else []),
            *(["--seeds", seeds] if seeds is not None else [])]


MODEL_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}
RECIPE_HELP = ("xmfast (the defaults) or original: the original code's training choices (`xmfast models MODEL` "
               "lists them; options given override them).")
"""Commands whose model's settings are options read from its configuration dataclass (after
the model is known), not declared here: see xmfast.configs.parse_setting_options."""


def _not_an_option(command: str, *arguments: Optional[Path]) -> None:
    """With model settings allowed as extra options, an unknown option standing where an
    argument goes is taken for that argument: it is refused as the mistyped option it is."""
    for value in arguments:
        if value is not None and str(value).startswith("--"):
            raise XmfastError(f"No such option: {value} (see `xmfast {command} --help`); a model's own settings "
                              f"go after the {'RUN' if command == 'finetune' else 'DATASET'} argument")


def _model_options(model: Any, ctx: typer.Context, command: str) -> tuple[dict[str, Any], dict[str, Path]]:
    from xmfast.configs import parse_setting_options

    try:
        return parse_setting_options(model, list(ctx.args))
    except XmfastError as e:
        raise XmfastError(f"{e}; `xmfast {command} --help` lists the command's own options") from None


@command()
@user_errors
def prepare(
    target: Annotated[str, typer.Option("--target", "-t", help="Target market, e.g. uk.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the prepared dataset to.")],
    data_dir: Annotated[Optional[Path], typer.Argument(
        help="Directory of rating files ({market}_5core.txt, ratings_{market}_{category}.txt.gz, {market}.csv, "
             ".tsv, .inter or .parquet).")] = None,
    file: Annotated[Optional[list[str]], typer.Option(
        "--file", help="A rating file MARKET=PATH (repeatable), added to the directory's; PATH alone: a file "
                       "whose market column names each row's market.")] = None,
    columns: Annotated[str, typer.Option(
        help="Column names of CSV/TSV/Parquet files, e.g. user=reviewerID,item=asin,rating=overall,"
             "time=unixReviewTime (also market=...); unmapped ones are found by their usual names.")] = "",
    sources: Annotated[
        str, typer.Option("--sources", "-s", help="Comma-separated source markets, 'all', or '' for none.")
    ] = "",
    protocol: Annotated[
        str, typer.Option(help="forec: temporal split, market negatives; acmr: random split, all-item negatives.")
    ] = "forec",
    seed: Annotated[int, typer.Option(help="Seed of the split (acmr) and of all negative sampling.")] = 42,
    min_user: Annotated[Optional[int], typer.Option(
        help="k-core: minimum ratings per user (per market). Default 1, on raw XMarket files 7 (FOREC's).")] = None,
    min_item: Annotated[Optional[int], typer.Option(
        help="k-core: minimum ratings per item (per market). Default 1, on raw XMarket files 7 (FOREC's).")] = None,
    fixpoint: Annotated[Optional[bool], typer.Option(
        "--fixpoint/--one-pass", help="k-core to a fixpoint, or one pass (items then users; the default).")] = None,
    reference_market: Annotated[Optional[str], typer.Option(
        "--reference-market", "--reference",
        help="Keep only items of this market's k-core; 'none' for no restriction. Default none, on raw "
             "XMarket files us (FOREC's).")] = None,
    reference_min_user: Annotated[Optional[int], typer.Option(help="k-core of the reference market: users (default 10).")] = None,
    reference_min_item: Annotated[Optional[int], typer.Option(help="k-core of the reference market: items (default 25).")] = None,
    restrict_reference: Annotated[Optional[bool], typer.Option(
        "--restrict-reference/--keep-reference",
        help="Restrict the reference market's own ratings too (the default), or keep them all (FOREC's, the "
             "default on raw XMarket files).")] = None,
    min_rating: Annotated[Optional[float], typer.Option(
        help="Keep only ratings >= this as positives, before any filtering (default: every rating).")] = None,
    dedup: Annotated[
        bool, typer.Option("--dedup/--keep-duplicates", help="Drop repeated (market, user, item) rows.")
    ] = False,
    eval_negatives: Annotated[int, typer.Option(help="Negatives stored per validation/test interaction.")] = 99,
    category: Annotated[Optional[str], typer.Option(help="Category of raw files, when several are present.")] = None,
    candidates: Annotated[list[str], typer.Option(
        "--candidates", metavar="SPLIT=FILE",
        help="Published candidates of the target market instead of sampled ones: valid=FILE and test=FILE, "
             "lines user<TAB>held-out<TAB>negatives (or a WSDM Cup run file with --qrels).")] = [],  # noqa: B006
    qrels: Annotated[list[str], typer.Option(
        "--qrels", metavar="SPLIT=FILE",
        help="With WSDM Cup run files as --candidates: valid=FILE and test=FILE, lines userId<TAB>itemId<TAB>rating "
             "naming each user's positive.")] = [],  # noqa: B006
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
) -> None:
    """Read, filter and split rating files; store evaluation candidates; print market statistics.

    Raw XMarket files (ratings_{market}_{category}.txt.gz) get FOREC's preprocessing unless an option
    says otherwise: items restricted to the us 10/25-core, then a 7/7 k-core per market (FOREC's 5-core)."""
    from xmfast.prepare import PrepareConfig, data_settings
    from xmfast.prepare import prepare as run_prepare
    from xmfast.stats import market_stats
    from xmfast_cli.render import console, market_table, show, steps

    _check_ints({name: value for name, value in {
        "--min-user": min_user, "--min-item": min_item, "--reference-min-user": reference_min_user,
        "--reference-min-item": reference_min_item, "--eval-negatives": eval_negatives}.items() if value is not None})
    given = {"min_user": min_user, "min_item": min_item, "fixpoint": fixpoint}
    reference_given = {"min_user": reference_min_user, "min_item": reference_min_item}
    settings: dict[str, Any] = {
        "target": target,
        "sources": "all" if sources.strip() == "all" else _split_list(sources),
        "protocol": protocol,
        "seed": seed,
        "dedup": dedup,
        "eval_negatives": eval_negatives,
        "category": category,
        **({"kcore": {k: v for k, v in given.items() if v is not None}}
           if any(v is not None for v in given.values()) else {}),
        **({"reference_kcore": {k: v for k, v in reference_given.items() if v is not None}}
           if any(v is not None for v in reference_given.values()) else {}),
        **({"reference_market": reference_market} if reference_market is not None else {}),
        **({"min_rating": min_rating} if min_rating is not None else {}),
        **({"restrict_reference": restrict_reference} if restrict_reference is not None else {}),
        "candidates": _split_files(candidates, "--candidates", ("valid", "test")),
        "qrels": _split_files(qrels, "--qrels", ("valid", "test")),
    }
    data = _data_source(data_dir, file, columns)
    config = PrepareConfig(**data_settings(data, settings))
    with _on_interrupt(lambda: f"nothing was written to {out} (a dataset already there is untouched); "
                       f"run {_same_command()} again"), steps("prepare") as on_step:
        dataset = run_prepare(data, out, config, overwrite=overwrite, on_step=on_step, on_note=_warn)
    counts = dataset.manifest["counts"]
    show(market_table(market_stats(dataset, dataset.target), dataset.target, f"Prepared dataset {out}"))
    console.print(
        f"protocol [bold]{dataset.protocol}[/], {counts['evaluated_groups']:,} evaluated (market, user) groups, "
        f"{counts['train_rows']:,} training rows, {dataset.valid.candidates.shape[1] - 1} negatives per held-out item, "
        f"fingerprint {dataset.fingerprint[:16]}",
        highlight=False,
    )
    if "published_groups" in counts:
        console.print(
            f"published candidates: {counts['published_groups']:,} {dataset.target} users evaluated on them; "
            f"{counts['heldout_rows_added']:,} held-out rows the ratings lacked were added",
            highlight=False,
        )


@command()
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
    from xmfast.markets import DataSource, resolve_markets
    from xmfast.stats import cross_market, market_stats
    from xmfast_cli.render import Grid, console, market_table, overlap_tables, show

    _check_output(json_out, "STATS_JSON", path)
    shown: list[Any] = []  # printed after --json is written: a failed write prints nothing but its error
    if (path / "manifest.json").is_file():
        dataset = PreparedDataset.load(path)
        tgt = target or dataset.target
        per_market = market_stats(dataset, tgt)
        shown.append(market_table(per_market, tgt, f"Prepared dataset {path}"))
        report: dict[str, Any] = {"markets": [s.as_dict() for s in per_market]}
    else:
        data = DataSource(path)
        available = data.find(category)
        if (note := available.unmatched_note()) is not None:
            _warn(note)
        wanted = _split_list(markets) or list(available)
        tgt = target or wanted[0]
        chosen = resolve_markets(available, tgt, [m for m in wanted if m != tgt])
        ratings = data.read(available, chosen).drop_markets(chosen)
        per_market = market_stats(ratings, tgt)
        cm = cross_market(ratings)
        shown += [market_table(per_market, tgt, f"Rating files in {path}"), *overlap_tables(cm),
                  f"all markets together: {len(ratings.items):,} distinct items, {len(ratings):,} ratings"]
        report = {
            "markets": [s.as_dict() for s in per_market],
            "distinct_items": len(ratings.items),
            "cross_market": {
                "markets": cm.markets, "shared_items": cm.shared_items, "pairs": cm.pairs,
                "shared_pairs": cm.shared_pairs,
            },
        }
    if json_out is not None:
        from xmfast import outputs
        from xmfast._io import write_json_atomic

        write_json_atomic(json_out, {"format": outputs.STATS_FORMAT, **report}, kind=outputs.STATS_JSON, inputs=[path])
    for item in shown:
        if isinstance(item, Grid):
            show(item)
        else:
            console.print(item)


@command()
@user_errors
def download(
    markets: Annotated[Optional[str], typer.Option(help="Comma-separated market codes, e.g. uk,de,in.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Directory for the rating files.")] = None,
    category: Annotated[str, typer.Option(
        help="XMarket category (Electronics, Home_and_Kitchen, ...; --list shows all), several comma-separated, "
             "or all.")] = "Electronics",
    base_url: Annotated[str, typer.Option(help="Where the files are: BASE/{market}/{category}/ratings_{market}_{category}.txt.gz.")] = "https://ciir.cs.umass.edu/downloads/XMarket/FULL",
    overwrite: Annotated[bool, typer.Option(help="Fetch files that are already there again.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List XMarket's markets and categories and exit.")] = False,
) -> None:
    """Download official XMarket rating files (resumes partial downloads; checks each gzip before it is kept).

    Not every market has every category: a file the server lacks is reported on its own line and the
    others are still fetched."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from xmfast.download import XMARKET_CATEGORIES
    from xmfast.download import download as fetch
    from xmfast.markets import XMARKET_MARKETS
    from xmfast_cli.render import console, err_console, live

    if list_:
        console.print(f"markets: {', '.join(XMARKET_MARKETS)}\ncategories: {', '.join(XMARKET_CATEGORIES)}",
                      highlight=False)
        return
    names = _split_list(markets or "")
    if not names:
        raise XmfastError("--markets: name at least one market, e.g. uk,de")
    if out is None:
        raise XmfastError("--out: name the directory for the rating files")
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err_console, transient=True, disable=not live()) as bars:

        def progress(label: str):
            task = bars.add_task(label, total=None)
            return lambda done, total: bars.update(task, completed=done, total=total)

        results = fetch(names, category, out, base_url=base_url, overwrite=overwrite, progress=progress)
    for r in results:
        if r.missing:
            console.print(f"{r.market}: no {r.category} ratings at {r.missing} (HTTP 404; not every XMarket market "
                          "has every category)", highlight=False)
            continue
        how = "already complete" if r.skipped else (f"resumed at {r.resumed_from:,} bytes" if r.resumed_from else "downloaded")
        console.print(f"{r.market}: {r.path} ({r.bytes:,} bytes, {how})", highlight=False)


@command()
@user_errors
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the files to (created if needed).")],
    markets: Annotated[str, typer.Option(help="Comma-separated market names (letters, digits, _ and -), largest market first.")] = "uk,de,in",
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

    if not sample:
        from xmfast.errors import U64_MAX

        _check_ints({"--items": items, "--topics": topics, "--min-per-user": min_per_user}, low=1)
        _check_ints({"--ratings": ratings}, low=1, high=U64_MAX)  # 0 would still write a user per market
        _check_ints({"--seed": seed}, low=0, high=U64_MAX)
        if not (math.isfinite(mean_per_user) and mean_per_user >= min_per_user):  # SynthConfig's rule, under the option's name
            raise XmfastError(f"--mean-per-user must be a number at least --min-per-user ({min_per_user}), got {mean_per_user}")
    config = SAMPLE if sample else SynthConfig(
        markets=_split_list(markets), ratings=ratings, items=items, topics=topics,
        mean_per_user=mean_per_user, min_per_user=min_per_user, seed=seed, raw_category=raw_category,
    )
    files = synthesize(out_dir, config)
    for f in files:
        console.print(f"{f['market']}: {f['users']:,} users, {f['ratings']:,} ratings -> {f['path']}", highlight=False)


@command()
@user_errors
def export(
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the export to; its name is the "
                                      "files' NAME (RecBole's dataset name).")],
    format_: Annotated[str, typer.Option("--format", "-f", help="recbole (atomic .inter files), csv or parquet "
                                         "(needs pyarrow).")] = "recbole",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export at --out.")] = False,
) -> None:
    """Write a prepared dataset's split and stored candidates for another toolkit, with a README on evaluating them."""
    from xmfast.export import export_dataset
    from xmfast_cli.render import console

    names = export_dataset(dataset, out, format_, overwrite=overwrite)
    console.print(f"exported {dataset} as {format_} to {out}: {', '.join(names.values())}; "
                  f"{out / 'README.md'} says how to load and evaluate them", highlight=False)


@command("import")
@user_errors
def import_(
    export_dir: Annotated[Path, typer.Argument(help="A directory written by `xmfast export`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the prepared dataset to.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing prepared dataset at --out.")] = False,
) -> None:
    """Read an export (any format) back into the prepared dataset it was made from (the same fingerprint)."""
    from xmfast.export import import_export
    from xmfast_cli.render import console

    dataset = import_export(export_dir, out, overwrite=overwrite)
    console.print(f"imported {export_dir} to {out}: fingerprint {dataset.fingerprint[:16]}", highlight=False)


# A command of its own, not `import acmr ...`: `xmfast import DIR` reads a dataset export, and a
# directory named acmr would make a subcommand ambiguous.
@command("import-acmr")
@user_errors
def import_acmr(
    checkpoint: Annotated[Path, typer.Argument(help="A released state dict: checkpoints/ACMR_MKT_{pretrain,finetune}.pt "
                                               "of laowangzi/ACMR.")],
    dataset: Annotated[Path, typer.Argument(help="A prepared dataset with the log's target and every market it names "
                                            "(--sources all).")],
    log: Annotated[Path, typer.Option(help="The run's training log (logs/MKT.log): its market order and data "
                                      "statistics.")],
    data: Annotated[Path, typer.Option(help="The directory of the rating files the dataset was prepared from "
                                       "(the original's vocabulary is their file order).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run at --out.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (for the test evaluation).")] = "auto",
) -> None:
    """Make ACMR's released weights (laowangzi/ACMR) a run that evaluate, report, compare and recommend read, labelled acmr (released)."""
    from xmfast.acmr_release import import_release
    from xmfast_cli.render import console

    _check_output(out, "RUN", dataset, checkpoint, log)
    run = import_release(checkpoint, log, dataset, data, out, overwrite=overwrite, device=device)
    test = run.results()["test"]
    console.print(f"imported {checkpoint} as {run.info['label']} into {out}: test NDCG@10 {test['ndcg@10']:.4f} on "
                  f"{run.results()['queries']:,} users of {run.info['target']}", highlight=False)


def _parse_cutoffs(value: str) -> tuple[int, ...]:
    try:
        cutoffs = tuple(int(v) for v in _split_list(value))
    except ValueError:
        raise XmfastError(f"--cutoffs: expected comma-separated integers, got {value!r}") from None
    for k in cutoffs:
        _check_ints({"--cutoffs": k})
    return cutoffs


@command(context_settings=MODEL_SETTINGS)
@user_errors
def evaluate(
    ctx: typer.Context,
    dataset: Annotated[
        Optional[Path],
        typer.Argument(help="A trained run, or a prepared dataset (omit when evaluating --trec-run with --trec-qrels)."),
    ] = None,
    scores: Annotated[
        Optional[Path],
        typer.Option(help="Scores of the stored candidates: a .npy matrix (queries × candidates) or a TREC run file."),
    ] = None,
    baseline: Annotated[
        Optional[str], typer.Option(help="Evaluate a model that needs no training (pop, cooc, or any registered with "
                                    "trained = False), fitted on the dataset's markets; its settings as options, "
                                    "e.g. --cooc.markets de,uk.")
    ] = None,
    save_run: Annotated[
        Optional[Path], typer.Option(help="With --scores: also save them as a run here, which report and compare read like a trained one.")
    ] = None,
    label: Annotated[
        Optional[str], typer.Option(help="With --save-run: the name tables give the run (default: the scores file's name).")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="With --save-run: the seed the scores were made with (a report averages a label's seeds).")
    ] = 0,
    overwrite: Annotated[bool, typer.Option(help="With --save-run: replace an existing run directory.")] = False,
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
    from xmfast import trec
    from xmfast.evaluation import EvalConfig, evaluate_sampled, evaluate_scorer
    from xmfast_cli.render import console, progress_bar, results_table, show

    _not_an_option("evaluate", dataset)
    if not _split_list(measures):
        raise XmfastError("--measures: name at least one of hr, ndcg, precision, map, mrr, auc")
    if (label is not None or seed != 0 or overwrite) and save_run is None:
        option = "--label" if label is not None else "--seed" if seed != 0 else "--overwrite"
        raise XmfastError(f"{option} describes the run --save-run writes; give --save-run DIR")
    if save_run is not None and scores is None:
        raise XmfastError("--save-run saves a scores file as a run: give --scores FILE (a trained run is a run already)")
    if save_run is not None and split != "test":
        raise XmfastError("--save-run: a run holds test scores (its results are its test figures); give test scores "
                          "with --split test")
    settings: dict[str, Any] = {}
    if baseline is not None:
        from xmfast.models import get_model

        spec = get_model(baseline)
        if spec.trained:
            raise XmfastError(f"--baseline {baseline}: {spec.name} is trained; train it (`xmfast train -m {spec.name}`) "
                              "and evaluate its run")
        settings, given = _model_options(spec, ctx, "evaluate")
        if given:
            raise XmfastError(f"--{next(iter(given))}-run: --baseline {baseline} starts from no run")
    elif ctx.args:
        raise XmfastError(f"No such option: {ctx.args[0]} (see `xmfast evaluate --help`)")
    config = EvalConfig(
        cutoffs=_parse_cutoffs(cutoffs), measures=tuple(_split_list(measures)), ties=ties  # type: ignore[arg-type]
    )
    _check_output(json_out, "EVALUATION_JSON", dataset, scores, trec_run, trec_qrels)
    if dataset is not None:  # with a dataset, --trec-run and --trec-qrels are exports
        _check_output(trec_run, "TREC_RUN", dataset, scores, trec_qrels)
        _check_output(trec_qrels, "TREC_QRELS", dataset, scores, trec_run)
    if dataset is None:
        if trec_run is None or trec_qrels is None:
            raise XmfastError("give a prepared dataset, or both --trec-run and --trec-qrels to evaluate a TREC run")
        # A TREC run is evaluated as it is: options about a dataset's candidates would be ignored in silence.
        unused = {"--scores": scores is not None, "--baseline": baseline is not None, "--save-run": save_run is not None,
                  "--split": split != "test", "--full": full, "--markets": bool(markets)}
        if any(unused.values()):
            raise XmfastError(f"{', '.join(k for k, v in unused.items() if v)}: only with a prepared dataset or run; "
                              "a TREC run is evaluated as it is against its qrels")
        evaluation = trec.evaluate_run(trec.read_run(trec_run), trec.read_qrels(trec_qrels), config,
                                       run_path=trec_run, qrels_path=trec_qrels)
        title = f"{trec_run} against {trec_qrels}"
    else:
        from xmfast.dataset import PreparedDataset

        market_filter = _split_list(markets) or None
        given = {"--scores": scores is not None, "--baseline": baseline is not None}
        if (dataset / "run.json").is_file():
            # A run is evaluated with its own model: these options would be ignored, and the run's
            # figures printed as if they were the scores' or the baseline's.
            option = next((o for o, on in given.items() if on), None)
            if option is not None:
                from xmfast.runs import Run

                where = Run.open(dataset).info.get("dataset", {}).get("path", "DATASET")
                raise XmfastError(f"{option} does not apply to a run ({dataset} is evaluated with its own model); "
                                  f"give the run's prepared dataset instead: xmfast evaluate {where} {option} ...")
            _evaluate_run(dataset, split, config, full, market_filter, json_out, per_user, trec_run, trec_qrels)
            return
        _refuse_directory_of_runs(dataset, "evaluate")
        data = PreparedDataset.load(dataset)
        if (scores is None) == (baseline is None):
            raise XmfastError("give exactly one of --scores FILE or --baseline MODEL (a model without training: "
                              "pop, cooc, ...)")
        _check_output(save_run, "RUN", dataset, scores, json_out, trec_run, trec_qrels)
        if scores is not None:
            if full:
                raise XmfastError("--full needs a model to score every item; a scores file holds the stored candidates only")
            matrix = _read_scores(scores, data, split)
            evaluation = evaluate_sampled(data, split, matrix, config, markets=market_filter)  # type: ignore[arg-type]
            title = f"{scores} on {dataset} ({split})"
        else:
            # fitted on every market of the dataset: the target and all its possible sources
            others = tuple(m for m in data.markets if m != data.target)
            scorer = spec.fit(data, spec.config_from(settings), others)
            with progress_bar(f"scoring {split}") as update:
                evaluation = evaluate_scorer(
                    data, split, scorer, config, full=full, markets=market_filter, progress=update  # type: ignore[arg-type]
                )
            title = f"{baseline} on {dataset} ({split}, {'full ranking' if full else 'sampled candidates'})"
            if trec_run is not None:
                if full:
                    raise XmfastError("--trec-run export covers the stored candidates; drop --full")
                trec.export_run(trec_run, data, split, scorer, baseline)  # type: ignore[arg-type]
        if trec_qrels is not None:
            trec.write_qrels(trec_qrels, data, split)
        if scores is not None and trec_run is not None:
            trec.export_run(trec_run, data, split, matrix)  # type: ignore[arg-type]
        if save_run is not None:
            from xmfast.runs import save_scores_run

            saved = save_scores_run(save_run, data, matrix, label=label or scores.stem, scores_file=scores, seed=seed,
                                    overwrite=overwrite)
            console.print(f"saved the scores as run {saved.path} (label {saved.model})", highlight=False)
    if json_out is not None:
        evaluation.to_json(json_out, per_user=per_user)
    show(results_table(evaluation, title))
    console.print(
        f"ties: [bold]{config.ties}[/]; {evaluation.tie_share:.1%} of queries have a tie with the positive",
        highlight=False,
    )


def _evaluate_run(
    path: Path, split: str, config: Any, full: bool, markets: Optional[list[str]], json_out: Optional[Path],
    per_user: bool, trec_run: Optional[Path], trec_qrels: Optional[Path],
) -> None:
    """`xmfast evaluate RUN`: the run's selected checkpoint (or baseline) on its own dataset."""
    from xmfast import trec
    from xmfast.evaluation import evaluate_scorer
    from xmfast.runs import Run
    from xmfast_cli.render import console, progress_bar, results_table, show

    run = Run.open(path)
    data = run.load_dataset()
    scorer = _load_scorer(run, data)
    markets = markets or [data.target]
    with progress_bar(f"scoring {split}") as update:
        evaluation = evaluate_scorer(data, split, scorer, config, full=full, markets=markets, progress=update)  # type: ignore[arg-type]
    evaluation.info.update({"run": str(path), "model": run.model})
    if trec_run is not None:
        if full:
            raise XmfastError("--trec-run export covers the stored candidates; drop --full")
        trec.export_run(trec_run, data, split, scorer, run.model)  # type: ignore[arg-type]
    if trec_qrels is not None:
        trec.write_qrels(trec_qrels, data, split)
    if json_out is not None:
        evaluation.to_json(json_out, per_user=per_user)
    show(results_table(evaluation, f"{run.model} run {path} ({split}, {'full ranking' if full else 'sampled candidates'})"))
    console.print(
        f"ties: [bold]{config.ties}[/]; {evaluation.tie_share:.1%} of queries have a tie with the positive",
        highlight=False,
    )


def _load_scorer(run: Any, dataset: Any, device: str = "auto") -> Any:
    """The run's scorer: a model without training is fitted here, without importing torch
    (xmfast.training, which the network of a trained one needs, takes seconds to import)."""
    from xmfast.runs import fitted_scorer

    scorer = fitted_scorer(run, dataset)
    if scorer is None:
        from xmfast.training import load_scorer

        scorer = load_scorer(run, dataset, device=device)
    return scorer


def _read_scores(path: Path, dataset: Any, split: str) -> Any:
    from xmfast.evaluation import read_scores

    return read_scores(path, dataset, split)  # type: ignore[arg-type]


@command()
@user_errors
def compare(
    results: Annotated[
        list[Path],
        typer.Argument(help="Evaluation JSON files (from evaluate --json) or run directories; the first is the reference."),
    ],
    metrics: Annotated[str, typer.Option(help="Comma-separated metrics to compare (default: all shared).")] = "",
    split: Annotated[str, typer.Option(help="For run directories: compare their valid or test results.")] = "test",
    reference: Annotated[
        Optional[Path], typer.Option(help="The one of RESULTS every other is tested against (default: the first).")
    ] = None,
    test_metric: Annotated[
        Optional[str], typer.Option(help="The metric of the significance column (default: ndcg@10 if compared, "
                                    "else the first).")
    ] = None,
    tests: Annotated[bool, typer.Option("--tests", help="Also list every metric's paired t (raw and Holm), "
                                        "Wilcoxon and sign p-values.")] = False,
) -> None:
    """Put runs side by side in one table, each tested against the reference (paired t-test over users, Holm-adjusted)."""
    from xmfast.compare import compare_table, results_file
    from xmfast_cli.render import comparison_footnote, comparison_table, comparison_tests_table, console, show

    if len(results) < 2:
        raise XmfastError("give at least two results files")
    if split not in ("valid", "test"):
        raise XmfastError(f"--split: expected valid or test, got {split!r}")
    index = 0
    if reference is not None:
        matches = [i for i, p in enumerate(results) if p.resolve() == reference.resolve()]
        if not matches:
            raise XmfastError(f"--reference {reference}: not one of the results compared "
                              f"({', '.join(map(str, results))}); give one of them")
        index = matches[0]
    files = [results_file(p, split) for p in results]
    seen: dict[Path, int] = {}
    for i, file in enumerate(files):  # a row of zero differences says nothing: surely another run was meant
        first = seen.setdefault(file.resolve(), i)
        if first != i:
            raise XmfastError(f"{file}: the same results as {'the reference ' if first == index else ''}{files[first]}; "
                              "compare different runs")
    table = compare_table(files, names=[str(p) for p in results], metrics=_split_list(metrics) or None,
                          reference=index, test_metric=test_metric, all_tests=tests)
    show(comparison_table(table))
    console.print(comparison_footnote(table), highlight=False, markup=False, soft_wrap=True)
    if tests:
        show(comparison_tests_table(table))


def _refuse_directory_of_runs(path: Path, command: str) -> None:
    """A directory that is not a run but holds runs (as `finetune`'s output holds one per market)
    is refused naming them: the command takes one run."""
    from xmfast.runs import runs_inside

    inside = runs_inside(path)
    if inside:
        # finetune's output: OUT/<market>, each the run of its market
        per_market = all(_target_of(p) == p.name for p in inside)
        raise XmfastError(f"{path}: a directory of runs ({', '.join(p.name for p in inside)})"
                          f"{', one per market as `xmfast finetune` writes them' if per_market else ''}, not one run; "
                          f"give one of them, e.g. `xmfast {command} {inside[0]}`")


def _target_of(run: Path) -> Optional[str]:
    from xmfast.runs import Run

    try:
        return Run.open(run).info.get("target")
    except XmfastError:
        return None


@command(context_settings=MODEL_SETTINGS)
@user_errors
def train(
    ctx: typer.Context,
    dataset: Annotated[Optional[Path], typer.Argument(help="A prepared dataset (omit with --resume).")] = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", help="A registered model (`xmfast models` lists them); NAME++ trains a "
                     "single-market model on the target pooled with --sources (default all)."),
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to create.")] = None,
    config_file: Annotated[
        Optional[Path], typer.Option("--config", help="TOML file of settings (model, [train], [MODEL]); options override it.")
    ] = None,
    sources: Annotated[
        Optional[str], typer.Option(help="Source markets whose rows augment the target: comma-separated, or all (the ++ variants).")
    ] = None,
    augmentation: Annotated[
        Optional[str], typer.Option(help="full (all source rows) or selected (only source rows of items the target has).")
    ] = None,
    sampling: Annotated[
        Optional[str], typer.Option(help="concat (one shuffled stream) or equal (batches alternate between markets).")
    ] = None,
    sources_in_full: Annotated[
        Optional[bool],
        typer.Option("--sources-in-full/--sources-train-only",
                     help="The sources' held-out items train too (acmr's default; the run is then evaluated on its target only)."),
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs (FOREC: 25; acmr: 50).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Instances per batch (rows per batch for the bpr, softmax and own objectives; FOREC: 1024).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (default: the model's own, e.g. 0.005 GMF, 0.01 MLP/NMF).")] = None,
    l2: Annotated[Optional[float], typer.Option(help="Adam weight decay (FOREC: 1e-7).")] = None,
    negatives: Annotated[Optional[int], typer.Option(help="Training negatives per positive (see --static-negatives).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of initialisation, negatives and shuffling.")] = None,
    patience: Annotated[
        Optional[int], typer.Option(help="Stop after this many epochs without improvement (default: train all epochs).")
    ] = None,
    monitor: Annotated[Optional[str], typer.Option(help="Validation metric for early stopping and the best checkpoint.")] = None,
    select: Annotated[Optional[str], typer.Option(help="Checkpoint the final results use: best (validation) or last.")] = None,
    recipe: Annotated[Optional[str], typer.Option(help=RECIPE_HELP)] = None,
    resample_negatives: Annotated[Optional[bool], typer.Option(
        "--fresh-negatives/--static-negatives", help="Draw the training negatives anew every epoch (xmfast) or once (FOREC's and ACMR's code).")] = None,
    epoch_length: Annotated[Optional[str], typer.Option(
        help="With equal sampling and MAML: an epoch passes over the target's instances or the largest market's (FOREC's code).")] = None,
    start_checkpoint: Annotated[Optional[str], typer.Option(
        help="Checkpoint of the runs this one starts from (NMF's branches, MAML's NMF): best or last (FOREC's code).")] = None,
    patience_reset: Annotated[Optional[bool], typer.Option(
        "--patience-reset/--patience-total", help="Patience counts epochs since the last improvement, or all epochs without one (ACMR's code).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (CUDA when present), cpu or cuda.")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="bfloat16 autocast on CUDA.")] = None,
    resume: Annotated[
        Optional[Path], typer.Option(help="Continue this interrupted run from its last checkpoint (from epoch 0 if no "
                                     "epoch had finished) with its saved settings; other options but --device are ignored.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    tensorboard: Annotated[Optional[Path], typer.Option(
        help="Also write the per-epoch loss, validation metrics and epoch time, and at the end the settings "
             "with the final metrics, to DIR/<run name> for TensorBoard (`tensorboard --logdir DIR`).")] = None,
) -> None:
    """Train a model (or fit a baseline) into a run directory: config, checkpoints, per-epoch metrics, results.

    The model's own settings are options too, named after its configuration and given after DATASET: --embedding-dim 16, --layers 16,64,32,16,8, --no-pretrained, --gmf-run RUN (`xmfast models MODEL` lists them).
    """
    from xmfast import training
    from xmfast.configs import experiment_configs, read_config_file
    from xmfast.dataset import PreparedDataset
    from xmfast.models import get_model
    from xmfast.training.distributed import is_main
    from xmfast_cli.render import TrainProgress, show, train_summary

    _not_an_option("train", dataset)
    if resume is not None:
        if dataset is not None and out is not None:
            raise XmfastError("--resume continues a run with its saved settings; give only the run directory")
        if ctx.args:
            raise XmfastError(f"{ctx.args[0]}: --resume continues a run with its saved settings; give no other settings")
        with _on_interrupt(lambda: _run_interrupted(resume, _same_command(), tensorboard)), \
                TrainProgress() as observer:
            result = training.resume(resume, dataset_path=dataset, observer=observer, device=device,
                                     tensorboard=tensorboard)
        assert result is not None
        if is_main():  # under torchrun every rank returns the result; rank 0 prints it
            show(train_summary(result))
        return
    if dataset is None or out is None:
        raise XmfastError("give a prepared dataset and --out RUN_DIR (or --resume RUN_DIR)")
    file = read_config_file(config_file) if config_file else None
    name = model or (file or {}).get("model")
    settings, given = _model_options(get_model(name), ctx, "train") if name else ({}, {})
    if ctx.args and not name:
        raise XmfastError(f"{ctx.args[0]}: name the model (--model) whose setting this is")
    untrained = {"--epochs": epochs, "--batch-size": batch_size, "--lr": lr, "--l2": l2, "--negatives": negatives,
                 "--patience": patience, "--monitor": monitor, "--select": select, "--amp": amp,
                 "--augmentation": augmentation, "--sampling": sampling, "--fresh-negatives": resample_negatives,
                 "--epoch-length": epoch_length, "--start-checkpoint": start_checkpoint,
                 "--patience-reset": patience_reset}
    given_training = next((o for o, v in untrained.items() if v is not None), None)
    if name and given_training and not get_model(name).trained:
        raise XmfastError(f"{given_training}: {get_model(name).name} has no training loop (it is fitted on the training "
                          "rows); drop the training options")
    name, spec, model_config, config = experiment_configs(
        model,
        file,
        train_overrides={
            "sources": _split_list(sources) if sources is not None else None, "augmentation": augmentation,
            "sampling": sampling, "sources_in_full": sources_in_full, "epochs": epochs, "batch_size": batch_size, "lr": lr, "l2": l2,
            "negatives": negatives, "seed": seed, "patience": patience, "monitor": monitor, "select": select,
            "device": device, "amp": amp, "recipe": recipe, "resample_negatives": resample_negatives,
            "epoch_length": epoch_length, "start_checkpoint": start_checkpoint, "patience_reset": patience_reset,
        },
        model_overrides=settings,
        source=str(config_file),
    )
    data = PreparedDataset.load(dataset)
    with _on_interrupt(lambda: _run_interrupted(out, _same_command(), tensorboard)), TrainProgress() as observer:
        result = training.train(data, out, name, model_config, config, pretrained=given, overwrite=overwrite,
                                observer=observer, tensorboard=tensorboard)
    assert result is not None
    if is_main():
        show(train_summary(result))


def _fine_tuning_model(run: Path) -> Any:
    """The registered model that fine-tunes `run`'s model, when exactly one does."""
    from xmfast.models import get_model
    from xmfast.runs import Run
    from xmfast.training.finetuning import fine_tuned_models

    base = Run.open(run).model
    fitting = [m for m in fine_tuned_models() if base in get_model(m).fine_tunes]
    if len(fitting) != 1:
        raise XmfastError(f"{run}: a {base} run, which " + (f"{' and '.join(fitting)} fine-tune; name one with --model"
                          if fitting else "no registered model fine-tunes (`xmfast models` lists them)"))
    return get_model(fitting[0])


@command(context_settings=MODEL_SETTINGS)
@user_errors
def finetune(
    ctx: typer.Context,
    run: Annotated[Path, typer.Argument(help="A finished run to fine-tune (forec: a maml or nmf++ run; acmr: a pre-trained acmr run).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the fine-tuned runs: one per market, OUT/<market>.")],
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", help="A model made by fine-tuning (`xmfast models` marks them), e.g. forec or acmr "
                     "(default: the one that fine-tunes RUN's model)."),
    ] = None,
    markets: Annotated[
        str, typer.Option(help="Comma-separated markets to fine-tune for, or all (the run's target and sources); default: its target.")
    ] = "",
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per market (forec: 25; acmr: 50).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (forec: 0.01; acmr: 0.001).")] = None,
    l2: Annotated[Optional[float], typer.Option(help="Adam weight decay (forec: 1e-3; acmr: 1e-7).")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early stopping patience (forec: all epochs; acmr: 3).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Instances per batch (1024; FOREC's code: 20).")] = None,
    select: Annotated[Optional[str], typer.Option(help="Checkpoint the final results use: best (validation) or last.")] = None,
    recipe: Annotated[Optional[str], typer.Option(help=RECIPE_HELP)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the head's initialisation, negatives and shuffling (42).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing fine-tuned runs.")] = False,
    tensorboard: Annotated[Optional[Path], typer.Option(
        help="Also write each run's curves and, at the end, its settings with the final metrics to "
             "DIR/<OUT's name>/<market> for TensorBoard (`tensorboard --logdir DIR`).")] = None,
) -> None:
    """Fine-tune a trained run per market: FOREC forks a meta-learned NMF and adds a market head; ACMR continues its pre-training on the target.

    The model's own settings are options too (forec: --unfreeze 3, --head 16,32,16; `xmfast models MODEL` lists them).
    """
    from xmfast import training
    from xmfast.models import get_model
    from xmfast.training.distributed import is_main
    from xmfast_cli.render import TrainProgress, show, train_summary

    _not_an_option("finetune", run)
    spec = get_model(model) if model is not None else _fine_tuning_model(run)
    settings, given = _model_options(spec, ctx, "finetune")
    if given:
        raise XmfastError(f"--{next(iter(given))}-run: a fine-tuned model starts from the RUN argument")
    model_config = spec.config_from(settings, recipe) if settings or recipe else None
    options = {"epochs": epochs, "lr": lr, "l2": l2, "patience": patience, "batch_size": batch_size, "select": select,
               "recipe": recipe, "seed": seed, "device": device}
    config = spec.finetune_config(**{k: v for k, v in options.items() if v is not None})
    def interrupted() -> str:
        options = {"--model": spec.name, "--epochs": epochs, "--lr": lr, "--l2": l2, "--patience": patience,
                   "--batch-size": batch_size, "--select": select, "--recipe": recipe, "--seed": seed,
                   "--device": device, "--tensorboard": tensorboard}
        return _finetune_interrupted(run, out, _split_list(markets),
                                     [w for o, v in options.items() if v is not None for w in (o, v)] + list(ctx.args),
                                     tensorboard)

    with _on_interrupt(interrupted), TrainProgress() as observer:
        results = training.finetune(run, out, _split_list(markets) or None, model_config, config, model=spec.name,
                                    overwrite=overwrite, observer=observer, given=settings, tensorboard=tensorboard)
    for result in results.values():
        if result is not None and is_main():
            show(train_summary(result))


def _finished(path: Path) -> bool:
    from xmfast.runs import Run

    try:
        return Run.open(path).status == "finished"
    except XmfastError:
        return False


def _finetune_interrupted(base: Path, out: Path, markets: list[str], options: list[Any],
                          tensorboard: Optional[Path] = None) -> str:
    """What a Ctrl-C left of `finetune`'s runs (one per market, in order) and the commands that
    continue: `train --resume` for the one it stopped in, `finetune --markets` for those not begun."""
    from xmfast.runs import Run

    info = Run.open(base).info
    wanted = list(dict.fromkeys(([info["target"], *info["train_config"].get("sources", [])]
                                 if markets == ["all"] else markets) or [info["target"]]))
    done = [m for m in wanted if _finished(out / m)]
    begun = [m for m in wanted if m not in done and (out / m / "run.json").is_file()]
    rest = [m for m in wanted if m not in done and m not in begun]
    start = _quoted("xmfast", "finetune", base, "-o", out, "--markets", ",".join(rest), *options)
    if not begun:
        return (f"{', '.join(done) or 'no market'} fine-tuned in {out}; fine-tune "
                f"{', '.join(rest)} with {start}")
    told = _run_interrupted(out / begun[0], start, tensorboard)
    return told + (f"; then fine-tune {', '.join(rest)} with {start}" if rest else "")


@command()
@user_errors
def recommend(
    run: Annotated[Path, typer.Argument(help="A trained run directory.")],
    user: Annotated[Optional[list[str]], typer.Option("--user", "-u", help="Original user id (repeatable).")] = None,
    users_file: Annotated[Optional[Path], typer.Option(help="File of user ids, one per line.")] = None,
    all_users: Annotated[bool, typer.Option("--all-users", help="Every user of the market.")] = False,
    market: Annotated[Optional[str], typer.Option(help="Market of the users (default: the run's target).")] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Recommendations per user.")] = 10,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write market,user,rank,item,score CSV here.")] = None,
    include_known: Annotated[bool, typer.Option(help="Also recommend items the user already has.")] = False,
    dataset: Annotated[Optional[Path], typer.Option(help="The run's prepared dataset, if it moved.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Top-k products for users by original item id (items they already have left out)."""
    from xmfast.recommend import recommend as top_items
    from xmfast.recommend import select_groups, write_csv
    from xmfast.runs import Run, scores_origin
    from xmfast_cli.render import SHOWN_USERS, console, progress_bar, recommendations_table, show

    _check_ints({"--k": k})
    _check_output(out, "RECOMMENDATIONS_CSV", run, dataset, users_file)
    r = Run.open(run)
    if scores_origin(r):  # before users are looked up: nothing could score them
        raise XmfastError(scores_origin(r))
    data = r.load_dataset(dataset)
    groups = select_groups(data, user or [], users_file, all_users=all_users, market=market)
    if out is None and groups.size > SHOWN_USERS:  # a table per user: hundreds would scroll past unread
        raise XmfastError(f"{groups.size:,} users would print {groups.size:,} tables; write their recommendations "
                          f"to a CSV file with -o FILE, or name at most {SHOWN_USERS} users")
    scorer = _load_scorer(r, data, device)
    with progress_bar("recommending") as update:
        recs = top_items(data, scorer, groups, k, exclude_known=not include_known, progress=update)
    if out is not None:
        write_csv(out, recs, data)
        console.print(f"wrote {recs.items.shape[0]:,} users × {k} recommendations to {out}", highlight=False)
    if out is None or recs.items.shape[0] <= 5:
        show(*recommendations_table(recs, data))


@command("run")
@user_errors
def run_experiment(
    experiment: Annotated[Path, typer.Argument(help="An experiment file (TOML; see experiments/); its data and out "
                                               "paths are relative to the file's own directory.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and what would run; run nothing.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory, relative to the current "
                                                "directory (default: the file's `out`).")] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write OUT/report.md when the plan is done.")] = True,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Stages run at once, each in a process of its own, as "
                                      "soon as the stages they read are finished; the CPU's threads are divided "
                                      "among them and each gets a GPU in turn (same results as one at a time).")] = 1,
    use_tuned: Annotated[bool, typer.Option("--use-tuned", help="Train with the values `xmfast tune` chose for each "
                                            "(model, target) (OUT/tune/summary.json).")] = False,
    tensorboard: Annotated[Optional[Path], typer.Option(
        help="Also write each training stage's curves and, at the end, its settings with the final metrics to "
             "DIR/<stage id> for TensorBoard (`tensorboard --logdir DIR`); cached stages write nothing.")] = None,
    executor: Annotated[str, typer.Option(help="Where stages run: local (this machine, --jobs) or dask (the "
                                          "workers of the Dask cluster at --address; xmfast's cluster extra).")] = "local",
    address: Annotated[Optional[str], typer.Option(help="With --executor dask: the scheduler's address, "
                                                   "tcp://HOST:8786 (what `dask scheduler` prints).")] = None,
    models: PartModels = None,
    targets: PartTargets = None,
    seeds: PartSeeds = None,
) -> None:
    """Run an experiment grid: every stage once, reusing what is already trained; re-run to continue."""
    import time

    from xmfast.training import distributed
    from xmfast import experiment as xp
    from xmfast import tune
    from xmfast_cli.render import ExperimentProgress, StagesProgress, console, plan_table, show

    if executor not in ("local", "dask"):
        raise XmfastError(f"--executor {executor}: expected local (this machine) or dask (a Dask cluster)")
    if (address is None) == (executor == "dask"):
        raise XmfastError("--address is the Dask scheduler's, for --executor dask" if address is not None else
                          "--executor dask needs the scheduler's address: --address tcp://HOST:8786 (what "
                          "`dask scheduler` prints)")
    xp.check_jobs(jobs, cluster=executor == "dask")
    if distributed.launched():
        raise XmfastError("xmfast run plans and writes a whole grid from one process; start it without torchrun "
                          "(torchrun is for one `xmfast train` or `xmfast finetune` at a time)")
    exp = _part(xp.read_experiment(experiment, out=out), models, targets, seeds)
    plan = tune.tuned_plan(exp) if use_tuned else xp.plan(exp)
    actions = xp.stage_actions(plan)
    if dry_run:
        show(plan_table(plan, actions))
        return
    again = _quoted("xmfast", "run", experiment, *(["--out", out] if out is not None else []),
                    *([] if report else ["--no-report"]), *(["--jobs", jobs] if jobs > 1 else []),
                    *(["--use-tuned"] if use_tuned else []),
                    *(["--tensorboard", tensorboard] if tensorboard is not None else []),
                    *(["--executor", executor, "--address", address] if address is not None else []),
                    *_part_args(models, targets, seeds))
    cluster = contextlib.nullcontext()
    if address is not None:  # reached before anything is written: an unreachable one is one line
        from xmfast.cluster import DaskExecutor, connect

        cluster = contextlib.closing(connect(address))
    observer = ExperimentProgress() if jobs == 1 and address is None else StagesProgress()
    t0 = time.perf_counter()
    with cluster as client, _on_interrupt(lambda: observer.interrupted(again)), observer:
        result = xp.run_experiment(plan, observer=observer, jobs=jobs, tensorboard=tensorboard,
                                   executor=None if client is None else DaskExecutor(client))
    ran = len(result.executed)
    took = (f"{time.perf_counter() - t0:.0f} s, on the Dask cluster at {address}" if address is not None else
            f"{sum(result.seconds.values()):.0f} s" if jobs == 1 else
            f"{time.perf_counter() - t0:.0f} s, up to {jobs} at once")
    console.print(f"[bold]{exp.name}[/]: {len(plan.stages)} stages, {ran} run, {len(plan.stages) - ran} reused "
                  f"({took})", highlight=False)
    if report:
        console.print(f"report: {xp.write_experiment_report(exp, experiment)}",
                      highlight=False)


@command("tune")
@user_errors
def tune_experiment(
    experiment: Annotated[Path, typer.Argument(help="An experiment file with a [tune] table (search spaces per model, "
                                               "a budget in trials and/or time).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory, relative to the current "
                                                "directory (default: the file's `out`).")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Trials run at once, each in a process of its own "
                                                "sharing the study, the CPU's threads divided among them (default 1; "
                                                "with --executor dask: one per worker of the cluster). Parallel TPE "
                                                "draws other values than a serial search.")] = None,
    executor: Annotated[str, typer.Option(help="local (processes on this machine) or dask (tasks on the Dask "
                                          "scheduler at --address; the output directory on a file system the "
                                          "workers share).")] = "local",
    address: Annotated[Optional[str], typer.Option(help="The Dask scheduler's HOST:PORT (with --executor dask).")] = None,
    models: PartModels = None,
    targets: PartTargets = None,
) -> None:
    """Search hyper-parameters (Optuna TPE, pruned on the validation metric); re-run to continue."""
    from xmfast import experiment as xp
    from xmfast import tune
    from xmfast.errors import argument
    from xmfast_cli.render import console

    if executor not in ("local", "dask"):
        raise XmfastError(f"{argument('executor', executor)}: expected local or dask")
    if executor == "dask" and address is None:
        raise XmfastError("--executor dask needs --address HOST:PORT, the Dask scheduler's")
    if executor == "local" and address is not None:
        raise XmfastError(f"--address {address} is a Dask scheduler's: add --executor dask")
    if jobs is not None:
        xp.check_jobs(jobs)
    exp = _part(xp.read_experiment(experiment, out=out), models, targets, None)  # a study trains the file's first seed

    def said(e: Any) -> None:
        value = "" if e.value is None else f" {e.value:.4f}"
        params = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in e.params.items())
        console.print(f"{e.study} trial {e.number}: {e.state}{value} ({params})", highlight=False)

    again = _quoted("xmfast", "tune", experiment, *(["--out", out] if out is not None else []),
                    *(["--jobs", jobs] if jobs is not None else []),
                    *(["--executor", executor, "--address", address] if address is not None else []),
                    *_part_args(models, targets, None))
    with _on_interrupt(lambda: f"finished trials are kept in {tune.tune_dir(exp) / 'tune.db'}; continue with {again}"):
        studies = tune.tune(exp, on_trial=said, jobs=jobs, address=address)
    for s in studies.values():
        best, default, t = s.get("best"), s["default"], s["trials"]
        versus = (f" (valid {s['monitor']} {best['value']:.4f}; default {default['value']:.4f}, "
                  f"{best['value'] - default['value']:+.4f})" if best else f" (default: valid {s['monitor']} "
                  f"{default['value']:.4f})")
        console.print(f"[bold]{s['entry']}@{s['target']}[/]: {t['complete']} complete, {t['pruned']} pruned, "
                      f"{t['failed']} failed; chosen {tune.chosen_text(s)}{versus}", highlight=False)
        for line in (tune.default_won(s), tune.edge_note(s)):
            if line:
                console.print(line, highlight=False, markup=False)
    console.print(f"train the grid with them: {_quoted('xmfast', 'run', experiment, *(['--out', out] if out else []), '--use-tuned', *_part_args(models, targets, None))}",
                  highlight=False)


@command()
@user_errors
def models(
    name: Annotated[Optional[str], typer.Argument(help="A model to describe (its settings, defaults and declarations).")] = None,
) -> None:
    """List the registered models (built-in and installed), or describe one: its settings as options and TOML keys."""
    from xmfast.models import get_model, model_names
    from xmfast_cli.render import console, model_settings_table, models_listing, show

    if name is None:  # a model that cannot be loaded is listed with its error, not in the way of the others
        entries: list[Any] = []
        for n in model_names():
            try:
                entries.append((n, get_model(n)))
            except XmfastError as e:
                entries.append((n, str(e)))
        models_listing(entries)
        return
    model = get_model(name)
    show(model_settings_table(model))
    facts = [f"objective {model.objective}" if model.trained else "no training loop (fitted on the training rows)",
             f"batches of {model.batch}" if model.trained else "",
             f"default lr {model.lr}" if model.trained else "",
             f"fine-tunes runs of {' or '.join(model.fine_tunes)} (xmfast finetune)" if model.fine_tunes else "",
             "needs source markets" if model.needs_sources else ("uses the source markets" if model.cross_market else ""),
             "training defaults " + ", ".join(f"{k} = {v}" for k, v in model.train_defaults.items())
             if model.train_defaults else ""]
    console.print("; ".join(f for f in facts if f), highlight=False, markup=False)
    for recipe, parts in model.recipes.items():
        console.print(f"recipe {recipe} (--recipe {recipe}): " + "; ".join(
            f"{part} " + ", ".join(f"{k} = {v}" for k, v in _flat(values)) for part, values in parts.items() if values),
            highlight=False, markup=False, soft_wrap=True)


def _flat(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested settings as (dotted name, value) pairs."""
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((prefix + key, list(value) if isinstance(value, tuple) else value))
    return out


@command()
@user_errors
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories, or directories to search for finished runs.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Markdown file to write (CSV, JSON and plots go beside it).")],
    title: Annotated[str, typer.Option(help="The report's title.")] = "xmfast report",
    preface: Annotated[
        Optional[Path], typer.Option(help="A markdown file whose text goes under the title (how the runs were made).")
    ] = None,
    published: Annotated[
        Optional[Path], typer.Option(help="A published-figures TOML (default: the one shipped with xmfast).")
    ] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw the PNG plots.")] = True,
    reference: Annotated[
        Optional[str], typer.Option(help="The row (a model's label, run without sources) every other is tested "
                                    "against (default: nmf, single-market NeuMF as in FOREC's tables).")
    ] = None,
) -> None:
    """Tables (markdown, CSV, JSON) of finished runs: mean ± std over seeds, paired tests, published figures, plots."""
    from xmfast.report import build_report, collect_runs, leaderboards, read_published, write_report
    from xmfast_cli.render import console, leaderboard_tables, report_notes, report_table, show

    text = ""
    if preface is not None:
        try:
            text = preface.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise XmfastError(f"{preface}: cannot read the preface (not UTF-8 text: {e})") from None
        except OSError as e:  # missing, a directory, unreadable
            raise XmfastError(f"{preface}: cannot read the preface ({e.strerror or e})") from None
    built = build_report(collect_runs(runs), published=read_published(published) if published else None,
                         **({"reference": reference} if reference else {}))
    path = write_report(built, out, title=title, preface=text, plots=plots, inputs=[*runs, preface, published])
    show(*leaderboard_tables(leaderboards(built)), *report_table(built))
    for line in report_notes(built):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(f"wrote {path} ({path.with_suffix('.csv').name}, {path.with_suffix('.json').name}"
                  f"{', plots' if plots else ''})", highlight=False)


def _app_for(argv: list[str]) -> typer.Typer:
    """The app with only the command `argv` names, or the whole app (`xmfast --help`, a mistyped
    command, `--version`). Typer builds every registered command, signatures and all, before it
    parses; building the one that runs saves that start-up (70-100 ms on two cores) and changes
    nothing else: the same command object, the same group options, the same help and errors
    (tests/test_help.py compares them for every command)."""
    import copy

    if argv:
        for info in app.registered_commands:
            if argv[0] == (info.name or typer.main.get_command_name(info.callback.__name__)):  # type: ignore[union-attr]
                only = copy.copy(app)
                only.registered_commands = [info]
                return only
    return app


def main() -> None:
    """Entry point of the `xmfast` script. A mistyped command line (an unknown option, a value
    of the wrong type, a missing argument) is one `error:` line with exit status 2 like every
    other bad input, not a framed usage box."""
    import sys

    try:  # typer vendors click since 0.2x; older ones depend on click itself
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException  # type: ignore[no-redef]

    _ARGV[:] = sys.argv[1:]
    try:
        code = typer.main.get_command(_app_for(_ARGV)).main(prog_name="xmfast", standalone_mode=False)
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `xmfast` alone: the help, already printed
            sys.exit(e.exit_code)
        from rich.markup import escape

        from xmfast_cli.render import err_console

        where = getattr(getattr(e, "ctx", None), "command_path", None) or "xmfast"
        err_console.print(f"[bold red]error:[/] {escape(e.format_message())} (see `{escape(where)} --help`)",
                          highlight=False, soft_wrap=True, emoji=False)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)

if __name__ == "__main__":
    main()
