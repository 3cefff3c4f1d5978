"""The paper's Tables 1-6 from the DVC experiments of :mod:`experiments.grid`.

Usage (in the repository root)::

    python -m experiments.tables [--out results/paper_tables] [--all-commits] [--records FILE] [--from-records]
    python -m experiments.tables --paper-only --out experiments/results   # the paper's numbers alone

prints every table as Markdown and writes ``<out>/tables.md`` and one ``<out>/tableN.png`` per table: its
numbers as grouped bars (mean, sample-std error bar, one dot per seed), rows along x, columns as bars, the
paper's values as one marker per dataset. The collected runs are saved to ``--records`` (default
``<out>/records.json``); ``--from-records`` renders from that file instead of ``dvc exp show`` (a checkout
without the experiments' refs). ``--paper-only`` writes ``<out>/paper_tables.md``: the paper's numbers in
our tables' layout, no runs read.

How runs are read: :mod:`experiments.records`; cells (mean ± std over seeds): :mod:`experiments.cells`;
the paper's columns: :mod:`experiments.paper_rows`; Markdown and PNG: :mod:`experiments.render`.

Grouping: runs with the same method, fusion and overrides are the seeds of one cell: mean ± sample std (ddof 1) over distinct seeds
(a seed run twice: the newest run), n shown; rows with overrides carry them in their label. Values:
test accuracies in % (metrics.json ``acc_fused``, ``acc_<modality>``); expansion: the mean over epochs
of log.json history rows' ``expansion`` (1.0 where a row has none: no resampling); times: sums over
epochs of the history rows' ``train_s`` (training steps), ``score_s`` (remix scoring passes) and
``epoch_s`` (whole epochs, validation included), in seconds.

The tables and the grids that fill them (method names as registered in train/methods); all of them at once,
each shared run once: ``python -m experiments.grid --paper --seeds 0 1 2``:

- Table 1, late fusions x {baseline, remix} (rows: every fusion run except mmtm / centralnet)::

    python -m experiments.grid --methods baseline remix --fusions concat sum decision film gated --seeds 0 1 2

- Table 2, balancing methods (fused, each modality alone, expansion factor) and
- Table 3, training time per method and its ratio to baseline (same fusion and overrides)::

    python -m experiments.grid --methods baseline ogm_ge pmr gblend resample mla remix resample_remix mla_remix --fusions concat --seeds 0 1 2
    python -m experiments.grid --methods baseline greedy --fusions mmtm --seeds 0 1 2   # Greedy needs MMTM

- Table 4, intermediate fusions x {baseline, remix}::

    python -m experiments.grid --methods baseline remix --fusions mmtm centralnet --seeds 0 1 2

- Table 5, decouple / reassemble ablation of remix (``train.ablation``; baseline and full from Table 1's grid)::

    python -m experiments.grid --methods remix --fusions concat --seeds 0 1 2 --set train.ablation=decouple
    python -m experiments.grid --methods remix --fusions concat --seeds 0 1 2 --set train.ablation=reassemble

- Table 6, unimodal predictions for remix's scoring (``train.unimodal_pred``: heads from Table 1's grid)::

    python -m experiments.grid --methods remix --fusions concat --seeds 0 1 2 --set train.unimodal_pred=dropout

Tables 1-4 take runs with train.ablation=full and train.unimodal_pred=heads; no table takes the runs of
:mod:`experiments.figure3` (``train.grad_angle`` set: the same training, slower by a backward per step); a
table with no run prints "no runs yet" and the grid that fills it.

Tuned grids (:mod:`experiments.tuning`): when the records hold tuning runs, each method's setting is chosen on
validation (:func:`experiments.tuning.select`), the tables take only the runs at the chosen settings (their tuned
keys and the grid's data keys leave the row labels), and ``tables.md`` opens with the chosen-settings table.
Gains (Tables 1, 2, 4, and Table 2's "remix over X" = X + Remix over X) are paired by seed with a 95 % bootstrap
interval over the test clips and a ``*`` where it excludes zero (:mod:`experiments.stats`; the clips come from
each run's ``runs/<method>/eval/predictions.csv``).

The paper's numbers (:mod:`experiments.reference`, read from the paper's tables.csv): each of our columns is followed
by ``paper <column> (CREMA-D / KS)`` where the paper has that column; each gain column (ours: over our baseline of
the same fusion and overrides) by the paper's gain over its baseline; Table 3's ratio by the paper's time ratio.
The paper's rows attach to our rows without overrides (Tables 2 and 3: on concat, Greedy on mmtm); a paper row
with no run of ours is appended with our cells blank.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Iterable, Sequence

from experiments import reference, stats, tuning
from experiments.cells import DASH, Panel, Table, acc, fmt, latest_per_seed, pct, seed_values, stat, variant
from experiments.cells import default_setting as _default_setting
from experiments.cells import groups as _groups
from experiments.cells import label as _label
from experiments.cells import measured as _measured
from experiments.grid import PAPER_GRIDS
from experiments.paper_rows import GAIN, RATIO, REMIX_GAIN, paper_cells, remix_of, with_paper
from experiments.records import Record, cli_records, describe_data
from experiments.render import document, render_png
from train.fusions import registry as fusion_registry
from train.fusions.intermediate import IntermediateModel

INTERMEDIATE = tuple(n for n, cls in fusion_registry().items() if issubclass(cls, IntermediateModel))  # Table 4
# display order: the fusions of the paper's grids as they appear there (late first, as in Table 1), then the rest
FUSION_ORDER = tuple(dict.fromkeys(f for _, fusions, _ in PAPER_GRIDS for f in fusions if f not in INTERMEDIATE)) \
    + tuple(dict.fromkeys(f for _, fusions, _ in PAPER_GRIDS for f in fusions if f in INTERMEDIATE))
ABLATIONS = ("decouple", "reassemble", "full")  # train.ablation values, Table 5's column order
UNIMODAL_PREDS = ("heads", "dropout")  # train.unimodal_pred values, Table 6's column order
PAPER_ROW_FUSION = {"greedy": "mmtm"}  # the paper's Table 2/3 rows are all on concat; Greedy needs MMTM here

G = "python -m experiments.grid"
FILL = {  # table key -> the grid commands that fill it (also in the module docstring)
    "table1": [f"{G} --methods baseline remix --fusions concat sum decision film gated --seeds 0 1 2"],
    "table2": [f"{G} --methods baseline ogm_ge pmr gblend resample mla remix resample_remix mla_remix --fusions concat --seeds 0 1 2", f"{G} --methods baseline greedy --fusions mmtm --seeds 0 1 2"],
    "table3": [f"{G} --methods baseline ogm_ge pmr gblend resample mla remix resample_remix mla_remix --fusions concat --seeds 0 1 2", f"{G} --methods baseline greedy --fusions mmtm --seeds 0 1 2"],
    "table4": [f"{G} --methods baseline remix --fusions mmtm centralnet --seeds 0 1 2"],
    "table5": [f"{G} --methods remix --fusions concat --seeds 0 1 2 --set train.ablation={a}"
               for a in ("decouple", "reassemble")],
    "table6": [f"{G} --methods remix --fusions concat --seeds 0 1 2 --set train.unimodal_pred=dropout"],
}



def _finish(records: list[Record], table: Table) -> Table:
    """``table`` with the paper's numbers beside its rows (:func:`experiments.paper_rows.with_paper`), the grids
    that fill it and the data its runs are on."""
    table.fill, table.data = FILL[table.key], describe_data(records)
    return with_paper(table)


def _fusion_key(f: str) -> tuple:
    return (FUSION_ORDER.index(f), "") if f in FUSION_ORDER else (len(FUSION_ORDER), f)


def _method_key(m: str) -> tuple:
    return (0 if m == "baseline" else 2 if "remix" in m else 1, m)



def paired_gain(mine: Iterable[Record], base: Iterable[Record], column: str = "fused") -> stats.Diff | None:
    """``mine`` over ``base``, run by run at the seeds both have (each seed's newest run): per-seed differences
    of test accuracy and a bootstrap interval over the test clips (:mod:`experiments.stats`)."""
    x, y = latest_per_seed(mine), latest_per_seed(base)
    key = f"acc_{column}"
    return stats.paired({r.seed: r.metrics[key] for r in x if key in r.metrics},
                        {r.seed: r.metrics[key] for r in y if key in r.metrics},
                        {r.seed: c for r in x if (c := r.clips(column))}, {r.seed: c for r in y if (c := r.clips(column))})


def _gain(mine: Iterable[Record], base: Iterable[Record]) -> str:
    return stats.fmt_diff(paired_gain(mine, base))


def _fusion_table(key: str, title: str, records: list[Record], intermediate: bool) -> Table:
    paper_rows = set(paper_cells(key))  # the paper's Table 4 has concatenation too, for reference
    sel = [r for r in records if r.method in ("baseline", "remix") and _default_setting(r)
           and ((r.fusion in INTERMEDIATE) == intermediate or (r.fusion in paper_rows and not variant(r)))]
    rows, bars, keys = [], [], []
    for (fusion, var), rs in sorted(_groups(sel, lambda r: (r.fusion, variant(r))).items(),
                                    key=lambda kv: (_fusion_key(kv[0][0]), kv[0][1])):
        by = {m: [r for r in rs if r.method == m] for m in ("baseline", "remix")}
        b, m = (stat(by[k], acc("acc_fused")) for k in ("baseline", "remix"))
        rows.append([_label(fusion, var), fmt(b, 100), fmt(m, 100), _gain(by["remix"], by["baseline"])])
        bars.append((_label(fusion, var), {k: pct(v, "acc_fused") for k, v in by.items()}))
        keys.append(None if var else fusion)
    return _finish(records, Table(key, title, ["fusion", "baseline", "remix", GAIN], rows, bars, row_keys=keys))


def table1(records: list[Record]) -> Table:
    return _fusion_table("table1", "Table 1: fusion methods, baseline vs remix (fused test accuracy %)", records, False)


def table4(records: list[Record]) -> Table:
    return _fusion_table("table4", "Table 4: intermediate fusions, baseline vs remix (fused test accuracy %)",
                         records, True)


def _method_rows(records: list[Record]) -> list[tuple[tuple, list[Record]]]:
    sel = [r for r in records if _default_setting(r)]
    return sorted(_groups(sel, lambda r: (r.method, r.fusion, variant(r))).items(),
                  key=lambda kv: (_fusion_key(kv[0][1]), kv[0][2], _method_key(kv[0][0])))


def _paper_method_key(method: str, fusion: str, var: str) -> str | None:
    """The paper's Table 2/3 row beside our (method, fusion, variant) row, if any."""
    return method if not var and fusion == PAPER_ROW_FUSION.get(method, "concat") else None


def table2(records: list[Record]) -> Table:
    groups = _method_rows(records)
    mods: list[str] = []
    for _, rs in groups:
        for r in rs:
            mods += [m for m in r.param("train.modalities", []) if m not in mods]
    runs = dict(groups)
    rows = [[_label(method, var), fusion, fmt(stat(rs, acc("acc_fused")), 100),
             *[fmt(stat(rs, acc(f"acc_{m}")), 100) for m in mods], fmt(stat(rs, lambda r: r.expansion)),
             _gain(rs, runs.get(("baseline", fusion, var), [])) if method != "baseline" else DASH,
             _gain(rs, runs.get((remix_of(method), fusion, var), [])) if remix_of(method) else DASH]
            for (method, fusion, var), rs in groups]
    bars = [(f"{_label(method, var)}\n{fusion}", {"fused": pct(rs, "acc_fused"),
                                                  **{f"{m}-only": pct(rs, f"acc_{m}") for m in mods}})
            for (method, fusion, var), rs in groups]
    return _finish(records, Table(
        "table2", "Table 2: balancing methods (test accuracy %, expansion factor of the training set, gain over "
        "the baseline of the same fusion; remix over X: X + Remix over X)",
        ["method", "fusion", "fused", *[f"{m}-only" for m in mods], "expansion", GAIN, REMIX_GAIN],
        rows, bars, row_keys=[_paper_method_key(*k) for k, _ in groups],
        plot_title="Table 2: balancing methods, test accuracy % (fused, and each modality alone)"))


def _paper_comparison(method: str, fusion: str) -> bool:
    """A row of the paper's method comparison (Tables 2-3): every method on concat; Greedy, and the baseline it
    is compared with, on MMTM."""
    return fusion == PAPER_ROW_FUSION.get(method, "concat") or (method == "baseline" and fusion in PAPER_ROW_FUSION.values())


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def table3(records: list[Record]) -> Table:
    """Training time of the methods of the paper's comparison (:func:`_paper_comparison`): the runs that
    :mod:`experiments.tuning` times one at a time, first; other fusions' costs: ``benchmarks/epoch_cost.py``.
    The ratio is of the medians over seeds of the total times (robust to one seed's run slowed by other work
    on the machine; mean ± std beside it)."""
    groups = [(k, rs) for k, rs in _method_rows(records) if _paper_comparison(k[0], k[1])]
    median = {k: _median(seed_values(rs, lambda r: r.epoch_s)) for k, rs in groups}
    rows, bars, ratios = [], [], []
    for (method, fusion, var), rs in groups:
        base, mine = median.get(("baseline", fusion, var)), median[(method, fusion, var)]
        ok = bool(base and mine)
        rows.append([_label(method, var), fusion, fmt(stat(rs, lambda r: r.train_s)),
                     fmt(stat(rs, lambda r: r.score_s)), fmt(stat(rs, lambda r: r.epoch_s)),
                     f"{mine:.2f}" if mine is not None else DASH, f"{mine / base:.2f}" if ok else DASH])
        label = f"{_label(method, var)}\n{fusion}"
        bars.append((label, {"train steps": seed_values(rs, lambda r: r.train_s),
                             "scoring": seed_values(rs, lambda r: r.score_s), "total": seed_values(rs, lambda r: r.epoch_s)}))
        ratios.append((label, {RATIO: [v / base for v in seed_values(rs, lambda r: r.epoch_s)] if ok else []}))
    return _finish(records, Table(
        "table3", "Table 3: training time per method (s, summed over epochs; ratio of the median total to the "
        "baseline's of the same fusion; every method on concat, Greedy on MMTM)",
        ["method", "fusion", "train steps s", "scoring s", "total s", "median total s", RATIO], rows, bars,
        unit="time (s)", row_keys=[_paper_method_key(*k) for k, _ in groups],
        plot_title="Table 3: training time per method (s, summed over epochs: training steps, remix's scoring, whole "
        "epochs; every method on concat, Greedy on MMTM), then each seed's total over the baseline's median",
        extra=[Panel(ratios, "total time / the baseline's median (same fusion)", "time ratio to the baseline")]))


def _setting_table(key: str, title: str, records: list[Record], param: str, default: str, order: Sequence[str],
                   other: str) -> Table:
    """Remix runs with ``param`` varied (the other setting at its default), beside baseline; rows with a
    non-default value, or a row of the paper's table (at the defaults: the paper's row beside Table 1's runs)."""
    remix = [r for r in records if r.method == "remix" and r.param(other[0], other[1]) == other[1] and not _measured(r)]
    base = [r for r in records if r.method == "baseline" and _default_setting(r)]
    values = list(order) + sorted({r.param(param, default) for r in remix} - set(order))
    groups = _groups(remix, lambda r: (r.fusion, variant(r, [param])))
    paper_rows = set(paper_cells(key))
    rows, bars, keys, filled = [], [], [], False
    for (fusion, var), rs in sorted(groups.items(), key=lambda kv: (_fusion_key(kv[0][0]), kv[0][1])):
        varied = any(r.param(param, default) != default for r in rs)
        filled = filled or varied
        if not varied and (var or fusion not in paper_rows):
            continue  # only the default setting and no paper row: nothing of this table
        cells = {"baseline": [r for r in base if r.fusion == fusion and variant(r, [param]) == var],
                 **{f"remix {v}": [r for r in rs if r.param(param, default) == v] for v in values}}
        rows.append([_label(fusion, var), *[fmt(stat(c, acc("acc_fused")), 100) for c in cells.values()]])
        bars.append((_label(fusion, var), {k: pct(c, "acc_fused") for k, c in cells.items()}))
        keys.append(None if var else fusion)
    return _finish(records, Table(key, title, ["fusion", "baseline", *[f"remix {v}" for v in values]], rows, bars,
                            row_keys=keys, filled=filled))


def table5(records: list[Record]) -> Table:
    return _setting_table("table5", "Table 5: decoupling / reassembling ablation of remix (train.ablation; "
                          "fused test accuracy %)", records, "train.ablation", "full", ABLATIONS,
                          ("train.unimodal_pred", "heads"))


def table6(records: list[Record]) -> Table:
    return _setting_table("table6", "Table 6: unimodal predictions for remix's scoring (train.unimodal_pred; "
                          "fused test accuracy %)", records, "train.unimodal_pred", "heads", UNIMODAL_PREDS,
                          ("train.ablation", "full"))


TABLES = (table1, table2, table3, table4, table5, table6)


def build(records: list[Record]) -> list[Table]:
    return [t(records) for t in TABLES]


# -- command line ----------------------------------------------------------------------------------
def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.tables", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/paper_tables", help="folder for tables.md and tableN.png")
    ap.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    ap.add_argument("--records", type=Path, help="JSON file of the collected runs: written after reading the "
                    "experiments, read with --from-records (default: <out>/records.json)")
    ap.add_argument("--from-records", action="store_true", help="render from --records, not from `dvc exp show`")
    ap.add_argument("--paper-csv", type=Path, default=reference.CSV, help="the paper's tables.csv")
    ap.add_argument("--paper-only", action="store_true", help="write only <out>/paper_tables.md: the paper's numbers "
                    "in our tables' layout, no runs read")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _args(argv)
    saved, reference.CSV = reference.CSV, args.paper_csv
    try:
        _main(args)
    finally:
        reference.CSV = saved  # a caller in the same process (a test) keeps its own


def _main(args: argparse.Namespace) -> None:
    prog = "experiments.tables"
    out = Path(args.out)
    try:
        reference.reported("table1")
    except (reference.ReferenceMissing, reference.PaperTableError) as e:
        sys.exit(f"{prog}: {e}")
    if args.paper_only:
        out.mkdir(parents=True, exist_ok=True)
        text = document(build([]), ours=False)
        (out / "paper_tables.md").write_text(text)
        print(text + f"\n(written to {out}/paper_tables.md)")
        return
    records = cli_records(prog, args.all_commits, args.records or out / "records.json", args.from_records)
    chosen = tuning.select(records)  # validation only; none (no tuning runs): every run as it is
    final = tuning.final_view(records, chosen)
    tables = build(final)
    out.mkdir(parents=True, exist_ok=True)
    text = document(tables, sections=[tuning.chosen_markdown(chosen, final)] if chosen else [])
    (out / "tables.md").write_text(text)
    for t in tables:
        render_png(t, out / f"{t.key}.png")
    print(text)
    print(f"({len(records)} run(s); written to {out}/tables.md and {out}/table1..6.png)")


if __name__ == "__main__":
    main()
