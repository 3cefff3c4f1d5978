"""Extraction throughput against two decode-only floors, where its time goes, and the shard layout against loose files.

    python benchmarks/extract.py --repeats 3              # on data/manifest.csv (run `make demo` first), else a generated set
    python benchmarks/extract.py --profile 100            # cProfile of extraction on 1 worker over 100 clips: where the time goes
    python benchmarks/extract.py --small                  # CI smoke test: a tiny generated set
    python benchmarks/extract.py --small --profile 8      # CI smoke test of the profile

Prints, measured in this run on this machine:
- clips/s of `extract` at 1 and 2 workers, against two floors over the same clips and workers:
  - ffmpeg floor: one ffmpeg process per file decoding every video and audio stream to null (what a
    folder pipeline that decodes everything would pay). Not a lower bound: extraction decodes only
    3 frames of each video and beats it;
  - seek floor: decoding only what extraction needs, the way it does it: decord seek-decoding the
    same `num_frames` frames (`VideoReader.get_batch`) and the audio through
    `pipeline.media.decode_audio`; no resize, JPEG, mel, tar or index. Extraction cannot be faster;
  - and, for comparison, `extract` with the audio always decoded by an ffmpeg process (the code
    before the WAV shortcut of `pipeline.media.read_pcm16_wav`);
  ratios extract / floor (the issue's goal: >= 0.5 of the decode-only floor);
- the shards' size and file count beside the folder-of-JPEG-and-npy layout of the paper's
  official code (`visual/<clip>/frame_0000i.jpg`, `audio/<clip>.npy`), holding the same bytes.

Where the time goes (`python benchmarks/extract.py --profile 100`, run 3 times: cProfile of `extract`
on 1 worker, in-process, over the first 100 clips of the embedded dataset, default `features`
params; 2-core development machine, 2026-11-23, while another benchmark kept both cores busy
(load average ~4), so absolute times are inflated and noisy; medians of the 3 runs, in ms per clip):

| stage | audio via an ffmpeg process (before) | WAV read in-process (now) |
|---|---:|---:|
| decode audio | 28.6 | 0.35 |
|   of which waiting on the ffmpeg process (start + run; `ffmpeg -version` alone: ~17) | 27.9 | 0 |
| decode video (decord: open, frame 0 for the size, seek-decode 3 frames) | 9.4 | 9.1 |
| log-mel (torchaudio) | 1.8 | 1.9 |
| resize (PIL bilinear, 160x120 -> 128x96, 3 frames) | 1.1 | 1.1 |
| JPEG encode (PIL, quality 90, 3 frames) | 0.6 | 0.7 |
| npy encode | 0.2 | 0.2 |
| tar write (`ShardWriter.write`, in the parent) | 0.8 | 0.9 |
| SHA-256 of the shards (commit) | 0.04 | 0.04 |
| index.h5 | 0.08 | 0.08 |
| checks, json, stats, the rest | 1.0 | 1.0 |
| total | 43.8 | 15.3 (2.9x faster; 2.65x-3.5x over the 3 runs) |

- The one large removable cost was an ffmpeg process per clip (65% of the time) to read a WAV that
  needs no conversion but ``int16 / 32768``: `pipeline.media.read_pcm16_wav` now reads plain 16-bit
  PCM mono WAVs at the target rate in-process and leaves every other file to ffmpeg. The waveform is
  bit-identical (checked against the ffmpeg path on the 600 embedded WAVs and on edge cases: LIST
  chunks before and after the data, odd and empty data, stereo, other rates, 8/32-bit, float,
  RF64/extensible, truncated, trailing bytes, two data chunks, an S/PDIF sync word, not a WAV, AAC in
  MP4), and a re-extraction of the embedded dataset gives shards, index.h5 and rejects.csv
  byte-identical to `make demo`'s (old code). It applies to the CREMA-D layout at the default
  16 kHz; audio that must be resampled (the `cremad` preset's 22.05 kHz) or sits in an MP4
  (Kinetics-Sounds) still costs an ffmpeg process per clip.
- Decoding video is now ~60% of the time and is the floor itself (num_threads=1 per worker). The
  extra `vr[0]` that `decode_frames` decodes for the frame size costs nothing measurable (decord
  decodes from the start of the GOP anyway; with and without it were within noise over 150 clips,
  same frames), so it stays.
- Resize, JPEG and mel (~3.7 ms together) are the work itself and fix the output bytes; tar writing
  (~0.9 ms, tarfile headers and copies) and hashing are small. Nothing else is removable without
  changing bytes.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline import media
from pipeline.datasets import prepare_dataset
from pipeline.extract import _map, extract
from pipeline.features import FeatureConfig, log_mel
from pipeline.manifest import read_manifest, write_classes, write_manifest
from pipeline.media import MediaError, VideoInfo, decode_audio, ffmpeg_exe, frame_indices
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


def seek_decode(rec, num_frames: int, sample_rate: int) -> None:
    """What extraction must decode of one clip, as it does: the audio, and `num_frames` frames seek-decoded."""
    import decord

    try:
        decode_audio(rec.audio, sample_rate)
        vr = decord.VideoReader(rec.video, ctx=decord.cpu(0), num_threads=1)
        info = VideoInfo(num_frames=len(vr), fps=float(vr.get_avg_fps()), width=0, height=0)
        vr.get_batch(frame_indices(info, num_frames)).asnumpy()
    except (MediaError, RuntimeError, OSError, IndexError):
        pass  # a clip extraction rejects: it is in the count there too


def seek_floor_rate(records, workers: int, config: FeatureConfig) -> float:
    """Clips/s of :func:`seek_decode` in extraction's own process pool (`pipeline.extract._map`)."""
    fn = functools.partial(seek_decode, num_frames=config.num_frames, sample_rate=config.sample_rate)
    start = time.perf_counter()
    for _ in _map(fn, list(records), workers):
        pass
    return len(records) / (time.perf_counter() - start)


