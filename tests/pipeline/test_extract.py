"""Extraction on generated CREMA-D- and Kinetics-Sounds-layout clips: format, index, determinism, rejects."""
from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from pipeline.datasets import prepare_dataset
from pipeline.extract import ExtractionError, clip_order, extract, merge_parts, plan_shards
from pipeline.features import FeatureConfig
from pipeline.manifest import ClipRecord, read_manifest, write_classes, write_manifest
from pipeline.shards import IndexReader
from tests.conftest import REPO, is_root
from train.checkpoint import dataset_fingerprint

CFG = FeatureConfig(num_frames=2, short_side=32, n_mels=32, n_fft=256, hop_length=128, duration=1.5)
SPLIT = dict(split_file=None, ratios=[0.5, 0.25, 0.25], val_fraction=0.2, group_disjoint=False, seed=0)


def prepare(root: Path, dataset: str, out: Path) -> tuple[Path, Path]:
    records, classes = prepare_dataset(dataset=dataset, root=str(root), **SPLIT)
    write_manifest(out / "manifest.csv", records)
    write_classes(out / "classes.txt", classes)
    return out / "manifest.csv", out / "classes.txt"


def run(manifest: Path, classes: Path, out: Path, **kw) -> dict:
    args = dict(config=CFG, shard_size=3, workers=1, max_reject_fraction=0.5) | kw
    return extract(manifest=manifest, classes=classes, out_dir=out, **args)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every shard and the index, by name."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".tar", ".h5")}


def samples_by_key(folder: Path) -> dict[str, dict[str, bytes]]:
    out = {}
    for url in sorted(glob.glob(str(folder / "*.tar"))):
        for s in wds.WebDataset(url, shardshuffle=False, empty_check=False):
            out[s["__key__"]] = {k: v for k, v in s.items() if not k.startswith("__")}
    return out


@pytest.mark.parametrize("dataset,fixture", [("cremad", "cremad_raw"), ("kinetics_sounds", "kinetics_raw")])
def test_extract_reads_back(dataset, fixture, request, tmp_path):
    root = request.getfixturevalue(fixture)
    manifest, classes = prepare(root, dataset, tmp_path)
    stats = run(manifest, classes, tmp_path / "features")
    index = IndexReader(tmp_path / "features" / "index.h5")
    n_clips = len(read_manifest(manifest))
    assert stats["rejects"]["count"] == 0 and len(index) == n_clips == stats["clips"]
    assert sum(stats["samples"].values()) == n_clips

    # vanilla WebDataset reads every sample, decoded
    urls = sorted(glob.glob(str(tmp_path / "features" / "*.tar")))
    seen = {}
    for s in wds.WebDataset(urls, shardshuffle=False).decode("pil"):
        seen[s["__key__"]] = s
    assert set(seen) == set(index.keys)
    for row, key in enumerate(index.keys):
        s = seen[key]
        assert s["mel.npy"].shape == CFG.mel_shape and s["mel.npy"].dtype == np.float16
        frames = [k for k in s if k.startswith("frame")]
        assert len(frames) == CFG.num_frames
        assert min(s["frame0.jpg"].size) == CFG.short_side
        assert s["cls"] == index.label[row]
        meta = s["json"]
        assert meta["clip_id"] == index.clip_ids[row] and meta["class_name"] == index.class_names[index.label[row]]
        assert meta["fps"] > 0 and meta["duration"] > 0 and Path(meta["video"]).exists()

    # every index offset points at the right bytes (checked against tarfile's own parse)
    for row, key in enumerate(index.keys):
        with tarfile.open(index.shard_path(row)) as tar:
            for j, member in enumerate(index.members):
                info = tar.getmember(f"{key}.{member}")
                assert (info.offset_data, info.size) == (index.offset[row, j], index.size[row, j])
                assert index.read_member(row, member) == tar.extractfile(info).read()
    assert index.feature_params == dataclasses.asdict(CFG) | {"shuffle_seed": 0}  # the clips' order: base.seed
    assert json.loads((tmp_path / "features" / "stats.json").read_text())["samples"] == stats["samples"]


