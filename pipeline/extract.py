"""Extraction: a manifest of raw clips -> WebDataset shards, ``index.h5``, ``stats.json``, ``rejects.csv``.

- Shard plan: per split, the clips in a seeded random order (``shuffle_seed``, the stage's
  ``base.seed``; :func:`clip_order`), cut into runs of ``shard_size``; shard NNNNNN of a split
  holds the usable clips of run NNNNNN, so a shard is a random sample of its split (CREMA-D's clip
  ids start with the actor: in manifest order a shard held a handful of actors). The plan depends
  on the manifest and the seed alone, so a clip's shard never depends on other clips being
  rejected, on the number of workers, on ``part``, or on which machine extracts it. The seed is
  stored in ``index.h5`` (``feature_params["shuffle_seed"]``), so it enters the feature set's
  fingerprint; ``shuffle_seed=None`` keeps the manifest's order (the layout before 2026-12, kept
  for ``benchmarks/shard_mix.py``'s baseline).
- Parallel: clips are processed by a process pool (``workers``) and written by the parent
  in plan order, so the bytes do not depend on the number of workers or on timing.
- Partitionable: ``part=(i, n)`` extracts exactly the shards whose number is congruent to
  i mod n (in every split) and writes ``parts/index-i-of-n.h5`` (+ rejects, stats);
  :func:`merge_parts` then writes the same ``index.h5`` as a single run.
- Nothing half-written: shards and index are written under ``.tmp-`` names and renamed
  when complete; a single run renames its shards only once the reject check passed. An earlier
  extraction in the folder stays whole and usable until then: its index and stats are removed only
  just before the first shard is renamed (a failed run, too many rejects included, leaves it as it
  was, but for ``rejects.csv``, which reports the failed run).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from pipeline import features as F
from pipeline.fileio import atomic_path, write_json_strict
from pipeline.manifest import SPLITS, ClipRecord, ManifestError, read_classes, read_manifest, shard_key
from pipeline.media import MediaError, decode_audio, decode_frames
from pipeline.shards import IndexReader, IndexRow, ShardEntry, ShardWriter, shard_name, write_index

SILENCE_PEAK = 1e-4  # audio whose absolute peak is below this (-80 dBFS) is rejected as silent
MIN_VIDEO_AUDIO_RATIO = 0.5  # video shorter than this share of the audio is rejected as truncated
SHARD_RE = re.compile(r"^(train|val|test)-\d{6}\.tar$")


class ExtractionError(RuntimeError):
    """Extraction cannot finish: too many rejects, missing parts, inconsistent inputs."""


@dataclasses.dataclass(frozen=True)
class Reject:
    """A clip left out, with the file at fault and why."""

    clip_id: str
    split: str
    file: str
    reason: str


@dataclasses.dataclass(frozen=True)
class ClipFeatures:
    """The encoded members of one sample, in tar order."""

    key: str
    members: tuple[tuple[str, bytes], ...]


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    split: str
    number: int
    records: tuple[ClipRecord, ...]


def clip_order(records: Sequence[ClipRecord], shuffle_seed: int | None) -> list[ClipRecord]:
    """``records`` in the seeded random order of the shard plan; ``shuffle_seed`` None: as given (manifest order).

    Each clip's sort key is a hash of the seed and its clip id, so the order depends on the seed and
    the clip ids alone: not on the manifest's row order, and two clips keep their relative order
    when others are added or removed. Equal clip ids (not expected) keep their manifest order.
    """
    if shuffle_seed is None:
        return list(records)
    return sorted(records, key=lambda r: hashlib.blake2b(f"{shuffle_seed}:{r.clip_id}".encode(), digest_size=16,
                                                         person=b"avremix-shards").digest())


def plan_shards(records: Sequence[ClipRecord], shard_size: int, shuffle_seed: int | None = 0) -> list[ShardPlan]:
    """Cut each split's records, in :func:`clip_order` for ``shuffle_seed`` (default 0, ``base.seed``'s
    default), into shards of ``shard_size`` clips."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    plans = []
    for split in SPLITS:
        recs = clip_order([r for r in records if r.split == split], shuffle_seed)
        for number, start in enumerate(range(0, len(recs), shard_size)):
            plans.append(ShardPlan(split, number, tuple(recs[start : start + shard_size])))
    return plans


def parse_part(spec: str | Sequence[int]) -> tuple[int, int]:
    """``"2/8"`` -> (2, 8); checks 0 <= i < n."""
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
        if not m:
            raise ValueError(f"part must look like i/N (e.g. 0/4), got {spec!r}")
        spec = (int(m.group(1)), int(m.group(2)))
    i, n = spec
    if not 0 <= i < n:
        raise ValueError(f"part {i}/{n}: need 0 <= i < N")
    return i, n


