"""What the official code's choices that avremix does not make by default do to accuracy, on the tuned grid's data.

Usage (in the repository root, the venv active, after ``experiments.tuning`` and ``experiments.tables``)::

    python -m experiments.deviations [--records experiments/results/records.json] [--seeds 0 1 2]
                                     [--methods baseline remix] [--jobs 1] [--dry-run] [--out experiments/results]

Each method runs at the setting :mod:`experiments.tuning` chose for it (read from ``--records``, the tuned grid's
saved runs) with one official value of :data:`DEVIATIONS` set, at every seed of ``--seeds``, as DVC experiments of
HEAD (a rerun skips the finished ones). The avremix arm is the tuned grid's run of the same method, setting and
seed. Per method and deviation: test accuracy (%) of both arms, mean ± sample std over seeds, and the paired
difference official − avremix (:func:`experiments.stats.paired`: per-seed mean ± std, then the 95 % bootstrap
interval over test clips; ``*``: it excludes 0). The checkpoint-selection deviation (the official scripts keep the
epoch with the best test accuracy) is :mod:`experiments.selection`'s table over the same grid runs, appended.
Checkpoints are selected on validation in every run here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from experiments import grid, selection, stats, tuning
from experiments.cells import DASH, acc, emit, fmt, latest_per_seed, markdown_table, stat
from experiments.records import Record, collect, load_records
from experiments.tables import paired_gain

DEVIATIONS = {  # name -> (the official value as a `-S` assignment, what the official code does)
    "eval_resize": ("train.eval_resize=squash", "eval frames squashed to a square, not centre-cropped"),
    "bn_init": ("train.bn_init=normal", "BatchNorm weights drawn from N(1, 0.02), not set to 1"),
    "bn_split": ("train.bn_split=2", "BatchNorm over two half-batches (DataParallel on 2 GPUs), first half's stats kept"),
}


def official_sets(name: str) -> dict[str, str]:
    """{key: value as written} of deviation ``name``'s official value."""
    key, _, value = DEVIATIONS[name][0].partition("=")
    return {key: value}


def specs(chosen: dict[str, tuning.Choice], names: Sequence[str], seeds: Sequence[int]) -> list[grid.Spec]:
    """The official arms: each chosen method at its setting with one deviation's official value, at ``seeds``."""
    return [s for c in chosen.values() for n in names
            for s in grid.build_specs([c.method], [c.fusion], seeds,
                                      [*tuning.DATA, *tuning.as_sets(c.setting), DEVIATIONS[n][0]])]


def arm(records: Sequence[Record], choice: tuning.Choice, overrides: dict) -> list[Record]:
    """The runs of ``choice``'s method and fusion whose remaining overrides (``tuning.final_view``'s) are exactly
    ``overrides`` (values compared as YAML reads them), newest per seed."""
    import yaml

    want = {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in overrides.items()}
    return latest_per_seed(r for r in records if r.method == choice.method and r.fusion == choice.fusion
                           and r.overrides == want)


def rows(final: Sequence[Record], chosen: dict[str, tuning.Choice], names: Sequence[str]) -> list[list[str]]:
    out = []
    for c in chosen.values():
        ours = arm(final, c, {})
        for n in names:
            theirs = arm(final, c, official_sets(n))
            diff = paired_gain(theirs, ours)
            out.append([c.method, f"`{DEVIATIONS[n][0]}`: {DEVIATIONS[n][1]}", str(diff.n if diff else 0),
                        fmt(stat(ours, acc("acc_fused")), 100), fmt(stat(theirs, acc("acc_fused")), 100),
                        stats.fmt_diff(diff) if diff else DASH])
    return out


def markdown(final: Sequence[Record], chosen: dict[str, tuning.Choice], names: Sequence[str]) -> str:
    head = ("## The official code's choices avremix does not make by default, measured\n\n"
            "Test accuracy (%, fused, checkpoint selected on validation), mean ± sample std over seeds, each method at "
            "its tuned setting; official − avremix: per-seed paired difference in points, mean ± std, then the 95 % "
            "bootstrap interval over test clips (`*`: excludes 0). `python -m experiments.deviations`.\n\n")
    table = markdown_table(["method", "official value (the rest as avremix)", "seeds", "avremix default",
                            "official value", "official − avremix"], rows(final, chosen, names))
    picked = selection.per_seed([r for r in final if not r.overrides])  # the chosen settings' plain runs
    return head + table + "\n\n" + (selection.markdown(picked, "concat") if picked else "")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.deviations", description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=Path, default=Path("experiments/results/records.json"),
                    help="the tuned grid's saved runs (experiments.tables writes them)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", choices=list(tuning.SPACE), default=["baseline", "remix"])
    ap.add_argument("--deviations", nargs="+", choices=list(DEVIATIONS), default=list(DEVIATIONS))
    ap.add_argument("--jobs", type=int, default=1, help="experiments run at once (dvc queue start -j)")
    ap.add_argument("--poll", type=float, default=10.0, help="seconds between `dvc queue status` polls")
    ap.add_argument("--dry-run", action="store_true", help="print the dvc commands, run nothing")
    ap.add_argument("--out", type=Path, help="also write deviations.md into this folder")
    args = ap.parse_args(argv)
    if not args.records.is_file():
        sys.exit(f"experiments.deviations: no saved records at {args.records}: run experiments.tuning, then "
                 "experiments.tables --out experiments/results")
    saved = load_records(args.records)
    chosen = tuning.select(saved, methods=args.methods)
    missing = sorted(set(args.methods) - set(chosen))
    if missing:
        sys.exit(f"experiments.deviations: no tuning run of {missing} in {args.records}")
    try:
        grid.run_grid(specs(chosen, args.deviations, args.seeds), jobs=args.jobs, interval=args.poll,
                      skip_existing=True, dry_run=args.dry_run)
        if args.dry_run:
            return
        new = collect(".")
    except (grid.GridError, ValueError, OSError) as e:
        sys.exit(f"experiments.deviations: {e}")
    seen = {(r.name, r.rev) for r in saved}
    final = tuning.final_view([*saved, *(r for r in new if (r.name, r.rev) not in seen)], chosen)
    text = markdown(final, chosen, args.deviations)
    emit(text, args.out, "deviations.md")


if __name__ == "__main__":
    main()