def test_the_official_input_features_are_stored(cremad_raw, tmp_path):
    """spectrogram linear + frame_times seconds: mel.npy holds the n_fft / 2 + 1-bin log STFT magnitude of the clip's
    audio, the frames are those at 0 s and 1 s."""
    from pipeline.features import fit_duration, log_linear
    from pipeline.media import decode_audio, decode_frames

    cfg = dataclasses.replace(CFG, spectrogram="linear", frame_times="seconds")
    manifest, classes = prepare(cremad_raw, "cremad", tmp_path)
    run(manifest, classes, tmp_path / "f", config=cfg)
    index = IndexReader(tmp_path / "f" / "index.h5")
    assert index.feature_params["spectrogram"] == "linear" and index.feature_params["frame_times"] == "seconds"
    rec = {r.clip_id: r for r in read_manifest(manifest)}
    samples = samples_by_key(tmp_path / "f")
    for key in index.keys[:3]:
        meta = json.loads(samples[key]["json"])
        spec = np.load(io.BytesIO(samples[key]["mel.npy"]))
        assert spec.shape == cfg.mel_shape == (129, 1 + cfg.num_samples // 128)
        wave_ = fit_duration(decode_audio(rec[meta["clip_id"]].audio, cfg.sample_rate), cfg.num_samples)
        assert np.array_equal(spec, log_linear(wave_, cfg))
        frames, info = decode_frames(meta["video"], cfg.num_frames, "seconds")
        assert [samples[key][f"frame{i}.jpg"] for i in range(2)] == [cfg.encode_frame(f) for f in frames]
        assert info.fps > 1  # so the second frame (1 s) is not the first


def test_plain_webdataset_decode(cremad_raw, tmp_path):
    """`webdataset.WebDataset(url).decode()` with no handlers gives arrays, ints and dicts."""
    manifest, classes = prepare(cremad_raw, "cremad", tmp_path)
    run(manifest, classes, tmp_path / "f")
    url = sorted(glob.glob(str(tmp_path / "f" / "train-*.tar")))[0]
    s = next(iter(wds.WebDataset(url, shardshuffle=False).decode()))
    assert isinstance(s["mel.npy"], np.ndarray) and isinstance(s["cls"], int) and isinstance(s["json"], dict)
    assert Image.open(io.BytesIO(s["frame1.jpg"])).format == "JPEG"


def test_workers_give_identical_bytes(cremad_raw, tmp_path):
    manifest, classes = prepare(cremad_raw, "cremad", tmp_path)
    run(manifest, classes, tmp_path / "w1", workers=1)
    run(manifest, classes, tmp_path / "w2", workers=2)
    one, two = tree_bytes(tmp_path / "w1"), tree_bytes(tmp_path / "w2")
    assert len(one) > 3 and one == two
    assert (tmp_path / "w1" / "rejects.csv").read_bytes() == (tmp_path / "w2" / "rejects.csv").read_bytes()


def test_parts_merge_to_single_run_bytes(cremad_raw, tmp_path):
    manifest, classes = prepare(cremad_raw, "cremad", tmp_path)
    run(manifest, classes, tmp_path / "single", shard_size=2)
    plan = plan_shards(read_manifest(manifest), 2)
    for i in range(3):
        before = {t.name for t in (tmp_path / "parts").glob("*.tar")}
        run(manifest, classes, tmp_path / "parts", shard_size=2, part=f"{i}/3")
        made = {t.name for t in (tmp_path / "parts").glob("*.tar")} - before
        assert made == {f"{p.split}-{p.number:06d}.tar" for p in plan if p.number % 3 == i}  # part i: shards i, i+3, ...
    assert not (tmp_path / "parts" / "index.h5").exists()
    merge_parts(out_dir=tmp_path / "parts", num_parts=3, max_reject_fraction=0.5)
    assert tree_bytes(tmp_path / "single") == tree_bytes(tmp_path / "parts")
    assert not (tmp_path / "parts" / "parts").exists()


def test_part_extracts_only_its_shards(cremad_raw, tmp_path):
    manifest, classes = prepare(cremad_raw, "cremad", tmp_path)
    run(manifest, classes, tmp_path / "f", shard_size=2, part="1/2")
    written = sorted(p.name for p in (tmp_path / "f").glob("*.tar"))
    planned = [p for p in plan_shards(read_manifest(manifest), 2)]
    assert written == sorted(f"{p.split}-{p.number:06d}.tar" for p in planned if p.number % 2 == 1)
    with pytest.raises(ExtractionError, match="part 0/2 is not complete"):
        merge_parts(out_dir=tmp_path / "f", num_parts=2, max_reject_fraction=0.5)


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def test_bad_inputs_are_rejected_and_good_output_unchanged(cremad_raw, kinetics_raw, tmp_path):
    # CREMA-D: a clean run, then the same tree with bad clips added beside the good ones
    bad, clean_c = tmp_path / "bad_c", tmp_path / "clean_c"
    shutil.copytree(cremad_raw, bad)
    for d in ("mc", "mb", "mk", "mkb"):
        (tmp_path / d).mkdir()
    run(*prepare(bad, "cremad", tmp_path / "mc"), clean_c)
    good_id = sorted(p.stem for p in (bad / "VideoFlash").glob("*.flv"))[0]
    flv, wav = (bad / "VideoFlash" / f"{good_id}.flv").read_bytes(), (bad / "AudioWAV" / f"{good_id}.wav").read_bytes()

    def add(clip_id, video=flv, audio=wav):
        if video is not None:
            (bad / "VideoFlash" / f"{clip_id}.flv").write_bytes(video)
        if audio is not None:
            (bad / "AudioWAV" / f"{clip_id}.wav").write_bytes(audio)

    add("1090_DFA_NEU_XX", video=flv[: len(flv) // 10])  # truncated video
    add("1090_IEO_NEU_XX", video=b"FLV\x01" + bytes(range(256)) * 8)  # corrupt video
    add("1090_WSI_NEU_XX", video=flv[:200])  # cut to its header: decord raises DECORDError, not RuntimeError
    add("1090_TIE_NEU_XX", audio=None)  # missing WAV
    add("1090_IOM_NEU_XX", audio=b"")  # zero-length WAV file
    add("1090_IWW_NEU_XX", audio=None)
    _write_wav(bad / "AudioWAV" / "1090_IWW_NEU_XX.wav", np.zeros(16000))  # silent audio
    add("1090_TAI_NEU_XX", audio=None)
    _write_wav(bad / "AudioWAV" / "1090_TAI_NEU_XX.wav", np.zeros(0))  # WAV with no samples
    add("1090_MTI_XYZ_XX")  # unknown label
    add("1090_IWL_NEU_XX", audio=None)
    (bad / "AudioWAV" / "1090_IWL_NEU_XX.wav").mkdir()  # unreadable: a folder where the file should be
    add("1090_ITH_NEU_XX", video=None)  # missing video
    expected = {
        "1090_DFA_NEU_XX": "truncated",
        "1090_IEO_NEU_XX": "video cannot be decoded",
        "1090_WSI_NEU_XX": "video cannot be decoded",
        "1090_TIE_NEU_XX": "audio file not found",
        "1090_IOM_NEU_XX": "audio file is empty",
        "1090_IWW_NEU_XX": "audio is silent",
        "1090_TAI_NEU_XX": "audio has zero length",
        "1090_MTI_XYZ_XX": "unknown label 'XYZ'",
        "1090_IWL_NEU_XX": "audio path is not a regular file",
        "1090_ITH_NEU_XX": "video file not found",
    }
    if not is_root():  # root reads any file, so permissions can only be tested as a user
        add("1090_ITS_NEU_XX")
        (bad / "AudioWAV" / "1090_ITS_NEU_XX.wav").chmod(0)
        expected["1090_ITS_NEU_XX"] = "permission denied"
    stats = run(*prepare(bad, "cremad", tmp_path / "mb"), tmp_path / "out_c", max_reject_fraction=0.9)
    rejects = {r["clip_id"]: r for r in _csv(tmp_path / "out_c" / "rejects.csv")}
    assert set(rejects) == set(expected)
    for clip_id, reason in expected.items():
        assert reason in rejects[clip_id]["reason"], (clip_id, rejects[clip_id])
        assert clip_id in rejects[clip_id]["file"] or "XYZ" in clip_id
    assert stats["rejects"]["count"] == len(expected)
    _assert_same_samples(clean_c, tmp_path / "out_c")

    # Kinetics-Sounds: an MP4 without an audio track, a truncated MP4
    bad_k, clean_k = tmp_path / "bad_k", tmp_path / "clean_k"
    shutil.copytree(kinetics_raw, bad_k)
    run(*prepare(bad_k, "kinetics_sounds", tmp_path / "mk"), clean_k)
    mp4 = sorted(bad_k.glob("train/*/*.mp4"))[0]
    cls_dir = mp4.parent
    from pipeline.media import ffmpeg_exe
    import subprocess

    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(mp4), "-an", "-c:v", "copy",
                    str(cls_dir / "noaudio0000_000000_000010.mp4")], check=True)
    (cls_dir / "truncated00_000000_000010.mp4").write_bytes(mp4.read_bytes()[:2000])
    run(*prepare(bad_k, "kinetics_sounds", tmp_path / "mkb"), tmp_path / "out_k", max_reject_fraction=0.9)
    rejects = {r["clip_id"]: r["reason"] for r in _csv(tmp_path / "out_k" / "rejects.csv")}
    assert rejects.keys() == {"noaudio0000_000000_000010", "truncated00_000000_000010"}
    assert rejects["noaudio0000_000000_000010"] == "no audio track"
    assert "cannot be decoded" in rejects["truncated00_000000_000010"]
    _assert_same_samples(clean_k, tmp_path / "out_k")


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_samples(clean: Path, other: Path) -> None:
    """Every sample of the clean run is in the other run with the same features and metadata.

    The seeded split is recomputed over the larger clip list, so only ``split`` may differ.
    """
    a, b = samples_by_key(clean), samples_by_key(other)
    assert a and a.keys() <= b.keys()
    for key, members in a.items():
        meta_a, meta_b = json.loads(members.pop("json")), json.loads(b[key].pop("json"))
        meta_a.pop("split"), meta_b.pop("split")
        assert meta_a == meta_b and members == b[key], key


def test_too_many_rejects_fail_and_write_nothing(cremad_raw, tmp_path):
    bad = tmp_path / "raw"
    shutil.copytree(cremad_raw, bad)
    for p in sorted((bad / "AudioWAV").glob("*.wav"))[:3]:
        p.unlink()
    out = tmp_path / "features"
    with pytest.raises(ExtractionError, match=r"3 of 12 clips rejected .* features.max_reject_fraction=0.1: see .*rejects.csv"):
        run(*prepare(bad, "cremad", tmp_path), out, max_reject_fraction=0.1)
    assert len(_csv(out / "rejects.csv")) == 3
    assert sorted(p.name for p in out.iterdir()) == ["rejects.csv"]  # no shard, no index, no temporary file


def test_stale_temporary_and_shards_are_removed(cremad_raw, tmp_path):
    manifest, classes = prepare(cremad_raw, "cremad", tmp_path)
    out = tmp_path / "features"
    out.mkdir()
    (out / ".tmp-train-000000.tar").write_bytes(b"half a shard")
    (out / "train-000099.tar").write_bytes(b"from a bigger dataset")
    run(manifest, classes, out)
    names = {p.name for p in out.iterdir()}
    assert ".tmp-train-000000.tar" not in names and "train-000099.tar" not in names
    assert "train-000000.tar" in names


def test_a_part_leaves_other_parts_temporary_files_alone(cremad_raw, tmp_path):
    manifest, classes = prepare(cremad_raw, "cremad", tmp_path)
    out = tmp_path / "features"
    out.mkdir()
    (out / ".tmp-train-000000.tar").write_bytes(b"part 0 is writing this right now")  # shard 0: part 0's
    (out / ".tmp-train-000001.tar").write_bytes(b"left by a killed run of part 1")
    run(manifest, classes, out, shard_size=2, part="1/2")
    assert (out / ".tmp-train-000000.tar").exists() and not (out / ".tmp-train-000001.tar").exists()
    assert (out / "train-000001.tar").exists() and not (out / "train-000000.tar").exists()


# -- the clips' order in the shards: a seeded shuffle per split ------------------------------------

def index_order(folder: Path, split: str) -> list[str]:
    """The split's clip ids as the shards hold them (shard number, then position)."""
    index = IndexReader(folder / "index.h5")
    rows = index.indices(split)
    rows = rows[np.lexsort((index.position[rows], index.shard_number[index.shard[rows]]))]
    return [str(c) for c in index.clip_ids[rows]]


def test_clip_order_is_a_seeded_shuffle_of_the_clip_ids():
    ids = [f"{1001 + a}_S{s:02d}_NEU_XX" for a in range(20) for s in range(10)]  # sorted: by actor, as CREMA-D's
    recs = [ClipRecord(c, 0, "NEU", f"{c}.flv", f"{c}.wav", c[:4], "train") for c in ids]
    order = [r.clip_id for r in clip_order(recs, 0)]
    assert sorted(order) == ids and order != ids
    assert [r.clip_id for r in clip_order(recs, 1)] != order  # another seed, another order
    assert [r.clip_id for r in clip_order(recs, None)] == ids  # None: manifest order
    shuffled = recs[:]
    random.Random(5).shuffle(shuffled)
    assert [r.clip_id for r in clip_order(shuffled, 0)] == order  # the manifest's row order does not matter
    assert [r.clip_id for r in clip_order(recs[::2], 0)] == [c for c in order if c in set(ids[::2])]  # nor other clips
    # each shard of 20 is a sample of the actors, not 2 actors as in manifest order
    plans = [p for p in plan_shards(recs, 20, 0) if p.split == "train"]
    assert min(len({r.group for r in p.records}) for p in plans) >= 8
    assert max(len({r.group for r in p.records}) for p in plan_shards(recs, 20, None)) == 2


def test_clip_order_does_not_depend_on_the_process(tmp_path):
    """The same order in a fresh interpreter with another hash seed (no use of Python's salted ``hash``)."""
    code = ("from pipeline.extract import clip_order; from pipeline.manifest import ClipRecord; "
            "print(','.join(r.clip_id for r in clip_order([ClipRecord(str(i), 0, 'a', 'v', 'a', '', 'train') "
            "for i in range(50)], 7)))")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=str(h))).stdout.strip() for h in (1, 2)]
    here = ",".join(r.clip_id for r in clip_order([ClipRecord(str(i), 0, "a", "v", "a", "", "train")
                                                   for i in range(50)], 7))
    assert runs[0] == runs[1] == here


