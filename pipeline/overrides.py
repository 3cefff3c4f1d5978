"""``dvc exp run -S key=value`` overrides applied to params.yaml as DVC applies them, and checked by the stages'
config classes before DVC starts, so a misspelt key or a value out of range fails at once, naming the key.

Used by the preset runner (:mod:`pipeline.presets`) and the experiment grids (:mod:`experiments.grid`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from pipeline.datasets import PrepareConfig
from pipeline.features import ExtractConfig
from pipeline.params import BaseConfig, Config, load_params, read_section
from pipeline.synth import SynthConfig
from train.config import TrainConfig

__all__ = ["SECTION_CONFIGS", "apply_set", "merge", "with_overrides", "check_sections", "check_overrides"]

SECTION_CONFIGS: tuple[type[Config], ...] = (BaseConfig, SynthConfig, PrepareConfig, ExtractConfig, TrainConfig)


def apply_set(params: dict, assignment: str) -> None:
    """Apply one ``-S [file:]key=value`` to ``params`` (a parsed params.yaml) as DVC does: the value is YAML,
    ``key`` dotted, ``+key`` adds, ``++key`` adds or replaces, ``~key`` removes. A file other than params.yaml is
    left to DVC. As DVC (Hydra, OmegaConf) does, a mapping value is merged into the mapping it replaces
    (``{b: 2}`` over ``{a: 1}`` gives ``{a: 1, b: 2}``; ``{}`` changes nothing), and a plain ``key=`` may not bring
    keys the mapping lacks (``train.lr_by_method={baseline: 0.001}`` over ``{}``): a ValueError says to write
    ``++key=``."""
    target, _, raw = assignment.partition("=")
    file, _, key = target.rpartition(":")
    if file and file != "params.yaml":
        return
    key = key.strip()
    remove, forced = key.startswith("~"), key.startswith("+")
    parts = key.lstrip("+~").split(".")
    node = params
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {assignment!r}: {part} is not a section of params.yaml")
    if remove:
        node.pop(parts[-1], None)
        return
    value = yaml.safe_load(raw) if raw.strip() else None
    old = node.get(parts[-1])
    if not forced and isinstance(old, dict) and isinstance(value, dict) and not value.keys() <= old.keys():
        raise ValueError(f"-S {assignment!r}: DVC does not replace the mapping {parts[-1]} ({old}) by one with other "
                         f"keys; write ++{key}=... (add or replace)")
    node[parts[-1]] = merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value


def merge(old: dict, new: dict) -> dict:
    """``new`` merged into a copy of ``old``, recursively (OmegaConf's merge, which DVC's ``-S`` applies)."""
    out = copy.deepcopy(old)
    for k, v in new.items():
        out[k] = merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else copy.deepcopy(v)
    return out


def with_overrides(params: Mapping[str, Any], assignments: Iterable[str]) -> dict:
    """A copy of ``params`` with every ``-S`` value of ``assignments`` applied, in order."""
    out = copy.deepcopy(dict(params))
    for assignment in assignments:
        apply_set(out, assignment)
    return out


def check_sections(params: Mapping[str, Any]) -> dict[str, Config]:
    """Every section of ``params`` read through its stage's config class (:data:`SECTION_CONFIGS`): section name ->
    config; a ValueError (:class:`pipeline.params.ConfigError`) names the first bad key."""
    return {cls.section: read_section(params, cls) for cls in SECTION_CONFIGS}


def check_overrides(assignments: Iterable[str], params_path: str | Path = "params.yaml",
                    base: Mapping[str, Any] | None = None) -> dict[str, Config]:
    """:func:`check_sections` of ``params_path`` (or of ``base``, already read) with ``assignments`` applied."""
    params = with_overrides(base if base is not None else load_params(params_path), assignments)
    return check_sections(params)
