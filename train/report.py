"""Print the test metrics of every run as a Markdown table: ``python -m train.report`` (after ``dvc repro``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.params import load_params
from train.config import TrainConfig


def table(results: list[dict], modalities: list[str]) -> str:
    head = ["method", "fused acc", *[f"{m}-only acc" for m in modalities], "macro-F1", "imbalance", "epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["method"], f"{r['acc_fused']:.3f}", *[f"{r[f'acc_{m}']:.3f}" for m in modalities],
                 f"{r['macro_f1']:.3f}", "—" if r["imbalance_ratio"] is None else f"{r['imbalance_ratio']:.2f}",
                 str(r["epoch"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(runs: str = "runs") -> None:
    config = TrainConfig.from_params(load_params()["train"])
    paths = [Path(runs) / m / "metrics.json" for m in config.methods]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        sys.exit(f"no metrics yet for {', '.join(missing)}: run `dvc repro` first")
    print(table([json.loads(p.read_text()) for p in paths], config.modalities))


if __name__ == "__main__":
    main()