@contextlib.contextmanager
def ffmpeg_audio_only():
    """Audio always through an ffmpeg process (the code before the WAV shortcut); forked workers inherit it."""
    saved = media.read_pcm16_wav
    media.read_pcm16_wav = lambda path, sample_rate: None
    try:
        yield
    finally:
        media.read_pcm16_wav = saved


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


# -- profile -------------------------------------------------------------------------------

# (label, module file suffix, function name): cumulative time of these functions, in this order;
# each label's time excludes the labels above it that it calls (none of these call each other).
PROFILE_STAGES = (
    ("decode audio", "pipeline/media.py", "decode_audio"),
    ("decode video (decord)", "pipeline/media.py", "decode_frames"),
    ("log-mel (torchaudio)", "pipeline/features.py", "log_mel"),
    ("resize (PIL)", "pipeline/features.py", "resize_short_side"),
    ("JPEG encode (PIL)", "pipeline/features.py", "encode_jpeg"),
    ("npy encode", "pipeline/features.py", "encode_npy"),
    ("tar write (ShardWriter.write)", "pipeline/shards.py", "write"),
    ("SHA-256 of shards", "pipeline/shards.py", "sha256_file"),
    ("index.h5", "pipeline/shards.py", "write_index"),
)


def profile_breakdown(stats: pstats.Stats, n: int) -> tuple[list[tuple[str, float]], float]:
    """[(label, ms per clip)] of :data:`PROFILE_STAGES` plus "other", and the total ms per clip."""
    table = stats.stats  # {(file, line, name): (cc, nc, tt, ct, callers)}

    def cum(suffix: str, name: str) -> float:
        return sum(v[3] for (f, _, fn), v in table.items() if fn == name and f.replace(os.sep, "/").endswith(suffix))

    total = cum("pipeline/extract.py", "extract")
    rows = [(label, cum(suffix, name)) for label, suffix, name in PROFILE_STAGES]
    spawn = sum(v[3] for (f, _, fn), v in table.items() if fn == "communicate" and f.endswith("subprocess.py"))
    spawn += sum(v[3] for (f, _, fn), v in table.items() if fn == "__init__" and f.endswith("subprocess.py"))
    rows.insert(1, ("  of which in an ffmpeg process (start + run)", spawn))
    other = total - sum(t for label, t in rows if not label.startswith(" "))
    rows.append(("checks, json, pool, stats, the rest", other))
    return [(label, 1e3 * t / n) for label, t in rows], 1e3 * total / n


