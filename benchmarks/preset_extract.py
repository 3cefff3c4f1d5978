"""Extraction time and feature size of each paper preset (presets/*.yaml), scaled to the real dataset.

    python benchmarks/preset_extract.py [--clips 12] [--workers 1 2]   # generated clips of the real sizes
    python benchmarks/preset_extract.py --small                       # CI smoke test: 2 short clips, 1 worker

Per preset: generates ``--clips`` clips of the real dataset's size and duration with ``pipeline.synth``
(CREMA-D: 480x360 FLV at 30 fps, 2.5 s, 16 kHz WAV; Kinetics-Sounds: 340x256 H.264/AAC MP4 at 25 fps, 10 s),
extracts them with the preset's ``features.*`` values at each ``--workers``, and prints clips/s per worker, the
shard bytes per clip and, scaled to the real clip count (CREMA-D 7,442; Kinetics-Sounds ~22,000 downloaded
clips), the feature size and the extraction time on a 16-core machine assuming the per-worker rate scales
linearly to 16 workers. Generated frames are not real video: the JPEG size of real frames differs.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.datasets import prepare_dataset  # noqa: E402
from pipeline.extract import extract  # noqa: E402
from pipeline.features import FeatureConfig  # noqa: E402
from pipeline.manifest import write_classes, write_manifest  # noqa: E402
from pipeline.presets import load_preset  # noqa: E402
from pipeline.synth import SynthConfig, generate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# preset -> (synth layout and size of a real clip, real clip count)
REAL = {"cremad_paper": (dict(layout="cremad", width=480, height=360, fps=30, duration=2.5), 7442),
        "kinetics_sounds_paper": (dict(layout="kinetics_sounds", width=340, height=256, fps=25, duration=10.0), 22000)}
TARGET_WORKERS = 16


def features_of(preset: str) -> FeatureConfig:
    values = load_preset(REPO / "presets" / f"{preset}.yaml")
    fields = {f.name for f in dataclasses.fields(FeatureConfig)}
    return FeatureConfig(**{k.split(".", 1)[1]: v for k, v in values.items()
                            if k.startswith("features.") and k.split(".", 1)[1] in fields})


def generate_clips(root: Path, real: dict, clips: int, small: bool) -> Path:
    layout, duration = real["layout"], (1.0 if small else real["duration"])
    cfg = SynthConfig(layout=layout, num_classes=2, clips_per_class=max(1, clips // 2), actors=2, width=real["width"],
                      height=real["height"], fps=real["fps"], min_duration_s=duration, max_duration_s=duration,
                      test_fraction=0.5 if layout == "kinetics_sounds" else 0.2, workers=2)
    generate(out_dir=root / "raw", seed=0, config=cfg)
    records, classes = prepare_dataset(dataset=layout, root=str(root / "raw"), split_file=None, val_fraction=0.5,
                                       seed=0, ratios=[0.5, 0.25, 0.25], group_disjoint=False)
    write_manifest(root / "manifest.csv", records)
    write_classes(root / "classes.txt", classes)
    return root


def measure(preset: str, clips: int, workers: list[int], small: bool) -> None:
    real, count = REAL[preset]
    features = features_of(preset)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_clips(Path(tmp), real, clips, small)
        for w in workers:
            out = Path(tmp) / f"features-{w}"
            t0 = time.perf_counter()
            extract(manifest=root / "manifest.csv", classes=root / "classes.txt", out_dir=out, config=features,
                    shard_size=256, workers=w, max_reject_fraction=0.0)
            seconds = time.perf_counter() - t0
            n = sum(1 for _ in open(root / "manifest.csv")) - 1
            size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
            rate = n / seconds / w
            hours = count / (rate * TARGET_WORKERS) / 3600
            print(f"| {preset} | {w} | {n} | {rate:.2f} | {size / n / 1e3:.1f} | {size / n * count / 1e9:.2f} | "
                  f"{hours:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=12, help="generated clips per preset")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="extraction processes to time")
    ap.add_argument("--preset", nargs="+", default=list(REAL), choices=list(REAL))
    ap.add_argument("--small", action="store_true", help="smoke test: 4 clips of 1 s, 1 worker")
    args = ap.parse_args()
    clips, workers = (4, [1]) if args.small else (args.clips, args.workers)
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    print("| preset | workers | clips | clips/s per worker | kB / clip | GB, real count | h on 16 workers |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for preset in args.preset:
        measure(preset, clips, workers, args.small)


if __name__ == "__main__":
    main()
