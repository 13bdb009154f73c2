"""Reading config values: YAML without implicit timestamps, `--set key=value` overrides, config
files, and coercion of the values read to the types of the config's fields. Every problem is a
`ConfigError` (or, from `coerce`, a ValueError) naming the file, key or value."""
from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml

from bilaw.file_errors import DamagedFileError, read_text


class ConfigError(ValueError):
    """One or more invalid config entries; the message lists each (key, value, allowed)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid config:\n  - " + "\n  - ".join(self.errors))

    def __reduce__(self):  # rebuilt from its list of errors (Ray sends errors between processes)
        return (type(self), (self.errors,))


class _Loader(yaml.SafeLoader):
    """YAML without implicit timestamps: a capacity string such as 1024-64-64 stays a string
    (SafeLoader would read it as a date and fail on month 64)."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def yaml_load(text: str):
    """yaml.safe_load without timestamps (see `_Loader`)."""
    return yaml.load(text, Loader=_Loader)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` (from YAML or --set) as the type `hint` of config key `key`; a ValueError naming
    the key and the value otherwise."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ValueError(f"{key}: None is not allowed (expected {_type_name(base)})")
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        if isinstance(value, str):
            try:
                value = yaml_load(value) if value.strip().startswith("[") else value.split(",")
            except yaml.YAMLError:
                raise ValueError(f"{key}: {value!r} is not a list (write e.g. [0.3, 0.6])") from None
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: {value!r} is not a list of {_type_name(item)}")
        return [_coerce_scalar(key, v, item) for v in value]
    return _coerce_scalar(key, value, base)


def _coerce_scalar(key: str, value: Any, base: type) -> Any:
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{key}: {value!r} is not a boolean (use true or false)")
    if base is int:
        if isinstance(value, bool) or not _is_integral(value):
            raise ValueError(f"{key}: {value!r} is not an integer")
        return int(float(value))
    if base is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: {value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: {value!r} is not a number") from None
    if base is str:
        if isinstance(value, (dict, list, bool)):
            raise ValueError(f"{key}: {value!r} is not a string")
        return str(value)  # YAML reads weight_net: 128 as an int
    return value


def _is_integral(value: Any) -> bool:
    try:
        return float(value) == int(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: "line L, column C: malformed YAML: PROBLEM"."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    return f"{where}malformed YAML: {problem}"


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing, unreadable, binary or empty (0-byte) file, a folder, a
    syntax error (with its line) or a non-mapping is a `ConfigError` naming the file. A file of
    only comments is an empty mapping."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"config file {str(path)!r} does not exist; check the path"])
    try:
        text = read_text(path, "replace it with an intact copy, or write it again")
    except DamagedFileError as exc:
        raise ConfigError([str(exc)]) from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: {yaml_problem(exc)}; fix it there, or replace the file with an intact "
                           f"copy"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping of config keys, got {type(data).__name__}; write it as "
                           f"key: value lines"])
    return data


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["eps=0.1", "weight_net=64-64"]` -> {"eps": 0.1, "weight_net": "64-64"} (values read as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"--set {item!r}: expected key=value"])
        try:
            value = yaml_load(raw)
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = raw if isinstance(value, (dict,)) else value
    return out