def process_clip(rec: ClipRecord, cfg: F.FeatureConfig, num_classes: int) -> ClipFeatures | Reject:
    """Decode, check and encode one clip; a bad clip becomes a :class:`Reject`, never an exception."""
    if rec.problem:  # found by prepare: the file it names
        return Reject(rec.clip_id, rec.split, rec.audio if rec.problem.startswith("audio") else rec.video, rec.problem)
    if not 0 <= rec.label < num_classes:
        return Reject(rec.clip_id, rec.split, rec.video, f"unknown label '{rec.class_name}'")
    try:
        wave = decode_audio(rec.audio, cfg.sample_rate)  # [S]
    except (MediaError, OSError) as e:
        return Reject(rec.clip_id, rec.split, rec.audio, str(e))
    if float(np.max(np.abs(wave))) < SILENCE_PEAK:
        return Reject(rec.clip_id, rec.split, rec.audio, f"audio is silent (peak below {SILENCE_PEAK})")
    audio_s = wave.size / cfg.sample_rate
    try:
        frames, info = decode_frames(rec.video, cfg.num_frames, cfg.frame_times)  # [T, H, W, 3]
    except (MediaError, OSError) as e:
        return Reject(rec.clip_id, rec.split, rec.video, str(e))
    if info.duration_s < MIN_VIDEO_AUDIO_RATIO * audio_s:
        return Reject(rec.clip_id, rec.split, rec.video,
                      f"video truncated: {info.duration_s:.2f} s of video for {audio_s:.2f} s of audio")
    mel = F.spectrogram(F.fit_duration(wave, cfg.num_samples), cfg)  # [F, L] float16
    meta = {
        "clip_id": rec.clip_id, "class_name": rec.class_name, "label": rec.label, "split": rec.split,
        "group": rec.group, "video": rec.video, "audio": rec.audio,
        "duration": round(info.duration_s, 4), "audio_duration": round(audio_s, 4),
        "fps": round(info.fps, 4), "width": info.width, "height": info.height,
    }
    members = [
        ("json", json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()),
        ("cls", str(rec.label).encode()),
        ("mel.npy", F.encode_npy(mel)),
    ]
    frame_members = cfg.members[len(members):]  # frame<i>.jpg (JPEG) or frame<i>.npy (raw uint8)
    members += [(m, cfg.encode_frame(frame)) for m, frame in zip(frame_members, frames)]
    return ClipFeatures(shard_key(rec.clip_id), tuple(members))


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _map(fn, items: list, workers: int):
    """Ordered map over ``items``: in-process for one worker, else a forked process pool."""
    if workers <= 1:
        _init_worker()
        yield from map(fn, items)
        return
    with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap(fn, items, chunksize=2)


def _clean_temporary(out_dir: Path, own: set[str], single: bool) -> None:
    """Remove the ``.tmp-`` leftovers of a killed run of these shards (``own``); a single run removes every
    ``.tmp-`` file, a part leaves other parts' alone, since they may be writing into the same folder right now."""
    for p in out_dir.iterdir():
        tmp_of = p.name.removeprefix(".tmp-") if p.name.startswith(".tmp-") else None
        if tmp_of is not None and (single or tmp_of in own):
            p.unlink()


def _remove_previous(out_dir: Path, own: set[str], single: bool) -> None:
    """Just before this run's shards are renamed into place: remove the earlier run's ``index.h5`` and
    ``stats.json`` (they describe shards about to be replaced, so a run killed from here on must not leave them
    beside shards they do not describe); a single run also removes shards not in its plan and the ``parts/`` of
    an earlier partitioned run. Until then (params, inputs, every clip and the reject check) the earlier
    extraction stays whole and usable."""
    for name in ("index.h5", "stats.json"):
        (out_dir / name).unlink(missing_ok=True)
    if single and (out_dir / "parts").is_dir():
        shutil.rmtree(out_dir / "parts")
    for p in out_dir.iterdir():
        if single and SHARD_RE.match(p.name) and p.name not in own:
            p.unlink()


def _reject_order(r: Reject) -> tuple[int, str]:
    return SPLITS.index(r.split) if r.split in SPLITS else len(SPLITS), r.clip_id


