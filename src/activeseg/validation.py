"""The generic config validator: frozen dataclasses built from plain YAML data, every problem a :class:`ConfigError`
that names the key. Used by the run config (``activeseg.config``) and the benchmark config."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

MAX_BATCH_SIZE = 256
"""The largest batch of volumes (training, evaluation, stochastic passes): more is a typo, not a setting."""


class ConfigError(ValueError):
    """A configuration problem, raised before any work starts."""


REMOVED: dict[str, str] = {
    "data.shape": "the fixed grid was replaced by a planned one: set plan.patch_size (see `activeseg plan`)",
    "train.eval_batch_size": "renamed inference.windows_per_batch",
}
"""Keys of older configs, with what replaced them."""


def require(ok: bool, key: str, problem: str) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {problem}")


def build(cls: type, raw: Any, where: str) -> Any:
    """A frozen config dataclass from a plain mapping: unknown keys, wrong types and bad values name the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    moved = [f"{where}.{k}" for k in unknown if f"{where}.{k}" in REMOVED]
    if moved:
        raise ConfigError(f"{moved[0]}: {REMOVED[moved[0]]}")
    if unknown:
        section = where or "top level"
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {section}; "
            f"valid keys: {', '.join(fields)}"
        )
    values = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        values[name] = _coerce(hints[name], value, key)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(typing.cast(type, hint), value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a path string, got {value!r}")
        return Path(value).expanduser()
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module, not user input


def plain(value: Any) -> Any:
    """YAML-safe data: paths as strings, tuples as lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
