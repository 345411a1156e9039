"""The CLI converts option values without pydantic (issue 25, start-up), to the same values.

typer 0.29 converts every command-line value through a pydantic TypeAdapter; importing pydantic
and building the adapters cost 0.1-0.2 s of every command's start-up. xmfast_cli.app converts
its plain types (str, int, float, Path and lists of them) itself and leaves everything else, and
every value it cannot convert, to typer. These tests hold the two to the same result: for every
parameter of every command, on drawn and hand-picked strings, the value or the error message is
typer's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from xmfast_cli import app as cli

PLAIN_TYPES = (str, int, float, Path)


def _parameters() -> list[tuple[str, Any, Any]]:
    """(command, parameter, context) for every parameter of every command, of xmfast's classes."""
    group = typer.main.get_command(cli.app)
    out = []
    for name, command in [("", group), *sorted(group.commands.items())]:  # type: ignore[attr-defined]
        ctx = typer.core._click.Context(command, info_name=name or "xmfast")
        for param in command.get_params(ctx):
            out.append((name, param, ctx))
    return out


PARAMETERS = _parameters()


def _element(param: Any) -> Any:
    desc = param.type_descriptor
    return desc.annotation.__args__[0] if desc.is_list else desc.annotation


def _typers(param: Any, ctx: Any, value: Any) -> tuple[str, Any]:
    """What typer's own conversion makes of `value`: ("ok", value) or ("error", message)."""
    try:
        return "ok", typer.core._TyperParameter.get_runtime_param(param).coerce(value, param=param, ctx=ctx)
    except typer.BadParameter as e:
        return "error", e.format_message()
    except ValueError as e:  # a NUL byte in a path (argv cannot carry one): os.stat's own error
        return "raises", str(e)


def _ours(param: Any, ctx: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", param.get_runtime_param().coerce(value, param=param, ctx=ctx)
    except typer.BadParameter as e:
        return "error", e.format_message()
    except ValueError as e:  # a NUL byte in a path (argv cannot carry one): os.stat's own error
        return "raises", str(e)


def _same(param: Any, ctx: Any, value: Any) -> None:
    ours, theirs = _ours(param, ctx, value), _typers(param, ctx, value)
    assert repr(ours) == repr(theirs), (param.name, value)  # repr: nan is nan
    if ours[0] == "ok":  # equal and of the same type (1 == 1.0, Path("a") != "a")
        assert type(ours[1]) is type(theirs[1]), (param.name, value, ours, theirs)
        if isinstance(ours[1], list):
            assert [type(v) for v in ours[1]] == [type(v) for v in theirs[1]]


def test_every_parameter_is_of_our_classes_and_of_a_type_converted_here() -> None:
    """The group's options too (`--version`): a parameter left to typer's classes would import
    pydantic again. Every annotation the commands use today is one of the plain types (a new
    kind would still work, through typer, but cost start-up: this test says so)."""
    assert len(PARAMETERS) > 100
    for name, param, _ in PARAMETERS:
        assert type(param) in (cli._Argument, cli._Option), (name, param.name, type(param))
        assert _element(param) in (*PLAIN_TYPES, bool), (name, param.name, param.type_descriptor.annotation)


VALUES = ["5", "-3", "+7", "007", "0", " 5", "5 ", "1_000", "1.5", "-0.25", "1e-3", "2E+4", ".5", "5.", "1e", "e3",
          "inf", "nan", "-", "", "abc", "0x10", "١٢", "a/b", "~/x", ".", "..", "/", "runs/gmf", "a b", "über",
          "--x", "1,2", "\x00", "9" * 4301, "1" + "0" * 400, "1e400"]


@pytest.mark.parametrize("value", VALUES)
def test_hand_picked_values_convert_as_typer_converts_them(value: str) -> None:
    for _, param, ctx in PARAMETERS:
        if param.type_descriptor.annotation is bool:
            continue  # flags: typer skips their conversion (a bool stays a bool)
        _same(param, ctx, [value] if param.type_descriptor.is_list else value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789+-._eE xé/٣"), max_size=12), st.sampled_from(range(len(PARAMETERS))))
@example("12", 0)
def test_drawn_values_convert_as_typer_converts_them(value: str, index: int) -> None:
    _, param, ctx = PARAMETERS[index]
    if param.type_descriptor.annotation is not bool:
        _same(param, ctx, [value, value] if param.type_descriptor.is_list else value)


def test_defaults_and_missing_values_convert_as_typer_converts_them() -> None:
    for _, param, ctx in PARAMETERS:
        if param.type_descriptor.annotation is bool:
            continue
        _same(param, ctx, None)
        if param.default is not None and not callable(param.default):
            _same(param, ctx, param.default)


@pytest.mark.parametrize(("kind", "value", "expected"), [
    (int, "12", 12), (int, "-3", -3), (float, "1e-3", 0.001), (float, "2", 2.0), (str, "x y", "x y"),
    (Path, "runs/a", Path("runs/a")),
])
def test_the_plain_path_converts_without_typer(kind: type, value: str, expected: Any) -> None:
    """The common values are converted here (not left to typer), or the start-up gain is gone."""
    name, param, ctx = next(p for p in PARAMETERS if p[1].type_descriptor.annotation is kind)
    got = cli._plain_leaf(param, ctx, kind, value)
    assert got == expected and type(got) is type(expected), (name, param.name)
    assert cli._plain_leaf(param, ctx, kind, object()) is cli._DEFER
