"""Dataset adapters on trees of empty files (the extractor, not the adapter, opens them)."""
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pipeline.adapters import cremad, csv_manifest, kinetics_sounds, prepare_dataset
from pipeline.manifest import ManifestError, shard_key
from pipeline.splits import read_split_file

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "cremad"
OPTS = dict(val_fraction=0.1, seed=0, ratios=(0.8, 0.1, 0.1), group_disjoint=False)


def touch(root, *rels):
    for rel in rels:
        p = Path(root, rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()


def cremad_tree(root, ids):
    touch(root, *[f"VideoFlash/{i}.flv" for i in ids], *[f"AudioWAV/{i}.wav" for i in ids])


def by_id(records):
    return {r.clip_id: r for r in records}


# ---------------------------------------------------------------- CREMA-D


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
    only_audio = recs["1099_IEO_ANG_HI"]
    assert (only_audio.label, only_audio.problem) == (classes.index("ANG"), "")
    assert only_audio.video == os.path.join(str(tmp_path), "VideoFlash", "1099_IEO_ANG_HI.flv")
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
    assert "1090_DFA_ANG_XX" not in recs and "left out" in caplog.text
    assert recs["1077_ITS_SAD_LO"].split == "train"  # listed, files missing: kept for the extractor to reject
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


# ---------------------------------------------------------------- Kinetics-Sounds


def ks_names(cls, n, split=""):
    """``n`` clip paths of class ``cls``, two clips per YouTube id."""
    return [f"{cls}/yt{split}{cls[:2]}{i // 2:04d}_{i:06d}_{i + 10:06d}.mp4" for i in range(n)]


def test_kinetics_with_val_folder(tmp_path):
    for split, n in (("train", 6), ("valid", 2), ("test", 2)):
        touch(tmp_path, *[f"{split}/{p}" for c in ("playing drums", "barking") for p in ks_names(c, n, split)])
    (tmp_path / "test" / "singing").mkdir()  # a class folder with no clips still counts
    records, classes = kinetics_sounds(str(tmp_path), **OPTS)
    assert classes == ["barking", "playing drums", "singing"]
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


# ---------------------------------------------------------------- CSV


def test_csv_minimal_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    rows = [f"clips/{c}{i}.mp4,{c}" for c in ("dog", "cat") for i in range(10)]
    Path("data/m.csv").write_text("label,video\r\n" + "".join(f"{r.split(',')[1]},{r.split(',')[0]}\r\n" for r in rows))
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
        lines.append(f"c{i},v/{i}.mp4,/abs/a{i}.wav,{'ab'[i % 2]},{split},spk{i % 3},x")
    f = tmp_path / "m.csv"
    f.write_text("\n".join(lines) + "\n\n")
    records, classes = csv_manifest(str(f), **OPTS)
    recs = by_id(records)
    assert classes == ["a", "b"]
    assert recs["c1"].video == os.path.join(str(tmp_path), "v", "1.mp4") and recs["c1"].audio == "/abs/a1.wav"
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


# ---------------------------------------------------------------- dispatch


def test_prepare_dataset(tmp_path):
    ids = [f"10{a:02d}_DFA_{e}_XX" for a in range(1, 9) for e in ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")]
    cremad_tree(tmp_path, ids)
    kw = dict(dataset="cremad", root=str(tmp_path), split_file="", ratios=(0.7, 0.15, 0.15), val_fraction=0.1, group_disjoint=True, seed=5)
    records, classes = prepare_dataset(**kw)
    assert records == prepare_dataset(**kw)[0]
    order = ["train", "val", "test"]
    assert [(order.index(r.split), r.clip_id) for r in records] == sorted((order.index(r.split), r.clip_id) for r in records)
    where = {}
    for r in records:
        assert where.setdefault(r.group, r.split) == r.split
    with pytest.raises(ValueError, match="cremad, kinetics_sounds, csv"):
        prepare_dataset(**{**kw, "dataset": "audioset"})
    with pytest.raises(ValueError, match="ratios"):
        prepare_dataset(**{**kw, "ratios": (0.9, 0.0, 0.1)})


def test_shard_key_collision(tmp_path):
    assert shard_key("a.b c/d-e_f") == "a_b_c_d-e_f"
    touch(tmp_path, "train/x/clip.1.mp4", "train/x/clip_1.mp4", "test/x/t.mp4")
    with pytest.raises(ManifestError, match="collide"):
        prepare_dataset(dataset="kinetics_sounds", root=str(tmp_path), split_file=None, ratios=(0.8, 0.1, 0.1), val_fraction=0.1, group_disjoint=False, seed=0)


def test_csv_with_split_lists(tmp_path):
    (tmp_path / "m.csv").write_text("video,label\n" + "".join(f"{c}{i}.mp4,{c}\n" for c in "xy" for i in range(6)) + "extra.mp4,x\n")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.csv").write_text("".join(f"{c}{i},{c}\n" for c in "xy" for i in range(5)))
    (lists / "test.csv").write_text("x5,x\ny5,y\n")
    records, _ = csv_manifest(str(tmp_path / "m.csv"), split_file=str(lists), **OPTS)
    assert "extra" not in by_id(records) and Counter(r.split for r in records) == {"train": 9, "val": 1, "test": 2}
    (lists / "test.csv").write_text("x5,x\ny5,x\n")
    with pytest.raises(ManifestError, match=r"test\.csv:2: label 'x' of clip 'y5' disagrees"):
        csv_manifest(str(tmp_path / "m.csv"), split_file=str(lists), **OPTS)
