"""pipeline.datasets.csv_manifest (dataset ``csv``) on CSV files naming empty clips (absent ones are flagged)."""
import os
from collections import Counter
from pathlib import Path

import pytest

from pipeline.datasets.csv_manifest import csv_manifest
from pipeline.manifest import ManifestError
from tests.pipeline.datasets.common import OPTS, by_id, touch


def test_csv_minimal_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    rows = [f"clips/{c}{i}.mp4,{c}" for c in ("dog", "cat") for i in range(10)]
    Path("data/m.csv").write_text("label,video\r\n" + "".join(f"{r.split(',')[1]},{r.split(',')[0]}\r\n" for r in rows))
    touch("data", *[r.split(",")[0] for r in rows])
    records, classes = csv_manifest("data/m.csv", **OPTS)
    assert classes == ["cat", "dog"] and len(records) == 20
    recs = by_id(records)
    assert recs["dog3"].video == recs["dog3"].audio == os.path.join("data", "clips", "dog3.mp4")
    assert recs["dog3"].group == "" and recs["dog3"].label == 1
    assert set(r.split for r in records) == {"train", "val", "test"}


def test_csv_split_audio_group_id_columns(tmp_path):
    lines = ["id,video,audio,label,split,group,extra"]
    for i in range(12):
        split = "test" if i % 4 == 0 else "train"
        lines.append(f"c{i},v/{i}.mp4,{tmp_path}/abs/a{i}.wav,{'ab'[i % 2]},{split},spk{i % 3},x")
        touch(tmp_path, f"v/{i}.mp4", f"abs/a{i}.wav")
    f = tmp_path / "m.csv"
    f.write_text("\n".join(lines) + "\n\n")
    records, classes = csv_manifest(str(f), **OPTS)
    recs = by_id(records)
    assert classes == ["a", "b"]
    assert recs["c1"].video == os.path.join(str(tmp_path), "v", "1.mp4") and recs["c1"].audio == f"{tmp_path}/abs/a1.wav"
    assert recs["c1"].group == "spk1"
    assert {i for i, r in recs.items() if r.split == "test"} == {"c0", "c4", "c8"}
    assert "val" in {r.split for r in records}


@pytest.mark.parametrize(
    "body, message",
    [
        ("video,label\na.mp4,x\n,y\n", r"m\.csv:3: missing video"),
        ("video,label\na.mp4,x\nb.mp4,\n", r"m\.csv:3: missing label"),
        ("video,label,split\na.mp4,x,train\nb.mp4,y,holdout\n", r"m\.csv:3: split 'holdout'"),
        ("video,label\na.mp4,x\nb.mp4\n", r"m\.csv:3: expected 2 fields"),
        ("video,label\nd/a.mp4,x\ne/a.mp4,x\n", r"m\.csv:3: duplicate clip id 'a' \(first at line 2\)"),
        ("path,label\na.mp4,x\n", r"m\.csv:1: header"),
    ],
)
def test_csv_bad_rows(tmp_path, body, message):
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(ManifestError, match=message):
        csv_manifest(str(tmp_path / "m.csv"), **OPTS)


def test_csv_with_split_lists(tmp_path):
    (tmp_path / "m.csv").write_text("video,label\n" + "".join(f"{c}{i}.mp4,{c}\n" for c in "xy" for i in range(6)) + "extra.mp4,x\n")
    touch(tmp_path, *[f"{c}{i}.mp4" for c in "xy" for i in range(6)], "extra.mp4")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.csv").write_text("".join(f"{c}{i},{c}\n" for c in "xy" for i in range(5)))
    (lists / "test.csv").write_text("x5,x\ny5,y\n")
    records, _ = csv_manifest(str(tmp_path / "m.csv"), split_file=str(lists), **OPTS)
    assert "extra" not in by_id(records) and Counter(r.split for r in records) == {"train": 9, "val": 1, "test": 2}
    (lists / "test.csv").write_text("x5,x\ny5,x\n")
    with pytest.raises(ManifestError, match=r"test\.csv:2: label 'x' of clip 'y5' disagrees"):
        csv_manifest(str(tmp_path / "m.csv"), split_file=str(lists), **OPTS)


def test_csv_labels_equal_up_to_case_are_refused_naming_both_spellings_and_files(tmp_path):
    """``neu`` and `` NEU `` would become two classes: refused, naming each spelling's first line and clip file."""
    (tmp_path / "m.csv").write_text("video,label\nclips/a.wav,neu\nclips/b.wav,hap\nclips/c.wav, NEU \nclips/d.wav,neu\n")
    touch(tmp_path, *[f"clips/{c}.wav" for c in "abcd"])
    with pytest.raises(ManifestError) as err:
        csv_manifest(str(tmp_path / "m.csv"), **OPTS)
    text = str(err.value)
    csv_path, clips = str(tmp_path / "m.csv"), os.path.join(str(tmp_path), "clips")
    assert f"'neu' (first at {csv_path}:2, clip file {clips}/a.wav) and 'NEU' (first at {csv_path}:4, clip file " \
           f"{clips}/c.wav)" in text and "'hap'" not in text
    # surrounding spaces alone are stripped, as every field's: one class
    (tmp_path / "m.csv").write_text("video,label\n" + "".join(f"clips/{c}.wav,{lab}\n" for c, lab in
                                                               zip("abcd", ("neu", " neu", "hap ", "hap"))))
    _, classes = csv_manifest(str(tmp_path / "m.csv"), **OPTS)
    assert classes == ["hap", "neu"]
