"""Faults of the synth stage, made as a user would: bad params, a bad output folder, a kill part-way.

Every run is ``python stages/synth.py`` in a project folder. Bad params and inputs must fail with one line
naming the key or the file, before anything is written: an existing ``data/raw`` stays as it was, and a
missing one (DVC deletes a stage's outputs before running it) stays missing, with no temporary folder
left. A kill leaves no ``data/raw`` that looks complete, and the rerun writes the bytes of a clean run.
"""
from __future__ import annotations

import shutil

import pytest

from tests.faults.tiny import built, copy_of, edit_params, fails, kill_when, ok, outputs, run, snapshot, start


@pytest.fixture
def project(tmp_path_factory, tmp_path):
    return copy_of(built(tmp_path_factory), tmp_path / "project")


@pytest.mark.parametrize("change, named", [
    ({"synth__num_classes": 7}, "synth.num_classes: must be <= 6 for layout cremad, got 7"),
    ({"synth__width": 63}, "synth.width: must be even"),
    ({"synth__workers": 0}, "synth.workers: must be >= 1, got 0"),
    ({"synth__layuot": "cremad"}, "synth: unknown key(s) ['layuot']"),
    ({"synth__layout": "audioset"}, "synth.layout: must be one of cremad | kinetics_sounds, got 'audioset'"),
    ({"synth__max_duration_s": 0.5}, "synth.max_duration_s: must be >= min_duration_s"),
    ({"synth__video_contrast": "high"}, "synth.video_contrast: expected float, got str 'high'"),
    ({"base__seed": -1}, "base.seed: must be >= 0, got -1"),
])
def test_bad_param_fails_naming_the_key_and_touches_nothing(project, change, named):
    before = outputs(project)
    edit_params(project, **change)
    fails(run(project, "synth"), "synth: error:", named)
    assert outputs(project) == before  # the earlier data/raw (a hand run) is as it was
    raw = project / "data" / "raw"
    for p in raw.iterdir():  # as under DVC, which deletes data/raw before running the stage: nothing appears
        (p.unlink() if p.is_file() else shutil.rmtree(p))
    raw.rmdir()
    fails(run(project, "synth"), named)
    assert sorted(p.name for p in (project / "data").iterdir()) == ["classes.txt", "inputs", "manifest.csv"]


def test_bad_output_folder_fails_naming_it(project, tmp_path):
    before = outputs(project)
    fails(run(project, "synth"), "data/raw: not empty; remove it first")  # a hand run over the dataset
    (project / "notadir").write_text("a file")
    fails(run(project, "synth", "--out", "notadir"), "notadir: not empty")
    assert outputs(project) == {**before, "notadir": outputs(project)["notadir"]}
    elsewhere = tmp_path / "elsewhere"  # run from another folder: no params.yaml there
    elsewhere.mkdir()
    fails(run(elsewhere, "synth"), "params.yaml not found in", str(elsewhere), "run the stages from the project folder")
    assert list(elsewhere.iterdir()) == []


def test_kill_part_way_leaves_no_dataset_and_the_rerun_writes_a_clean_one(project, tmp_path_factory):
    clean = snapshot(built(tmp_path_factory) / "data" / "raw")
    data = project / "data"
    shutil.rmtree(data / "raw")  # as DVC does before running the stage
    proc = start(project, "synth")  # killed once a few clips are written
    kill_when(proc, lambda: len(snapshot(data / ".tmp-raw")) >= 4)
    assert not (data / "raw").exists()  # never a half dataset under the final name
    ok(run(project, "synth"))
    assert snapshot(data / "raw") == clean and not (data / ".tmp-raw").exists()

    shutil.rmtree(data / "raw")  # killed just before the complete tree is renamed into place
    run(project, "synth", pause_at="raw")
    assert not (data / "raw").exists() and snapshot(data / ".tmp-raw") == clean
    ok(run(project, "synth"))
    assert snapshot(data / "raw") == clean and not (data / ".tmp-raw").exists()


def test_kill_with_worker_processes_leaves_none_behind(project):
    """synth.workers: 2 encodes in a process pool: the kill of the group ends them all (kill_when checks)."""
    shutil.rmtree(project / "data" / "raw")
    edit_params(project, synth__workers=2, synth__clips_per_class=6)
    proc = start(project, "synth")
    kill_when(proc, lambda: len(snapshot(project / "data" / ".tmp-raw")) >= 4)
    assert not (project / "data" / "raw").exists()
    ok(run(project, "synth"))
    assert len(snapshot(project / "data" / "raw")) == 3 * 6 * 2 + 1  # a FLV and a WAV per clip, synth_truth.csv
