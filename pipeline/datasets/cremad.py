"""CREMA-D (Cao et al. 2014): ``<root>/VideoFlash/<id>.flv`` + ``<root>/AudioWAV/<id>.wav``, group = actor."""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence

from pipeline.datasets.base import Clip, adapter, apply_lists, files, finish, need_dir
from pipeline.manifest import ClipRecord, ManifestError
from pipeline.splits import read_class_list

CREMAD_CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")  # order of the reference stat.csv
_CREMAD_NAME = re.compile(r"(\d{4})_([A-Za-z]{3})_([A-Za-z]+)_([A-Za-z]{2})")


def _cremad_clip(root: str, clip_id: str) -> Clip:
    """A CREMA-D clip from its id; a bad name gets a ``problem`` (the label check is later)."""
    video = os.path.join(root, "VideoFlash", f"{clip_id}.flv")
    audio = os.path.join(root, "AudioWAV", f"{clip_id}.wav")
    m = _CREMAD_NAME.fullmatch(clip_id)
    if not m:
        return Clip(clip_id, "", video, audio, "", problem="name does not match <actor>_<sentence>_<emotion>_<level>")
    return Clip(clip_id, m.group(3), video, audio, m.group(1))


@adapter("cremad")
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
    classes NEU HAP SAD FEA DIS ANG, or the order of ``stat.csv`` in the split folder, less those with no
    usable clip (:func:`pipeline.datasets.base.finish`).
    """
    root = os.fspath(root)
    need_dir(root)
    vdir, adir = os.path.join(root, "VideoFlash"), os.path.join(root, "AudioWAV")
    if not (os.path.isdir(vdir) or os.path.isdir(adir)):
        raise ManifestError(f"{root}: no VideoFlash/ or AudioWAV/ folder (not a CREMA-D root?)")
    stems = {n[: -len(".flv")] for n in files(vdir, ".flv")} | {n[: -len(".wav")] for n in files(adir, ".wav")}
    clips = {cid: _cremad_clip(root, cid) for cid in stems}
    classes: Sequence[str] = CREMAD_CLASSES
    if split_file:
        stat = os.path.join(split_file, "stat.csv")
        if os.path.isfile(stat):
            classes = read_class_list(stat)
        clips = apply_lists(clips, split_file, lambda cid, s, lab: _cremad_clip(root, cid), "the clip id's emotion field",
                            root)
    return finish(list(clips.values()), classes, root, val_fraction=val_fraction, seed=seed, ratios=ratios, group_disjoint=group_disjoint)
