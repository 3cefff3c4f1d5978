"""The same tuning budget for every method, chosen on validation; then the chosen settings over seeds.

Usage (in the repository root, the venv active; a quiet machine: Table 3's times come from these runs)::

    python -m experiments.tuning [--seeds 0 1 2] [--tune-seed 0] [--jobs 1] [--dry-run]
    python -m experiments.tables --out experiments/results     # then: the tables, the chosen settings

Phase 1 (tune): every method of the paper's grids gets the same budget, :data:`LRS` x its knob's two values
(:data:`SPACE`) = 4 settings, one seed (``--tune-seed``), on the fusion it is compared on; each run is a DVC
experiment (:mod:`experiments.grid`). Phase 2: per method the setting with the best validation accuracy
(:func:`select`; the validation accuracy of the checkpoint the run selected, ``log.json`` ``best.val_fused``;
ties go to the first setting in declared order) is run at every seed of ``--seeds`` in every cell of the
paper's grids (:data:`experiments.grid.PAPER_GRIDS`: baseline's choice in every baseline cell, Remix's in
every Remix cell, Tables 5-6 and Figure 3 included). Test accuracy is never read to choose.

Every run uses the grid's data, :data:`DATA`: the ``cremad_like`` benchmark (``synth.difficulty``: fused accuracy
of the official baseline in 60-75 %, audio far above video, docs/datasets.md), 250 clips per class split
0.4 / 0.2 / 0.4 (about 600 / 300 / 600 clips: one test clip = 0.17 points), and every epoch's test accuracy
logged (``train.log_test_acc``, never selected on) so that :mod:`experiments.selection` can measure the official
scripts' test-set selection against ours.

A run's name is a hash of its ``-S`` values (:func:`experiments.grid.default_prefix`), so the tuning run of the
chosen setting at ``--tune-seed`` *is* that cell's run at that seed (reused, not rerun), and a rerun of this
command skips every finished run (``--skip-existing``): a stop loses at most the run in flight.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
from typing import Any, Iterable, Sequence

import yaml

from experiments import grid
from experiments.cells import DASH, acc, fmt, markdown_table, stat
from experiments.records import collect

DATA = ("synth.difficulty=cremad_like", "synth.clips_per_class=250", "prepare.ratios=[0.4,0.2,0.4]",
        "train.log_test_acc=true")  # the grid's data (see the docstring)
LRS = (0.001, 0.003)  # train.lr values every method is tried at
MP = "train.method_params"
SPACE = {  # method -> (fusion tuned on, its main knob, two values); with LRS: 4 settings each, the same budget
    "baseline": ("concat", "train.weight_decay", (0.0001, 0.01)),
    "remix": ("concat", "train.warmup_epochs", (4, 6)),
    "ogm_ge": ("concat", f"{MP}.ogm_ge.alpha", (0.4, 0.8)),
    "pmr": ("concat", f"{MP}.pmr.alpha", (0.5, 1.0)),
    "gblend": ("concat", f"{MP}.gblend.super_epoch", (2, 4)),
    "resample": ("concat", f"{MP}.resample.scale", (1.0, 2.0)),
    "mla": ("concat", f"{MP}.mla.alpha", (0.1, 1.0)),
    "resample_remix": ("concat", f"{MP}.resample_remix.scale", (1.0, 2.0)),
    "mla_remix": ("concat", f"{MP}.mla_remix.alpha", (0.1, 1.0)),
    "greedy": ("mmtm", f"{MP}.greedy.threshold", (0.01, 0.1)),
}
TABLE_DEFAULTS = {"train.ablation": "full", "train.unimodal_pred": "heads", "train.grad_angle": ""}  # tuned at these

Setting = tuple[tuple[str, Any], ...]  # ((key, value), ...) in declared order: train.lr first


def candidates(method: str) -> list[Setting]:
    """The method's settings in declared order (learning rate outer, knob inner)."""
    _, knob, values = SPACE[method]
    return [(("train.lr", lr), (knob, v)) for lr, v in itertools.product(LRS, values)]


