"""Dataset adapters as values of ``prepare.dataset``: each one file of this package, all in one registry.

An adapter is a function decorated with ``@adapter("<name>")`` (:mod:`pipeline.datasets.base`) in any module of
this package; :func:`registry` imports every module on first use and registers those functions by name (a name
defined twice is an error), so a new dataset is one new file. Shipped: ``cremad``, ``kinetics_sounds`` and
``csv`` (module ``csv_manifest``). :func:`prepare_dataset` runs one of them by name.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import pkgutil
from typing import Optional, Sequence

from pipeline.datasets.base import Adapter, adapter, check_shard_keys
from pipeline.manifest import SPLITS, ClipRecord, ManifestError
from pipeline.params import Config, ConfigError, setting
from pipeline.splits import check_ratios

__all__ = ["adapter", "registry", "names", "prepare_dataset", "PrepareConfig"]

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Adapter] = {}


def registry() -> dict[str, Adapter]:
    """name -> adapter function, for every module of this package, by name."""
    if not _REGISTRY:
        found: dict[str, Adapter] = {}
        for info in pkgutil.iter_modules(__path__):
            module = importlib.import_module(f"{__name__}.{info.name}")
            for obj in vars(module).values():
                name = getattr(obj, "adapter_name", None)
                if callable(obj) and name is not None and getattr(obj, "__module__", None) == module.__name__:
                    if name in found and found[name] is not obj:
                        raise RuntimeError(f"dataset adapter {name!r} defined twice: {found[name].__module__}."
                                           f"{found[name].__name__} and {module.__name__}.{obj.__name__}")
                    found[name] = obj
        _REGISTRY.update(sorted(found.items()))
    return _REGISTRY


def names() -> list[str]:
    """The sorted ``prepare.dataset`` choices."""
    return list(registry())


@dataclasses.dataclass(frozen=True)
class PrepareConfig(Config):
    """The ``prepare`` section of params.yaml (the arguments of :func:`prepare_dataset` but the seed, which is
    ``base.seed``). Every key is documented in params.yaml."""

    section = "prepare"

    dataset: str = setting("cremad", choices=lambda: tuple(names()))
    root: str = setting("data/raw")
    split_file: Optional[str] = setting(None)
    ratios: list[float] = setting([0.6, 0.2, 0.2], min=0.0, max=1.0)
    val_fraction: float = setting(0.1, min=0.0, max=1.0, min_exclusive=True, max_exclusive=True)
    group_disjoint: bool = setting(True)
    max_flagged_fraction: float = setting(0.05, min=0.0, max=1.0)

    def check(self) -> None:
        try:
            check_ratios(self.ratios)
        except ValueError as err:
            raise ConfigError("ratios", str(err)) from None
        if not self.root:
            raise ConfigError("root", "must name the dataset folder (csv: the CSV file), got ''")


def prepare_dataset(
    *,
    dataset: str,
    root: str,
    split_file: Optional[str],
    ratios: Sequence[float],
    val_fraction: float,
    group_disjoint: bool,
    seed: int,
    max_flagged_fraction: Optional[float] = None,
) -> tuple[list[ClipRecord], list[str]]:
    """Records and class names of ``dataset`` (one of :func:`names`; for ``csv``, ``root`` is the CSV file).

    Records are sorted by split (train, val, test) then clip id; shard keys are unique. The clips flagged
    for rejection (a missing file, a bad name, an unknown label) are logged, counted by reason; with
    ``max_flagged_fraction`` (``prepare.max_flagged_fraction``), more than that share of them raises
    :class:`ManifestError` naming the root, the split folder and the commonest reasons, with examples.
    """
    if dataset not in registry():
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(names())}")
    check_ratios(ratios)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val fraction {val_fraction} must be in (0, 1)")
    records, classes = registry()[dataset](
        root,
        split_file=split_file or None,
        val_fraction=val_fraction,
        seed=seed,
        ratios=ratios,
        group_disjoint=group_disjoint,
    )
    if not records:
        raise ManifestError(f"{root}: empty dataset")
    records.sort(key=lambda r: (SPLITS.index(r.split), r.clip_id))
    check_shard_keys(records)
    check_flagged(records, max_flagged_fraction, root=root, split_file=split_file)
    return records, classes


def _reason(problem: str) -> str:
    """The kind of a problem, without the path or value it names (``video file not found``)."""
    return problem.split(":")[0].split(" '")[0]


def flagged_summary(records: Sequence[ClipRecord]) -> str:
    """``<count> with <reason> (the first: <clip id>: <problem>)`` per reason, commonest first, joined by ``; ``."""
    by_reason: dict[str, list[ClipRecord]] = {}
    for r in records:
        if r.problem:
            by_reason.setdefault(_reason(r.problem), []).append(r)
    return "; ".join(f"{len(rs)} with {reason} (the first: {rs[0].clip_id}: {rs[0].problem})"
                     for reason, rs in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def check_flagged(records: Sequence[ClipRecord], max_fraction: Optional[float], *, root: str,
                  split_file: Optional[str]) -> None:
    """Log the flagged clips; raise :class:`ManifestError` when their share exceeds ``max_fraction``."""
    flagged = sum(1 for r in records if r.problem)
    if not flagged:
        return
    share = flagged / len(records)
    text = (f"{flagged} of the {len(records)} clips of {root}"
            + (f" (as listed by the split folder {split_file})" if split_file else "")
            + f" are flagged for rejection ({share:.1%}): {flagged_summary(records)}")
    if max_fraction is None or share <= max_fraction:
        log.warning("%s. The extractor leaves them out and lists them in rejects.csv.", text)
        return
    hint = ("Fix the dataset, or raise prepare.max_flagged_fraction to accept the loss.")
    missing = sum(1 for r in records if "not found" in r.problem)
    if split_file and missing > len(records) / 2:
        hint = (f"Most listed clips have no file under {root}: are prepare.root and prepare.split_file the same "
                f"dataset? (prepare.split_file: null splits the clips found by the seed.) " + hint)
    raise ManifestError(f"{text}; that is more than prepare.max_flagged_fraction={max_fraction}. {hint}")
