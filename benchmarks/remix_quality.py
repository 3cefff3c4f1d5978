"""Baseline against Data Remixing on the embedded dataset: mean ± std over seeds, and the laziness probe.

    python benchmarks/remix_quality.py                 # on features/ from `make demo`; 3 seeds; writes benchmarks/results/
    python benchmarks/remix_quality.py --small         # CI smoke test: tiny generated set, 2 epochs, 1 seed
    python benchmarks/remix_quality.py --variants why  # Remix variants (see VARIANTS) on the main data, 3 seeds

Runs, per seed, with the `train` params of params.yaml:
- `baseline` (joint training on the fused loss; its video head is a linear probe of the video
  encoder on detached features), `baseline, eq. 1 loss` (the baseline trained with the warm-up
  loss, unimodal losses included), `remix` (Data Remixing), `only_video` (the video encoder trained
  alone): modality laziness shows as the baseline's video head doing clearly worse than `only_video`;
- on a variant of the data whose video is nearly uninformative (`--weak-contrast`, the paper's
  stated limitation): baseline, remix without guard, remix with the `extend_warmup` guard.
Prints Markdown tables of test accuracy (fused, audio-only, video-only) and training time per run.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.datasets import prepare_dataset
from pipeline.extract import extract
from pipeline.features import FeatureConfig
from pipeline.manifest import write_classes, write_manifest
from pipeline.params import load_params
from pipeline.synth import SynthConfig, generate
from train.evaluate import evaluate
from train.config import TrainConfig
from train.trainer import train

from _results import write_results  # benchmarks/_results.py: this script's folder is on sys.path


VARIANTS = {  # name -> {row: train overrides of the remix run}
    "cost": {"remix, mask input + skip_masked": {"mask": "input", "skip_masked": True},
             "remix, scoring online": {"scoring": "online"},
             "remix, mask input + skip_masked + scoring online": {"mask": "input", "skip_masked": True,
                                                                  "scoring": "online"}},
    "why": {"remix, mask input": {"mask": "input"},
            "remix, order interleaved": {"order": "interleaved"},
            "remix, warmup_epochs 4": {"warmup_epochs": 4},
            "remix, lr 0.0005": {"lr": 0.0005}},
}


def make_features(out: Path, synth: SynthConfig, features: FeatureConfig, seed: int, prepare: dict) -> Path:
    generate(out_dir=out / "raw", seed=seed, config=synth)
    records, classes = prepare_dataset(root=str(out / "raw"), seed=seed, **prepare)
    write_manifest(out / "manifest.csv", records)
    write_classes(out / "classes.txt", classes)
    extract(manifest=out / "manifest.csv", classes=out / "classes.txt", out_dir=out / "features", config=features,
            shard_size=256, workers=2, max_reject_fraction=0.05)
    return out / "features" / "index.h5"


def run(index: Path, out: Path, method: str, config: TrainConfig, seed: int) -> dict:
    start = time.perf_counter()
    train(index_path=index, out_dir=out / "train", method=method, config=config, seed=seed)
    seconds = time.perf_counter() - start
    return {**evaluate(index_path=index, run_dir=out), "train_s": seconds}


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: dict[str, list[dict]], title: str) -> str:
    lines = [f"### {title}", "", "| run | fused acc | audio-only acc | video-only acc | train time (s) |",
             "|---|---|---|---|---|"]
    for name, rs in results.items():
        lines.append(f"| {name} | {fmt([r['acc_fused'] for r in rs])} | {fmt([r['acc_audio'] for r in rs])} | "
                     f"{fmt([r['acc_video'] for r in rs])} | {statistics.mean(r['train_s'] for r in rs):.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--weak-contrast", type=float, default=0.03, help="synth.video_contrast of the weak-video variant")
    ap.add_argument("--small", action="store_true", help="tiny generated set, 2 epochs, 1 seed (smoke test)")
    ap.add_argument("--variants", choices=sorted(VARIANTS),
                    help="instead of the main comparison: Remix variants on the main data (cost: issue 5's savings; "
                         "why: warm-up length, masking level, learning rate, subset order)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    params = load_params()
    config = TrainConfig.from_params(params["train"])
    feats = FeatureConfig.from_params({k: v for k, v in params["features"].items()
                                       if k not in ("shard_size", "workers", "max_reject_fraction")})
    synth = dataclasses.replace(SynthConfig(**params["synth"]), workers=2)
    prepare = dict(params["prepare"])
    prepare.pop("root")
    seeds = args.seeds
    if args.small:
        seeds = [0]
        synth = dataclasses.replace(synth, num_classes=3, clips_per_class=8, actors=4, width=64, height=48)
        config = dataclasses.replace(config, epochs=2, warmup_epochs=1, width=4, frame_size=24, workers=0)
        feats = dataclasses.replace(feats, short_side=32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.small or not Path("features/index.h5").exists():
            index = make_features(tmp / "main", synth, feats, params["base"]["seed"], prepare)
        else:
            index = Path("features/index.h5")
        if args.variants:
            runs = {name: [run(index, tmp / f"{args.variants}-{j}-{seed}", "remix", dataclasses.replace(config, **o), seed)
                           for seed in seeds] for j, (name, o) in enumerate(VARIANTS[args.variants].items())}
            header = (f"seeds {seeds}, {config.epochs} epochs ({config.warmup_epochs} warm-up unless stated), width "
                      f"{config.width}, {platform.machine()}, {time.strftime('%Y-%m-%d')}")
            text = "\n\n".join([header, table(runs, f"Remix variants: {args.variants} (test accuracy, mean ± std)")])
            print(text)
            write_results(args.out, f"remix_variants_{args.variants}", text, runs, args.small)
            return
        weak_index = make_features(tmp / "weak", dataclasses.replace(synth, video_contrast=args.weak_contrast),
                                   feats, params["base"]["seed"], prepare)
        main_specs = {"baseline": ("baseline", {}), "baseline, eq. 1 loss": ("baseline", {"baseline_loss": "eq1"}),
                      "remix": ("remix", {}), "only_video": ("only_video", {})}
        weak_specs = {"baseline": ("baseline", {}), "remix, guard none": ("remix", {"guard": "none"}),
                      "remix, guard extend_warmup": ("remix", {"guard": "extend_warmup"})}
        main_runs = {name: [] for name in main_specs}
        weak_runs = {name: [] for name in weak_specs}
        for seed in seeds:
            for runs, specs, idx, tag in ((main_runs, main_specs, index, "main"), (weak_runs, weak_specs, weak_index, "weak")):
                for j, (name, (method, overrides)) in enumerate(specs.items()):
                    cfg = dataclasses.replace(config, **overrides)
                    runs[name].append(run(idx, tmp / f"{tag}-{j}-{seed}", method, cfg, seed))
    header = (f"seeds {seeds}, {config.epochs} epochs ({config.warmup_epochs} warm-up), width {config.width}, "
              f"{platform.machine()}, {time.strftime('%Y-%m-%d')}")
    text = "\n\n".join([header, table(main_runs, "embedded dataset (test accuracy, mean ± std over seeds)"),
                        table(weak_runs, f"weak-video variant, synth.video_contrast={args.weak_contrast}")])
    print(text)
    write_results(args.out, "remix_quality", text, {"main": main_runs, "weak": weak_runs}, args.small)


if __name__ == "__main__":
    main()
