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

Collecting (why this way): one ``dvc exp show --json`` call gives every experiment of HEAD (of every
commit with ``--all-commits``) with its full params and its metrics: ``runs/<method>/metrics.json`` is
a git-tracked metric of the evaluate stage, so it is in the experiment's own commit. The per-epoch log
``runs/<method>/train/log.json`` lies inside the DVC-cached ``runs/<method>/train`` output, so it is
read from the experiment's commit with ``dvc.api.DVCFileSystem(rev=<experiment sha>)`` (queued
experiments store their outputs in the repository's own cache). Only finished experiments count: not
the workspace or commit rows (``dvc repro`` results), not queued, running or failed experiments.

Grouping: a run is (method: its train.methods entry; fusion; seed: train.seed, or base.seed when -1;
overrides: the params that differ from its commit's params.yaml, minus train.methods / fusion / seed,
``*.workers`` / checkpoint_every / verify_shards, and other methods' method_params). Runs with the same
method, fusion and overrides are the seeds of one cell: mean ± sample std (ddof 1) over distinct seeds
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
import csv
import dataclasses
import io
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from experiments import reference, stats, tuning

INTERMEDIATE = ("mmtm", "centralnet")  # intermediate fusions: Table 4; the others: Table 1
FUSION_ORDER = ("concat", "sum", "decision", "film", "gated", *INTERMEDIATE)  # others follow, sorted
ABLATIONS = ("decouple", "reassemble", "full")  # train.ablation values, Table 5's column order
UNIMODAL_PREDS = ("heads", "dropout")  # train.unimodal_pred values, Table 6's column order
GRID_KEYS = ("train.methods", "train.fusion", "train.seed")
NOT_RESULT_KEYS = ("train.checkpoint_every", "train.verify_shards")  # with *.workers: do not change results
DASH = "—"

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


# -- records ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Record:
    """One finished run: one method of one DVC experiment."""

    name: str  # experiment name
    rev: str  # experiment commit sha
    timestamp: str  # ISO time of the experiment commit (the newest of a repeated seed wins)
    method: str
    fusion: str
    seed: int  # train.seed, or base.seed when train.seed is -1
    params: dict  # flat params.yaml: "train.epochs" -> value
    overrides: dict  # flat, the params that differ from the commit's (grid keys and ignored keys left out)
    metrics: dict  # runs/<method>/metrics.json
    expansion: float | None = None  # mean over epochs of log.json history `expansion` (1.0 where absent)
    train_s: float | None = None  # sum over epochs of history `train_s` (s)
    score_s: float | None = None  # sum over epochs of history `score_s` (s)
    epoch_s: float | None = None  # sum over epochs of history `epoch_s` (s)
    history: tuple = ()  # log.json history rows, one dict per epoch (for per-epoch plots: experiments.figure3)
    val: float | None = None  # log.json best.val_fused: validation accuracy of the checkpoint the run selected
    clip_keys: tuple = ()  # test clip keys of eval/predictions.csv, in its order
    right: dict = dataclasses.field(default_factory=dict)  # "fused" / modality -> "0110..": right on each clip

    def param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    def clips(self, column: str = "fused") -> dict[str, bool] | None:
        """{clip key: right?} of ``column`` on test (None: no predictions.csv read)."""
        bits = self.right.get(column)
        return dict(zip(self.clip_keys, (b == "1" for b in bits))) if bits and self.clip_keys else None


def predictions_summary(rows: Sequence[dict[str, str]] | None) -> dict[str, Any]:
    """``clip_keys`` and ``right`` of a Record from predictions.csv rows (see train.evaluate)."""
    if not rows:
        return {}
    cols = [c for c in rows[0] if c not in ("key", "label")]
    return {"clip_keys": tuple(r["key"] for r in rows),
            "right": {c: "".join("1" if r[c] == r["label"] else "0" for r in rows) for c in cols}}


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a.b.c": value}; lists and scalars are values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _overrides(params: dict, base: dict, method: str) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if k in GRID_KEYS or k in NOT_RESULT_KEYS or k.endswith(".workers") or base.get(k, object()) == v:
            continue
        if k.startswith("train.method_params.") and k.split(".")[2] != method:
            continue  # another method's settings do not change this method's run
        out[k] = v
    return out


def log_summary(log: dict | None) -> dict[str, float | None]:
    """expansion (mean over epochs, 1.0 where a row has none) and the summed times of a log.json."""
    rows = (log or {}).get("history") or []
    if not rows:
        return {"expansion": None, "train_s": None, "score_s": None, "epoch_s": None}
    return {"expansion": sum(float(r.get("expansion", 1.0)) for r in rows) / len(rows),
            **{k: sum(float(r.get(k, 0.0)) for r in rows) for k in ("train_s", "score_s", "epoch_s")}}


def records_from_show(show: list[dict], read_log: Callable[[str, str], dict | None],
                      read_predictions: Callable[[str, str], list | None] = lambda rev, method: None) -> list[Record]:
    """Records of every finished experiment in ``dvc exp show --json`` output; ``read_log(rev, method)``
    gives that run's log.json (or None), ``read_predictions(rev, method)`` its eval/predictions.csv rows."""
    records = []
    for commit in show:
        if commit.get("rev") == "workspace" or not commit.get("data"):
            continue
        base = flatten(((commit["data"].get("params") or {}).get("params.yaml") or {}).get("data") or {})
        for exp in commit.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            if state not in (None, "success") or not exp.get("revs"):
                continue
            entry = exp["revs"][0]
            data = entry.get("data") or {}
            if entry.get("error") or not data:
                continue
            params = flatten(((data.get("params") or {}).get("params.yaml") or {}).get("data") or {})
            for method in params.get("train.methods") or []:
                metrics = ((data.get("metrics") or {}).get(f"runs/{method}/metrics.json") or {}).get("data")
                if not metrics:
                    continue
                log = read_log(entry["rev"], method)
                seed = int(params.get("train.seed", -1))
                if seed < 0:
                    seed = int(params.get("base.seed", 0))
                records.append(Record(
                    name=entry.get("name") or exp.get("name") or entry["rev"][:7], rev=entry["rev"],
                    timestamp=data.get("timestamp") or "", method=method, fusion=str(params.get("train.fusion")),
                    seed=seed, params=params, overrides=_overrides(params, base, method), metrics=metrics,
                    **log_summary(log), history=tuple((log or {}).get("history") or ()),
                    val=((log or {}).get("best") or {}).get("val_fused"),
                    **predictions_summary(read_predictions(entry["rev"], method))))
    return records


def collect(cwd: str | Path = ".", all_commits: bool = False) -> list[Record]:
    """Records of the repository at ``cwd`` (see the module docstring)."""
    from dvc.api import DVCFileSystem

    from experiments.grid import dvc

    show = json.loads(dvc(["exp", "show", "--json", *(["-A"] if all_commits else [])], cwd).stdout)

    def read(rev: str, path: str) -> str | None:
        try:
            return DVCFileSystem(str(cwd), rev=rev).read_text(path)
        except Exception as e:  # noqa: BLE001 - a missing file leaves the run's cells that need it blank
            print(f"warning: no {path} in {rev[:7]}: {e}", file=sys.stderr)
            return None

    def read_log(rev: str, method: str) -> dict | None:
        text = read(rev, f"runs/{method}/train/log.json")
        return json.loads(text) if text else None

    def read_predictions(rev: str, method: str) -> list | None:
        text = read(rev, f"runs/{method}/eval/predictions.csv")
        return list(csv.DictReader(io.StringIO(text))) if text else None

    return records_from_show(show, read_log, read_predictions)


# -- statistics and cells --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std (ddof 1); nan for one value
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values))


