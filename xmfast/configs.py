"""Experiment settings from three layers: defaults < a TOML file < command-line options.

A TOML file names the model, the training settings and the model's hyper-parameters (a table
named after the model)::

    model = "nmf"

    [train]
    epochs = 25
    sources = ["de"]        # or ["all"]; the ++ variants

    [nmf]
    alpha = 0.5
    [nmf.gmf]
    embedding_dim = 8
    [nmf.mlp]
    layers = [16, 64, 32, 16, 8]

On the command line the same settings are options named after the configuration's fields
(``--alpha 0.5``, ``--gmf.embedding-dim 8``, or ``--embedding-dim 8`` where the last part is
unique), read from the model's dataclass: no model has a flag table of its own.

Every key is checked against the dataclass it sets, so a typo is an error, not a silent default.
"""

from __future__ import annotations

import sys
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from xmfast.errors import XmfastError
from xmfast.models import Model, get_model, model_names
from xmfast.models.api import merged

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_config_file(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise XmfastError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise XmfastError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:  # a directory, unreadable
        raise XmfastError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    return data


def experiment_configs(
    model: str | None,
    file: dict[str, Any] | None = None,
    *,
    train_overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    source: str = "config file",
) -> tuple[str, Model, Any, Any]:
    """(model name as given, model, model config, train config) from the layers. Train overrides
    whose value is None are not set (they are the CLI options the user did not give); model
    overrides are nested values (see :func:`parse_setting_options`) laid over the file's table."""
    file = dict(file or {})
    file_model = file.pop("model", None)
    name = model or file_model
    if not name:
        raise XmfastError(f"name a model with --model ({', '.join(model_names())}; a ++ suffix pools the markets) "
                          "or in the config file")
    spec = get_model(name)
    train_values = dict(file.pop("train", {}) or {})
    model_values = dict(file.pop(spec.name, {}) or {})
    unknown = list(file)
    if unknown:
        raise XmfastError(f"{source}: unknown key or table {unknown[0]!r} (expected model, [train] or [{spec.name}])")
    train_values.update({k: v for k, v in (train_overrides or {}).items() if v is not None})
    if name.endswith("++") and not train_values.get("sources"):
        train_values["sources"] = ["all"]
    train_config = spec.train_config(**train_values)
    model_config = spec.config_from(merged(model_values, model_overrides or {}), train_config.recipe)
    return name, spec, model_config, train_config


# ---- a model's settings as command-line options ----------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One leaf of a model's configuration: its dotted path and its type."""

    path: tuple[str, ...]
    hint: Any
    default: Any

    @property
    def option(self) -> str:
        return "--" + ".".join(p.replace("_", "-") for p in self.path)


def settings_of(config_type: type, prefix: tuple[str, ...] = ()) -> list[Setting]:
    """Every leaf setting of a (nested) configuration dataclass, in declaration order."""
    hints = typing.get_type_hints(config_type)
    out: list[Setting] = []
    default = config_type()
    for f in fields(config_type):
        hint = hints.get(f.name, Any)
        if isinstance(hint, type) and is_dataclass(hint):
            out += settings_of(hint, (*prefix, f.name))
        else:
            out.append(Setting((*prefix, f.name), hint, getattr(default, f.name)))
    return out


def setting_options(config_type: type) -> dict[str, Setting]:
    """Option name -> setting: the full dotted name (``--gmf.embedding-dim``) of every leaf, and
    its last part alone (``--embedding-dim``) where no other leaf has that name."""
    leaves = settings_of(config_type)
    options = {s.option: s for s in leaves}
    last = [s.path[-1] for s in leaves]
    for s in leaves:
        if len(s.path) > 1 and last.count(s.path[-1]) == 1:
            options.setdefault("--" + s.path[-1].replace("_", "-"), s)
    return options


def preferred_options(config_type: type) -> list[str]:
    """Each setting's option as help and errors name it: the short form where it is unique."""
    options = setting_options(config_type)
    short = {s.path: o for o, s in options.items() if o != s.option}
    return [short.get(s.path, s.option) for s in settings_of(config_type)]


def parse_setting_options(model: Model, args: list[str]) -> tuple[dict[str, Any], dict[str, Path]]:
    """The settings of `model` given as options (``--embedding-dim 16``, ``--layers 16,64,32``,
    ``--no-pretrained``, ``--maml.inner-lr=0.1``) as nested plain values, and the starting runs
    named with ``--SLOT-run PATH``. Anything else is an error naming the option and the model."""
    options = setting_options(model.config_type)
    slots = {f"--{slot.replace('_', '-')}-run": slot for slot in model.starts_from}
    values: dict[str, Any] = {}
    runs: dict[str, Path] = {}
    switch = None  # the boolean setting just given without a value
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("--"):
            if switch is not None:
                raise XmfastError(f"{switch.option} is a switch ({switch.option} or --no-"
                                  f"{switch.option[2:]}); it takes no value, got {token!r}")
            raise XmfastError(f"unexpected argument {token!r}")
        switch = None
        name, eq, inline = token.partition("=")
        # --MODEL.SETTING names a setting where the command has an option of the same name
        name = "--" + name.removeprefix(f"--{model.name}.") if name.startswith(f"--{model.name}.") else name
        setting = options.get(name)
        negated = None
        if setting is None and name.startswith("--no-"):
            negated = options.get("--" + name[5:])
            if negated is not None and negated.hint is bool and not eq:
                _put(values, negated.path, False)
                continue
        if setting is None and name not in slots:
            known = ", ".join([*preferred_options(model.config_type), *slots]) or "none"
            raise XmfastError(f"{name} is not a setting of model {model.name} (its settings: {known}; "
                              f"`xmfast models {model.name}` describes them)")
        if setting is not None and setting.hint is bool and not eq:
            _put(values, setting.path, True)
            switch = setting
            continue
        if eq:
            text = inline
        elif i < len(args):
            text = args[i]
            i += 1
        else:
            raise XmfastError(f"{name} needs a value")
        if setting is None:
            runs[slots[name]] = Path(text)
        else:
            _put(values, setting.path, _parse_value(text, setting.hint, name))
    return values, runs


def _put(values: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        values = values.setdefault(part, {})
    values[path[-1]] = value


def _parse_value(text: str, hint: Any, option: str) -> Any:
    """A command-line value as the setting's type; the configuration check then names the
    setting when it is out of range."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null", ""):
            return None
        options = [a for a in args if a is not type(None)]
        return _parse_value(text, options[0], option) if len(options) == 1 else text
    if origin is tuple:
        element = args[0] if args else str
        parts = [p.strip() for p in text.split(",") if p.strip()]
        kind = {int: "integers", float: "numbers"}.get(element, "values")
        try:
            return tuple(_parse_value(p, element, option) for p in parts)
        except XmfastError:
            raise XmfastError(f"{option}: expected comma-separated {kind}, got {text!r}") from None
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise XmfastError(f"{option}: expected true or false, got {text!r}")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise XmfastError(f"{option}: expected {'an integer' if hint is int else 'a number'}, got {text!r}") from None
    return text


__all__ = ["Setting", "experiment_configs", "parse_setting_options", "read_config_file", "setting_options",
           "settings_of"]
