"""Training methods as values of ``train.methods``: each a :class:`~train.methods.base.Method` in its own module.

Every module of this package is imported on first use and its ``Method`` subclasses with a
``name`` are registered, so a new method is one new file. ``only_<modality>`` (one encoder and its
head alone, the reference of the laziness probe) is built for any modality of ``train.modalities``.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Mapping

from pipeline.params import from_mapping
from train.methods.base import Context, EpochPlan, Method
from train.methods.joint import Only

__all__ = ["Context", "EpochPlan", "Method", "registry", "build_method", "check_method_name"]

_REGISTRY: dict[str, type[Method]] = {}


def registry() -> dict[str, type[Method]]:
    """name -> Method class, for every module of this package."""
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            if info.name == "base":
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, Method) and obj.__module__ == module.__name__ \
                        and "name" in vars(obj) and obj.listed:
                    if obj.name in _REGISTRY and _REGISTRY[obj.name] is not obj:
                        raise RuntimeError(f"method name {obj.name!r} defined twice: {_REGISTRY[obj.name]} and {obj}")
                    _REGISTRY[obj.name] = obj
        _REGISTRY.setdefault("baseline", Method)
    return _REGISTRY


def check_method_name(name: str, modalities: list[str]) -> None:
    """Raise ValueError unless ``name`` is a registered method or only_<one of modalities>."""
    if name.startswith("only_") and name.removeprefix("only_") in modalities:
        return
    if name not in registry():
        raise ValueError(f"train.methods: {name!r} is not one of {sorted(registry())} or only_<one of {modalities}>")


def build_method(name: str, config, modalities: list[str], num_classes: int,
                 method_params: Mapping[str, Any] | None = None) -> Method:
    """The method ``name`` with its ``Params`` from ``method_params[name]`` (strict: unknown keys fail)."""
    check_method_name(name, modalities)
    method_params = dict(method_params or {})
    unknown = sorted(set(method_params) - set(registry()))
    if unknown:
        raise ValueError(f"train.method_params: unknown method(s) {unknown}; known: {sorted(registry())}")
    if name.startswith("only_") and name not in registry():
        return Only(config, modalities, num_classes, modality=name.removeprefix("only_"))
    cls = registry()[name]
    values = method_params.get(name, {})
    return cls(config, modalities, num_classes, from_mapping(cls.Params, values, f"train.method_params.{name}"))
