"""pipeline.datasets.kinetics_sounds on trees of empty files."""
import os
from collections import Counter

import pytest

from pipeline.datasets.kinetics_sounds import kinetics_sounds
from pipeline.manifest import ManifestError
from tests.pipeline.datasets.common import OPTS, by_id, touch


def ks_names(cls, n, split=""):
    """``n`` clip paths of class ``cls``, two clips per YouTube id."""
    return [f"{cls}/yt{split}{cls[:2]}{i // 2:04d}_{i:06d}_{i + 10:06d}.mp4" for i in range(n)]


def test_kinetics_with_val_folder(tmp_path):
    for split, n in (("train", 6), ("valid", 2), ("test", 2)):
        touch(tmp_path, *[f"{split}/{p}" for c in ("playing drums", "barking") for p in ks_names(c, n, split)])
    (tmp_path / "test" / "singing").mkdir()  # a class folder with no clips is no class: the model gets no output for it
    records, classes = kinetics_sounds(str(tmp_path), **OPTS)
    assert classes == ["barking", "playing drums"]
    assert Counter(r.split for r in records) == {"train": 12, "val": 4, "test": 4}
    r = records[0]
    assert r.audio == r.video and r.video.startswith(os.path.join(str(tmp_path), "train", r.class_name))
    assert r.group == r.clip_id.split("_")[0] and r.label == classes.index(r.class_name)


def test_kinetics_without_val_folder_and_relative_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for split, n in (("train", 20), ("test", 4)):
        touch("ks", *[f"{split}/{p}" for c in ("a", "b") for p in ks_names(c, n, split)])
    touch("ks", "train/a/noTimestamp.mp4", "train/a/notes.txt")
    records, classes = kinetics_sounds("ks", **OPTS)
    assert classes == ["a", "b"]
    counts = Counter(r.split for r in records)
    assert counts["test"] == 8 and counts["val"] >= 2 and counts["train"] + counts["val"] == 41
    recs = by_id(records)
    assert recs["noTimestamp"].group == "noTimestamp" and recs["noTimestamp"].video == os.path.join("ks", "train", "a", "noTimestamp.mp4")


def test_kinetics_flat_and_duplicates(tmp_path):
    touch(tmp_path / "flat", *[p for c in ("x", "y", "z") for p in ks_names(c, 10)])
    records, classes = kinetics_sounds(str(tmp_path / "flat"), **OPTS)
    assert classes == ["x", "y", "z"] and set(r.split for r in records) == {"train", "val", "test"}
    touch(tmp_path / "dup", "train/a/c1.mp4", "test/b/c1.mp4")
    with pytest.raises(ManifestError, match=r"duplicate clip id 'c1'.*train/a/c1\.mp4.*test/b/c1\.mp4"):
        kinetics_sounds(str(tmp_path / "dup"), **OPTS)


def test_class_folders_equal_up_to_case_are_refused(tmp_path):
    """Any adapter's labels go through the same check (pipeline.datasets.base.finish): two class folders spelt
    ``Barking`` and ``barking`` are one class written twice, not two classes."""
    for split in ("train", "test"):
        touch(tmp_path, *[f"{split}/{p}" for c in ("Barking", "barking", "singing") for p in ks_names(c, 4, split)])
    with pytest.raises(ManifestError, match=r"'Barking' \(first at clip .*/Barking/.*\) and 'barking' "
                                            r"\(first at clip .*/barking/"):
        kinetics_sounds(str(tmp_path), **OPTS)
