"""The paper's Tables 1-6 from the DVC experiments of :mod:`experiments.grid`.

Usage (in the repository root)::

    python -m experiments.tables [--out results/paper_tables] [--all-commits]

prints every table as Markdown and writes ``<out>/tables.md`` and one ``<out>/tableN.png`` per table: its
numbers as grouped bars (mean, sample-std error bar, one dot per seed), rows along x, columns as bars.

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
table with no run prints "no runs yet" and the grid that fills it. Beside each table: the paper's numbers, labelled "paper
(reported)", from :mod:`experiments.reference`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from experiments import reference

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

    def param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)


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


def records_from_show(show: list[dict], read_log: Callable[[str, str], dict | None]) -> list[Record]:
    """Records of every finished experiment in ``dvc exp show --json`` output; ``read_log(rev, method)``
    gives that run's log.json (or None)."""
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
                    **log_summary(log), history=tuple((log or {}).get("history") or ())))
    return records


def collect(cwd: str | Path = ".", all_commits: bool = False) -> list[Record]:
    """Records of the repository at ``cwd`` (see the module docstring)."""
    from dvc.api import DVCFileSystem

    from experiments.grid import dvc

    show = json.loads(dvc(["exp", "show", "--json", *(["-A"] if all_commits else [])], cwd).stdout)

    def read_log(rev: str, method: str) -> dict | None:
        try:
            return json.loads(DVCFileSystem(str(cwd), rev=rev).read_text(f"runs/{method}/train/log.json"))
        except Exception as e:  # noqa: BLE001 - a missing log leaves the run's time and expansion blank
            print(f"warning: no log.json for {method} in {rev[:7]}: {e}", file=sys.stderr)
            return None

    return records_from_show(show, read_log)


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
@dataclasses.dataclass
class Table:
    key: str  # "table1" ..
    title: str
    header: list[str]
    rows: list[list[str]]  # formatted cells, the first one the row label
    bars: list[tuple[str, dict[str, list[float]]]] = dataclasses.field(default_factory=list)  # plotted:
    # per row, its label and {series (a column): the per-seed values}
    unit: str = "test accuracy (%)"  # the plot's y axis


def pct(records: Iterable[Record], key: str) -> list[float]:
    """Per-seed ``metrics[key]`` in %."""
    return [100 * v for v in seed_values(records, acc(key))]


def _fusion_table(key: str, title: str, records: list[Record], intermediate: bool) -> Table:
    sel = [r for r in records if r.method in ("baseline", "remix") and _default_setting(r)
           and (r.fusion in INTERMEDIATE) == intermediate]
    rows, bars = [], []
    for (fusion, var), rs in sorted(_groups(sel, lambda r: (r.fusion, variant(r))).items(),
                                    key=lambda kv: (_fusion_key(kv[0][0]), kv[0][1])):
        by = {m: [r for r in rs if r.method == m] for m in ("baseline", "remix")}
        b, m = (stat(by[k], acc("acc_fused")) for k in ("baseline", "remix"))
        gain = f"{(m.mean - b.mean) * 100:+.2f}" if b and m else DASH
        rows.append([_label(fusion, var), fmt(b, 100), fmt(m, 100), gain])
        bars.append((_label(fusion, var), {k: pct(v, "acc_fused") for k, v in by.items()}))
    return Table(key, title, ["fusion", "baseline", "remix", "gain (points)"], rows, bars)


def table1(records: list[Record]) -> Table:
    return _fusion_table("table1", "Table 1: fusion methods, baseline vs remix (fused test accuracy %)", records, False)


def table4(records: list[Record]) -> Table:
    return _fusion_table("table4", "Table 4: intermediate fusions, baseline vs remix (fused test accuracy %)",
                         records, True)


def _method_rows(records: list[Record]) -> list[tuple[tuple, list[Record]]]:
    sel = [r for r in records if _default_setting(r)]
    return sorted(_groups(sel, lambda r: (r.method, r.fusion, variant(r))).items(),
                  key=lambda kv: (_fusion_key(kv[0][1]), kv[0][2], _method_key(kv[0][0])))


def table2(records: list[Record]) -> Table:
    groups = _method_rows(records)
    mods: list[str] = []
    for _, rs in groups:
        for r in rs:
            mods += [m for m in r.param("train.modalities", []) if m not in mods]
    rows = [[_label(method, var), fusion, fmt(stat(rs, acc("acc_fused")), 100),
             *[fmt(stat(rs, acc(f"acc_{m}")), 100) for m in mods], fmt(stat(rs, lambda r: r.expansion))]
            for (method, fusion, var), rs in groups]
    bars = [(f"{_label(method, var)}\n{fusion}", {"fused": pct(rs, "acc_fused"),
                                                  **{f"{m}-only": pct(rs, f"acc_{m}") for m in mods}})
            for (method, fusion, var), rs in groups]
    return Table("table2", "Table 2: balancing methods (test accuracy %, expansion factor of the training set)",
                 ["method", "fusion", "fused", *[f"{m}-only" for m in mods], "expansion"], rows, bars)


