"""The paper's numbers beside ours: each row of our tables gets the paper's value of each column it has (by the
row's key in the paper's tables, :mod:`experiments.reference`), derived columns (gains, ratios) computed from the
paper's numbers as ours are from our runs, and the paper's rows none of ours matches appended with our cells blank.

Each of our columns is followed by ``paper <column> (CREMA-D / KS)`` where the paper has that column; each gain
column (ours: over our baseline of the same fusion and overrides) by the paper's gain over its baseline; Table 3's
ratio by the paper's time ratio.
"""
from __future__ import annotations

from experiments import reference
from experiments.cells import DASH, Table

GAIN = "gain (points)"  # our gain over our baseline (Tables 1, 2, 4); the paper's over its baseline beside it
RATIO = "x baseline"  # Table 3: total time over the baseline's
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


def paper_header(col: str) -> str:
    """The header of the paper's column beside our ``col``: ``paper <col> (CREMA-D / KS)``."""
    return f"paper {col.removesuffix(' (points)')} ({' / '.join(reference.SHORT[d] for d in reference.DATASETS.values())})"


def paper_cell(col: str, by_dataset: dict[str, float]) -> str:
    """The paper's values of one cell, ``CREMA-D / Kinetics-Sounds``: gains signed, seconds whole."""
    if not by_dataset:
        return DASH
    spec = "+.2f" if col in (GAIN, REMIX_GAIN) else ".0f" if col == "total s" else ".2f"
    return " / ".join(format(by_dataset[d], spec) if d in by_dataset else DASH for d in reference.DATASETS.values())


def paper_names(table: Table) -> str:
    """The paper's names of the row labels that carry a paper number."""
    names = [f"{k} = {reference.PAPER_NAMES[k]}" for k, p in zip(table.row_keys, table.paper)
             if p and k in reference.PAPER_NAMES]
    return f"Paper's names: {'; '.join(names)}." if names else ""

