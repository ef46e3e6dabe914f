"""Reading and writing a RunConfig: YAML presets and saved configs, `-s key.path=value`
overrides, strict keys ("did you mean"), coercion to the annotated types, the dotted flat view,
and the migration of configs saved by older run formats.

Precedence (lowest first): dataclass defaults < YAML file < `-s/--set` overrides < dedicated
CLI flags (DATA, --cell). Every key is checked: an unknown key is an error naming the closest
valid one, and every value is coerced to its annotated type (PyYAML reads `1e-3` as a string).
Like lmrnn.config, it imports no torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from lmrnn import __version__
from lmrnn.config import RunConfig
from lmrnn.errors import UserError


# Version of the config.yaml written into a run directory. Each step up names the keys it added
# and the values that reproduce the older behaviour, so older runs load (and resume) unchanged.
FORMAT_VERSION = 8
ADDED_IN_FORMAT = {2: {"train.save_minutes": 0.0, "train.max_bad_steps": 10}, 3: {"model.order": 5, "model.context": 5},
                   4: {"data.streaming": False},
                   5: {"model.locked_dropout": False, "model.embedding_dropout": 0.0, "model.weight_drop": 0.0,
                       "model.layer_norm": False, "train.variable_bptt": False, "train.asgd_patience": 5,
                       "train.ar": 0.0, "train.tar": 0.0},
                   6: {"model.output": "softmax"}, 7: {"train.eval_burn_in": 0, "model.init_range": 0.1, "model.recurrent_init": "uniform"},
                   8: {"model.embedding_scale": 1.0}}


def migrate(raw: dict, version: int) -> dict:
    """A saved config of an older format with the keys added since filled in."""
    raw = dict(raw)
    for step in range(version + 1, FORMAT_VERSION + 1):
        for key, value in ADDED_IN_FORMAT.get(step, {}).items():
            section, leaf = key.split(".")
            raw[section] = {leaf: value, **(raw.get(section) or {})}
    return raw


def unversion(raw: dict, where: Path) -> dict:
    """A saved config (one with `format:`, as written into a run directory) without its version,
    migrated to this format; a newer format than this lmrnn reads is refused."""
    raw = dict(raw)
    version = raw.pop("format", 1)  # format 1 wrote no version
    if not isinstance(version, int) or version < 1:
        raise UserError(f"{where}: format must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise UserError(f"{where} was written by a newer lmrnn (run format {version}; this lmrnn {__version__} "
                        f"reads up to {FORMAT_VERSION}); upgrade lmrnn to use this run")
    return migrate(raw, version)


def missing_keys(raw: dict) -> list[str]:
    """Dotted keys of RunConfig absent from `raw` (a saved config must name every one)."""
    def walk(cls: type, node: Any, prefix: str) -> list[str]:
        missing = []
        for name, kind in _fields(cls).items():
            if not isinstance(node, dict) or name not in node:
                missing.append(prefix + name)
            elif dataclasses.is_dataclass(kind):
                missing += walk(kind, node[name], f"{prefix}{name}.")
        return missing
    return walk(RunConfig, raw, "")


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                flags: dict[str, Any] | None = None, base: dict | None = None) -> RunConfig:
    """Build a RunConfig from `base` (a saved config) or `path` (a YAML preset), then
    `overrides` ("key.path=value" strings), then `flags` (key path -> value, from dedicated CLI
    flags). Raises UserError for a missing file, bad YAML, unknown key or ill-typed value."""
    raw: dict = dict(base or {})
    if path is not None:
        raw = _read_yaml(Path(path))
        if "format" in raw:  # a run's own config.yaml: train again from what that run used
            raw = unversion(raw, Path(path))
    for item in overrides:
        key, sep, text = item.partition("=")  # split on the first '=' only: values may hold '='
        if not sep or not key.strip():
            raise UserError(f"override '{item}' must look like key.path=value")
        leaf = _leaf_type(key.strip())
        # str-typed values are taken verbatim; everything else is read as YAML (lists, numbers)
        value = text if leaf is str or typing.get_origin(leaf) is Literal else _parse_yaml_value(text, key)
        _set_path(raw, key.strip(), value)
    for key, value in (flags or {}).items():
        _leaf_type(key)
        _set_path(raw, key, value)
    return _build(RunConfig, raw, "")


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """{"model.hidden_size": 256, ...}: every leaf under its dotted key."""
    out: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = value

    walk(dataclasses.asdict(cfg), "")
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a mapping of config sections, not a {type(raw).__name__}")
    return raw


def _parse_yaml_value(text: str, key: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"cannot read the value of {key}: {text!r}") from None


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, prefix: str, valid: list[str]) -> UserError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(prefix + v for v in valid)}"
    return UserError(f"unknown config key '{prefix}{key}'{hint}")


def _leaf_type(dotted: str) -> Any:
    """The annotated type at a dotted key path; UserError when the path names no leaf."""
    cls: Any = RunConfig
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth]) + ("." if depth else "")
        fields = _fields(cls)
        if part not in fields:
            raise _unknown_key(part, prefix, list(fields))
        cls = fields[part]
    if dataclasses.is_dataclass(cls):
        raise UserError(f"'{dotted}' is a section; set one of its keys, e.g. {dotted}.{dataclasses.fields(cls)[0].name}")
    return cls


def _set_path(raw: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise UserError(f"config section '{prefix.rstrip('.')}' must be a mapping")
    fields = _fields(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise _unknown_key(str(key), prefix, list(fields))
        kind = fields[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, kind, prefix + key)
    return cls(**kwargs)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Turn a YAML or command-line value into `kind`, or raise a UserError naming `key`."""
    bad = UserError(f"{key} must be {_describe(kind)}, got {value!r}")
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if isinstance(value, bool):  # YAML reads true/false as booleans
            value = str(value).lower()
        if str(value) not in choices:
            raise UserError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
        return str(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float):
                if not number.is_integer():
                    raise bad
                return int(number)
            if isinstance(number, int):
                return number
        except ValueError:
            pass
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(number):  # nan passes every `< 0` check, so refuse it here
            raise UserError(f"{key} must be a finite number, got {value!r}")
        return number
    if kind is str:
        if isinstance(value, (dict, list)):
            raise bad
        return "" if value is None else str(value)
    raise TypeError(f"no coercion for {kind}")  # a bug, not a user error


def _describe(kind: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))
