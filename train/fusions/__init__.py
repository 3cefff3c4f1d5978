"""Fusions as values of ``train.fusion``: each one file of this package, all in one registry.

Every module of this package is imported on first use of :func:`registry`; a class defined there with a
``name`` class attribute is registered under that name (a name defined twice is an error), so a new fusion
is one new file. Two kinds share the table; each entry builds the whole model with
``entry.build(encoders, feature_dim, num_classes) -> AVModel``:

- late fusions (heads on the final features): a :class:`~train.fusions.base.Fusion` subclass
  (concat, sum, decision, film, gated), built as ``AVModel(encoders, D, C, fusion=<the class>)``;
- intermediate fusions (cross-modal modules between the ResNet stages): an
  :class:`~train.fusions.intermediate.IntermediateModel` subclass (mmtm, centralnet), the model class itself.

Every model reports each modality's share of its fused logits with ``model.modality_shares(features)``
(a ValueError naming ``train.fusion`` when its head has none, e.g. CentralNet's central branch).
"""
from __future__ import annotations

import importlib
import pkgutil

from train.fusions.base import Fusion
from train.models import ENCODERS, AVModel

__all__ = ["Fusion", "registry", "names", "build_model"]

_REGISTRY: dict[str, type[Fusion] | type[AVModel]] = {}


def registry() -> dict[str, type[Fusion] | type[AVModel]]:
    """name -> registered class (a late ``Fusion`` head or a whole-model ``AVModel`` subclass), by name."""
    if not _REGISTRY:
        found: dict[str, type] = {}
        for info in pkgutil.iter_modules(__path__):
            module = importlib.import_module(f"{__name__}.{info.name}")
            for obj in vars(module).values():
                if isinstance(obj, type) and issubclass(obj, (Fusion, AVModel)) \
                        and obj.__module__ == module.__name__ and "name" in vars(obj):
                    if obj.name in found and found[obj.name] is not obj:
                        raise RuntimeError(f"fusion name {obj.name!r} defined twice: {found[obj.name]} and {obj}")
                    found[obj.name] = obj
        _REGISTRY.update(sorted(found.items()))
    return _REGISTRY


def names() -> list[str]:
    """The sorted ``train.fusion`` choices."""
    return list(registry())


def build_model(modalities: list[str], num_classes: int, width: int = 64, fusion: str = "concat") -> AVModel:
    """The model of fusion ``fusion`` with ``ENCODERS[name](width)`` per modality (in the given order), D = 8 * width."""
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"duplicate modality names: {modalities}")
    unknown = [m for m in modalities if m not in ENCODERS]
    if unknown:
        raise ValueError(f"no encoder registered for {unknown}; known: {sorted(ENCODERS)}")
    if fusion not in registry():
        raise ValueError(f"train.fusion: unknown fusion {fusion!r}; choose from {names()}")
    encoders = {m: ENCODERS[m](width) for m in modalities}
    return registry()[fusion].build(encoders, feature_dim=8 * width, num_classes=num_classes)
