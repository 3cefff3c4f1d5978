"""The experiments as one compact table that fits the terminal: what ``dvc exp show`` shows, readable.

Usage (in the repository root, the venv active)::

    python -m experiments.show [--all-commits] [--records FILE] [--names] [--width N]

One row per run (a method of an experiment, and the workspace's ``dvc repro`` results): method, fusion, seed, the
params that differ from params.yaml of its commit and are not the same in every row (the ones every row shares
are printed once, under the table), the validation accuracy of the checkpoint the run selected (log.json
``best.val_fused``) and its test accuracy (metrics.json ``acc_fused``), in %. Rows are sorted by method (baseline
first), fusion, settings and seed. The settings column takes the width the others leave (``--width``, default the
terminal's) and wraps onto more lines rather than cutting anything off.

Reads ``dvc exp show --json`` (:func:`experiments.records.collect`; each run's log.json from its commit), or the
records file ``experiments.tables`` writes (``--records experiments/results/records.json``: the tuned grid).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

from experiments.records import WORKSPACE, Record, cli_records, collect
from pipeline.dvc_cli import DvcError

PREFIXES = ("train.method_params.", "train.")  # dropped from a setting's key (train.lr -> lr)
COLUMNS = (("method", 14), ("fusion", 10), ("seed", 4))  # fixed columns and their widths
SCORES = (("val %", 6), ("test %", 6))
MIN_SETTINGS = 12  # the settings column is never narrower


def short_key(key: str) -> str:
    """``train.lr`` -> ``lr``; ``train.method_params.mla.alpha`` -> ``mla.alpha``; other sections keep theirs."""
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key.removeprefix(prefix)
    return key


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def shared_overrides(records: Sequence[Record]) -> dict[str, Any]:
    """The overrides every record has, with the same value (printed once, under the table)."""
    if not records:
        return {}
    first = records[0].overrides
    return {k: v for k, v in first.items() if all(k in r.overrides and r.overrides[k] == v for r in records)}


def settings(r: Record, shared: dict[str, Any]) -> str:
    """The record's overrides less the shared ones, ``key=value`` with short keys, sorted."""
    items = sorted((short_key(k), _value(v)) for k, v in r.overrides.items() if k not in shared)
    return " ".join(f"{k}={v}" for k, v in items)


def _pct(v: float | None) -> str:
    return f"{100 * v:.1f}" if v is not None else "—"


def _sort_key(r: Record, shared: dict[str, Any]) -> tuple:
    return (r.name != WORKSPACE, r.method != "baseline", r.method, r.fusion, settings(r, shared), r.seed, r.name)


def table(records: Sequence[Record], width: int = 100, names: bool = False) -> str:
    """The compact table (see the module docstring), every line at most ``width`` characters wide when the
    fixed columns fit (the settings column wraps)."""
    shared = shared_overrides(records)
    fixed = [*COLUMNS, *((("experiment", 24),) if names else ())]
    fixed_w = sum(w + 1 for _, w in fixed) + sum(w + 1 for _, w in SCORES)
    set_w = max(MIN_SETTINGS, width - fixed_w)
    head = [*(h.ljust(w) for h, w in fixed), "settings".ljust(set_w), *(h.rjust(w) for h, w in SCORES)]
    lines = [" ".join(head).rstrip()]
    for r in sorted(records, key=lambda r: _sort_key(r, shared)):
        cells = [r.method, r.fusion, str(r.seed), *((r.name,) if names else ())]
        left = " ".join(c[:w].ljust(w) for c, (_, w) in zip(cells, fixed))
        wrapped = textwrap.wrap(settings(r, shared), set_w, break_on_hyphens=False) or [""]
        scores = " ".join(s.rjust(w) for s, (_, w) in zip((_pct(r.val), _pct(r.metrics.get("acc_fused"))), SCORES))
        lines.append(f"{left} {wrapped[0].ljust(set_w)} {scores}".rstrip())
        lines += [(" " * (len(left) + 1) + more).rstrip() for more in wrapped[1:]]
    foot = [f"{len(records)} run(s); val: the selected checkpoint's validation accuracy, test: its test accuracy "
            "(fused, %); settings: the params that differ from params.yaml"]
    if shared:
        foot.append("every run also: " + " ".join(f"{k}={_value(v)}" for k, v in sorted(shared.items())))
    return "\n".join(lines + [""] + [ln for text in foot for ln in textwrap.wrap(text, max(width, 40))])


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.show", description=__doc__.split("\n\n")[0])
    ap.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    ap.add_argument("--records", type=Path, help="read the runs from this records.json (experiments.tables writes "
                    "it) instead of `dvc exp show`")
    ap.add_argument("--names", action="store_true", help="add a column with each run's experiment name")
    ap.add_argument("--width", type=int, default=shutil.get_terminal_size((100, 24)).columns,
                    help="the table's width in characters (default: the terminal's)")
    args = ap.parse_args(argv)
    if args.records is not None:
        records = cli_records("experiments.show", False, args.records, read=True)
    else:
        try:
            records = collect(".", args.all_commits, workspace=True, predictions=False)
        except DvcError as e:
            sys.exit(f"experiments.show: {e}")
    print(table(records, args.width, args.names))


if __name__ == "__main__":
    main()
