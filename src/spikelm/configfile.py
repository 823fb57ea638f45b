"""Reading a training config file (YAML or JSON) with command-line ``--key value`` overrides."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .runargs import RunArgs, TrainArgs
from .errors import ConfigError

__all__ = ["load_train_args", "load_run_args", "read_config_mapping", "find_config", "shipped_configs"]


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (plain YAML
    keeps the last value silently: a config whose ``lr`` appears twice trains with the second)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise ConfigError(f"{_where(self)}key {key!r} appears twice (lines {first} and "
                                  f"{key_node.start_mark.line + 1}); keep one")
        return super().construct_mapping(node, deep=deep)


def _where(loader: yaml.SafeLoader) -> str:
    name = getattr(loader, "spikelm_path", None)
    return f"{name}: " if name else ""


def _unique_json_pairs(path: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ConfigError(f"{path}: key {k!r} appears twice; keep one")
            out[k] = v
        return out

    return hook


def read_config_mapping(path: Path) -> Any:
    """The content of a YAML (``.yaml``/``.yml``) or JSON config file; a key given twice in one
    mapping is a :class:`ConfigError` naming the file, the key and the lines."""
    text = path.read_text(encoding="utf-8")
    if path.suffix not in (".yaml", ".yml"):
        return json.loads(text, object_pairs_hook=_unique_json_pairs(path))
    loader = _UniqueKeyLoader(text)
    loader.spikelm_path = str(path)  # type: ignore[attr-defined]
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _parse_value(text: Any) -> Any:
    """A command-line value as YAML reads it (so `--model.n_layer 4` gives an int)."""
    if not isinstance(text, str):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def shipped_configs() -> dict[str, Path]:
    """The configs installed with the package (the repository's ``configs/``), by name."""
    folder = resources.files("spikelm") / "configs"
    return {Path(e.name).stem: Path(str(e)) for e in sorted(folder.iterdir(), key=lambda e: e.name)
            if e.name.endswith((".yaml", ".yml"))} if folder.is_dir() else {}


def find_config(config: str | os.PathLike) -> Path:
    """The config file ``config`` names: a path; or the name of a shipped config (``rwkv6-tiny``,
    ``rwkv6-tiny.yaml``), found from any folder; or ``configs/NAME.yaml`` outside a clone of the
    repository (the README's spelling), which is the shipped ``NAME``."""
    path = Path(config)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; pass a YAML config file or a shipped config's name")
    if path.is_file():
        return path
    shipped = shipped_configs()
    bare = path.name[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    if bare in shipped and (path.parent == Path(".") or path.parent.name == "configs"):
        return shipped[bare]
    names = ", ".join(shipped) or "none installed"
    raise ConfigError(f"{path}: config file not found; pass the path of a YAML config, or the name of a shipped one ({names})")


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
        path = find_config(config)
        try:
            d = read_config_mapping(path)
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