def as_sets(setting: Setting) -> list[str]:
    """``key=value`` strings of ``dvc exp run -S`` (values as JSON, which YAML reads back the same)."""
    return [f"{k}={json.dumps(v)}" for k, v in setting]


def tuning_specs(seed: int, methods: Iterable[str] = SPACE, knob_values: int = 2) -> list[grid.Spec]:
    """Phase 1: every candidate of every method at ``seed`` on the method's tuning fusion (``knob_values`` 1: only
    those at the knob's first value, a budget of the learning rates alone; :func:`select` chooses among the run ones)."""
    return [spec for m in methods for s in candidates(m) if s[1][1] in SPACE[m][2][:knob_values]
            for spec in grid.build_specs([m], [SPACE[m][0]], [seed], [*DATA, *as_sets(s)])]


# per grid of experiments.grid.PAPER_GRIDS, the order its cells run in phase 2: Tables 2-3 first (the comparison
# the tuning is for, and Table 3's times), then Tables 1, 4, 5 and 6 together (seed-major: a grid stopped early
# leaves each of them at fewer seeds, none empty), then Figure 3
PRIORITY = (1, 0, 0, 1, 1, 1, 1, 2, 2)


def final_specs(chosen: dict[str, Setting], seeds: Sequence[int], max_priority: int = max(PRIORITY)) -> list[grid.Spec]:
    """Phase 2: every cell of :data:`experiments.grid.PAPER_GRIDS` of a :data:`PRIORITY` up to ``max_priority`` (0:
    Tables 2-3 only) at ``seeds``, each method of ``chosen`` at its chosen setting; by priority (a cell shared by two
    grids: the earlier), then seed-major within it (every cell at the first seed, then the next), so a stopped grid
    leaves the first tables filled at every seed."""
    specs: dict[str, grid.Spec] = {}
    rank: dict[str, int] = {}
    for (methods, fusions, grid_sets), prio in zip(grid.PAPER_GRIDS, PRIORITY, strict=True):
        for m in (m for m in methods if m in chosen and prio <= max_priority):
            for s in grid.build_specs([m], fusions, seeds, [*DATA, *as_sets(chosen[m]), *grid_sets]):
                specs.setdefault(s.name, s)
                rank[s.name] = min(rank.get(s.name, prio), prio)
    order = {int(seed): i for i, seed in reversed(list(enumerate(seeds)))}
    return sorted(specs.values(), key=lambda s: (rank[s.name], order[s.seed]))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def data_keys() -> dict[str, Any]:
    return {k: yaml.safe_load(v) for k, v in (d.split("=", 1) for d in DATA)}  # as DVC reads a -S value


def matches(record, pairs: Iterable[tuple[str, Any]]) -> bool:
    return all(_same(record.param(k), v) for k, v in pairs)


@dataclasses.dataclass(frozen=True)
class Choice:
    method: str
    fusion: str
    setting: Setting  # the chosen one
    val: float  # its validation accuracy (fraction)
    tried: tuple[tuple[Setting, float | None], ...]  # every candidate and its validation accuracy (None: not run)


def select(records: Sequence, seed: int = 0, methods: Iterable[str] = SPACE) -> dict[str, Choice]:
    """Per method the candidate with the best validation accuracy at ``seed`` (``Record.val``: never test);
    ties to the first in declared order. Methods with no finished candidate are left out."""
    out = {}
    base = [*data_keys().items(), *TABLE_DEFAULTS.items()]
    for m in methods:
        fusion = SPACE[m][0]
        runs = [r for r in records if r.method == m and r.fusion == fusion and r.seed == seed and matches(r, base)]
        tried = []
        for setting in candidates(m):
            vals = [r.val for r in runs if matches(r, setting) and r.val is not None]
            tried.append((setting, max(vals) if vals else None))  # one run per name; a rerun keeps the same val
        done = [(v, -i, s) for i, (s, v) in enumerate(tried) if v is not None]
        if done:
            v, _, s = max(done)
            out[m] = Choice(m, fusion, s, v, tuple(tried))
    return out


