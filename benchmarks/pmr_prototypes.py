"""PMR's prototypes in eval mode (the official code) against batch statistics: why the video head collapsed.

    python benchmarks/pmr_prototypes.py              # after `make demo`: features/index.h5, params.yaml's train
    python benchmarks/pmr_prototypes.py --small      # smoke test: tiny generated features, 2 epochs, 1 seed

Trains ``pmr`` at ``params.yaml``'s ``train`` settings with ``train.method_params.pmr.prototype_norm`` set to
``running`` (the prototype pass in eval mode: BatchNorm on its running statistics, as the official code) and to
``batch`` (BatchNorm on each batch's statistics, as the training forward that PCE compares them with), seeds 0-2,
the checkpoint selected on validation, then evaluates it on test. Per run it prints the selected epoch's
validation accuracies, the test accuracies, and per epoch the mean prototype-score ratio of the first modality
over the second (``pmr_ratio``: ~1 when balanced; huge when the second modality's prototypes score ~0) and the
second modality's PCE weight; writes ``benchmarks/results/pmr_prototypes.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_results  # noqa: E402

from pipeline.params import load_params  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.evaluate import evaluate  # noqa: E402
from train.trainer import train  # noqa: E402

MODES = ("running", "batch")


def run_one(index: Path, out: Path, cfg_params: dict, mode: str, seed: int) -> dict:
    params = json.loads(json.dumps(cfg_params))
    params["method_params"].setdefault("pmr", {})["prototype_norm"] = mode
    cfg = TrainConfig.from_params(params)
    run = out / f"{mode}-s{seed}"
    summary = train(index_path=index, out_dir=run / "train", method="pmr", config=cfg, seed=seed)
    metrics = evaluate(index_path=index, run_dir=run)
    m0, m1 = cfg.modalities[:2]
    return {"mode": mode, "seed": seed, "epoch": summary["best"]["epoch"],
            **{f"val_{k}": summary["best"][f"val_{k}"] for k in ("fused", m0, m1)},
            **{f"test_{k}": metrics[f"acc_{k}"] for k in ("fused", m0, m1)},
            "ratio": [h.get(f"pmr_ratio_{m0}") for h in summary["history"]],
            "pce_weight": [h.get(f"pmr_pce_weight_{m1}") for h in summary["history"]]}


def cell(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def report(rows: list[dict], meta: dict, mods: list[str]) -> str:
    cols = ["val_fused", "test_fused", f"test_{mods[0]}", f"test_{mods[1]}"]
    lines = [f"## PMR prototypes: eval mode (running) vs batch statistics, {meta['date']}", "",
             f"{meta['machine']}; `train` of params.yaml ({meta['epochs']} epochs), seeds {meta['seeds']}, checkpoint "
             "selected on validation; mean ± sample std over seeds (%).", "",
             "| prototype_norm | " + " | ".join(cols) + " | max pmr_ratio over epochs (per seed) |",
             "|---|" + "---:|" * len(cols) + "---|"]
    for mode in MODES:
        rs = [r for r in rows if r["mode"] == mode]
        peaks = ", ".join(f"{max(x for x in r['ratio'] if x is not None):.3g}" for r in rs if any(r["ratio"]))
        lines.append(f"| {mode} | " + " | ".join(cell([r[c] for r in rs]) for c in cols) + f" | {peaks} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default="features/index.h5", help="features of `make demo`")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--small", action="store_true", help="tiny generated features, 2 epochs, seed 0")
    ap.add_argument("--out", default="benchmarks/results", help="folder for pmr_prototypes.md / .json")
    args = ap.parse_args()
    params = load_params()["train"]
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(args.index)
        if args.small:
            from reader_224 import make_features

            index, args.seeds = make_features(Path(tmp), 4)["jpeg"], [0]
            params = {**params, "epochs": 2, "warmup_epochs": 1, "width": 4, "frame_size": 32, "batch_size": 8}
        params = {**params, "workers": 0, "methods": ["pmr"]}
        rows = [run_one(index, Path(tmp), params, mode, seed) for mode in MODES for seed in args.seeds]
    import os

    import torch

    meta = {"date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s)",
            "epochs": params["epochs"], "seeds": args.seeds}
    text = report(rows, meta, list(params["modalities"]))
    print(text)
    write_results(args.out, "pmr_prototypes", text, {"meta": meta, "runs": rows}, args.small)


if __name__ == "__main__":
    main()
