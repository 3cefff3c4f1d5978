"""Strict params.yaml loading: unknown or mistyped keys fail loudly, naming the key."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import yaml


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml as a dict of sections."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    return params


def from_mapping(cls, params: Mapping[str, Any], section: str):
    """Instantiate dataclass ``cls`` from ``params``; unknown keys and wrong types raise ValueError.

    The expected type of a key is the type of its default; an int is accepted for a float.
    """
    if not isinstance(params, Mapping):
        raise ValueError(f"{section}: expected a mapping, got {type(params).__name__}")
    defaults = cls()
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ValueError(f"{section}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for key, value in params.items():
        want = type(getattr(defaults, key))
        if want is float and type(value) is int:
            value = float(value)
        if type(value) is not want:
            raise ValueError(f"{section}.{key}: expected {want.__name__}, got {type(value).__name__} {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def check_keys(params: Mapping[str, Any], section: str, known: Mapping[str, type]) -> dict[str, Any]:
    """Check a plain params section against ``known`` (key -> type or tuple of types); return it."""
    if not isinstance(params, Mapping):
        raise ValueError(f"{section}: expected a mapping, got {type(params).__name__}")
    unknown = sorted(set(params) - set(known))
    missing = sorted(set(known) - set(params))
    if unknown or missing:
        raise ValueError(f"{section}: unknown key(s) {unknown}, missing key(s) {missing}")
    for key, want in known.items():
        if not isinstance(params[key], want) or (isinstance(params[key], bool) and bool not in _tuple(want)):
            raise ValueError(f"{section}.{key}: expected {want}, got {type(params[key]).__name__} {params[key]!r}")
    return dict(params)


def _tuple(t) -> tuple:
    return t if isinstance(t, tuple) else (t,)
