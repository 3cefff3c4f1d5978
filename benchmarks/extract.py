"""Extraction throughput against a decode-only floor, and the shard layout against loose files.

    python benchmarks/extract.py            # on data/manifest.csv (run `make demo` first), else a generated set
    python benchmarks/extract.py --small    # CI smoke test: a tiny generated set

Prints, measured in this run on this machine:
- clips/s of `extract` at 1 and 2 workers, and of a decode-only ffmpeg pass over the same
  clips (ffmpeg decoding every video and audio stream to null, same workers): the floor;
  ratios extract/floor;
- the shards' size and file count beside the folder-of-JPEG-and-npy layout of the paper's
  official code (`visual/<clip>/frame_0000i.jpg`, `audio/<clip>.npy`), holding the same bytes.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.adapters import prepare_dataset
from pipeline.extract import extract
from pipeline.features import FeatureConfig, log_mel
from pipeline.manifest import read_classes, read_manifest, write_classes, write_manifest
from pipeline.media import ffmpeg_exe
from pipeline.params import load_params
from pipeline.shards import IndexReader
from pipeline.synth import SynthConfig, generate


def ffmpeg_decode(paths: tuple[str, ...]) -> None:
    """Decode every stream of each file to null: no conversion, no output."""
    for path in dict.fromkeys(paths):
        subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-threads", "1", "-i", path,
                        "-f", "null", "-"], check=True)


def floor_rate(records, workers: int) -> float:
    jobs = [(r.video, r.audio) for r in records]
    start = time.perf_counter()
    if workers == 1:
        for job in jobs:
            ffmpeg_decode(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(ffmpeg_decode, jobs, chunksize=4))
    return len(jobs) / (time.perf_counter() - start)


def loose_layout(index: IndexReader, out: Path) -> None:
    """Write the official code's layout from the shards' own bytes."""
    frames = [m for m in index.members if m.startswith("frame")]
    for row, clip in enumerate(index.clip_ids):
        sample = index.read_sample(row)
        (out / "visual" / clip).mkdir(parents=True, exist_ok=True)
        (out / "audio").mkdir(exist_ok=True)
        (out / "audio" / f"{clip}.npy").write_bytes(sample["mel.npy"])
        for i, m in enumerate(frames):
            (out / "visual" / clip / f"frame_{i:05d}.jpg").write_bytes(sample[m])


def tree_size(folder: Path, suffixes: tuple[str, ...]) -> tuple[int, int, int]:
    """(files, apparent bytes, bytes on disk) of the files under ``folder`` with these suffixes."""
    files = [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffixes)]
    return len(files), sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny generated set (smoke test)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per setting (the best is kept)")
    args = ap.parse_args()
    params = load_params()
    feats = dict(params["features"])
    stage = {k: feats.pop(k) for k in ("shard_size", "workers", "max_reject_fraction")}
    config = FeatureConfig.from_params(feats)
    log_mel(np.zeros(config.num_samples, np.float32), config)  # import torch(audio) before timing
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.small or not Path("data/manifest.csv").exists():
            synth = SynthConfig(num_classes=3, clips_per_class=8, actors=4) if args.small else SynthConfig()
            generate(out_dir=tmp / "raw", seed=0, config=synth)
            records, classes = prepare_dataset(dataset="cremad", root=str(tmp / "raw"), split_file=None,
                                               ratios=[0.7, 0.1, 0.2], val_fraction=0.1, group_disjoint=True, seed=0)
            write_manifest(tmp / "manifest.csv", records)
            write_classes(tmp / "classes.txt", classes)
            manifest, classes_path = tmp / "manifest.csv", tmp / "classes.txt"
        else:
            manifest, classes_path = Path("data/manifest.csv"), Path("data/classes.txt")
        records = read_manifest(manifest)
        n = len(records)
        rows = []
        for workers in (1, 2):
            run = functools.partial(extract, manifest=manifest, classes=classes_path, out_dir=tmp / f"f{workers}",
                                    config=config, shard_size=stage["shard_size"], workers=workers,
                                    max_reject_fraction=1.0)
            rate = max(n / _timed(run) for _ in range(args.repeats))
            floor = max(floor_rate(records, workers) for _ in range(args.repeats))
            rows.append((workers, rate, floor))
        index = IndexReader(tmp / "f1" / "index.h5")
        loose_layout(index, tmp / "loose")
        shards = tree_size(tmp / "f1", (".tar",))
        loose = tree_size(tmp / "loose", (".jpg", ".npy"))

    print(f"\n## extract benchmark: {n} clips, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, python {sys.version.split()[0]}\n")
    print("| workers | extract clips/s | decode-only floor clips/s | extract / floor |")
    print("|---:|---:|---:|---:|")
    for workers, rate, floor in rows:
        print(f"| {workers} | {rate:.1f} | {floor:.1f} | {rate / floor:.2f} |")
    print(f"\n2 workers / 1 worker: extract {rows[1][1] / rows[0][1]:.2f}x, floor {rows[1][2] / rows[0][2]:.2f}x\n")
    print("| layout | files | bytes (apparent) | bytes on disk |")
    print("|---|---:|---:|---:|")
    print(f"| shards (`<split>-NNNNNN.tar`) | {shards[0]} | {shards[1]:,} | {shards[2]:,} |")
    print(f"| loose JPEG + npy (official code) | {loose[0]} | {loose[1]:,} | {loose[2]:,} |")
    print(f"\nloose / shards: {loose[0] / shards[0]:.0f}x the files, {loose[2] / shards[2]:.2f}x the disk bytes")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
