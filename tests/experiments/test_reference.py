"""experiments.reference: every number comes from the paper's tables.csv (none typed in the module), each CSV row
lands on exactly one cell of our tables, and the names it uses are the project's methods and fusions."""
from __future__ import annotations

import ast
import csv
from pathlib import Path

import pytest

from experiments import reference

needs_paper = pytest.mark.skipif(not reference.CSV.is_file(), reason=f"the paper's tables.csv not found at {reference.CSV}")


def _rows() -> list[dict[str, str]]:
    with reference.CSV.open(newline="") as f:
        return list(csv.DictReader(f))


@needs_paper
def test_every_number_is_the_csvs():
    ref = reference.load()
    rows = _rows()
    for r in rows:
        row, col = reference.cell(int(r["table"]), r["row"], r["column"])
        assert ref[f"table{r['table']}"][reference.DATASETS[r["dataset"]]][row][col] == float(r["value"]), r
    # nothing more than the CSV: one cell per CSV row
    assert sum(len(cols) for t in ref.values() for d in t.values() for cols in d.values()) == len(rows)
    assert reference.reported("table3") == ref["table3"] and reference.reported("table9") == {}
    assert set(ref) == {f"table{i}" for i in range(1, 7)}
    assert all(set(t) == set(reference.DATASETS.values()) for t in ref.values())


def test_the_module_types_no_number():
    tree = ast.parse(Path(reference.__file__).read_text(encoding="utf-8"))
    numbers = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, (int, float))
               and not isinstance(n.value, bool)]
    assert set(numbers) <= {1, 2, 3, 4, 5, 6}, numbers  # table numbers and the CSV's first data line only


@needs_paper
def test_names_are_the_projects_methods_and_fusions():
    from train import fusions, methods

    assert set(reference.METHODS) <= set(methods.registry()), set(reference.METHODS) - set(methods.registry())
    assert set(reference.FUSIONS) <= set(fusions.names())
    for r in _rows():
        base = r["row"].removesuffix(reference.REMIX)
        assert base in reference.PAPER_NAMES or base in reference.ABLATION_ROWS, r


def test_missing_or_unmappable_csv_is_a_clear_error(tmp_path):
    with pytest.raises(reference.ReferenceMissing, match="shared/reference/paper"):
        reference.load(tmp_path / "tables.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("table,row,dataset,column,value\n1,concat,cremad,acc,60\n1,nosuch+remix,cremad,acc,1\n")
    with pytest.raises(reference.PaperTableError, match=r"bad.csv:3: unknown fusion 'nosuch'"):
        reference.load(bad)
    bad.write_text("table,row,dataset,column,value\n2,remix,cremad,acc,60\n2,remix,cremad,acc,61\n")
    with pytest.raises(reference.PaperTableError, match="a second value"):
        reference.load(bad)
    bad.write_text("table,row,dataset,column,value\n3,remix,cremad,acc,60\n")
    with pytest.raises(reference.PaperTableError, match="no cell of our Table 3"):
        reference.load(bad)
    ok = tmp_path / "ok.csv"
    ok.write_text("table,row,dataset,column,value\n1,concat,cremad,acc,60\n1,concat+remix,kinetics_sounds,acc,61.5\n")
    assert reference.load(ok) == {"table1": {"CREMA-D": {"concat": {"baseline": 60.0}},
                                             "Kinetics-Sounds": {"concat": {"remix": 61.5}}}}
