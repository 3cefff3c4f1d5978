"""Does ``synth.difficulty: cremad_like`` behave like CREMA-D under the official baseline? Pass/fail per target.

    python benchmarks/difficulty.py                   # the declared benchmark, seeds 0-4 (docs/datasets.md)
    python benchmarks/difficulty.py --seeds 0 1 2     # fewer seeds (the resolution target gets harder to meet)
    python benchmarks/difficulty.py --set synth.video_noise=0.1 ...   # more `-S` overrides, applied last
    python benchmarks/difficulty.py --small           # smoke test: tiny data, 2 epochs, seed 0; targets not enforced

In a temporary folder: params.yaml with :data:`DATA`, then each method's ``-S`` values (:data:`METHODS`: the
official baseline and Remix as the official code runs it), then ``--set``, applied as ``dvc exp run -S`` applies
them (:func:`pipeline.overrides.apply_set`) and read through the stages' config classes; then what ``dvc repro``
runs, by the same library calls as the stages: synth, prepare, extract once (``base.seed``: one dataset), and per
seed (``train.seed``) and method, train (``train.workers`` 1) and evaluate on test. Prints the test accuracies
(fused, audio head, video head; mean ± sample std over seeds, %), the training time of a run, and each target
of :data:`TARGETS` with PASS or FAIL; writes ``<out>/difficulty.{md,json}``; exits 1 when a target fails.

The targets (docs/datasets.md, "A benchmark that can tell methods apart"): under the official baseline the fused
accuracy is CREMA-D's 60-75 %, the audio head is far above the video head, no method can pass about 92 % (the
mean fused accuracy of every method run, and the Bayes ceiling of the test split: the share of its clips with a
class cue in at least one modality, plus 1/K of those with none, from ``synth_truth.csv``), and a 3-point gain
between two methods is resolved: 1.96 standard errors of the difference of two methods' means over n seeds are
at most 3 points, for methods as stable as the baseline (``1.96 sqrt(2 / n) s``, s the sample std of the baseline's
fused accuracy over the seeds; every method's own std is in the table).
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _results import write_results  # noqa: E402  benchmarks/_results.py: this script's folder is on sys.path
from pipeline.overrides import apply_set  # noqa: E402
from pipeline.datasets import PrepareConfig, prepare_dataset  # noqa: E402
from pipeline.extract import extract  # noqa: E402
from pipeline.features import ExtractConfig  # noqa: E402
from pipeline.manifest import write_classes, write_manifest  # noqa: E402
from pipeline.params import BaseConfig, load_params, read_section  # noqa: E402
from pipeline.synth import TRUTH_FILE, SynthConfig, generate  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.evaluate import evaluate  # noqa: E402
from train.trainer import train  # noqa: E402

# the benchmark's data: the cremad_like profile; 250 clips per class split 0.4 / 0.2 / 0.4 by actor (about 600
# train, 300 val, 600 test clips: one test clip = 0.17 points)
DATA = ("synth.difficulty=cremad_like", "synth.clips_per_class=250", "prepare.ratios=[0.4,0.2,0.4]")
# the official baseline (baseline.py: L_fused + 0.5 L_audio + 0.5 L_video, Adam with L2 1e-4, StepLR, lr 1e-3)
OFFICIAL = ("train.baseline_loss=eq1", "train.optimizer=adam", "train.schedule=step", "train.lr=0.001",
            "train.workers=1")
METHODS = {"baseline": OFFICIAL, "remix": (*OFFICIAL, "train.guard=none", "train.order=sequential"),
           "only_video": OFFICIAL}  # only_video (the video encoder alone: the video's headroom) runs when asked
DEFAULT_METHODS = ("baseline", "remix")
SMALL = ("synth.clips_per_class=12", "synth.actors=6", "synth.width=64", "synth.height=48", "synth.workers=1",
         "features.short_side=32", "features.workers=1", "train.epochs=2", "train.warmup_epochs=1",
         "train.width=4", "train.frame_size=24", "train.batch_size=8", "train.workers=0")
TARGETS = {  # name -> (what, bound)
    "fused": ("baseline fused accuracy in [60, 75] %", (0.60, 0.75)),
    "imbalance": ("baseline audio head - video head >= 15 points", 0.15),
    "ceiling": ("every method's fused accuracy and the test split's Bayes ceiling <= 92 %", 0.92),
    "resolution": ("1.96 x SE of a difference of two means over the seeds, at the baseline's spread, <= 3 points",
                   0.03),
}
ACCS = ("fused", "audio", "video")


def sections(base: dict, sets: list[str]) -> dict:
    """params.yaml with ``sets`` applied as ``dvc exp run -S`` does, each section read by its config class."""
    params = copy.deepcopy(base)
    for s in sets:
        apply_set(params, s)
    return {cls.section: read_section(params, cls)
            for cls in (BaseConfig, SynthConfig, PrepareConfig, ExtractConfig, TrainConfig)}


def make_features(work: Path, cfg: dict) -> tuple[Path, float]:
    """synth, prepare, extract into ``work``; the index and the Bayes ceiling of the test split."""
    seed = cfg["base"].seed
    generate(out_dir=work / "raw", seed=seed, config=cfg["synth"])
    prep = {**vars(cfg["prepare"]), "root": str(work / "raw")}
    records, classes = prepare_dataset(seed=seed, **prep)
    write_manifest(work / "manifest.csv", records)
    write_classes(work / "classes.txt", classes)
    ex = cfg["features"]
    extract(manifest=work / "manifest.csv", classes=work / "classes.txt", out_dir=work / "features",
            config=ex.features, shard_size=ex.shard_size, workers=ex.workers,
            max_reject_fraction=ex.max_reject_fraction, shuffle_seed=seed)
    test = {r.clip_id for r in records if r.split == "test"}
    return work / "features" / "index.h5", bayes_ceiling(work / "raw" / TRUTH_FILE, test, len(classes))


def bayes_ceiling(truth: Path, clips: set[str], num_classes: int) -> float:
    """The best expected accuracy on ``clips``: a clip whose audio or video carries its class is solvable; one
    with neither cue (ambiguous audio and video) is a 1-in-K guess; misleading audio with ambiguous video points
    at a wrong class (clean audio is likelier than misleading), so the best rule gets it wrong."""
    with open(truth, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["clip_id"] in clips]
    credit = [1.0 if r["audio_kind"] == "clean" or r["video_kind"] == "clean"
              else 1 / num_classes if r["audio_kind"] == "ambiguous" else 0.0 for r in rows]
    return sum(credit) / len(credit)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loader workers, once a run is over)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run(index: Path, work: Path, method: str, cfg: TrainConfig, seed: int) -> dict:
    """Train and evaluate one run: test accuracies, wall and CPU seconds of the training (the CPU time does not
    grow when other work shares the machine; the wall time does)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    summary = train(index_path=index, out_dir=work / "train", method=method, config=cfg, seed=seed)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    metrics = evaluate(index_path=index, run_dir=work)
    curve = [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()
              if k.startswith(("val_", "assigned_"))} for row in summary["history"]]  # per epoch, for the JSON
    return {"method": method, "seed": seed, "train_s": round(seconds, 1), "train_cpu_s": round(cpu, 1),
            **{k: metrics[f"acc_{k}"] for k in ACCS}, "best_epoch": summary["best"]["epoch"], "curve": curve}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def check(runs: list[dict], ceiling: float) -> dict[str, tuple[bool, str]]:
    """Each target of :data:`TARGETS`: (met, the measured value)."""
    by = {m: [r for r in runs if r["method"] == m] for m in dict.fromkeys(r["method"] for r in runs)}
    base = {k: mean_std([r[k] for r in by["baseline"]]) for k in ACCS}
    lo, hi = TARGETS["fused"][1]
    gap = base["audio"][0] - base["video"][0]
    best = max((statistics.fmean(r["fused"] for r in rs), m) for m, rs in by.items())
    n = len(by["baseline"])
    half = 1.96 * math.sqrt(2 / n) * base["fused"][1]  # two methods with the baseline's spread over n seeds each
    return {
        "fused": (lo <= base["fused"][0] <= hi, f"{100 * base['fused'][0]:.1f} %"),
        "imbalance": (gap >= TARGETS["imbalance"][1], f"{100 * gap:+.1f} points"),
        "ceiling": (max(best[0], ceiling) <= TARGETS["ceiling"][1],
                    f"best {best[1]} {100 * best[0]:.1f} %, Bayes ceiling {100 * ceiling:.1f} %"),
        "resolution": (half <= TARGETS["resolution"][1], f"{100 * half:.1f} points (n = {n} seeds)"),
    }


