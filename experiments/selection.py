"""What selecting the checkpoint on test (the official scripts) instead of on validation (avremix) does to the
reported accuracy, measured on runs made with ``train.log_test_acc: true``.

Usage (in the repository root, the venv active)::

    python -m experiments.selection [--records experiments/results/records.json] [--out experiments/results]

Per method (on ``--fusion``, default concat; after a tuning grid, at its chosen setting: :func:`chosen_runs`) and
seed: the test accuracy of the checkpoint selected on validation (what avremix reports: ``metrics.json``), and the
best test accuracy over the epochs (what the official scripts report: they keep the epoch with the best test
accuracy). The difference is the official selection's optimism;
mean ± sample std over seeds. Runs without per-epoch test accuracies are left out.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Sequence

from experiments import tuning
from experiments.cells import emit
from experiments.records import Record, collect, load_records


def per_seed(records: Sequence[Record], fusion: str = "concat") -> dict[str, list[tuple[int, float, float]]]:
    """method -> [(seed, test acc % selected on validation, best test acc % over epochs)], plain runs only
    (no overrides beyond the method's own tuning), newest run of a seed."""
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for r in sorted(records, key=lambda r: r.timestamp):
        tests = [row["test_fused"] for row in r.history if "test_fused" in row]
        if r.fusion != fusion or not tests or _is_ablation(r):
            continue
        out.setdefault(r.method, {})[r.seed] = (100 * r.metrics["acc_fused"], 100 * max(tests))
    return {m: [(s, *v) for s, v in sorted(seeds.items())] for m, seeds in sorted(out.items())}


def chosen_runs(records: Sequence[Record]) -> list[Record]:
    """After a tuning grid (:mod:`experiments.tuning`): each method's runs at its chosen setting with nothing else
    changed (not the other candidates, not a deviation's or an ablation's runs); without one: ``records``."""
    chosen = tuning.select(records)
    return [r for r in tuning.final_view(records, chosen) if not r.overrides] if chosen else list(records)


def _is_ablation(r: Record) -> bool:
    return any(r.param(k, d) != d for k, d in (("train.ablation", "full"), ("train.unimodal_pred", "heads"),
                                                ("train.grad_angle", "")))


def _mean_sd(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:.1f}"


def markdown(rows: dict[str, list[tuple[int, float, float]]], fusion: str) -> str:
    lines = [f"## Checkpoint selection: on validation (avremix) or on test (the official scripts), {fusion}", "",
             "Test accuracy (%), mean ± sample std over seeds; `python -m experiments.selection`.", "",
             "| method | seeds | selected on validation | best epoch on test (official) | optimism (points) |",
             "|---|---:|---:|---:|---:|"]
    for method, runs in rows.items():
        val, best = [v for _, v, _ in runs], [b for _, _, b in runs]
        lines.append(f"| {method} | {len(runs)} | {_mean_sd(val)} | {_mean_sd(best)} | "
                     f"{_mean_sd([b - v for v, b in zip(val, best)])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.selection", description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=Path, help="a records file (experiments.tables --save-records); default: "
                                                 "the DVC experiments of this repository")
    ap.add_argument("--fusion", default="concat")
    ap.add_argument("--out", type=Path, help="also write selection.md into this folder")
    args = ap.parse_args(argv)
    records = load_records(args.records) if args.records else collect(".")
    rows = per_seed(chosen_runs(records), args.fusion)
    if not rows:
        sys.exit("experiments.selection: no run with per-epoch test accuracies (train.log_test_acc: true)")
    text = markdown(rows, args.fusion)
    emit(text, args.out, "selection.md")


if __name__ == "__main__":
    main()
