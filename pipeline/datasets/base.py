"""What every dataset adapter shares: the :func:`adapter` decorator, the clip record being built
(:class:`Clip`), folder listing, split lists and the final labels, splits and sorting (:func:`finish`).

Every adapter returns ``(records, class_names)`` with records sorted by split (train,
val, test) then clip id. Paths are built with ``os.path.join`` on the root as given, so a
relative root gives relative paths. A clip whose name or label cannot be used still gets
a record (label -1, ``problem`` says why): the extractor rejects it and reports it.
A clip whose file is missing keeps its expected path; the extractor rejects it too.

With a split folder (``split_file``, see :func:`pipeline.splits.read_split_dir`) the
lists are authoritative: listed clips are in the listed split, clips not listed are left
out (counted in a log warning), and a listed label that disagrees with the dataset's is an
error. When the given split (lists, folders or a CSV column) has no val, val is carved
from train (:func:`pipeline.splits.carve_val`); with no given split the split is seeded
(:func:`pipeline.splits.stratified_split`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable, Optional, Sequence

from pipeline.manifest import SPLITS, ClipRecord, ManifestError, shard_key
from pipeline.splits import carve_val, read_split_dir_where, stratified_split

__all__ = ["Adapter", "adapter", "Clip", "need_dir", "subdirs", "files", "apply_lists", "check_shard_keys", "finish"]

log = logging.getLogger(__name__)

# (root, *, split_file, val_fraction, seed, ratios, group_disjoint) -> (records, class names)
Adapter = Callable[..., tuple[list[ClipRecord], list[str]]]


def adapter(name: str) -> Callable[[Adapter], Adapter]:
    """Register the decorated function as the dataset adapter ``name`` (the ``prepare.dataset`` value).

    The function is called as ``fn(root, *, split_file, val_fraction, seed, ratios, group_disjoint)`` and
    returns ``(records, class_names)``, usually through :func:`finish`. Any module of :mod:`pipeline.datasets`
    holding such a function is found by :func:`pipeline.datasets.registry`: a new dataset is one new file.
    """
    def register(fn: Adapter) -> Adapter:
        fn.adapter_name = name
        return fn

    return register


@dataclasses.dataclass
class Clip:
    """One clip while an adapter builds its records (:func:`finish` makes the :class:`ClipRecord`)."""

    clip_id: str
    class_name: str
    video: str
    audio: str
    group: str
    split: Optional[str] = None  # given split, None when the split is to be seeded
    problem: str = ""


def need_dir(root: str) -> None:
    """Raise :class:`ManifestError` unless ``root`` is a folder."""
    if not os.path.isdir(root):
        raise ManifestError(f"{root}: dataset folder not found")


def subdirs(path: str) -> list[str]:
    """Sorted names of the non-hidden folders in ``path``."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def files(path: str, ext: str) -> list[str]:
    """Sorted names of the non-hidden ``*ext`` files in ``path`` ([] when it is no folder)."""
    if not os.path.isdir(path):
        return []
    return sorted(e.name for e in os.scandir(path) if e.is_file() and e.name.endswith(ext) and not e.name.startswith("."))


def apply_lists(
    clips: dict[str, Clip],
    split_file: str,
    expected: Callable[[str, str, str], Optional[Clip]],
    where: str,
) -> dict[str, Clip]:
    """Keep the listed clips, in their listed split; ``expected`` makes a listed clip not found."""
    lists = read_split_dir_where(split_file)
    out: dict[str, Clip] = {}
    for cid, (split, label, line) in lists.items():
        c = clips.get(cid) or expected(cid, split, label)
        if c is None:
            raise ManifestError(f"{line}: clip {cid!r} is not in {where}")
        if not c.class_name:  # the dataset cannot tell the label (unparseable name)
            c.class_name = label
        elif c.class_name != label:
            raise ManifestError(f"{line}: label {label!r} of clip {cid!r} disagrees with {where} ({c.class_name!r})")
        c.split = split
        out[cid] = c
    left_out = len(clips.keys() - out.keys())
    if left_out:
        log.warning("%s: %d clips are not in the split lists of %s and are left out", where, left_out, split_file)
    return out


def check_shard_keys(records: Sequence[ClipRecord]) -> None:
    """Raise :class:`ManifestError` when two clip ids map to the same shard key."""
    seen: dict[str, str] = {}
    for r in records:
        k = shard_key(r.clip_id)
        if k in seen:
            raise ManifestError(f"clip ids {seen[k]!r} and {r.clip_id!r} collide as shard key {k!r}")
        seen[k] = r.clip_id


def finish(
    clips: Sequence[Clip],
    classes: Sequence[str],
    where: str,
    *,
    val_fraction: float,
    seed: int,
    ratios: Sequence[float],
    group_disjoint: bool,
) -> tuple[list[ClipRecord], list[str]]:
    """Labels, splits (given or seeded) and sorted records."""
    if not clips:
        raise ManifestError(f"{where}: no clips found")
    clips = sorted(clips, key=lambda c: c.clip_id)
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for c in clips:
        if not c.problem and c.class_name not in index:
            c.problem = f"unknown label {c.class_name!r}"
        labels.append(-1 if c.problem else index[c.class_name])
    groups = [c.group for c in clips]
    given = [c.split for c in clips]
    if any(s is None for s in given):
        splits = stratified_split(labels, groups, ratios=ratios, seed=seed, group_disjoint=group_disjoint)
    else:
        missing = [s for s in ("train", "test") if s not in given]
        if missing:
            raise ManifestError(f"{where}: the given split has no {' and no '.join(missing)} clips")
        splits = given
        if "val" not in given:
            splits = carve_val(labels, groups, given, fraction=val_fraction, seed=seed, group_disjoint=group_disjoint)
    records = [
        ClipRecord(c.clip_id, lab, c.class_name, c.video, c.audio, c.group, s, c.problem)
        for c, lab, s in zip(clips, labels, splits)
    ]
    records.sort(key=lambda r: (SPLITS.index(r.split), r.clip_id))
    check_shard_keys(records)
    return records, list(classes)