def test_shards_hold_the_seeded_order_for_any_workers_and_parts(cremad_raw, tmp_path):
    manifest, classes = prepare(cremad_raw, "cremad", tmp_path)
    records = read_manifest(manifest)
    run(manifest, classes, tmp_path / "w1", workers=1, shard_size=2, shuffle_seed=3)
    run(manifest, classes, tmp_path / "w2", workers=2, shard_size=2, shuffle_seed=3)
    for i in range(2):
        run(manifest, classes, tmp_path / "parts", workers=2, shard_size=2, shuffle_seed=3, part=f"{i}/2")
    merge_parts(out_dir=tmp_path / "parts", num_parts=2, max_reject_fraction=0.5)
    for split in ("train", "val", "test"):
        expected = [r.clip_id for r in clip_order([r for r in records if r.split == split], 3)]
        for folder in ("w1", "w2", "parts"):
            assert index_order(tmp_path / folder, split) == expected, (folder, split)
    assert tree_bytes(tmp_path / "w1") == tree_bytes(tmp_path / "w2") == tree_bytes(tmp_path / "parts")
    train = [r.clip_id for r in records if r.split == "train"]
    assert index_order(tmp_path / "w1", "train") != train  # not the manifest's order
    run(manifest, classes, tmp_path / "manifest_order", shard_size=2, shuffle_seed=None)
    assert index_order(tmp_path / "manifest_order", "train") == train


