"""Rendering the tables: ``tables.md`` (our cells beside the paper's, :func:`document`) and one PNG per table
(:func:`render_png`: grouped bars, mean over seeds with a sample-std error bar and one dot per seed, rows along x,
columns as bars, the paper's values as one marker per dataset). Every PNG says which data our bars are on and which
the paper's markers are on, and its title says what its bars draw.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from experiments import reference
from experiments.cells import Panel, Table, markdown_table
from experiments.paper_rows import PAPER_NOTES, RATIO, paper_cell, paper_header, paper_names

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


def markdown(table: Table, ours: bool = True) -> str:
    """The table's Markdown section: title, our table beside the paper's numbers (or how to fill ours), notes."""
    parts = [f"## {table.title}"]
    if ours and not table.filled:
        parts.append("no runs yet: " + "; ".join(f"`{c}`" for c in table.fill))
    if table.rows:
        parts.append(markdown_table(*columns(table, ours)))
    parts += [t for t in (PAPER_NOTES.get(table.key, ""), paper_names(table)) if t]
    return "\n\n".join(parts) + "\n"


def document(tables: Sequence[Table], ours: bool = True, sections: Sequence[str] = ()) -> str:
    """The whole tables.md: a head, ``sections`` (e.g. the chosen settings), then each table."""
    datasets = " / ".join(f"{d}" for d in reference.DATASETS.values())
    data = next((t.data for t in tables if t.data), "")
    if ours:
        head = ("# Paper tables: ours beside the paper's\n\nOurs: mean ± sample std over seeds (n = seeds) on "
                f"{data}. Gains in points over our baseline of the same fusion, paired by seed: "
                "`mean ± std [lo, hi]*` = the per-seed differences' mean ± sample std, then the 95 % bootstrap "
                "interval over test clips pooled over seeds, * where it excludes 0 (`experiments/stats.py`). ")
    else:
        head = "# The paper's tables\n\nOurs left out (see tables.md). "
    head += (f"Each `paper X ({' / '.join(reference.SHORT.values())})` column: the paper's value of column X on "
             f"{datasets}, gains over the paper's baseline, from `{reference.CSV.name}` of the paper ({reference.SOURCE}). "
             + ("Ours are on synthetic data: compare gains and orderings with the paper's, not levels.\n"
                if ours and "synthetic" in data else "\n"))
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


def data_line(table: Table) -> str:
    """What the PNG's marks are on: our bars' data and, where drawn, the paper's markers' datasets."""
    ours = f"ours (bars; dots: seeds): {table.data or 'our runs'}"
    marks = " / ".join(f"{m} {d}" for d, m in zip(reference.DATASETS.values(), ("◇", "△")))
    return ours + (f"; paper (its own tables): {marks}" if any(table.paper) else "")


def render_png(table: Table, path: Path) -> None:
    """:func:`table_figure`, written to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = table_figure(table)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def table_figure(table: Table):
    """The table as grouped bars (matplotlib, headless), one plot per panel (Table 3: seconds, then the ratio to the
    baseline) and per :data:`CHUNK` rows, with the paper's values as markers (see :func:`_draw_panel`); titled with
    what the bars draw (``plot_title``) and, below it, the data ours and the paper's are on (:func:`data_line`)."""
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
        ax.text(0.5, 0.5, "no runs yet:\n" + "\n".join(table.fill), ha="center", va="center", fontsize=8,
                wrap=True)
    ax.set_title(f"{table.plot_title or table.title}\n{data_line(table)}", fontsize=10)
    fig.tight_layout()
    return fig
