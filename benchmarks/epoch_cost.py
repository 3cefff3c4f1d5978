"""Wall time of a Remix epoch against a baseline epoch, measured in the same run on the same data.

    python benchmarks/epoch_cost.py              # on features/ from `make demo`; 3 repetitions; writes benchmarks/results/
    python benchmarks/epoch_cost.py --small      # CI smoke test: tiny generated set, 1 repetition

Each setting trains `--epochs` epochs (`--warmup` of them multimodal warm-up) with the `train`
params of params.yaml and the overrides below; the trainer's log gives, per epoch, the scoring
pass (`score_s`) and the training steps (`train_s`) separately (validation is not counted). The
cost of a setting is the median over its remix epochs and repetitions; the ratio is against the
median baseline epoch of the same run. Settings:

- `baseline`: joint training, both encoders on every sample;
- `remix (paper)`: `scoring: pass`, `mask: feature` (both encoders run; the defaults);
- `remix, input mask + skip`: `mask: input`, `skip_masked: true` (a remixed sample costs one encoder);
- `remix, online`: `scoring: online` (no scoring pass; feature masking);
- `remix, input mask + skip + online`: both savings.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from remix_quality import make_features  # noqa: E402
from _results import write_results  # noqa: E402

from pipeline.features import FeatureConfig  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.synth import SynthConfig  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.trainer import train  # noqa: E402

SETTINGS = {
    "baseline": ("baseline", {}),
    "remix (paper)": ("remix", {"scoring": "pass", "mask": "feature"}),
    "remix, input mask + skip": ("remix", {"scoring": "pass", "mask": "input", "skip_masked": True}),
    "remix, online": ("remix", {"scoring": "online", "mask": "feature"}),
    "remix, input mask + skip + online": ("remix", {"scoring": "online", "mask": "input", "skip_masked": True}),
}


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    q = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.2f} [{q[0]:.2f}, {q[2]:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4, help="epochs per run (the remix ones are timed)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up epochs per run")
    ap.add_argument("--small", action="store_true", help="tiny generated set, 1 repetition (smoke test)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    params = load_params()
    config = TrainConfig.from_params(params["train"])
    config = dataclasses.replace(config, epochs=args.epochs, warmup_epochs=args.warmup, guard="none",
                                 checkpoint_every=0)
    repeats = args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.small or not Path("features/index.h5").exists():
            synth = dataclasses.replace(SynthConfig(**params["synth"]), workers=2)
            feats = FeatureConfig.from_params({k: v for k, v in params["features"].items()
                                               if k not in ("shard_size", "workers", "max_reject_fraction")})
            if args.small:
                repeats = 1
                synth = dataclasses.replace(synth, num_classes=3, clips_per_class=8, actors=4, width=64, height=48)
                config = dataclasses.replace(config, epochs=2, warmup_epochs=1, width=4, frame_size=24, workers=0)
                feats = dataclasses.replace(feats, short_side=32)
            prepare = dict(params["prepare"])
            prepare.pop("root")
            index = make_features(tmp / "data", synth, feats, params["base"]["seed"], prepare)
        else:
            index = Path("features/index.h5")
        # untimed: first-call costs (oneDNN primitives per shape, page cache) must not land on one setting
        train(index_path=index, out_dir=tmp / "warm", method="remix", config=dataclasses.replace(config, epochs=2,
              warmup_epochs=1), seed=0)
        times: dict[str, dict[str, list[float]]] = {name: {"score": [], "train": []} for name in SETTINGS}
        for r in range(repeats):
            for j, (name, (method, overrides)) in enumerate(SETTINGS.items()):
                cfg = dataclasses.replace(config, **overrides)
                summary = train(index_path=index, out_dir=tmp / f"run-{r}-{j}", method=method, config=cfg, seed=r)
                timed = [h for h in summary["history"] if method == "baseline" or h["phase"] == "remix"]
                times[name]["score"] += [h.get("score_s", 0.0) for h in timed]  # methods that never score log none
                times[name]["train"] += [h["train_s"] for h in timed]
    base = statistics.median(times["baseline"]["train"])
    lines = [f"{config.epochs} epochs ({config.warmup_epochs} warm-up) x {repeats} repetitions, width {config.width}, "
             f"batch {config.batch_size}, workers {config.workers}, {platform.machine()}, {time.strftime('%Y-%m-%d')}",
             "", "| setting | scoring pass (s) | training (s) | epoch (s) | epoch / baseline epoch |",
             "|---|---|---|---|---|"]
    result = {}
    for name, t in times.items():
        total = [s + x for s, x in zip(t["score"], t["train"])]
        ratio = [x / base for x in total]
        result[name] = {**t, "ratio": ratio}
        lines.append(f"| {name} | {spread(t['score'])} | {spread(t['train'])} | {spread(total)} | {spread(ratio)} |")
    lines += ["", "median [quartiles] over the timed epochs (baseline: all epochs; remix: remix epochs)"]
    text = "\n".join(lines)
    print(text)
    write_results(args.out, "epoch_cost", text, result, args.small)


if __name__ == "__main__":
    main()
