"""Faults of the prepare stage: bad params, split lists that do not fit the dataset, missing files, a kill.

Every run is ``python stages/prepare.py`` in a copy of a finished tiny project. A failing run names the key
or the file in one line and leaves ``data/manifest.csv`` and ``data/classes.txt`` as they were. Issue 15's
defect 4: split lists naming clips whose files are missing made prepare report ``0 flagged for rejection``;
now they are flagged, counted, and past ``prepare.max_flagged_fraction`` the stage fails naming the split
folder and the root. Class lists hold only the classes with a clip present (defect 5's source).
"""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from pipeline.manifest import read_manifest
from tests.conftest import REFERENCE_CREMAD
from tests.faults.tiny import built, copy_of, edit_params, fails, ok, outputs, run, snapshot

DATA = ("data/manifest.csv", "data/classes.txt")


@pytest.fixture
def project(tmp_path_factory, tmp_path):
    return copy_of(built(tmp_path_factory), tmp_path / "project")


def prepared(project: Path) -> dict[str, str]:
    return {k: v for k, v in outputs(project).items() if k in DATA}


def clip_ids(project: Path) -> list[str]:
    return sorted(p.stem for p in (project / "data" / "raw" / "VideoFlash").glob("*.flv"))


def write_lists(folder: Path, train: list[str], test: list[str]) -> Path:
    folder.mkdir()
    for name, ids in (("train.csv", train), ("test.csv", test)):
        (folder / name).write_text("".join(f"{i},{i.split('_')[2]}\n" for i in ids))
    return folder


