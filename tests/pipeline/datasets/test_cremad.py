"""pipeline.datasets.cremad on trees of empty files (the extractor, not the adapter, opens them)."""
import os
import shutil
from collections import Counter

import pytest

from pipeline.datasets.cremad import cremad
from pipeline.manifest import ManifestError
from pipeline.splits import read_split_file
from tests.conftest import REFERENCE_CREMAD as REFERENCE
from tests.pipeline.datasets.common import OPTS, by_id, cremad_tree, touch


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"CREMA-D reference lists not found at {REFERENCE}")
def test_cremad_reference_lists(tmp_path):
    train, test = read_split_file(REFERENCE / "train.csv"), read_split_file(REFERENCE / "test.csv")
    assert (len(train), len(test)) == (6698, 744)
    lists = tmp_path / "lists"
    lists.mkdir()
    for name in ("train.csv", "test.csv", "stat.csv"):
        shutil.copy(REFERENCE / name, lists / name)
    root = tmp_path / "cremad"
    cremad_tree(root, [*train, *test])

    records, classes = cremad(str(root), split_file=str(lists), **OPTS)
    assert classes == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    assert len(records) == 7442
    recs = by_id(records)
    assert all(not r.problem and r.label == classes.index(r.class_name) for r in records)
    assert {i: r.class_name for i, r in recs.items()} == {**train, **test}
    assert {i for i, r in recs.items() if r.split == "test"} == set(test)
    val = {i for i, r in recs.items() if r.split == "val"}
    assert {i for i, r in recs.items() if r.split == "train"} | val == set(train)
    # stratified: each class gives ~10% of its train clips to val
    per_class = Counter(train.values())
    val_class = Counter(recs[i].class_name for i in val)
    for c, n in per_class.items():
        assert abs(val_class[c] - 0.1 * n) < 1, (c, val_class[c], n)
    assert {r.group for r in records} == {i[:4] for i in recs} and len({r.group for r in records}) == 91
    assert recs["1001_DFA_ANG_XX"].video == str(root / "VideoFlash" / "1001_DFA_ANG_XX.flv")
    assert recs["1001_DFA_ANG_XX"].audio == str(root / "AudioWAV" / "1001_DFA_ANG_XX.wav")
    assert [r.split for r in records] == sorted((r.split for r in records), key=["train", "val", "test"].index)

    again, _ = cremad(str(root), split_file=str(lists), **OPTS)
    assert again == records
    other, _ = cremad(str(root), split_file=str(lists), **{**OPTS, "seed": 1})
    assert {r.clip_id for r in other if r.split == "val"} != val

    gd, _ = cremad(str(root), split_file=str(lists), **{**OPTS, "group_disjoint": True})
    val_actors = {r.group for r in gd if r.split == "val"}
    assert val_actors and not val_actors & {r.group for r in gd if r.split == "train"}


def test_cremad_bad_names_get_problem(tmp_path):
    good = [f"10{a:02d}_DFA_{e}_XX" for a in range(1, 6) for e in ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")]
    cremad_tree(tmp_path, good + ["1001_DFA_XYZ_XX", "badname"])
    touch(tmp_path, "AudioWAV/1099_IEO_ANG_HI.wav", "VideoFlash/._1001_DFA_ANG_XX.flv")  # no video; a hidden file
    records, classes = cremad(str(tmp_path), **OPTS)
    recs = by_id(records)
    assert len(records) == 33 and "._1001_DFA_ANG_XX" not in recs
    assert recs["1001_DFA_XYZ_XX"].label == -1 and recs["1001_DFA_XYZ_XX"].problem == "unknown label 'XYZ'"
    assert recs["badname"].label == -1 and "does not match <actor>_<sentence>_<emotion>_<level>" in recs["badname"].problem
    only_audio = recs["1099_IEO_ANG_HI"]  # flagged by prepare, label kept (the seeded split does not depend on it)
    video = os.path.join(str(tmp_path), "VideoFlash", "1099_IEO_ANG_HI.flv")
    assert (only_audio.label, only_audio.problem) == (classes.index("ANG"), f"video file not found: {video}")
    assert only_audio.video == video
    assert {r.split for r in records} == {"train", "val", "test"}


def test_cremad_split_lists(tmp_path, caplog):
    ids = [f"10{a:02d}_DFA_{e}_XX" for a in range(1, 5) for e in ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")]
    root, lists = tmp_path / "root", tmp_path / "lists"
    cremad_tree(root, ids + ["1090_DFA_ANG_XX"])  # on disk, not listed: left out
    lists.mkdir()
    (lists / "train.csv").write_text("".join(f"{i},{i.split('_')[2]}\n" for i in ids[:18]) + "1077_ITS_SAD_LO,SAD\n")
    (lists / "val.csv").write_text("".join(f"{i},{i.split('_')[2]}\n" for i in ids[18:21]))
    (lists / "test.csv").write_text("".join(f"{i},{i.split('_')[2]}\n" for i in ids[21:]))
    records, _ = cremad(str(root), split_file=str(lists), **OPTS)
    recs = by_id(records)
    assert "1090_DFA_ANG_XX" not in recs
    assert (f"1 of the 25 clips found in {root} are in none of the split lists of {lists}, so they are left out "
            "(the first: 1090_DFA_ANG_XX).") in caplog.text  # a sentence naming the dataset
    assert recs["1077_ITS_SAD_LO"].split == "train"  # listed, files missing: kept and flagged for the extractor
    assert recs["1077_ITS_SAD_LO"].problem.startswith("video and audio files not found: ")
    assert Counter(r.split for r in records) == {"train": 19, "val": 3, "test": 3}

    (lists / "test.csv").write_text(f"{ids[21]},{ids[21].split('_')[2]}\r\n{ids[22]},ANG\r\n")
    with pytest.raises(ManifestError, match=rf"test\.csv:2: label 'ANG' of clip '{ids[22]}' disagrees"):
        cremad(str(root), split_file=str(lists), **OPTS)


def test_cremad_stat_order_and_missing_root(tmp_path):
    ids = [f"10{a:02d}_DFA_{e}_XX" for a in range(1, 5) for e in ("NEU", "ANG")]
    cremad_tree(tmp_path / "root", ids)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.csv").write_text("".join(f"{i},{i.split('_')[2]}\n" for i in ids[:6]))
    (lists / "test.csv").write_text("".join(f"{i},{i.split('_')[2]}\n" for i in ids[6:]))
    (lists / "stat.csv").write_bytes(b"\xef\xbb\xbfANG\r\nNEU\r\n")
    records, classes = cremad(str(tmp_path / "root"), split_file=str(lists), **OPTS)
    assert classes == ["ANG", "NEU"] and all(r.label == classes.index(r.class_name) for r in records)
    with pytest.raises(ManifestError, match="nope"):
        cremad(str(tmp_path / "nope"), **OPTS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="empty"):
        cremad(str(tmp_path / "empty"), **OPTS)