def fmt(stat: Stat | None, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std (n=N)`` (``mean (n=1)`` for one seed); — for no value."""
    if stat is None:
        return DASH
    if stat.n == 1:
        return f"{stat.mean * scale:.{digits}f} (n=1)"
    return f"{stat.mean * scale:.{digits}f} ± {stat.std * scale:.{digits}f} (n={stat.n})"


def latest_per_seed(records: Iterable[Record]) -> list[Record]:
    """One record per seed: the newest."""
    best: dict[int, Record] = {}
    for r in records:
        if r.seed not in best or r.timestamp > best[r.seed].timestamp:
            best[r.seed] = r
    return [best[s] for s in sorted(best)]


def seed_values(records: Iterable[Record], value: Callable[[Record], float | None]) -> list[float]:
    """``value`` of each distinct seed's newest run, in seed order (runs without the value left out)."""
    return [v for v in (value(r) for r in latest_per_seed(records)) if v is not None]


def stat(records: Iterable[Record], value: Callable[[Record], float | None]) -> Stat | None:
    """Mean ± std of ``value`` over the distinct seeds of ``records`` (runs without the value left out)."""
    vals = seed_values(records, value)
    return Stat.of(vals) if vals else None


def variant(r: Record, exclude: Sequence[str] = ()) -> str:
    """The run's overrides as ``key=value, ...`` (train. prefix dropped), less ``exclude``."""
    items = sorted((k, v) for k, v in r.overrides.items() if k not in exclude)
    return ", ".join(f"{k.removeprefix('train.')}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in items)


def _label(head: str, var: str) -> str:
    return f"{head} ({var})" if var else head


def _fusion_key(f: str) -> tuple:
    return (FUSION_ORDER.index(f), "") if f in FUSION_ORDER else (len(FUSION_ORDER), f)


def _method_key(m: str) -> tuple:
    return (0 if m == "baseline" else 2 if "remix" in m else 1, m)


def acc(key: str) -> Callable[[Record], float | None]:
    return lambda r: r.metrics.get(key)


def _groups(records: Iterable[Record], key: Callable[[Record], tuple]) -> dict[tuple, list[Record]]:
    out: dict[tuple, list[Record]] = {}
    for r in records:
        out.setdefault(key(r), []).append(r)
    return out


def _measured(r: Record) -> bool:
    """A run of :mod:`experiments.figure3`: ``train.grad_angle`` set (the same training, one more backward per step)."""
    return bool(r.param("train.grad_angle", ""))


def _default_setting(r: Record) -> bool:
    return (r.param("train.ablation", "full") == "full" and r.param("train.unimodal_pred", "heads") == "heads"
            and not _measured(r))


# -- tables ----------------------------------------------------------------------------------------
GAIN = "gain (points)"  # our gain over our baseline (Tables 1, 2, 4); the paper's over its baseline beside it
RATIO = "x baseline"  # Table 3: total time over the baseline's
PAPER_ROW_FUSION = {"greedy": "mmtm"}  # the paper's Table 2/3 rows are all on concat; Greedy needs MMTM here
# derived paper columns: table -> (column, of column, over (("col", c): column c of the same row | ("row", r): the
# same column of row r), operator); computed from the CSV's numbers like ours from our runs
REMIX_GAIN = "remix over X (points)"  # Table 2: X + Remix over X (remix over baseline), paired like GAIN
# derived paper columns: table -> [(column, of column, over (("col", c): column c of the same row | ("row", r): the
# same column of row r | ("remix_of", None): the same column of the row Remix was added to), operator)];
# computed from the CSV's numbers like ours from our runs
PAPER_DERIVED = {"table1": [(GAIN, "remix", ("col", "baseline"), "-")],
                 "table4": [(GAIN, "remix", ("col", "baseline"), "-")],
                 "table2": [(GAIN, "fused", ("row", "baseline"), "-"), (REMIX_GAIN, "fused", ("remix_of", None), "-")],
                 "table3": [(RATIO, "total s", ("row", "baseline"), "/")]}
PAPER_NOTES = {
    "table2": "The paper runs every method on concatenation; its Greedy row sits beside ours on MMTM (Greedy needs "
              "MMTM here). The paper's expansion factor is declared per method; ours is measured.",
    "table3": "The paper: seconds to convergence on two RTX 3090 GPUs; ours: the summed epoch times of a fixed number "
              "of epochs on 2 CPU cores. Compare the ratios, not the seconds.",
    "table5": "The paper's rows (Decouple x Reassemble: neither, decouple only, reassemble only, both) are on concatenation.",
    "table6": "paper baseline dropout: the paper's fusion without Remix, unimodal predictions by dropout; ours has no "
              "such run (train.unimodal_pred changes only Remix's scoring).",
}


@dataclasses.dataclass
class Panel:
    """One plot of a table's PNG: per row, its label and {series: the per-seed values}; paper markers where a
    series is a column of the paper's numbers."""

    bars: list[tuple[str, dict[str, list[float]]]]
    unit: str
    title: str = ""


@dataclasses.dataclass
class Table:
    key: str  # "table1" ..
    title: str
    header: list[str]
    rows: list[list[str]]  # formatted cells, the first one the row label
    bars: list[tuple[str, dict[str, list[float]]]] = dataclasses.field(default_factory=list)  # plotted:
    # per row, its label and {series (a column): the per-seed values}
    unit: str = "test accuracy (%)"  # the plot's y axis
    row_keys: list[str | None] = dataclasses.field(default_factory=list)  # per row: its row label in the paper's
    # numbers (reference.reported), None: no paper row
    extra: list[Panel] = dataclasses.field(default_factory=list)  # more plots, one bar group per row
    paper: list[dict[str, dict[str, float]]] = dataclasses.field(default_factory=list)  # per row: column ->
    # dataset -> the paper's value (set by with_paper)
    n_ours: int = 0  # the first n_ours rows are ours; the rest are paper rows none of ours matches
    filled: bool = True  # the table's own runs exist (False: "no runs yet" and the grids that fill it)

    def panels(self) -> list[Panel]:
        return [Panel(self.bars, self.unit), *self.extra]


def remix_of(method: str) -> str | None:
    """The method Remix was added to: remix -> baseline, <x>_remix -> <x> (the registry's naming); else None."""
    return "baseline" if method == "remix" else method.removesuffix("_remix") if method.endswith("_remix") else None


def _derived_of(kind: str, ref: str | None, col: str, row: str, rows: dict[str, dict[str, float]]) -> float | None:
    """The value a derived column of row ``row`` is taken over (see :data:`PAPER_DERIVED`)."""
    if kind == "col":
        return rows[row].get(ref)
    return rows.get(ref if kind == "row" else remix_of(row) or "", {}).get(col)


def derive(key: str, rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The paper's numbers of one dataset with the derived columns of :data:`PAPER_DERIVED` (gain, ratio) added."""
    out = {r: dict(c) for r, c in rows.items()}
    for name, col, (kind, ref), op in PAPER_DERIVED.get(key, []):
        for row, cols in out.items():
            of = _derived_of(kind, ref, col, row, rows)
            if col in cols and of is not None and (op == "-" or of):
                cols[name] = cols[col] - of if op == "-" else cols[col] / of
    return out


def paper_cells(key: str) -> dict[str, dict[str, dict[str, float]]]:
    """Our row label -> column -> dataset -> the paper's value (derived columns included) of table ``key``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for dataset, rows in reference.reported(key).items():
        for row, cols in derive(key, rows).items():
            for col, value in cols.items():
                out.setdefault(row, {}).setdefault(col, {})[dataset] = value
    return out


def with_paper(table: Table) -> Table:
    """``table`` with the paper's numbers of each row (by ``row_keys``); the paper's rows that none of ours
    matches are appended with our cells blank."""
    ref = paper_cells(table.key)
    table.n_ours = len(table.rows)
    table.filled = table.filled and table.n_ours > 0
    keys = table.row_keys or [None] * table.n_ours
    table.row_keys = list(keys)
    table.paper = [ref.get(k, {}) if k is not None else {} for k in keys]
    for k, cols in ref.items():
        if k in keys:
            continue
        table.rows.append([k, *[DASH] * (len(table.header) - 1)])
        table.row_keys.append(k)
        table.paper.append(cols)
        for panel in table.panels():
            panel.bars.append((k, {}))
    return table


def pct(records: Iterable[Record], key: str) -> list[float]:
    """Per-seed ``metrics[key]`` in %."""
    return [100 * v for v in seed_values(records, acc(key))]


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
    return with_paper(Table(key, title, ["fusion", "baseline", "remix", GAIN], rows, bars, row_keys=keys))


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
    return with_paper(Table(
        "table2", "Table 2: balancing methods (test accuracy %, expansion factor of the training set, gain over "
        "the baseline of the same fusion; remix over X: X + Remix over X)",
        ["method", "fusion", "fused", *[f"{m}-only" for m in mods], "expansion", GAIN, REMIX_GAIN],
        rows, bars, row_keys=[_paper_method_key(*k) for k, _ in groups]))


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
    return with_paper(Table(
        "table3", "Table 3: training time per method (s, summed over epochs; ratio of the median total to the "
        "baseline's of the same fusion; every method on concat, Greedy on MMTM)",
        ["method", "fusion", "train steps s", "scoring s", "total s", "median total s", RATIO], rows, bars,
        unit="time (s)", row_keys=[_paper_method_key(*k) for k, _ in groups],
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
    return with_paper(Table(key, title, ["fusion", "baseline", *[f"remix {v}" for v in values]], rows, bars,
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


# -- rendering -------------------------------------------------------------------------------------
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def paper_header(col: str) -> str:
    return f"paper {col.removesuffix(' (points)')} ({' / '.join(reference.SHORT[d] for d in reference.DATASETS.values())})"


def paper_cell(col: str, by_dataset: dict[str, float]) -> str:
    """The paper's values of one cell, ``CREMA-D / Kinetics-Sounds``: gains signed, seconds whole."""
    if not by_dataset:
        return DASH
    spec = "+.2f" if col in (GAIN, REMIX_GAIN) else ".0f" if col == "total s" else ".2f"
    return " / ".join(format(by_dataset[d], spec) if d in by_dataset else DASH for d in reference.DATASETS.values())


def columns(table: Table, ours: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows with the paper's columns: each right after our column of the same name (the paper's
    columns we have none of at the end); ``ours=False``: the row label and the paper's columns only, the
    rows with a paper number only."""
    pcols = list(dict.fromkeys(c for p in table.paper for c in p))
    spec: list[tuple[str, Callable[[int], str]]] = []
    for j, h in enumerate(table.header):
        if ours or j == 0:
            spec.append((h, lambda i, j=j: table.rows[i][j]))
        if h in pcols:
            spec.append((paper_header(h), lambda i, h=h: paper_cell(h, table.paper[i].get(h, {}))))
    spec += [(paper_header(h), lambda i, h=h: paper_cell(h, table.paper[i].get(h, {})))
             for h in pcols if h not in table.header]
    keep = [i for i in range(len(table.rows)) if ours or table.paper[i]]
    return [h for h, _ in spec], [[get(i) for _, get in spec] for i in keep]


def paper_names(table: Table) -> str:
    """The paper's names of the row labels that carry a paper number."""
    names = [f"{k} = {reference.PAPER_NAMES[k]}" for k, p in zip(table.row_keys, table.paper)
             if p and k in reference.PAPER_NAMES]
    return f"Paper's names: {'; '.join(names)}." if names else ""


def markdown(table: Table, ours: bool = True) -> str:
    """The table's Markdown section: title, our table beside the paper's numbers (or how to fill ours), notes."""
    parts = [f"## {table.title}"]
    if ours and not table.filled:
        parts.append("no runs yet: " + "; ".join(f"`{c}`" for c in FILL[table.key]))
    if table.rows:
        parts.append(markdown_table(*columns(table, ours)))
    parts += [t for t in (PAPER_NOTES.get(table.key, ""), paper_names(table)) if t]
    return "\n\n".join(parts) + "\n"


def document(tables: Sequence[Table], ours: bool = True, sections: Sequence[str] = ()) -> str:
    """The whole tables.md: a head, ``sections`` (e.g. the chosen settings), then each table."""
    datasets = " / ".join(f"{d}" for d in reference.DATASETS.values())
    if ours:
        head = ("# Paper tables: ours beside the paper's\n\nOurs: mean ± sample std over seeds (n = seeds) on the "
                "embedded dataset. Gains in points over our baseline of the same fusion, paired by seed: "
                "`mean ± std [lo, hi]*` = the per-seed differences' mean ± sample std, then the 95 % bootstrap "
                "interval over test clips pooled over seeds, * where it excludes 0 (`experiments/stats.py`). ")
    else:
        head = "# The paper's tables\n\nOurs left out (see tables.md). "
    head += (f"Each `paper X ({' / '.join(reference.SHORT.values())})` column: the paper's value of column X on "
             f"{datasets}, gains over the paper's baseline, from `{reference.CSV.name}` of the paper ({reference.SOURCE}). "
             "Ours are on the embedded (synthetic) dataset: compare gains and orderings with the paper's, not levels.\n")
    return "\n".join([head, *sections, *[markdown(t, ours) for t in tables]])


def _draw_panel(ax, panel: Panel, paper: Sequence[dict[str, dict[str, float]]]) -> None:
    """Grouped bars (mean over seeds, sample-std error bar where n > 1, one dot per seed) and, where a series is
    a column of the paper's numbers, one marker per paper value (CREMA-D, Kinetics-Sounds) at the bar's place."""
    import numpy as np

    series = list(dict.fromkeys(k for _, cells in panel.bars for k in cells))
    width = 0.8 / max(1, len(series))
    marks = dict(zip(reference.DATASETS.values(), (("D", "red"), ("^", "black"))))
    seen: set[str] = set()
    for j, name in enumerate(series):
        for i, (_, cells) in enumerate(panel.bars):
            x = i + (j - (len(series) - 1) / 2) * width
            vals = cells.get(name, [])
            if vals:
                ax.bar(x, float(np.mean(vals)), width, color=f"C{j}", alpha=0.8, capsize=2,
                       label=None if name in seen else SERIES_LABELS.get(name, name), yerr=float(np.std(vals, ddof=1)) if len(vals) > 1 else None)
                ax.plot([x] * len(vals), vals, "k.", markersize=3)
                seen.add(name)
            for dataset, value in paper[i].get(name, {}).items():
                marker, color = marks[dataset]
                label = f"paper, {dataset}"
                ax.plot(x, value, marker, color=color, markerfacecolor="none", markersize=6,
                        label=None if label in seen else label)
                seen.add(label)
    labels = [label for label, _ in panel.bars]
    tilt = len(labels) > 6 or max(len(x) for x in labels) > 14
    ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_ylabel(panel.unit)
    if seen:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a bar
    ax.grid(axis="y", alpha=0.3)
    if panel.title:
        ax.set_title(panel.title, fontsize=9)


SERIES_LABELS = {RATIO: "ours: total / baseline"}  # a plotted series' name in the legend, where not its own
CHUNK = 12  # row groups per plot: a longer table wraps onto more plots, stacked


def render_png(table: Table, path: Path) -> None:
    """The table as grouped bars (matplotlib, headless), one plot per panel (Table 3: seconds, then the ratio to the
    baseline) and per :data:`CHUNK` rows, with the paper's values as markers (see :func:`_draw_panel`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if table.n_ours:
        chunks = [(p, lo) for p in table.panels() for lo in range(0, len(p.bars), CHUNK)]
        n_series = len({k for _, cells in table.bars for k in cells})
        width = max(6.0, 0.45 * n_series * min(CHUNK, len(table.bars)) + 1.5)
        fig, axes = plt.subplots(len(chunks), 1, figsize=(width, 4.2 * len(chunks)), squeeze=False)
        for ax, (p, lo) in zip(axes[:, 0], chunks):
            _draw_panel(ax, Panel(p.bars[lo:lo + CHUNK], p.unit, p.title), table.paper[lo:lo + CHUNK])
        ax = axes[0, 0]
    else:
        fig, ax = plt.subplots(figsize=(9, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no runs yet:\n" + "\n".join(FILL[table.key]), ha="center", va="center", fontsize=8,
                wrap=True)
    ax.set_title(table.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# -- command line ----------------------------------------------------------------------------------
def save_records(records: Sequence[Record], path: Path) -> None:
    """``records`` as JSON (``{"records": [Record fields, ...]}``): what :func:`load_records` reads back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"records": [dataclasses.asdict(r) for r in records]}, indent=0, sort_keys=True) + "\n")


def load_records(path: Path) -> list[Record]:
    """The records :func:`save_records` wrote."""
    data = json.loads(Path(path).read_text())
    return [Record(**{**r, "history": tuple(r.get("history") or ()), "clip_keys": tuple(r.get("clip_keys") or ())})
            for r in data["records"]]


def cli_records(prog: str, all_commits: bool, records: Path | None = None, read: bool = False) -> list[Record]:
    """:func:`collect` for a command line (written to ``records`` when given), or, with ``read``, the records saved
    in ``records``; exits with ``<prog>: <reason>`` when the experiments cannot be read."""
    from experiments.grid import GridError

    if read:
        if records is None or not Path(records).is_file():
            sys.exit(f"{prog}: no saved records at {records} (write them with a run without --from-records)")
        return load_records(Path(records))
    try:
        out = collect(".", all_commits)
    except GridError as e:
        sys.exit(f"{prog}: {e}")
    if records is not None:
        save_records(out, Path(records))
    return out


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
