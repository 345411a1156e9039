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
