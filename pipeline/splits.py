"""Split files and seeded stratified splits.

A split file is ``<clip_id>,<label>`` per line (the CREMA-D lists of the balanced
multimodal learning literature); a split folder holds ``train.csv``, ``test.csv`` and
optionally ``val.csv`` (or ``valid.csv``). UTF-8 byte-order marks, CRLF line ends, blank
lines and whitespace around fields are accepted, anything else malformed is an error
naming ``file:line``.

Seeded splits (:func:`stratified_split`, :func:`carve_val`) use
``numpy.random.default_rng(seed)`` only, so they are the same on every machine.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .manifest import SPLITS, ManifestError

log = logging.getLogger(__name__)

SPLIT_FILES = {"train": ("train.csv",), "val": ("val.csv", "valid.csv"), "test": ("test.csv",)}


# ---------------------------------------------------------------- split files


def _rows(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped fields) of each non-blank line; BOM and CRLF ok."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text ({e})") from None
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if line:
            yield n, [f.strip() for f in next(csv.reader([line]))]


def _read_split_rows(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """clip id -> (label, line number)."""
    out: dict[str, tuple[str, int]] = {}
    for n, fields in _rows(path):
        if len(fields) != 2 or not all(fields):
            raise ManifestError(
                f"{path}:{n}: malformed row {','.join(fields)!r}: expected <clip_id>,<label>"
                " (exactly 2 non-empty fields)"
            )
        cid, label = fields
        if cid in out:
            raise ManifestError(f"{path}:{n}: duplicate clip id {cid!r} (first at line {out[cid][1]})")
        out[cid] = (label, n)
    return out


def read_split_file(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``<clip_id>,<label>`` file: clip id -> label (file order)."""
    return {cid: label for cid, (label, _) in _read_split_rows(path).items()}


def split_dir_files(path: str | os.PathLike) -> dict[str, Path]:
    """The split files of a split folder: split -> file (train and test required)."""
    d = Path(path)
    if not d.is_dir():
        raise ManifestError(f"{path}: split folder not found")
    files: dict[str, Path] = {}
    for split, names in SPLIT_FILES.items():
        found = [d / n for n in names if (d / n).is_file()]
        if len(found) > 1:
            raise ManifestError(f"{path}: both {found[0].name} and {found[1].name}; keep one")
        if found:
            files[split] = found[0]
    missing = [SPLIT_FILES[s][0] for s in ("train", "test") if s not in files]
    if missing:
        raise ManifestError(f"{path}: split folder needs train.csv and test.csv (missing {', '.join(missing)})")
    return files


def read_split_dir_where(path: str | os.PathLike) -> dict[str, tuple[str, str, str]]:
    """Like :func:`read_split_dir`, with ``file:line`` of each id: id -> (split, label, where)."""
    out: dict[str, tuple[str, str, str]] = {}
    for split, f in split_dir_files(path).items():
        for cid, (label, n) in _read_split_rows(f).items():
            if cid in out:
                raise ManifestError(f"clip id {cid!r} is in two split files: {out[cid][2]} and {f}:{n}")
            out[cid] = (split, label, f"{f}:{n}")
    return out