def _write_rejects(path: Path, rejects: Sequence[Reject]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow([fl.name for fl in dataclasses.fields(Reject)])
        w.writerows(dataclasses.astuple(r) for r in rejects)


def _read_rejects(path: Path) -> list[Reject]:
    with open(path, newline="", encoding="utf-8") as f:
        return [Reject(**row) for row in csv.DictReader(f)]


def _write_json(path: Path, obj: dict) -> None:
    write_json_strict(path, obj, indent=2, sort_keys=True)


def _check_rejects(n_rejects: int, n_clips: int, max_fraction: float, rejects_path: Path) -> None:
    frac = n_rejects / max(n_clips, 1)
    if frac > max_fraction:
        raise ExtractionError(
            f"{n_rejects} of {n_clips} clips rejected ({frac:.1%}), above features.max_reject_fraction="
            f"{max_fraction}: see {rejects_path} for each file and reason"
        )


def read_inputs(manifest: str | os.PathLike, classes: str | os.PathLike) -> tuple[list[ClipRecord], list[str]]:
    """The manifest and class list, checked to be a pair written by one ``prepare`` run; else a ManifestError
    (or FileNotFoundError) naming the file and saying to rerun prepare."""
    for path in (manifest, classes):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} not found (in {Path.cwd()}): run `dvc repro prepare` first, or "
                                    f"`dvc checkout prepare` to restore it")
    records, class_names = read_manifest(manifest), read_classes(classes)
    redo = "run `dvc repro prepare` again"
    if not records:
        raise ManifestError(f"{manifest}: no clips: {redo}")
    if not class_names:
        raise ManifestError(f"{classes}: no classes: {redo}")
    for n, r in enumerate(records, start=2):
        if r.split not in SPLITS:
            raise ManifestError(f"{manifest}:{n}: split {r.split!r} is not one of {', '.join(SPLITS)}: {redo}")
        if r.label >= len(class_names) or r.label < -1 or (r.label >= 0 and class_names[r.label] != r.class_name):
            raise ManifestError(f"{manifest}:{n}: label {r.label} ({r.class_name!r}) does not match {classes} "
                                f"({len(class_names)} classes): the two come from different prepare runs; {redo}")
    return records, class_names


def extract(
    *,
    manifest: str | os.PathLike,
    classes: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: F.FeatureConfig,
    shard_size: int,
    workers: int,
    max_reject_fraction: float,
    part: str | tuple[int, int] = (0, 1),
    shuffle_seed: int | None = 0,
) -> dict:
    """Extract the clips of ``manifest`` into shards under ``out_dir``; return the stats.

    ``shuffle_seed``: the seed of the clips' order in the shards (the stage passes ``base.seed``; None:
    manifest order); stored in the index beside the feature params.

    With ``part=(i, n)``, n > 1, only the shards numbered i mod n are extracted and the
    index, rejects and stats go to ``out_dir/parts/``; :func:`merge_parts` finishes.
    """
    i, n = parse_part(part)
    records, class_names = read_inputs(manifest, classes)  # every check before the first file is touched
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = [p for p in plan_shards(records, shard_size, shuffle_seed) if p.number % n == i]
    own = {shard_name(p.split, p.number) for p in plans}
    _clean_temporary(out_dir, own, single=n == 1)
    items = [rec for p in plans for rec in p.records]
    fn = functools.partial(process_clip, cfg=config, num_classes=len(class_names))
    F.spectrogram(np.zeros(config.num_samples, np.float32), config)  # import torch(audio) once, before forking
    rows, shards, rejects, writers = [], [], [], []
    start = time.perf_counter()
    results = _map(fn, items, workers)
    try:
        with tqdm(total=len(items), unit="clip", desc=f"extract {i}/{n}" if n > 1 else "extract") as bar:
            for plan in plans:
                writer = ShardWriter(out_dir / shard_name(plan.split, plan.number))
                writers.append((plan, writer))
                for rec in plan.records:
                    res = next(results)
                    bar.update()
                    if isinstance(res, Reject):
                        rejects.append(res)
                        continue
                    offsets, sizes = writer.write(res.key, res.members)
                    rows.append(IndexRow(res.key, rec.clip_id, rec.split, rec.label, plan.number,
                                         writer.samples - 1, tuple(offsets), tuple(sizes)))
                writer.close()
        elapsed = time.perf_counter() - start
        rejects.sort(key=_reject_order)
        timing = {"workers": workers, "elapsed_s": round(elapsed, 3),
                  "clips_per_second": round(len(items) / elapsed, 2) if elapsed > 0 else None}
        parts_dir = out_dir / "parts"
        tag = f"-{i}-of-{n}" if n > 1 else ""
        rejects_path = (parts_dir if n > 1 else out_dir) / f"rejects{tag}.csv"
        rejects_path.parent.mkdir(exist_ok=True)
        _write_rejects(rejects_path, rejects)
        if n == 1:
            _check_rejects(len(rejects), len(items), max_reject_fraction, rejects_path)
        _remove_previous(out_dir, own, single=n == 1)
        for plan, writer in writers:
            shards.append(writer.commit(plan.split, plan.number))
        writers = []
    finally:
        for _, writer in writers:
            writer.abort()
        results.close()
    index_path = parts_dir / f"index{tag}.h5" if n > 1 else out_dir / "index.h5"
    write_index(index_path, rows, shards, members=config.members, class_names=class_names,
                feature_params={**dataclasses.asdict(config), "shuffle_seed": shuffle_seed})
    stats = _stats(IndexReader(index_path, shard_dir=out_dir), rejects, len(items), [timing])
    _write_json((parts_dir if n > 1 else out_dir) / f"stats{tag}.json", stats)
    return stats