def test_the_order_is_in_the_index_and_its_fingerprint(cremad_raw, tmp_path):
    manifest, classes = prepare(cremad_raw, "cremad", tmp_path)
    for seed in (0, 1):
        run(manifest, classes, tmp_path / f"s{seed}", shuffle_seed=seed)
    a, b = IndexReader(tmp_path / "s0" / "index.h5"), IndexReader(tmp_path / "s1" / "index.h5")
    assert (a.feature_params["shuffle_seed"], b.feature_params["shuffle_seed"]) == (0, 1)
    assert dataset_fingerprint(a) != dataset_fingerprint(b)
    assert sorted(a.clip_ids) == sorted(b.clip_ids)  # the same samples, in other shards
    # parts extracted with other seeds are not merged
    out = tmp_path / "mixed"
    run(manifest, classes, out, shard_size=2, shuffle_seed=0, part="0/2")
    run(manifest, classes, out, shard_size=2, shuffle_seed=1, part="1/2")
    with pytest.raises(ExtractionError, match="other features"):
        merge_parts(out_dir=out, num_parts=2, max_reject_fraction=0.5)


def test_the_stage_orders_the_clips_by_base_seed(cremad_raw, tmp_path):
    manifest, classes = prepare(cremad_raw, "cremad", tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("base:\n  seed: 5\nfeatures:\n  shard_size: 2\n  workers: 1\n  short_side: 32\n")
    subprocess.run([sys.executable, "-m", "stages.extract", "--params", str(params), "--manifest", str(manifest),
                    "--classes", str(classes), "--out", str(tmp_path / "f")], cwd=REPO, check=True, capture_output=True)
    records = read_manifest(manifest)
    assert IndexReader(tmp_path / "f" / "index.h5").feature_params["shuffle_seed"] == 5
    assert index_order(tmp_path / "f", "train") == [r.clip_id for r in clip_order(
        [r for r in records if r.split == "train"], 5)]
