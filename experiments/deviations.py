"""What the official code's choices that avremix does not make by default do to accuracy, on the tuned grid's data.

Usage (in the repository root, the venv active, after ``experiments.tuning`` and ``experiments.tables``)::

    python -m experiments.deviations [--records experiments/results/records.json] [--seeds 0 1 2]
                                     [--methods baseline remix] [--deviations NAME ...] [--jobs 1] [--dry-run]
                                     [--out experiments/results] [--saved experiments/results/deviation_records.json]

Each method runs at the setting :mod:`experiments.tuning` chose for it (read from ``--records``, the tuned grid's
saved runs) with one official value of :data:`DEVIATIONS` set, at every seed of ``--seeds``, as DVC experiments of
HEAD (a rerun skips the finished ones). The avremix arm is the tuned grid's run of the same method, setting and
seed. The official arms' runs are kept in ``--saved`` (read, then rewritten with HEAD's new ones), so arms run at
earlier commits stay in the table. Per method and deviation: test accuracy (%) of both arms, mean ± sample std over seeds, and the paired
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
from experiments.records import Record, collect, load_records, save_records
from experiments.tables import paired_gain

DEVIATIONS = {  # name -> ({key: the official value}, what the official code does)
    "eval_resize": ({"train.eval_resize": "squash"}, "eval frames squashed to a square, not centre-cropped"),
    "bn_init": ({"train.bn_init": "normal"}, "BatchNorm weights drawn from N(1, 0.02), not set to 1"),
    "bn_split": ({"train.bn_split": 2}, "BatchNorm over two half-batches (DataParallel on 2 GPUs), first half's stats kept"),
    "spectrogram": ({"features.spectrogram": "linear"}, "audio as the 257-bin log STFT magnitude, not the 64-bin log-mel"),
    "frame_times": ({"features.frame_times": "seconds"}, "frames at 0, 1, 2 s (1 fps), not the centres of 3 segments"),
}
DEVIATIONS["all"] = ({k: v for d, _ in DEVIATIONS.values() for k, v in d.items()},
                     "every official value above at once, as the presets set them")
SAVED = Path("experiments/results/deviation_records.json")  # the official arms' runs, kept across commits


def official(name: str) -> dict:
    """{key: official value} of deviation ``name``."""
    return dict(DEVIATIONS[name][0])


def specs(chosen: dict[str, tuning.Choice], names: Sequence[str], seeds: Sequence[int],
          done: Sequence[Record] = ()) -> list[grid.Spec]:
    """The official arms: each chosen method at its setting with one deviation's official value, at each seed of
    ``seeds`` that ``done`` (``tuning.final_view`` records, e.g. the saved arms of earlier commits) lacks."""
    out = []
    for c in chosen.values():
        for n in names:
            ran = {r.seed for r in arm(done, c, official(n))}
            out += grid.build_specs([c.method], [c.fusion], [s for s in seeds if s not in ran],
                                    [*tuning.DATA, *tuning.as_sets([*c.setting, *official(n).items()])])
    return out


def label(sets: dict) -> str:
    """``key=value`` assignments as markdown code, comma-separated."""
    return ", ".join(f"`{k}={v}`" for k, v in sets.items())


def arm(records: Sequence[Record], choice: tuning.Choice, overrides: dict) -> list[Record]:
    """The runs of ``choice``'s method and fusion whose remaining overrides (``tuning.final_view``'s) are exactly
    ``overrides``, newest per seed."""
    return latest_per_seed(r for r in records if r.method == choice.method and r.fusion == choice.fusion
                           and r.overrides == overrides)


def rows(final: Sequence[Record], chosen: dict[str, tuning.Choice], names: Sequence[str]) -> list[list[str]]:
    out = []
    for c in chosen.values():
        ours = arm(final, c, {})
        for n in names:
            theirs = arm(final, c, official(n))
            diff = paired_gain(theirs, ours)
            out.append([c.method, f"{label(official(n))}: {DEVIATIONS[n][1]}", str(diff.n if diff else 0),
                        fmt(stat(ours, acc("acc_fused")), 100), fmt(stat(theirs, acc("acc_fused")), 100),
                        stats.fmt_diff(diff) if diff else DASH])
    return out


def remix_rows(final: Sequence[Record], chosen: dict[str, tuning.Choice], names: Sequence[str]) -> list[list[str]]:
    """Remix over the baseline with both at avremix's defaults, then with both at each deviation's official value."""
    if not {"remix", "baseline"} <= set(chosen):
        return []
    out = []
    for n in ("", *names):
        sets = official(n) if n else {}
        diff = paired_gain(arm(final, chosen["remix"], sets), arm(final, chosen["baseline"], sets))
        out.append([label(sets) or "avremix's defaults", str(diff.n if diff else 0),
                    stats.fmt_diff(diff) if diff else DASH])
    return out


def markdown(final: Sequence[Record], chosen: dict[str, tuning.Choice], names: Sequence[str]) -> str:
    head = ("## The official code's choices avremix does not make by default, measured\n\n"
            "Test accuracy (%, fused, checkpoint selected on validation), mean ± sample std over seeds, each method at "
            "its tuned setting; official − avremix: per-seed paired difference in points, mean ± std, then the 95 % "
            "bootstrap interval over test clips (`*`: excludes 0). `python -m experiments.deviations`.\n\n")
    table = markdown_table(["method", "official value(s) (the rest as avremix)", "seeds", "avremix default",
                            "official value", "official − avremix"], rows(final, chosen, names))
    gains = remix_rows(final, chosen, names)
    if gains:
        table += ("\n\n## Remix over the official baseline, both with the same choices\n\nRemix − baseline, fused test "
                  "accuracy (points), paired by seed, mean ± std [95 % bootstrap interval over test clips].\n\n"
                  + markdown_table(["both with", "seeds", "Remix − baseline"], gains))
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
    ap.add_argument("--saved", type=Path, default=SAVED, help="the official arms' runs of earlier commits: read, "
                    "then rewritten with this commit's added (HEAD's experiments are all `dvc exp show` sees)")
    args = ap.parse_args(argv)
    if not args.records.is_file():
        sys.exit(f"experiments.deviations: no saved records at {args.records}: run experiments.tuning, then "
                 "experiments.tables --out experiments/results")
    saved = load_records(args.records)
    chosen = tuning.select(saved, methods=args.methods)
    missing = sorted(set(args.methods) - set(chosen))
    if missing:
        sys.exit(f"experiments.deviations: no tuning run of {missing} in {args.records}")
    earlier = load_records(args.saved) if args.saved.is_file() else []
    todo = specs(chosen, args.deviations, args.seeds, tuning.final_view(earlier, chosen))
    try:
        grid.run_grid(todo, jobs=args.jobs, interval=args.poll, skip_existing=True, dry_run=args.dry_run)
        if args.dry_run:
            return
        new = collect(".")
    except (grid.GridError, ValueError, OSError) as e:
        sys.exit(f"experiments.deviations: {e}")
    seen = {(r.name, r.rev) for r in [*saved, *earlier]}
    arms = [*earlier, *(r for r in new if (r.name, r.rev) not in seen)]
    save_records(arms, args.saved)
    final = tuning.final_view([*saved, *arms], chosen)
    text = markdown(final, chosen, args.deviations)
    emit(text, args.out, "deviations.md")


if __name__ == "__main__":
    main()