def final_view(records: Sequence, chosen: dict[str, Choice]) -> list:
    """The records of the tables: each method's runs at its chosen setting on the grid's data, with the tuned
    keys and the data keys taken out of their overrides (the chosen-settings table shows them). No choice at
    all (no tuning runs): ``records`` unchanged."""
    if not chosen:
        return list(records)
    data = data_keys()
    out = []
    for r in records:
        c = chosen.get(r.method)
        if c is None or not matches(r, data.items()) or not matches(r, c.setting):
            continue
        drop = {k for k, _ in c.setting} | set(data)
        out.append(dataclasses.replace(r, overrides={k: v for k, v in r.overrides.items() if k not in drop}))
    return out


def _short(key: str) -> str:
    return key.removeprefix(f"{MP}.").removeprefix("train.")


def chosen_markdown(chosen: dict[str, Choice], final: Sequence) -> str:
    """The chosen-settings table: per method every candidate's validation accuracy, the choice, and the chosen
    setting's test accuracy over the seeds (read for reporting only, after the choice)."""
    lrs = ", ".join(map(str, LRS))
    rows = []
    for m, c in chosen.items():
        knob = _short(SPACE[m][1])
        tried = "; ".join(f"lr {s[0][1]}, {knob} {s[1][1]}: " + (f"{100 * v:.1f}" if v is not None else DASH)
                          for s, v in c.tried)
        test = stat([r for r in final if r.method == m and r.fusion == c.fusion and not r.overrides], acc("acc_fused"))
        rows.append([m, c.fusion, str(c.setting[0][1]), f"{knob} = {c.setting[1][1]}", f"{100 * c.val:.2f}",
                     fmt(test, 100), tried])
    head = ("## Chosen settings (tuned on validation, one seed)\n\n"
            f"Every method: learning rate in {{{lrs}}} x two values of its main knob, one seed "
            "(`python -m experiments.tuning`); chosen by the validation accuracy of the checkpoint each run "
            "selected (on validation); test accuracy shown for the chosen setting only, over the seeds run.\n\n")
    return head + markdown_table(["method", "fusion", "lr", "knob", "val fused % (chosen)", "test fused %",
                                  "val fused % of every candidate"], rows) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.tuning", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the chosen settings")
    ap.add_argument("--tune-seed", type=int, default=0, help="the one seed of the tuning runs")
    ap.add_argument("--jobs", type=int, default=1, help="experiments run at once (dvc queue start -j)")
    ap.add_argument("--poll", type=float, default=10.0, help="seconds between `dvc queue status` polls")
    ap.add_argument("--dry-run", action="store_true", help="print phase 1's dvc commands, run nothing")
    ap.add_argument("--methods", nargs="+", choices=list(SPACE), default=list(SPACE), help="tune and run only these")
    ap.add_argument("--knob-values", type=int, choices=(1, 2), default=2,
                    help="tune each method's knob at its 2 values (default) or at its first only (the same for all)")
    ap.add_argument("--max-priority", type=int, default=max(PRIORITY),
                    help="phase 2 runs the grids of PRIORITY <= this (0: Tables 2-3, 1: and Tables 1, 4-6, 2: all)")
    args = ap.parse_args(argv)
    try:
        grid.run_grid(tuning_specs(args.tune_seed, args.methods, args.knob_values), jobs=args.jobs, interval=args.poll,
                      skip_existing=True, dry_run=args.dry_run)
        if args.dry_run:
            return
        chosen = select(collect("."), args.tune_seed, args.methods)
        missing = sorted(set(args.methods) - set(chosen))
        if missing:
            raise grid.GridError(f"no finished tuning run for {missing}: rerun this command")
        print(chosen_markdown(chosen, []))
        grid.run_grid(final_specs({m: c.setting for m, c in chosen.items()}, args.seeds, args.max_priority),
                      jobs=args.jobs, interval=args.poll, skip_existing=True)
    except (grid.GridError, ValueError, OSError) as e:
        sys.exit(f"experiments.tuning: {e}")
    print("done; tables: python -m experiments.tables --out experiments/results")


if __name__ == "__main__":
    main()