def _stats(index: IndexReader, rejects: Sequence[Reject], n_clips: int, timings: list[dict]) -> dict:
    """Counts per split and class, bytes, rejects and timing, as written to ``stats.json``."""
    samples, per_class, shards, nbytes = {}, {}, {}, {}
    for code, split in enumerate(index.splits):
        labels = index.label[index.split == code]
        samples[split] = int(labels.size)
        per_class[split] = {c: int((labels == k).sum()) for k, c in enumerate(index.class_names)}
        in_split = index.shard_split == code
        shards[split] = int(in_split.sum())
        nbytes[split] = int(index.shard_bytes[in_split].sum())
    elapsed = sum(t["elapsed_s"] for t in timings)
    return {
        "clips": n_clips,
        "samples": samples,
        "samples_per_class": per_class,
        "shards": shards,
        "bytes": {**nbytes, "total": int(sum(nbytes.values()))},
        "frame_codec": index.feature_params.get("frame_codec", "jpeg"),
        "rejects": {
            "count": len(rejects),
            "fraction": round(len(rejects) / max(n_clips, 1), 6),
            "by_reason": dict(sorted(Counter(r.reason.split(":")[0].split(" (")[0] for r in rejects).items())),
        },
        "timing": {
            "parts": timings,
            "elapsed_s": round(elapsed, 3),
            "clips_per_second": round(n_clips / elapsed, 2) if elapsed > 0 else None,
        },
    }


def merge_parts(*, out_dir: str | os.PathLike, num_parts: int, max_reject_fraction: float) -> dict:
    """Merge the ``parts/`` of ``num_parts`` partitioned runs into ``index.h5``, ``rejects.csv``, ``stats.json``.

    The merged index has the same bytes as a single run's; the parts folder is removed.
    """
    out_dir = Path(out_dir)
    parts_dir = out_dir / "parts"
    readers, rejects, timings, n_clips = [], [], [], 0
    for i in range(num_parts):
        tag = f"-{i}-of-{num_parts}"
        paths = [parts_dir / f"index{tag}.h5", parts_dir / f"rejects{tag}.csv", parts_dir / f"stats{tag}.json"]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ExtractionError(f"part {i}/{num_parts} is not complete: missing {', '.join(missing)}")
        readers.append(IndexReader(paths[0], shard_dir=out_dir))
        rejects += _read_rejects(paths[1])
        part_stats = json.loads(paths[2].read_text())
        timings += part_stats["timing"]["parts"]
        n_clips += part_stats["clips"]
    first = readers[0]
    for r in readers[1:]:
        if (r.members, r.class_names, r.feature_params) != (first.members, first.class_names, first.feature_params):
            raise ExtractionError(f"{r.path} was extracted with other features or classes than {first.path}")
    rows, shards = [], []
    for r in readers:
        for k in range(len(r)):
            rows.append(IndexRow(r.keys[k], r.clip_ids[k], r.splits[r.split[k]], int(r.label[k]),
                                 int(r.shard_number[r.shard[k]]), int(r.position[k]),
                                 tuple(int(x) for x in r.offset[k]), tuple(int(x) for x in r.size[k])))
        for s in range(len(r.shard_names)):
            shards.append(ShardEntry(r.shard_names[s], r.splits[r.shard_split[s]], int(r.shard_number[s]),
                                     int(r.shard_samples[s]), int(r.shard_bytes[s]), r.shard_sha256[s]))
    rejects.sort(key=_reject_order)
    _write_rejects(out_dir / "rejects.csv", rejects)
    _check_rejects(len(rejects), n_clips, max_reject_fraction, out_dir / "rejects.csv")
    write_index(out_dir / "index.h5", rows, shards, members=first.members, class_names=first.class_names,
                feature_params=first.feature_params)
    stats = _stats(IndexReader(out_dir / "index.h5"), rejects, n_clips, timings)
    _write_json(out_dir / "stats.json", stats)
    for p in parts_dir.iterdir():
        p.unlink()
    parts_dir.rmdir()
    return stats
