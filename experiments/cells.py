"""A table's cells: statistics over seeds (mean ± sample std of each distinct seed's newest run), their text,
the grouping of runs into cells, and the :class:`Table` / :class:`Panel` that :mod:`experiments.tables` fills and
:mod:`experiments.render` draws.

Runs with the same method, fusion and overrides are the seeds of one cell: mean ± sample std (ddof 1) over
distinct seeds (a seed run twice: the newest run), n shown; rows with overrides carry them in their label.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Callable, Iterable, Sequence

from experiments.records import Record

DASH = "—"


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


def label(head: str, var: str) -> str:
    """A row label: ``head (overrides)``, or ``head`` alone."""
    return f"{head} ({var})" if var else head


def acc(key: str) -> Callable[[Record], float | None]:
    """A run's ``metrics[key]`` (metrics.json), or None."""
    return lambda r: r.metrics.get(key)


def pct(records: Iterable[Record], key: str) -> list[float]:
    """Per-seed ``metrics[key]`` in %."""
    return [100 * v for v in seed_values(records, acc(key))]


def groups(records: Iterable[Record], key: Callable[[Record], tuple]) -> dict[tuple, list[Record]]:
    """``records`` grouped by ``key``, in first-seen order."""
    out: dict[tuple, list[Record]] = {}
    for r in records:
        out.setdefault(key(r), []).append(r)
    return out


def measured(r: Record) -> bool:
    """A run of :mod:`experiments.figure3`: ``train.grad_angle`` set (the same training, one more backward per step)."""
    return bool(r.param("train.grad_angle", ""))


def default_setting(r: Record) -> bool:
    """Remix's ablation and unimodal predictions at their defaults, and no measuring override."""
    return (r.param("train.ablation", "full") == "full" and r.param("train.unimodal_pred", "heads") == "heads"
            and not measured(r))



def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


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
    title: str  # of the Markdown table: what its columns hold
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
    plot_title: str = ""  # of the PNG: what its bars show (default: title)
    fill: list[str] = dataclasses.field(default_factory=list)  # the grid commands that fill it
    data: str = ""  # the data our runs are on (records.describe_data)

    def panels(self) -> list[Panel]:
        return [Panel(self.bars, self.unit), *self.extra]


def emit(text: str, out: Path | None, filename: str) -> None:
    """Print a report; with ``out``, also write it to ``out/filename`` (the folder made when missing)."""
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / filename).write_text(text)