def profile(manifest: Path, classes: Path, config: FeatureConfig, n: int, tmp: Path) -> str:
    """cProfile of `extract` on 1 worker over the first ``n`` clips, with and without the WAV shortcut."""
    records = read_manifest(manifest)[:n]
    write_manifest(tmp / "profile.csv", records)
    results = {}
    for name, ctx in (("audio via an ffmpeg process (before)", ffmpeg_audio_only), ("now", contextlib.nullcontext)):
        run = functools.partial(extract, manifest=tmp / "profile.csv", classes=classes, out_dir=tmp / "profile",
                                config=config, shard_size=256, workers=1, max_reject_fraction=1.0)
        with ctx():
            run()  # warm: imports, page cache, the mel transform
            prof = cProfile.Profile()
            prof.runcall(run)
        results[name] = profile_breakdown(pstats.Stats(prof), len(records))
    names = list(results)
    lines = [f"### where extraction's time goes: cProfile, 1 worker, {len(records)} clips, ms per clip", "",
             f"| stage | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
    for k, (label, _) in enumerate(results[names[0]][0]):
        lines.append(f"| {label} | " + " | ".join(f"{results[m][0][k][1]:.2f}" for m in names) + " |")
    lines.append("| **total** | " + " | ".join(f"**{results[m][1]:.2f}**" for m in names) + " |")
    totals = [results[m][1] for m in names]
    lines.append(f"\nnow / before: {totals[1] / totals[0]:.2f} of the time per clip ({totals[0] / totals[1]:.2f}x)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny generated set (smoke test)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per setting (the best is kept)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="only profile extraction (cProfile, 1 worker) over the first N clips, and print where the time goes")
    args = ap.parse_args()
    params = load_params()
    feats = dict(params["features"])
    stage = {k: feats.pop(k) for k in ("shard_size", "workers", "max_reject_fraction")}
    config = FeatureConfig.from_params(feats)
    log_mel(np.zeros(config.num_samples, np.float32), config)  # import torch(audio) before timing
    import decord, ffmpeg  # noqa: F401,E401  imported at the first clip otherwise: inside the first timed run
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
        if args.profile:
            text = profile(manifest, classes_path, config, args.profile, tmp)
            print(f"\n## extract profile: {platform.machine()}, {os.cpu_count()} cores, load average "
                  f"{os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}\n\n{text}")
            return
        records = read_manifest(manifest)
        n = len(records)
        rows = []
        for workers in (1, 2):
            run = functools.partial(extract, manifest=manifest, classes=classes_path, out_dir=tmp / f"f{workers}",
                                    config=config, shard_size=stage["shard_size"], workers=workers,
                                    max_reject_fraction=1.0)
            rate = max(n / _timed(run) for _ in range(args.repeats))
            with ffmpeg_audio_only():
                before = max(n / _timed(run) for _ in range(args.repeats))
            floor = max(floor_rate(records, workers) for _ in range(args.repeats))
            seek = max(seek_floor_rate(records, workers, config) for _ in range(args.repeats))
            rows.append((workers, rate, floor, seek, before))
        index = IndexReader(tmp / "f1" / "index.h5")
        loose_layout(index, tmp / "loose")
        shards = tree_size(tmp / "f1", (".tar",))
        loose = tree_size(tmp / "loose", (".jpg", ".npy"))

    print(f"\n## extract benchmark: {n} clips, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, python {sys.version.split()[0]}, load average at the end "
          f"{os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}, best of {args.repeats}\n")
    print("| workers | extract clips/s | ffmpeg floor clips/s | extract / floor (ffmpeg) | seek floor clips/s | "
          "extract / floor (seek) | extract, audio via ffmpeg (before) clips/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for workers, rate, floor, seek, before in rows:
        print(f"| {workers} | {rate:.1f} | {floor:.1f} | {rate / floor:.2f} | {seek:.1f} | {rate / seek:.2f} | "
              f"{before:.1f} |")
    print(f"\n2 workers / 1 worker: extract {rows[1][1] / rows[0][1]:.2f}x, ffmpeg floor {rows[1][2] / rows[0][2]:.2f}x, "
          f"seek floor {rows[1][3] / rows[0][3]:.2f}x; extract now / before: "
          f"{rows[0][1] / rows[0][4]:.2f}x (1 worker), {rows[1][1] / rows[1][4]:.2f}x (2 workers)\n")
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
