"""Kinetics-Sounds: ``<root>/<split>/<class>/<clip>.mp4`` (audio inside the MP4), group = YouTube id."""
from __future__ import annotations

import logging
import os
import re
from typing import Optional, Sequence

from pipeline.datasets.base import Clip, adapter, apply_lists, files, finish, need_dir, subdirs
from pipeline.manifest import SPLITS, ClipRecord, ManifestError

log = logging.getLogger(__name__)

_YOUTUBE_SUFFIX = re.compile(r"(.+)_\d{6}_\d{6}")
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def youtube_group(stem: str) -> str:
    """The YouTube id of a Kinetics clip stem: the stem less a ``_<6 digits>_<6 digits>`` suffix."""
    m = _YOUTUBE_SUFFIX.fullmatch(stem)
    return m.group(1) if m else stem


@adapter("kinetics_sounds")
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
    class folder names over all splits (those holding a usable clip); clip id = file stem, unique.
    """
    root = os.fspath(root)
    need_dir(root)
    top = subdirs(root)
    split_dirs = {d: SPLIT_DIRS[d] for d in sorted(SPLIT_DIRS, key=lambda d: SPLITS.index(SPLIT_DIRS[d])) if d in top}
    if split_dirs:
        others = [d for d in top if d not in split_dirs]
        if others:
            log.warning("%s: ignoring folders next to the split folders: %s", root, ", ".join(others))
        bases = [(os.path.join(root, d), s) for d, s in split_dirs.items()]
    else:
        bases = [(root, None)]
    classes = sorted({c for base, _ in bases for c in subdirs(base)})
    clips: dict[str, Clip] = {}
    for base, split in bases:
        for cls in subdirs(base):
            for name in files(os.path.join(base, cls), ".mp4"):
                path = os.path.join(base, cls, name)
                cid = name[: -len(".mp4")]
                if cid in clips:
                    raise ManifestError(f"duplicate clip id {cid!r}: {clips[cid].video} and {path}")
                clips[cid] = Clip(cid, cls, path, path, youtube_group(cid), split)
    if split_file:
        dir_of = {s: d for d, s in reversed(split_dirs.items())}  # val before valid, validation

        def expected(cid: str, split: str, label: str) -> Clip:
            base = os.path.join(root, dir_of.get(split, split)) if split_dirs else root
            path = os.path.join(base, label, f"{cid}.mp4")
            return Clip(cid, label, path, path, youtube_group(cid))

        clips = apply_lists(clips, split_file, expected, "its class folder", root)
    return finish(list(clips.values()), classes, root, val_fraction=val_fraction, seed=seed, ratios=ratios, group_disjoint=group_disjoint)
