"""Clip manifests: one row per clip, the common currency of every dataset adapter.

A manifest is a CSV with the columns of :class:`ClipRecord` (in that order) and a
class list (``classes.txt``, one class name per line, label index = line number).
Paths are stored as the adapter saw them (relative to the working directory when the
dataset root was given relative), so manifests and the shards made from them do not
depend on where a teammate's checkout lives.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from pipeline.fileio import atomic_path

SPLITS = ("train", "val", "test")  # every prepared dataset has all three


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """One clip of a dataset.

    ``label`` is the index into the class list, or -1 when the clip's label is not one
    of the classes; ``problem`` is empty for a usable clip and otherwise says why the
    extractor must reject it (the adapter found it, the extractor reports it).
    """

    clip_id: str  # unique within the dataset; also the shard key (see :func:`shard_key`)
    label: int  # class index, -1 for an unknown label
    class_name: str  # the label as the dataset spells it
    video: str  # path of the video file
    audio: str  # path of the audio file; equal to ``video`` when the audio is inside it
    group: str  # speaker / actor / source video; "" when unknown
    split: str  # one of SPLITS
    problem: str = ""  # why this clip cannot be used; "" when it can


FIELDS = tuple(f.name for f in dataclasses.fields(ClipRecord))


class ManifestError(ValueError):
    """A manifest, split file or dataset tree that cannot be used as given."""


def write_manifest(path: str | os.PathLike, records: Iterable[ClipRecord]) -> None:
    """Write ``records`` as CSV, atomically (temporary name, then rename)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(FIELDS)
        for r in records:
            w.writerow(dataclasses.astuple(r))


def read_manifest(path: str | os.PathLike) -> list[ClipRecord]:
    """Read a manifest written by :func:`write_manifest`."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != FIELDS:
        raise ManifestError(f"{path}: header must be {','.join(FIELDS)}")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(FIELDS):
            raise ManifestError(f"{path}:{n}: expected {len(FIELDS)} fields, got {len(row)}")
        d = dict(zip(FIELDS, row))
        try:
            d["label"] = int(d["label"])
        except ValueError:
            raise ManifestError(f"{path}:{n}: label {d['label']!r} is not an integer") from None
        out.append(ClipRecord(**d))
    return out


def write_classes(path: str | os.PathLike, class_names: Sequence[str]) -> None:
    """Write the class list, one name per line, atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{c}\n" for c in class_names), encoding="utf-8")


def read_classes(path: str | os.PathLike) -> list[str]:
    """Read a class list written by :func:`write_classes`."""
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line]


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def shard_key(clip_id: str) -> str:
    """The WebDataset key of a clip: every character outside ``[A-Za-z0-9_-]`` becomes ``_``."""
    return _KEY_UNSAFE.sub("_", clip_id)
