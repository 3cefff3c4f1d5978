"""Dataset adapters: CREMA-D, Kinetics-Sounds and generic CSV datasets -> clip records.

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

import csv
import dataclasses
import logging
import os
import re
from typing import Callable, Optional, Sequence

from .manifest import SPLITS, ClipRecord, ManifestError, shard_key
from .splits import carve_val, check_ratios, read_class_list, read_split_dir_where, stratified_split

log = logging.getLogger(__name__)

CREMAD_CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # order of the reference stat.csv
_CREMAD_NAME = re.compile(r"(\d{4})_([A-Za-z]{3})_([A-Za-z]+)_([A-Za-z]{2})")
_YOUTUBE_SUFFIX = re.compile(r"(.+)_\d{6}_\d{6}")
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclasses.dataclass
class _Clip:
    clip_id: str
    class_name: str
    video: str
    audio: str
    group: str
    split: Optional[str] = None  # given split, None when the split is to be seeded
    problem: str = ""


# ---------------------------------------------------------------- shared steps


def _need_dir(root: str) -> None:
    if not os.path.isdir(root):
        raise ManifestError(f"{root}: dataset folder not found")


def _subdirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _files(path: str, ext: str) -> list[str]:
    """Sorted names of the non-hidden ``*ext`` files in ``path`` ([] when it is no folder)."""
    if not os.path.isdir(path):
        return []
    return sorted(e.name for e in os.scandir(path) if e.is_file() and e.name.endswith(ext) and not e.name.startswith("."))


def _apply_lists(
    clips: dict[str, _Clip],
    split_file: str,
    expected: Callable[[str, str, str], Optional[_Clip]],
    where: str,
) -> dict[str, _Clip]:
    """Keep the listed clips, in their listed split; ``expected`` makes a listed clip not found."""
    lists = read_split_dir_where(split_file)
    out: dict[str, _Clip] = {}
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


def _finish(
    clips: Sequence[_Clip],
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


# ---------------------------------------------------------------- CREMA-D


def _cremad_clip(root: str, clip_id: str) -> _Clip:
    """A CREMA-D clip from its id; a bad name gets a ``problem`` (the label check is later)."""
    video = os.path.join(root, "VideoFlash", f"{clip_id}.flv")
    audio = os.path.join(root, "AudioWAV", f"{clip_id}.wav")
    m = _CREMAD_NAME.fullmatch(clip_id)
    if not m:
        return _Clip(clip_id, "", video, audio, "", problem="name does not match <actor>_<sentence>_<emotion>_<level>")
    return _Clip(clip_id, m.group(3), video, audio, m.group(1))


def cremad(
    root: str,
    *,
    split_file: Optional[str] = None,
    val_fraction: float,
    seed: int,
    ratios: Sequence[float],
    group_disjoint: bool,
) -> tuple[list[ClipRecord], list[str]]:
    """CREMA-D: ``<root>/VideoFlash/<id>.flv`` + ``<root>/AudioWAV/<id>.wav``, group = actor.

    Clips = union of the .flv and .wav stems; label = the emotion field of the id;
    classes NEU HAP SAD FEA DIS ANG, or the order of ``stat.csv`` in the split folder.
    """
    root = os.fspath(root)
    _need_dir(root)
    vdir, adir = os.path.join(root, "VideoFlash"), os.path.join(root, "AudioWAV")
    if not (os.path.isdir(vdir) or os.path.isdir(adir)):
        raise ManifestError(f"{root}: no VideoFlash/ or AudioWAV/ folder (not a CREMA-D root?)")
    stems = {n[: -len(".flv")] for n in _files(vdir, ".flv")} | {n[: -len(".wav")] for n in _files(adir, ".wav")}
    clips = {cid: _cremad_clip(root, cid) for cid in stems}
    classes: Sequence[str] = CREMAD_CLASSES
    if split_file:
        stat = os.path.join(split_file, "stat.csv")
        if os.path.isfile(stat):
            classes = read_class_list(stat)
        clips = _apply_lists(clips, split_file, lambda cid, s, lab: _cremad_clip(root, cid), "the clip id's emotion field")
    return _finish(list(clips.values()), classes, root, val_fraction=val_fraction, seed=seed, ratios=ratios, group_disjoint=group_disjoint)


# ---------------------------------------------------------------- Kinetics-Sounds


def youtube_group(stem: str) -> str:
    """The YouTube id of a Kinetics clip stem: the stem less a ``_<6 digits>_<6 digits>`` suffix."""
    m = _YOUTUBE_SUFFIX.fullmatch(stem)
    return m.group(1) if m else stem


def kinetics_sounds(
    root: str,
    *,
    split_file: Optional[str] = None,
    val_fraction: float,
    seed: int,
    ratios: Sequence[float],
    group_disjoint: bool,
) -> tuple[list[ClipRecord], list[str]]:
    """Kinetics-Sounds: ``<root>/<split>/<class>/<clip>.mp4`` (audio inside the MP4), group = YouTube id.

    Split folders are ``train``, ``val``/``valid``/``validation`` and ``test``; without
    split folders, ``<root>/<class>/<clip>.mp4`` is split by the seed. Classes = sorted
    class folder names over all splits; clip id = file stem, unique.
    """
    root = os.fspath(root)
    _need_dir(root)
    top = _subdirs(root)
    split_dirs = {d: SPLIT_DIRS[d] for d in sorted(SPLIT_DIRS, key=lambda d: SPLITS.index(SPLIT_DIRS[d])) if d in top}
    if split_dirs:
        others = [d for d in top if d not in split_dirs]
        if others:
            log.warning("%s: ignoring folders next to the split folders: %s", root, ", ".join(others))
        bases = [(os.path.join(root, d), s) for d, s in split_dirs.items()]
    else:
        bases = [(root, None)]
    classes = sorted({c for base, _ in bases for c in _subdirs(base)})
    clips: dict[str, _Clip] = {}
    for base, split in bases:
        for cls in _subdirs(base):
            for name in _files(os.path.join(base, cls), ".mp4"):
                path = os.path.join(base, cls, name)
                cid = name[: -len(".mp4")]
                if cid in clips:
                    raise ManifestError(f"duplicate clip id {cid!r}: {clips[cid].video} and {path}")
                clips[cid] = _Clip(cid, cls, path, path, youtube_group(cid), split)
    if split_file:
        dir_of = {s: d for d, s in reversed(split_dirs.items())}  # val before valid, validation

        def expected(cid: str, split: str, label: str) -> _Clip:
            base = os.path.join(root, dir_of.get(split, split)) if split_dirs else root
            path = os.path.join(base, label, f"{cid}.mp4")
            return _Clip(cid, label, path, path, youtube_group(cid))

        clips = _apply_lists(clips, split_file, expected, "its class folder")
    return _finish(list(clips.values()), classes, root, val_fraction=val_fraction, seed=seed, ratios=ratios, group_disjoint=group_disjoint)


# ---------------------------------------------------------------- generic CSV


def csv_manifest(
    path: str,
    *,
    val_fraction: float,
    seed: int,
    ratios: Sequence[float],
    group_disjoint: bool,
    split_file: Optional[str] = None,
) -> tuple[list[ClipRecord], list[str]]:
    """A CSV with header ``video,label[,audio][,split][,group][,id]`` (any order, extra columns ignored).

    Paths are joined to the CSV's folder (relative if the CSV path is); audio defaults to
    the video; clip id = ``id`` or the video stem, unique; classes = sorted labels; split
    values must be train/val/test. Split lists (``split_file``) take precedence over the
    split column; a listed id that is not in the CSV is an error.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: CSV file not found")
    base = os.path.dirname(path)
    clips: dict[str, _Clip] = {}
    lines: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next((row for row in reader if any(x.strip() for x in row)), None)
        if header is None:
            raise ManifestError(f"{path}: empty CSV file")
        header = [h.strip().lower() for h in header]
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup or not {"video", "label"} <= set(header):
            raise ManifestError(f"{path}:{reader.line_num}: header needs video and label columns once each, got {','.join(header)}")
        for row in reader:
            n = reader.line_num
            if not any(x.strip() for x in row):
                continue
            if len(row) != len(header):
                raise ManifestError(f"{path}:{n}: expected {len(header)} fields, got {len(row)}")
            d = {h: x.strip() for h, x in zip(header, row)}
            for col in ("video", "label"):
                if not d[col]:
                    raise ManifestError(f"{path}:{n}: missing {col}")
            split = None
            if "split" in d:
                split = d["split"].lower()
                if split not in SPLITS:
                    raise ManifestError(f"{path}:{n}: split {d['split']!r} is not one of {', '.join(SPLITS)}")
            video = os.path.join(base, d["video"])
            audio = os.path.join(base, d["audio"]) if d.get("audio") else video
            cid = d.get("id") or os.path.splitext(os.path.basename(d["video"]))[0]
            if cid in clips:
                raise ManifestError(f"{path}:{n}: duplicate clip id {cid!r} (first at line {lines[cid]})")
            clips[cid] = _Clip(cid, d["label"], video, audio, d.get("group", ""), split)
            lines[cid] = n
    classes = sorted({c.class_name for c in clips.values()})
    if split_file:
        clips = _apply_lists(clips, split_file, lambda cid, s, lab: None, path)
    return _finish(list(clips.values()), classes, path, val_fraction=val_fraction, seed=seed, ratios=ratios, group_disjoint=group_disjoint)


# ---------------------------------------------------------------- dispatch

ADAPTERS = {"cremad": cremad, "kinetics_sounds": kinetics_sounds, "csv": csv_manifest}


def prepare_dataset(
    *,
    dataset: str,
    root: str,
    split_file: Optional[str],
    ratios: Sequence[float],
    val_fraction: float,
    group_disjoint: bool,
    seed: int,
) -> tuple[list[ClipRecord], list[str]]:
    """Records and class names of ``dataset`` (one of :data:`ADAPTERS`; for ``csv``, ``root`` is the CSV file).

    Records are sorted by split (train, val, test) then clip id; shard keys are unique.
    """
    if dataset not in ADAPTERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(ADAPTERS)}")
    check_ratios(ratios)
    if not 0 < val_fraction < 1:
        raise ValueError(f"val fraction {val_fraction} must be in (0, 1)")
    records, classes = ADAPTERS[dataset](
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
    return records, classes
