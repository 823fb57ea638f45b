"""Reading a training config file (YAML or JSON) with command-line ``--key value`` overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from .config import RunArgs, TrainArgs
from .errors import ConfigError

__all__ = ["load_train_args", "load_run_args"]


def _parse_value(text: Any) -> Any:
    """A command-line value as YAML reads it (so `--model.n_layer 4` gives an int)."""
    if not isinstance(text, str):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_train_args(config: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> TrainArgs:
    """Read a YAML/JSON training config and apply ``key: value`` overrides.

    Dotted keys address the nested model config (``model.n_layer``); unknown keys and bad values
    fail with a :class:`ConfigError` naming the key.
    """
    return load_run_args(TrainArgs, config, overrides)  # type: ignore[return-value]


def load_run_args(cls: type[RunArgs], config: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> RunArgs:
    """:func:`load_train_args` for any :class:`RunArgs` class (``spikelm finetune``'s, say)."""
    d: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder; pass the path of a YAML config file (see configs/*.yaml)")
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found; pass the path of a YAML config (see configs/*.yaml)")
        try:
            text = path.read_text(encoding="utf-8")
            d = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
            reason = " ".join(str(e).split())  # YAML errors span lines; the message is one line
            raise ConfigError(f"{path}: not valid UTF-8 YAML/JSON ({reason})") from None
        d = d or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        d.pop("kind", None)
    d = dict(d)
    model = dict(d.get("model") or {}) if isinstance(d.get("model", {}), dict) else d.get("model")
    for key, value in (overrides or {}).items():
        if key.startswith("model.") and "model" in cls.fields():
            if not isinstance(model, dict):
                raise ConfigError("model: must be a mapping to set model.* keys")
            sub = key[len("model."):]
            if not sub or "." in sub:
                raise ConfigError(f"{key}: model keys are one level deep (model.n_layer)")
            model[sub] = _parse_value(value)
        elif "." in key:
            raise ConfigError(f"{key}: unknown key; only model.* keys are nested")
        else:
            d[key] = value
    if "model" in cls.fields() and model is not None and (model or "model" in d):
        d["model"] = model
    return cls.from_dict(d)
