"""csv: any dataset listed in a CSV file ``video,label[,audio][,split][,group][,id]``."""
from __future__ import annotations

import csv
import os
from typing import Optional, Sequence

from pipeline.datasets.base import Clip, adapter, apply_lists, check_label_spellings, finish
from pipeline.manifest import SPLITS, ClipRecord, ManifestError


@adapter("csv")
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
    split column; a listed id that is not in the CSV is an error. Every field is stripped of
    surrounding spaces; two labels equal up to case (``neu``, ``NEU``) are an error naming both
    spellings, their first lines and clip files (:func:`check_label_spellings`), not two classes.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: CSV file not found")
    base = os.path.dirname(path)
    clips: dict[str, Clip] = {}
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
            clips[cid] = Clip(cid, d["label"], video, audio, d.get("group", ""), split)
            lines[cid] = n
    first: dict[str, str] = {}
    for cid, c in clips.items():
        first.setdefault(c.class_name, f"{path}:{lines[cid]}, clip file {c.video}")
    check_label_spellings(first, path)
    classes = sorted({c.class_name for c in clips.values()})
    if split_file:
        clips = apply_lists(clips, split_file, lambda cid, s, lab: None, path, path)
    return finish(list(clips.values()), classes, path, val_fraction=val_fraction, seed=seed, ratios=ratios, group_disjoint=group_disjoint)
