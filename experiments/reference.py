"""The numbers the paper reports (Ma, Chen, Deng, ICML 2025, arXiv 2506.11550), read from
``<repo>/../shared/reference/paper/tables.csv`` and printed beside ours by :mod:`experiments.tables`.

This module types no number: it reads the CSV (every number of the paper's Tables 1-6, one per row:
``table,row,dataset,column,value``; its README describes the columns) and maps each of its cells onto
the row and column labels of our tables (``REFERENCE["table1"]["CREMA-D"]["concat"]["remix"]``).
The CSV's row names already use the project's names (``concat+remix`` is the paper's "Concat + Remix");
:data:`PAPER_NAMES` gives, for each, the name the paper prints, and the reader rejects a row it cannot
map, so a new paper row is an error here, not a silent blank.
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path

SOURCE = "Ma, Chen, Deng: Improving Multimodal Learning Balance and Sufficiency through Data Remixing, ICML 2025, arXiv 2506.11550"
REPO = Path(__file__).resolve().parents[1]
CSV = REPO.parent / "shared" / "reference" / "paper" / "tables.csv"  # the shared folder beside the checkout

DATASETS = {"cremad": "CREMA-D", "kinetics_sounds": "Kinetics-Sounds"}  # the CSV's dataset -> our label
SHORT = {"CREMA-D": "CREMA-D", "Kinetics-Sounds": "KS"}  # in table headers
REMIX = "+remix"  # the CSV's suffix of a "+ Remix" row of Tables 1, 4 and 6

# our method / fusion name (train/methods, train/fusions; as in the CSV) -> the name the paper prints
PAPER_NAMES = {
    "baseline": "Concatenation (joint training)", "ogm_ge": "OGM-GE", "gblend": "G-Blend", "greedy": "Greedy",
    "pmr": "PMR", "mla": "MLA", "resample": "Resample", "remix": "Remix (Ours)", "mla_remix": "MLA + Remix",
    "resample_remix": "Resample + Remix",
    "concat": "Concatenation", "sum": "Summation", "decision": "Decision fusion", "film": "FiLM", "gated": "Bi-Gated",
    "mmtm": "MMTM", "centralnet": "CentralNet",
}
METHODS = ("baseline", "ogm_ge", "gblend", "greedy", "pmr", "mla", "resample", "remix", "mla_remix", "resample_remix")
FUSIONS = ("concat", "sum", "decision", "film", "gated", "mmtm", "centralnet")
ABLATION_ROWS = {"neither": "baseline", "decouple": "remix decouple", "reassemble": "remix reassemble",
                 "full": "remix full"}  # Table 5's rows (Decouple x Reassemble) -> our columns, all on concat
ABLATION_FUSION = "concat"
METHOD_COLUMNS = {2: {"acc": "fused", "factor": "expansion"}, 3: {"seconds": "total s"}}  # Tables 2 and 3
UNIMODAL_COLUMNS = {"head": "heads", "dropout": "dropout"}  # Table 6's columns -> train.unimodal_pred


class ReferenceMissing(FileNotFoundError):
    """The paper's tables.csv is not where :data:`CSV` says."""


class PaperTableError(ValueError):
    """A row of tables.csv that maps onto no cell of our tables, or onto one cell twice."""


def _fusion_row(row: str) -> tuple[str, bool]:
    fusion = row.removesuffix(REMIX)
    if fusion not in FUSIONS:
        raise PaperTableError(f"unknown fusion {fusion!r} (known: {FUSIONS})")
    return fusion, row.endswith(REMIX)


def _method_row(row: str) -> str:
    if row not in METHODS:
        raise PaperTableError(f"unknown method {row!r} (known: {METHODS})")
    return row


def cell(table: int, row: str, column: str) -> tuple[str, str]:
    """Our (row label, column label) of the CSV's cell (``table``, ``row``, ``column``); PaperTableError if none."""
    if table in (1, 4) and column == "acc":
        fusion, remix = _fusion_row(row)
        return fusion, "remix" if remix else "baseline"
    if column in METHOD_COLUMNS.get(table, {}):
        return _method_row(row), METHOD_COLUMNS[table][column]
    if table == 5 and column == "acc" and row in ABLATION_ROWS:
        return ABLATION_FUSION, ABLATION_ROWS[row]
    if table == 6 and column in UNIMODAL_COLUMNS:
        fusion, remix = _fusion_row(row)
        pred = UNIMODAL_COLUMNS[column]
        if remix:
            return fusion, f"remix {pred}"
        return fusion, "baseline" if pred == "heads" else f"baseline {pred}"  # ours: unimodal_pred is remix's only
    raise PaperTableError(f"no cell of our Table {table} for row {row!r}, column {column!r}")


def load(path: str | Path | None = None) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """table key ("table1" ..) -> dataset label (CREMA-D, Kinetics-Sounds) -> our row label -> our column
    label -> the paper's value, from tables.csv (default :data:`CSV`)."""
    path = Path(path) if path is not None else CSV
    if not path.is_file():
        raise ReferenceMissing(f"the paper's numbers are read from {path}, which does not exist: the shared reference "
                               "folder (shared/reference/paper/ beside the repository) holds tables.csv")
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for line, rec in enumerate(csv.DictReader(f), start=2):
            try:
                row, col = cell(int(rec["table"]), rec["row"], rec["column"])
                dataset = DATASETS[rec["dataset"]]
                value = float(rec["value"])
            except (KeyError, ValueError, TypeError) as e:
                raise PaperTableError(f"{path}:{line}: {e}") from e
            cells = out.setdefault(f"table{int(rec['table'])}", {}).setdefault(dataset, {}).setdefault(row, {})
            if col in cells:
                raise PaperTableError(f"{path}:{line}: a second value for {row!r} / {col!r} of Table {rec['table']}")
            cells[col] = value
    return out


@functools.cache
def _cached(path: str) -> dict:
    return load(path)


def reported(table: str, path: str | Path | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """dataset -> our row label -> our column label -> value the paper reports for ``table`` ({} for none);
    ReferenceMissing when tables.csv is absent."""
    return _cached(str(path if path is not None else CSV)).get(table, {})