def table3(records: list[Record]) -> Table:
    groups = _method_rows(records)
    total = {k: stat(rs, lambda r: r.epoch_s) for k, rs in groups}
    rows, bars = [], []
    for (method, fusion, var), rs in groups:
        base, mine = total.get(("baseline", fusion, var)), total[(method, fusion, var)]
        ratio = f"{mine.mean / base.mean:.2f}" if base and mine and base.mean > 0 else DASH
        rows.append([_label(method, var), fusion, fmt(stat(rs, lambda r: r.train_s)),
                     fmt(stat(rs, lambda r: r.score_s)), fmt(mine), ratio])
        bars.append((f"{_label(method, var)}\n{fusion}", {"train steps": seed_values(rs, lambda r: r.train_s),
                                                          "scoring": seed_values(rs, lambda r: r.score_s),
                                                          "total": seed_values(rs, lambda r: r.epoch_s)}))
    return Table("table3", "Table 3: training time per method (s, summed over epochs; ratio of total to baseline)",
                 ["method", "fusion", "train steps s", "scoring s", "total s", "x baseline"], rows, bars,
                 unit="time (s)")


def _setting_table(key: str, title: str, records: list[Record], param: str, default: str, order: Sequence[str],
                   other: str) -> Table:
    """Remix runs with ``param`` varied (the other setting at its default), beside baseline; rows with a
    non-default value only."""
    remix = [r for r in records if r.method == "remix" and r.param(other[0], other[1]) == other[1] and not _measured(r)]
    base = [r for r in records if r.method == "baseline" and _default_setting(r)]
    values = list(order) + sorted({r.param(param, default) for r in remix} - set(order))
    groups = _groups(remix, lambda r: (r.fusion, variant(r, [param])))
    rows, bars = [], []
    for (fusion, var), rs in sorted(groups.items(), key=lambda kv: (_fusion_key(kv[0][0]), kv[0][1])):
        if all(r.param(param, default) == default for r in rs):
            continue  # only the default setting: nothing of this table
        cells = {"baseline": [r for r in base if r.fusion == fusion and variant(r, [param]) == var],
                 **{f"remix {v}": [r for r in rs if r.param(param, default) == v] for v in values}}
        rows.append([_label(fusion, var), *[fmt(stat(c, acc("acc_fused")), 100) for c in cells.values()]])
        bars.append((_label(fusion, var), {k: pct(c, "acc_fused") for k, c in cells.items()}))
    return Table(key, title, ["fusion", "baseline", *[f"remix {v}" for v in values]], rows, bars)


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


def _reference_md(key: str) -> str:
    rep = reference.reported(key)
    if not rep:
        return reference.MISSING
    parts = []
    for dataset, rows in rep.items():
        cols = list(dict.fromkeys(c for row in rows.values() for c in row))
        body = [[row, *[f"{vals[c]:.2f}" if c in vals else DASH for c in cols]] for row, vals in rows.items()]
        parts.append(f"paper (reported), {dataset}:\n\n" + markdown_table(["", *cols], body))
    return "\n\n".join(parts)


def markdown(table: Table) -> str:
    """The table's Markdown section: title, our table (or how to fill it), the paper's numbers."""
    if table.rows:
        ours = markdown_table(table.header, table.rows)
    else:
        ours = "no runs yet: " + "; ".join(f"`{c}`" for c in FILL[table.key])
    return f"## {table.title}\n\n{ours}\n\n{_reference_md(table.key)}\n"


def document(tables: Sequence[Table]) -> str:
    head = ("# Paper tables (ours: mean ± sample std over seeds, n = seeds)\n\n" + reference.abstract_line() + "\n")
    return "\n".join([head, *[markdown(t) for t in tables]])


def render_png(table: Table, path: Path) -> None:
    """The table as grouped bars (matplotlib, headless): per row, one bar per series at its mean over seeds,
    a sample-std error bar where n > 1, and each seed's value as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if table.bars:
        series = list(dict.fromkeys(k for _, cells in table.bars for k in cells))
        width = 0.8 / len(series)
        fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(series) * len(table.bars) + 1.5), 4.2))
        for j, name in enumerate(series):
            label = name  # in the legend once
            for i, (_, cells) in enumerate(table.bars):
                vals = cells.get(name, [])
                if not vals:
                    continue
                x = i + (j - (len(series) - 1) / 2) * width
                ax.bar(x, float(np.mean(vals)), width, color=f"C{j}", label=label, alpha=0.8, capsize=2,
                       yerr=float(np.std(vals, ddof=1)) if len(vals) > 1 else None)
                ax.plot([x] * len(vals), vals, "k.", markersize=3)
                label = None
        labels = [label for label, _ in table.bars]
        tilt = len(labels) > 6 or max(len(x) for x in labels) > 14
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=30 if tilt else 0, ha="right" if tilt else "center")
        ax.set_ylabel(table.unit)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    else:
        fig, ax = plt.subplots(figsize=(9, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no runs yet:\n" + "\n".join(FILL[table.key]), ha="center", va="center", fontsize=8,
                wrap=True)
    ax.set_title(table.title, fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def cli_records(prog: str, all_commits: bool) -> list[Record]:
    """:func:`collect` for a command line: exits with ``<prog>: <reason>`` when the experiments cannot be read."""
    from experiments.grid import GridError

    try:
        return collect(".", all_commits)
    except GridError as e:
        sys.exit(f"{prog}: {e}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.tables", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/paper_tables", help="folder for tables.md and tableN.png")
    ap.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    args = ap.parse_args(argv)
    records = cli_records("experiments.tables", args.all_commits)
    tables = build(records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = document(tables)
    (out / "tables.md").write_text(text)
    for t in tables:
        render_png(t, out / f"{t.key}.png")
    print(text)
    print(f"({len(records)} run(s); written to {out}/tables.md and {out}/table1..6.png)")


if __name__ == "__main__":
    main()
