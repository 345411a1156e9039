"""`xmfast COMMAND --help` shows every help text as written (rich reads `[train]` as markup
unless it is escaped) and no Python placeholders: no `<bool>` beside a flag, no `<list[Path]>`,
no typer-style `{data_dir}` in the usage line."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from xmfast_cli.app import app

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def help_text(monkeypatch: pytest.MonkeyPatch, width: int, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", str(width))
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def unwrapped(text: str) -> str:
    """The help without the panels' borders and line breaks, one space between words."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_commands_exist() -> None:
    assert {"train", "prepare", "run", "report", "compare", "evaluate"} <= set(COMMANDS)


@pytest.mark.parametrize("width", [80, 200])
def test_train_help_shows_the_bracketed_table_names(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    out = help_text(monkeypatch, width, "train")
    assert "[train]" in out and "[MODEL]" in out, out
    assert "(model, [train], [MODEL])" in unwrapped(out)


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("width", [80, 200])
def test_help_has_every_bracket_and_no_placeholder(monkeypatch: pytest.MonkeyPatch, name: str, width: int) -> None:
    out = help_text(monkeypatch, width, name)
    for placeholder in ("<bool>", "<list[", "list[Path]"):
        assert placeholder not in out, (placeholder, out)
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    flat = unwrapped(out)
    texts = [p.help for p in command.params if getattr(p, "help", None)] + [command.help or ""]
    for text in texts:  # every bracketed word a help text has is shown (unescaped)
        for bracketed in re.findall(r"\[[^\]\s]+\]", text.replace("\\[", "[")):
            assert bracketed in flat, (bracketed, out)
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage
    arguments = [p for p in command.params if isinstance(p, typer.core.TyperArgument)]
    for argument in arguments:  # shown by name in capitals: DATA_DIR, [DATASET], RUNS...
        assert argument.name.upper() in usage, usage


def test_a_mistyped_command_names_the_missing_argument_in_capitals() -> None:
    result = CliRunner().invoke(app, ["prepare"])
    assert result.exit_code == 2 and "DATA_DIR" in result.output, result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_the_one_command_app_parses_and_helps_as_the_whole_app(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """`main()` builds only the command its first argument names (start-up, issue 25): that
    command's help and its usage errors are the whole app's, character for character."""
    from xmfast_cli.app import _app_for

    only = _app_for([name])
    assert only is not app and [c.callback for c in only.registered_commands] == [
        c.callback for c in app.registered_commands
        if (c.name or typer.main.get_command_name(c.callback.__name__)) == name]  # type: ignore[union-attr]
    monkeypatch.setenv("COLUMNS", "80")
    for args in ([name, "--help"], [name, "--no-such-option"]):
        whole, one = CliRunner().invoke(app, args), CliRunner().invoke(only, args)
        assert (one.exit_code, one.output) == (whole.exit_code, whole.output), args
        assert whole.exit_code == (0 if args[-1] == "--help" else 2)


def test_the_whole_app_answers_what_names_no_command() -> None:
    from xmfast_cli.app import _app_for

    for argv in ([], ["--help"], ["--version"], ["evalute"], ["--", "evaluate"]):
        assert _app_for(argv) is app, argv


@pytest.mark.parametrize("name", COMMANDS)
def test_help_at_80_columns_fits_and_keeps_short_texts_on_one_line(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """At 80 columns a command's help is click's layout: every line fits, and a parameter's
    help has the width the names leave (rich's seven-column option table gave `prepare` 19
    columns of text, 'Target market,' above 'e.g. uk.')."""
    out = help_text(monkeypatch, 80, name)
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert "╭" not in out, out
    if name == "prepare":
        assert "Target market, e.g. uk." in out and "--fixpoint / --one-pass" in out, out


def test_wide_help_is_rich_panels_and_reflows_the_source_line_breaks(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 100 columns and more the panels stay; a docstring's line breaks do not (the source breaks
    at 100 columns; rich showed that break as a short line at every width)."""
    out = help_text(monkeypatch, 120, "prepare")
    assert "╭─ Options" in out, out
    assert "preprocessing unless an option says otherwise" in out, out
    assert "Target market, e.g. uk." in out, out


def test_reflow_keeps_indented_and_bulleted_paragraphs() -> None:
    from xmfast_cli.app import _reflowed

    assert _reflowed("One line\nand its rest.\n\nTwo:\n  xmfast run X\n  xmfast report Y") == \
        "One line and its rest.\n\nTwo:\n  xmfast run X\n  xmfast report Y"
    assert _reflowed("Items:\n- a\n- b") == "Items:\n- a\n- b"
