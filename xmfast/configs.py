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

Every key is checked against the dataclass it sets, so a typo is an error, not a silent default.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xmfast.errors import XmfastError
from xmfast.models import ModelSpec, config_from_dict, get_model

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
) -> tuple[str, ModelSpec, Any, Any]:
    """(model name as given, spec, model config, train config) from the layers. Overrides whose
    value is None are not set (they are the CLI options the user did not give)."""
    file = dict(file or {})
    file_model = file.pop("model", None)
    name = model or file_model
    if not name:
        raise XmfastError("name a model with --model (gmf, mlp, nmf, gmf++, mlp++, nmf++, maml, acmr, pop, cooc) or in "
                          "the config file")
    spec = get_model(name)
    train_values = dict(file.pop("train", {}) or {})
    model_values = dict(file.pop(spec.name, {}) or {})
    unknown = [k for k in file if k not in _model_tables()]
    if unknown:
        raise XmfastError(f"{source}: unknown key or table {unknown[0]!r} (expected model, [train] or [{spec.name}])")
    train_values.update({k: v for k, v in (train_overrides or {}).items() if v is not None})
    if name.endswith("++") and not train_values.get("sources"):
        train_values["sources"] = ["all"]
    train_config = spec.train_config(**train_values)
    model_config = _apply_model_overrides(spec, spec.config_from(model_values), model_overrides or {})
    return name, spec, model_config, train_config


def _model_tables() -> set[str]:
    from xmfast.models import model_names

    return set(model_names())


def _apply_model_overrides(spec: ModelSpec, config: Any, overrides: dict[str, Any]) -> Any:
    """The CLI's flat model options, mapped onto each model's nested configuration."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return config
    values = asdict(config)
    for key, value in given.items():
        if spec.name == "gmf" and key == "embedding_dim":
            values["embedding_dim"] = value
        elif spec.name == "mlp" and key == "layers":
            values["layers"] = tuple(value)
        elif spec.name == "mlp" and key == "embedding_dim":
            values["layers"] = (2 * value, *values["layers"][1:])
        elif spec.name == "nmf" and key == "embedding_dim":
            values["gmf"]["embedding_dim"] = value
            values["mlp"]["layers"] = (2 * value, *values["mlp"]["layers"][1:])
        elif spec.name == "nmf" and key == "layers":
            values["mlp"]["layers"] = tuple(value)
        elif spec.name == "nmf" and key in ("pretrained", "alpha"):
            values[key] = value
        elif spec.name == "maml" and key in ("inner_lr", "inner_steps", "first_order", "test_adaptation_steps"):
            values["maml"][key] = value
        elif spec.name == "acmr" and key in ("embedding_dim", "history", "truncation", "dropout"):
            values[key] = value
        elif spec.name == "cooc" and key == "markets":
            values["markets"] = tuple(value)
        else:
            raise XmfastError(f"--{key.replace('_', '-')} does not apply to model {spec.name}")
    return config_from_dict(type(config), values)


__all__ = ["experiment_configs", "read_config_file"]