def test_split_lists_naming_missing_files_fail_naming_the_folder_and_root(project):
    """Defect 4: listed clips whose files are missing are counted; past the threshold the stage fails."""
    before = prepared(project)
    ids = clip_ids(project)
    absent = [f"10{a:02d}_{s}_ANG_HI" for a in (1, 2) for s in ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI")]
    write_lists(project / "lists", ids[:6] + absent[:9], ids[6:] + absent[9:])
    edit_params(project, prepare__split_file="lists")
    err = fails(run(project, "prepare"), "prepare: error: 12 of the 21 clips of data/raw (as listed by the split "
                "folder lists) are flagged for rejection (57.1%)", "12 with video and audio files not found",
                "data/raw/VideoFlash/1001_IEO_ANG_HI.flv", "more than prepare.max_flagged_fraction=0.05",
                "are prepare.root and prepare.split_file the same dataset?")
    assert prepared(project) == before, err  # nothing written

    edit_params(project, prepare__max_flagged_fraction=0.6)  # accepted: counted, reported, flagged in the manifest
    res = ok(run(project, "prepare"))
    assert "21 clips, 3 classes" in res.stdout and "12 flagged for rejection" in res.stdout, res.stdout
    assert "12 of the 21 clips of data/raw (as listed by the split folder lists) are flagged" in res.stderr
    flagged = [r for r in read_manifest(project / "data" / "manifest.csv") if r.problem]
    assert sorted(r.clip_id for r in flagged) == sorted(absent)
    assert all(r.problem.startswith("video and audio files not found: data/raw/VideoFlash/") for r in flagged)
    edit_params(project, features__max_reject_fraction=0.6)  # and the extractor rejects them, naming the files
    ok(run(project, "extract"))
    with open(project / "features" / "rejects.csv", newline="") as f:
        rejects = {r["clip_id"]: r for r in csv.DictReader(f)}
    assert sorted(rejects) == sorted(absent)
    assert rejects["1001_IEO_ANG_HI"]["file"] == "data/raw/VideoFlash/1001_IEO_ANG_HI.flv"
    assert rejects["1001_IEO_ANG_HI"]["reason"].startswith("video and audio files not found: ")


@pytest.mark.skipif(not REFERENCE_CREMAD.is_dir(), reason=f"no CREMA-D reference lists at {REFERENCE_CREMAD}")
def test_the_reference_lists_on_the_embedded_dataset_fail(project):
    """The issue's exact case: ``prepare.split_file: ../shared/reference/cremad`` on the embedded dataset."""
    before = prepared(project)
    edit_params(project, prepare__split_file=str(REFERENCE_CREMAD))
    fails(run(project, "prepare"), f"clips of data/raw (as listed by the split folder {REFERENCE_CREMAD})",
          "are flagged for rejection (99.", "more than prepare.max_flagged_fraction=0.05")
    assert prepared(project) == before


def test_messages_read_as_sentences(project):
    """Issue 15: "the clip id's emotion field: 11 clips are not in the split lists" named no dataset."""
    ids = clip_ids(project)
    write_lists(project / "lists", ids[:6], ids[6:8])  # the last clip is in no list
    edit_params(project, prepare__split_file="lists")
    res = ok(run(project, "prepare"))
    assert (f"1 of the 9 clips found in data/raw are in none of the split lists of lists, so they are left out "
            f"(the first: {ids[8]}).") in res.stderr, res.stderr
    assert "emotion field:" not in res.stderr


def test_class_list_holds_the_classes_present(project):
    """Defect 5 at its source: synth.num_classes 3 on the CREMA-D layout gave a class list of all 6."""
    assert (project / "data" / "classes.txt").read_text() == "NEU\nHAP\nSAD\n"
    for p in (project / "data" / "raw" / "VideoFlash").glob("*_HAP_*"):  # every HAP clip unusable: no class
        p.unlink()
    edit_params(project, prepare__max_flagged_fraction=1.0)
    res = ok(run(project, "prepare"))
    assert (project / "data" / "classes.txt").read_text() == "NEU\nSAD\n"
    assert ("Every clip has a problem in the class HAP, so it is left out of the class list (2 of 6 classes left)."
            in res.stderr), res.stderr
    assert "No clip has the classes FEA, DIS, ANG, so they are left out of the class list" in res.stderr
    labels = {(r.class_name, r.label, bool(r.problem)) for r in read_manifest(project / "data" / "manifest.csv")}
    assert labels == {("NEU", 0, False), ("SAD", 1, False), ("HAP", -1, True)}


@pytest.mark.parametrize("change, named", [
    ({"prepare__dataset": "audioset"}, "prepare.dataset: must be one of cremad | csv | kinetics_sounds, got 'audioset'"),
    ({"prepare__ratios": [0.5, 0.5]}, "prepare.ratios: ratios [0.5, 0.5] must be three non-negative numbers"),
    ({"prepare__max_flagged_fraction": 2}, "prepare.max_flagged_fraction: must be <= 1, got 2"),
    ({"prepare__val_fraction": 0}, "prepare.val_fraction: must be > 0, got 0"),
    ({"prepare__group_disjoint": "yes"}, "prepare.group_disjoint: expected bool, got str 'yes'"),
    ({"prepare__split_files": "lists"}, "prepare: unknown key(s) ['split_files']"),
    ({"base__seed": "0"}, "base.seed: expected int, got str '0'"),
])
def test_bad_param_fails_naming_the_key_and_touches_nothing(project, change, named):
    before = prepared(project)
    edit_params(project, **change)
    fails(run(project, "prepare"), "prepare: error:", named)
    assert prepared(project) == before


def test_bad_inputs_fail_naming_the_file_and_touch_nothing(project, tmp_path):
    before = prepared(project)
    edit_params(project, prepare__root="data/nope")
    fails(run(project, "prepare"), "data/nope: dataset folder not found")
    edit_params(project, prepare__root="features")
    fails(run(project, "prepare"), "features: no VideoFlash/ or AudioWAV/ folder (not a CREMA-D root?)")
    edit_params(project, prepare__root="data/raw", prepare__split_file="nolists")
    fails(run(project, "prepare"), "nolists: split folder not found")
    ids = clip_ids(project)
    lists = write_lists(project / "lists", ids[:6], ids[6:])
    (lists / "test.csv").write_text(f"{ids[6]},{ids[6].split('_')[2]}\n{ids[7]},ANG\n")  # a wrong label
    edit_params(project, prepare__split_file="lists")
    fails(run(project, "prepare"), f"lists/test.csv:2: label 'ANG' of clip '{ids[7]}' disagrees with the clip id's "
          f"emotion field ('{ids[7].split('_')[2]}')")
    (lists / "test.csv").write_text(f"{ids[6]};{ids[6].split('_')[2]}\n")
    fails(run(project, "prepare"), "lists/test.csv:1: malformed row")
    for p in (project / "data" / "raw" / "VideoFlash").iterdir():  # every video gone: nothing usable
        p.unlink()
    edit_params(project, prepare__split_file=None)
    fails(run(project, "prepare"), "data/raw: none of its 9 clips can be used; the first, ",
          ": video file not found: data/raw/VideoFlash/")
    assert prepared(project) == before
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fails(run(elsewhere, "prepare"), "params.yaml not found in", str(elsewhere))


def test_kill_before_each_rename_leaves_each_file_whole_and_a_mixed_pair_is_refused(project):
    """prepare writes two files, each atomically: a kill between the two renames leaves a new manifest beside the
    old class list; extract refuses that pair, naming both, until prepare reruns."""
    old = prepared(project)
    features = snapshot(project / "features")
    shutil.copytree(project / "data" / "raw", project / "raw2")
    for p in (project / "raw2").rglob("*_NEU_*"):  # the new dataset has no NEU: HAP, SAD become labels 0, 1
        p.unlink()
    edit_params(project, prepare__root="raw2")
    assert run(project, "prepare", pause_at="manifest.csv").returncode == -9
    assert prepared(project) == old  # killed before the first rename: both old
    assert run(project, "prepare", pause_at="classes.txt").returncode == -9
    now = prepared(project)
    assert now["data/classes.txt"] == old["data/classes.txt"] and now["data/manifest.csv"] != old["data/manifest.csv"]
    fails(run(project, "extract"), "data/manifest.csv:2: label ", "does not match data/classes.txt (3 classes)",
          "come from different prepare runs; run `dvc repro prepare` again")
    assert snapshot(project / "features") == features  # untouched
    ok(run(project, "prepare"))
    assert (project / "data" / "classes.txt").read_text() == "HAP\nSAD\n"
    assert not [p for p in (project / "data").iterdir() if p.name.startswith(".tmp-")]
    assert snapshot(project / "data")["manifest.csv"] == now["data/manifest.csv"]
    assert os.path.getsize(project / "data" / "manifest.csv") > 0
