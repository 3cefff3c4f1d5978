"""Faults of the extract stage: bad params, a manifest missing or not matching its class list, too many bad
clips, a kill part-way.

Every run is ``python stages/extract.py`` in a copy of a finished tiny project. A failing run names the key or
the file in one line, and the earlier extraction in ``features/`` (shards, ``index.h5``, ``stats.json``) stays
whole and usable: params and inputs are checked before anything is touched, and even a run that fails late
(too many rejects) or is killed removes the earlier index only once its own shards are ready to replace them.
(``tests/pipeline/test_extract_interrupt.py`` kills extraction at every rename and at random moments.)
"""
from __future__ import annotations

import csv
import json

import pytest

from pipeline.shards import IndexReader
from tests.faults.tiny import built, copy_of, edit_params, fails, kill_when, ok, run, snapshot, start

KEEP = ("index.h5", "stats.json")  # with the shards: the earlier extraction that must stay usable


@pytest.fixture
def project(tmp_path_factory, tmp_path):
    return copy_of(built(tmp_path_factory), tmp_path / "project")


def extraction(project):
    """The files of the extraction in features/: all but rejects.csv (a report of the last run) and the
    temporary files of a killed run (the next run removes them)."""
    return {k: v for k, v in snapshot(project / "features").items() if k != "rejects.csv" and not k.startswith(".tmp-")}


def assert_usable(project, expected):
    assert extraction(project) == expected
    IndexReader(project / "features" / "index.h5").verify()  # the index describes the shards beside it


@pytest.mark.parametrize("change, named", [
    ({"features__num_frames": 0}, "features.num_frames: must be >= 1, got 0"),
    ({"features__f_max": 9000.0}, "features.f_max: must be <= sample_rate / 2 (8000), got 9000"),
    ({"features__hop_length": 1024}, "features.hop_length: must be <= n_fft (512), got 1024"),
    ({"features__max_reject_fraction": 1.5}, "features.max_reject_fraction: must be <= 1, got 1.5"),
    ({"features__shard_sze": 4}, "features: unknown key(s) ['shard_sze']"),
    ({"features__workers": 1.5}, "features.workers: expected int, got float 1.5"),
    ({"feature": {"workers": 1}}, "unknown section(s) ['feature']"),
])
def test_bad_param_fails_naming_the_key_and_touches_nothing(project, change, named):
    before = snapshot(project / "features")
    edit_params(project, **change)
    fails(run(project, "extract"), "extract: error:", named)
    assert snapshot(project / "features") == before


def test_bad_part_fails_naming_it(project):
    before = snapshot(project / "features")
    fails(run(project, "extract", "--part", "3/2"), "part 3/2: need 0 <= i < N")
    fails(run(project, "extract", "--merge", "2"), "part 0/2 is not complete: missing features/parts/index-0-of-2.h5")
    assert snapshot(project / "features") == before


def test_bad_inputs_fail_naming_the_file_and_touch_nothing(project, tmp_path):
    before = snapshot(project / "features")
    manifest = project / "data" / "manifest.csv"
    text = manifest.read_text()
    manifest.unlink()
    fails(run(project, "extract"), "data/manifest.csv not found", "run `dvc repro prepare` first")
    rows = list(csv.reader(text.splitlines()))
    rows[1][1] = "x"  # the label column
    manifest.write_text("".join(",".join(r) + "\n" for r in rows))
    fails(run(project, "extract"), "data/manifest.csv:2: label 'x' is not an integer")
    manifest.write_text(text)
    (project / "data" / "classes.txt").write_text("NEU\nSAD\nHAP\n")  # another prepare run's order
    fails(run(project, "extract"), "does not match data/classes.txt (3 classes)", "run `dvc repro prepare` again")
    assert snapshot(project / "features") == before
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fails(run(elsewhere, "extract"), "params.yaml not found in", str(elsewhere))


def test_too_many_bad_clips_fail_and_leave_the_earlier_extraction_usable(project):
    before = extraction(project)
    for p in sorted((project / "data" / "raw" / "AudioWAV").iterdir())[:2]:
        p.write_bytes(b"")  # empty: only the extractor finds these
    fails(run(project, "extract"), "2 of 9 clips rejected (22.2%), above features.max_reject_fraction=0.05",
          "see features/rejects.csv")
    assert_usable(project, before)
    assert len((project / "features" / "rejects.csv").read_text().splitlines()) == 3  # the failed run's report


def test_kill_part_way_leaves_the_earlier_extraction_or_none_and_the_rerun_is_clean(project, tmp_path_factory):
    clean = snapshot(built(tmp_path_factory) / "features")
    features = project / "features"
    edit_params(project, features__short_side=24)  # a new extraction over the earlier one
    proc = start(project, "extract")  # killed while it writes its first shard
    kill_when(proc, lambda: any(p.name.startswith(".tmp-") and p.name.endswith(".tar") for p in features.iterdir()))
    assert_usable(project, {k: v for k, v in clean.items() if k != "rejects.csv"})  # the earlier one, whole
    ok(run(project, "extract"))
    new = snapshot(features)
    assert new != clean and not [k for k in new if k.startswith(".tmp-")]
    IndexReader(features / "index.h5").verify()

    edit_params(project, features__short_side=32)  # killed once its shards are in place, before its index
    assert run(project, "extract", pause_at="index.h5").returncode == -9
    assert not any((features / name).exists() for name in KEEP)  # no index beside shards it does not describe
    fails(run(project, "evaluate", "--method", "baseline"), "features/index.h5", "feature index not found",
          "run `dvc repro extract`", "`dvc checkout features`")
    ok(run(project, "extract"))
    assert without_timing(features) == without_timing(built(tmp_path_factory) / "features")  # a clean run's bytes


def without_timing(features) -> dict:
    """The snapshot of features/ with stats.json less its timings (the only part that varies between runs)."""
    out = snapshot(features)
    stats = json.loads((features / "stats.json").read_text())
    stats.pop("timing")
    out["stats.json"] = json.dumps(stats, sort_keys=True)
    return out