def cell(values: list[float]) -> str:
    """Mean ± sample std, in %."""
    return "{:.1f} ± {:.1f}".format(*(100 * x for x in mean_std(values)))


def report(runs: list[dict], results: dict, meta: dict) -> str:
    head = (f"{meta['machine']}; commit {meta['commit']}; seeds {meta['seeds']}; `-S` {' '.join(meta['data'])}; "
            "test accuracy, mean ± sample std over seeds (%).")
    lines = [f"## synth difficulty check, {meta['date']}", "", head,
             "", "| method | fused | audio head | video head | train s per run (wall) | train s per run (CPU) |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in dict.fromkeys(r["method"] for r in runs):
        rs = [r for r in runs if r["method"] == m]
        lines.append(f"| {m} | " + " | ".join(cell([r[k] for r in rs]) for k in ACCS)
                     + f" | {statistics.fmean(r['train_s'] for r in rs):.0f}"
                     f" | {statistics.fmean(r['train_cpu_s'] for r in rs):.0f} |")
    if not results:
        return "\n".join([*lines, "", "(no baseline run: targets not judged)"])
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    lines += [f"| {TARGETS[k][0]} | {value} | {'PASS' if ok else 'FAIL'} |" for k, (ok, value) in results.items()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="train.seed values")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="more -S overrides, applied last")
    ap.add_argument("--small", action="store_true", help="tiny data, 2 epochs, seed 0 (targets not enforced)")
    ap.add_argument("--out", default="benchmarks/results", help="folder for difficulty.md / .json")
    args = ap.parse_args()
    base = load_params()
    extra = [*(SMALL if args.small else ()), *args.set]
    seeds = [0] if args.small else args.seeds
    cfgs = {m: sections(base, [*DATA, *METHODS[m], *extra]) for m in args.methods}  # all checked before any work
    runs = []
    with tempfile.TemporaryDirectory(prefix="difficulty-") as tmp:
        index, ceiling = make_features(Path(tmp), cfgs[args.methods[0]])  # the methods differ in train keys only
        for seed in seeds:
            for m in args.methods:
                runs.append(run(index, Path(tmp) / f"{m}-s{seed}", m, cfgs[m]["train"], seed))
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "curve"}), flush=True)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit or "?", "seeds": seeds,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s), "
                       f"{'CUDA' if torch.cuda.is_available() else 'no GPU'}, load average {os.getloadavg()[1]:.1f} "
                       f"(5 min) at the end",
            "data": [*DATA, *extra], "methods": {m: list(METHODS[m]) for m in args.methods}, "ceiling": ceiling}
    results = check(runs, ceiling) if "baseline" in args.methods else {}  # the targets are about the baseline
    text = report(runs, results, meta)
    print(text)
    write_results(args.out, "difficulty", text, {"meta": meta, "runs": runs, "targets": {
        k: {"target": TARGETS[k][0], "measured": v, "pass": ok} for k, (ok, v) in results.items()}}, args.small)
    if not args.small and not all(ok for ok, _ in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