def read_split_dir(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Read a split folder: clip id -> (split, label); an id in two files is an error."""
    return {cid: (s, label) for cid, (s, label, _) in read_split_dir_where(path).items()}


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Read a class list like CREMA-D's ``stat.csv``: one class name per line (BOM/CRLF ok)."""
    names: list[str] = []
    for n, fields in _rows(path):
        if len(fields) != 1 or not fields[0]:
            raise ManifestError(f"{path}:{n}: expected one class name, got {','.join(fields)!r}")
        if fields[0] in names:
            raise ManifestError(f"{path}:{n}: duplicate class {fields[0]!r}")
        names.append(fields[0])
    if not names:
        raise ManifestError(f"{path}: no class names")
    return names


# ---------------------------------------------------------------- seeded splits


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Validate (train, val, test) ratios: non-negative, summing to 1, val > 0."""
    try:
        r = tuple(float(x) for x in ratios)
    except (TypeError, ValueError):
        raise ValueError(f"ratios {ratios!r} must be three numbers (train, val, test)") from None
    if len(r) != 3 or any(not math.isfinite(x) or x < 0 for x in r) or abs(sum(r) - 1) > 1e-6:
        raise ValueError(f"ratios {list(r)} must be three non-negative numbers (train, val, test) summing to 1")
    if r[1] <= 0:
        raise ValueError(f"ratios {list(r)}: the val ratio must be > 0 (checkpoints are selected on val)")
    total = sum(r)
    return (r[0] / total, r[1] / total, r[2] / total)


def split_counts(n: int, ratios: Sequence[float], debt: list[float] | None = None) -> list[int]:
    """Round ``n * ratios`` to integers summing to ``n``, each the floor or the ceiling.

    The ceilings go to the splits with the largest remainder plus ``debt`` (what earlier
    classes were rounded down by; updated in place, so successive classes balance the
    totals too); ties go to train, then val, then test; a split with ratio 0 gets
    nothing; when ``n > 0`` train gets at least one sample (small classes train first).
    """
    debt = [0.0, 0.0, 0.0] if debt is None else debt
    exact = [n * r for r in ratios]
    counts = [math.floor(q + 1e-9) for q in exact]
    open_ = [i for i in range(3) if ratios[i] > 0 and exact[i] - counts[i] > 1e-9]
    for i in sorted(open_, key=lambda i: (-(debt[i] + exact[i] - counts[i]), i))[: n - sum(counts)]:
        counts[i] += 1
    if n and counts[0] == 0 and ratios[0] > 0:
        j = 1 if counts[1] >= counts[2] else 2
        counts[j] -= 1
        counts[0] += 1
    for i in range(3):
        debt[i] += exact[i] - counts[i]
    return counts


def _class_split(labels: list[int], r: tuple[float, float, float], rng: np.random.Generator) -> list[str]:
    out = [""] * len(labels)
    arr = np.asarray(labels)
    debt = [0.0, 0.0, 0.0]
    for c in sorted(set(labels)):
        idx = rng.permutation(np.flatnonzero(arr == c))
        for split, part in zip(SPLITS, np.split(idx, np.cumsum(split_counts(len(idx), r, debt))[:-1])):
            for k in part:
                out[k] = split
    # tiny data sets: make sure val exists (one train row of the largest class moves)
    if "val" not in out and out.count("train") >= 2:
        by_class = {c: [i for i, s in enumerate(out) if s == "train" and labels[i] == c] for c in sorted(set(labels))}
        rows = max(by_class.values(), key=len)
        out[rows[int(rng.integers(len(rows)))]] = "val"
    return out


def _group_split(labels: list[int], groups: list[str], r: tuple[float, float, float], rng) -> list[str]:
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g if g else f"\0{i}", []).append(i)  # "" = unknown: its own group
    names = sorted(members)
    order = [names[k] for k in rng.permutation(len(names))]
    target = [len(labels) * x for x in r]
    size = [0, 0, 0]
    assigned: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for g in order:
        n = len(members[g])
        deficit = [target[i] - size[i] for i in range(3)]
        # the split where this group best reduces the distance to the targets
        s = min(
            (i for i in range(3) if r[i] > 0),
            key=lambda i: (abs(deficit[i] - n) - abs(deficit[i]), -deficit[i], i),
        )
        assigned[s].append(g)
        size[s] += n
    # every split with a ratio > 0 gets a group when another split can spare one
    for s in range(3):
        if r[s] > 0 and not assigned[s]:
            donor = max(range(3), key=lambda i: len(assigned[i]))
            if len(assigned[donor]) >= 2:
                g = min(assigned[donor], key=lambda g: len(members[g]))
                assigned[donor].remove(g)
                assigned[s].append(g)
    out = [""] * len(labels)
    for s, gs in assigned.items():
        for g in gs:
            for i in members[g]:
                out[i] = SPLITS[s]
    return out


def stratified_split(
    labels: Sequence[int],
    groups: Sequence[str],
    *,
    ratios: Sequence[float],
    seed: int,
    group_disjoint: bool,
) -> list[str]:
    """Seeded split of samples into ``train``/``val``/``test`` (one name per sample).

    Without ``group_disjoint``: each class (label value, -1 included) is shuffled and cut
    by :func:`split_counts`, so every class follows the ratios within rounding (floor or
    ceiling per split) and the roundings of successive classes balance the totals.

    With ``group_disjoint``: whole groups go to one split. Groups are shuffled by the
    seed, and each goes to the split where it brings the sample counts closest to the
    ratios (so counts approach the ratios; class balance is only approximate); a split
    left without a group then takes the smallest group of the split holding the most.
    An empty group string means "unknown": each such sample is its own group. When no
    group holds two samples this is the per-class split above; when the groups cannot
    give val a group (a single group), it warns and falls back to the per-class split.
    """
    r = check_ratios(ratios)
    labels, groups = [int(x) for x in labels], [str(g) for g in groups]
    if len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
    rng = np.random.default_rng(seed)
    named = [g for g in groups if g]
    if group_disjoint and len(set(named)) < len(named):
        out = _group_split(labels, groups, r, rng)
        if "val" in out or len(labels) < 2:
            return out
        log.warning("group-disjoint split impossible (too few groups for a val split); splitting per class")
        rng = np.random.default_rng(seed)
    return _class_split(labels, r, rng)


def carve_val(
    labels: Sequence[int],
    groups: Sequence[str],
    splits: Sequence[str],
    *,
    fraction: float,
    seed: int,
    group_disjoint: bool,
) -> list[str]:
    """Move a stratified ``fraction`` of the train rows to val (seeded); other rows keep their split.

    With ``group_disjoint`` the val rows share no group with the remaining train rows
    when the train rows have at least two groups (see :func:`stratified_split`).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"val fraction {fraction} must be in (0, 1)")
    if not len(labels) == len(groups) == len(splits):
        raise ValueError(f"{len(labels)} labels, {len(groups)} groups and {len(splits)} splits")
    bad = sorted(set(splits) - set(SPLITS))
    if bad:
        raise ValueError(f"unknown splits {bad}; expected {', '.join(SPLITS)}")
    out = list(splits)
    idx = [i for i, s in enumerate(out) if s == "train"]
    sub = stratified_split(
        [labels[i] for i in idx],
        [groups[i] for i in idx],
        ratios=(1 - fraction, fraction, 0.0),
        seed=seed,
        group_disjoint=group_disjoint,
    )
    for i, s in zip(idx, sub):
        out[i] = s
    return out
