"""What every dataset adapter shares: the :func:`adapter` decorator, the clip record being built
(:class:`Clip`), folder listing, split lists and the final labels, splits and sorting (:func:`finish`).

Every adapter returns ``(records, class_names)`` with records sorted by split (train,
val, test) then clip id. Paths are built with ``os.path.join`` on the root as given, so a
relative root gives relative paths. A clip whose name or label cannot be used still gets
a record (label -1, ``problem`` says why): the extractor rejects it and reports it.
A clip whose video or audio file is missing (or is no regular file) keeps its expected path
and gets a ``problem`` too (:func:`finish` looks: ``video file not found``, ...); its label
stays, so the seeded split does not depend on which files are missing. The classes are
those of the adapter, in its order, that have at least one clip without a problem: a class
none of whose clips is present is in no class list, and its clips get label -1.

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

__all__ = ["Adapter", "adapter", "Clip", "need_dir", "subdirs", "files", "apply_lists", "file_problem",
           "check_shard_keys", "check_label_spellings", "finish"]

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
    root: str = "",
) -> dict[str, Clip]:
    """Keep the listed clips, in their listed split; ``expected`` makes a listed clip not found.

    ``where`` says where the dataset's own label comes from (``the clip id's emotion field``), for errors;
    ``root`` names the dataset in the warning about clips that no list names."""
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
    left_out = sorted(clips.keys() - out.keys())
    if left_out:
        log.warning("%d of the %d clips found in %s are in none of the split lists of %s, so they are left out "
                    "(the first: %s).", len(left_out), len(clips), root or "the dataset", split_file,
                    ", ".join(left_out[:3]))
    return out


def file_problem(video: str, audio: str) -> str:
    """Why a clip's files cannot be used, as far as a look at the folder tells: "" when both exist as files.

    Missing files and folders in their place are found here (prepare counts them); empty, unreadable or
    undecodable files are the extractor's to find."""
    files = {"video": video} if audio == video else {"video": video, "audio": audio}
    bad = [(what, "not found" if not os.path.exists(path) else "is not a regular file", path)
           for what, path in files.items() if not os.path.isfile(path)]
    if not bad:
        return ""
    if len(bad) == 2 and bad[0][1] == bad[1][1] == "not found":
        return f"video and audio files not found: {bad[0][2]}, {bad[1][2]}"
    what, why, path = bad[0]
    return f"{what} {'file' if why == 'not found' else 'path'} {why}: {path}"


def check_shard_keys(records: Sequence[ClipRecord]) -> None:
    """Raise :class:`ManifestError` when two clip ids map to the same shard key."""
    seen: dict[str, str] = {}
    for r in records:
        k = shard_key(r.clip_id)
        if k in seen:
            raise ManifestError(f"clip ids {seen[k]!r} and {r.clip_id!r} collide as shard key {k!r}")
        seen[k] = r.clip_id


def check_label_spellings(first_seen: dict[str, str], where: str) -> None:
    """Raise :class:`ManifestError` when two labels are equal up to case and surrounding spaces (``neu``, ``NEU``).

    ``first_seen`` maps each label, as spelled, to where it first occurs (``line 3 (clips/b.wav)``); the error names
    every such group with those places. Labels are compared exactly everywhere else (class list, split lists), so
    two spellings would silently become two classes."""
    groups: dict[str, list[str]] = {}
    for label in first_seen:
        groups.setdefault(label.strip().casefold(), []).append(label)
    clashes = [g for g in groups.values() if len(g) > 1]  # in order of first occurrence
    if clashes:
        text = "; ".join(" and ".join(f"{s!r} (first at {first_seen[s]})" for s in g) for g in clashes)
        raise ManifestError(f"{where}: labels that differ only in case or surrounding spaces would become separate "
                            f"classes: {text}. Spell each class one way.")


def present_classes(clips: Sequence[Clip], classes: Sequence[str]) -> list[str]:
    """``classes``, in their order, less those with no clip free of problems: a warning names those whose
    clips all have a problem, an info line those with no clip at all (e.g. a layout's classes not generated)."""
    present = {c.class_name for c in clips if not c.problem}
    seen = {c.class_name for c in clips}
    for absent, level, what in (([c for c in classes if c in seen - present], logging.WARNING, "Every clip has a problem in"),
                                ([c for c in classes if c not in seen], logging.INFO, "No clip has")):
        if absent:
            one = len(absent) == 1
            log.log(level, "%s the class%s %s, so %s left out of the class list (%d of %d classes left).", what,
                    "" if one else "es", ", ".join(absent), "it is" if one else "they are",
                    len(present & set(classes)), len(classes))
    return [c for c in classes if c in present]


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
    """Labels, splits (given or seeded) and sorted records; the classes present (see the module docstring)."""
    if not clips:
        raise ManifestError(f"{where}: no clips found")
    clips = sorted(clips, key=lambda c: c.clip_id)
    first: dict[str, str] = {}
    for c in clips:
        first.setdefault(c.class_name, f"clip {c.clip_id}: {c.video}")
    check_label_spellings({k: v for k, v in first.items() if k}, where)
    for c in clips:
        if not c.problem and c.class_name not in classes:
            c.problem = f"unknown label {c.class_name!r}"
        c.problem = c.problem or file_problem(c.video, c.audio)
    classes = present_classes(clips, classes)
    if not classes:
        raise ManifestError(f"{where}: none of its {len(clips)} clips can be used; the first, {clips[0].clip_id}: "
                            f"{clips[0].problem}")
    index = {c: i for i, c in enumerate(classes)}
    labels = [index.get(c.class_name, -1) for c in clips]
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
