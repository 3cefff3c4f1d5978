"""experiments.grid (queueing, waiting, failing loudly) and experiments.tables (grouping over seeds,
mean ± std, the Markdown tables): unit tests on hand-made records, and one real grid of DVC experiments."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments import cells, grid, reference, render, tables
from experiments import records as rec
from tests.conftest import REPO
from tests.test_dvc import TINY_SYNTH, TINY_TRAIN

BASE_TRAIN = {"methods": ["baseline", "remix"], "modalities": ["audio", "video"], "fusion": "concat", "epochs": 16,
              "ablation": "full", "unimodal_pred": "heads", "workers": 2, "seed": -1, "method_params": {}}


def _exp(name, rev, method, seed, acc, *, fusion="concat", ts="2026-01-01T00:00:00", state="success", **train):
    """One experiment entry of `dvc exp show --json` with runs/<method>/metrics.json."""
    params = {"base": {"seed": 0}, "train": {**BASE_TRAIN, "methods": [method], "fusion": fusion, "seed": seed, **train}}
    metrics = {"method": method, "acc_fused": acc[0], "acc_audio": acc[1], "acc_video": acc[2]}
    return {"revs": [{"rev": rev, "name": name, "error": None, "data": {
        "rev": rev, "timestamp": ts, "params": {"params.yaml": {"data": params}},
        "metrics": {f"runs/{method}/metrics.json": {"data": metrics}}}}],
        "executor": {"state": state}, "name": name}


SHOW = [
    {"rev": "workspace", "data": {"params": {}, "metrics": {}}, "experiments": None},
    {"rev": "c0ffee", "name": "main", "data": {"params": {"params.yaml": {"data": {"base": {"seed": 0}, "train": BASE_TRAIN}}},
                                               "metrics": {}},
     "experiments": [
         _exp("b0", "r-b0", "baseline", 0, (0.80, 0.50, 0.40)),
         _exp("b1", "r-b1", "baseline", 1, (0.70, 0.60, 0.40)),
         _exp("m0", "r-m0", "remix", 0, (0.90, 0.55, 0.70)),
         _exp("m1", "r-m1", "remix", 1, (0.86, 0.45, 0.60), ts="2026-01-02T00:00:00", workers=1),  # workers: not a variant
         _exp("m1-old", "r-m1-old", "remix", 1, (0.10, 0.10, 0.10)),  # seed 1 again, older: left out
         _exp("bad", "r-bad", "remix", 2, (0.99, 0.99, 0.99), state="failed"),
         _exp("queued", "r-q", "remix", 3, (0.99, 0.99, 0.99), state="queued"),
         _exp("s2", "r-s2", "baseline", 2, (0.60, 0.30, 0.30), fusion="sum", epochs=4),
         _exp("d0", "r-d0", "remix", 0, (0.82, 0.50, 0.50), ablation="decouple"),
         _exp("d1", "r-d1", "remix", 1, (0.78, 0.50, 0.50), ablation="decouple"),
         _exp("x0", "r-x0", "remix", 0, (0.70, 0.50, 0.50), fusion="mmtm"),
         # Figure 3's runs (grad_angle set): in no table
         _exp("g0", "r-g0", "remix", 0, (0.99, 0.99, 0.99), grad_angle="audio"),
         _exp("gd0", "r-gd0", "remix", 0, (0.99, 0.99, 0.99), grad_angle="audio", ablation="decouple"),
     ]},
]
LOGS = {  # rev -> log.json history rows (times in s)
    "r-b0": [{"train_s": 1.5, "score_s": 0.0, "epoch_s": 2.0}, {"train_s": 2.5, "score_s": 0.0, "epoch_s": 3.0}],
    "r-b1": [{"train_s": 3.0, "score_s": 0.0, "epoch_s": 4.0}, {"train_s": 2.0, "score_s": 0.0, "epoch_s": 3.0}],
    "r-m0": [{"train_s": 4.0, "score_s": 1.0, "epoch_s": 6.0, "expansion": 1.5}, {"train_s": 2.0, "score_s": 0.5, "epoch_s": 3.0}],
    "r-m1": [{"train_s": 4.0, "score_s": 1.0, "epoch_s": 6.0, "expansion": 2.0}, {"train_s": 2.0, "score_s": 0.5, "epoch_s": 3.0}],
}


needs_paper = pytest.mark.skipif(not reference.CSV.is_file(), reason=f"the paper's tables.csv not found at {reference.CSV}")


@pytest.fixture
def records():
    calls = []

    def read_log(rev, method):
        calls.append((rev, method))
        return {"history": LOGS[rev]} if rev in LOGS else None

    recs = rec.records_from_show(SHOW, read_log)
    assert ("r-bad", "remix") not in calls and ("r-q", "remix") not in calls  # unfinished runs: no log read
    return recs


def test_records_keep_finished_experiments_with_seed_overrides_and_log_sums(records):
    assert sorted(r.name for r in records) == ["b0", "b1", "d0", "d1", "g0", "gd0", "m0", "m1", "m1-old", "s2", "x0"]
    by = {r.name: r for r in records}
    assert by["s2"].overrides == {"train.epochs": 4} and by["s2"].fusion == "sum" and by["s2"].seed == 2
    assert by["m1"].overrides == {}  # train.workers does not change results
    assert by["d0"].overrides == {"train.ablation": "decouple"}
    # expansion: mean over epochs, 1.0 where a row has none; times: sums over epochs
    assert by["m0"].expansion == pytest.approx(1.25) and by["m0"].epoch_s == 9.0 and by["m0"].score_s == 1.5
    assert by["b0"].expansion == 1.0 and by["b0"].train_s == 4.0
    assert by["s2"].expansion is None and by["s2"].epoch_s is None  # no log.json


def test_mean_std_cells():
    assert cells.fmt(cells.Stat.of([0.8, 0.7]), 100) == "75.00 ± 7.07 (n=2)"  # sample std: 0.1 / sqrt(2)
    assert cells.fmt(cells.Stat.of([0.9]), 100) == "90.00 (n=1)"
    assert cells.fmt(cells.Stat.of([2.0, 4.0, 9.0])) == "5.00 ± 3.61 (n=3)"  # sqrt(((-3)^2 + 1 + 16) / 2)
    assert cells.fmt(None) == "—"


def test_show_prints_a_compact_table_that_fits_the_terminal(capsys, tmp_path):
    """experiments.show: one row per run (the workspace's too), method / fusion / seed / the params that differ /
    val and test accuracy, every line within the width; long settings wrap instead of being cut."""
    from experiments import show

    ws = {"rev": "workspace", "data": {"params": {"params.yaml": {"data": {"base": {"seed": 0}, "train": {
        **BASE_TRAIN, "methods": ["remix"], "lr": 0.01}}}}, "metrics": {
        "runs/remix/metrics.json": {"data": {"method": "remix", "acc_fused": 0.5}}}}, "experiments": None}
    logs = {rev: {"history": rows, "best": {"val_fused": 0.6 + i / 100}} for i, (rev, rows) in enumerate(LOGS.items())}
    runs = rec.records_from_show([ws, *SHOW[1:]], lambda rev, method: logs.get(rev) or (
        {"best": {"val_fused": 0.25}} if rev == "workspace" else None), workspace=True)
    long = dataclasses.replace(runs[0], name="long", overrides={f"train.method_params.baseline.knob_{i}": i * 1000.5
                                                                for i in range(12)})
    text = show.table([*runs, long], width=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    assert lines[0].split() == ["method", "fusion", "seed", "settings", "val", "%", "test", "%"]
    assert lines[1].split() == ["remix", "concat", "0", "lr=0.01", "25.0", "50.0"]  # the workspace first
    rows = [line.split() for line in lines[1:] if line and line[0] != " "]
    assert ["baseline", "sum", "2", "epochs=4", "—", "60.0"] in rows  # no log.json: no val
    assert ["remix", "concat", "0", "ablation=decouple", "—", "82.0"] in rows
    assert ["baseline", "concat", "0", "60.0", "80.0"] in rows  # r-b0: val from its log.json; nothing overridden
    assert all(f"baseline.knob_{i}={i * 1000.5}" in text for i in range(12))  # wrapped onto more lines, all there
    assert sum(1 for line in lines if line.startswith(" " * 31)) >= 2
    rec.save_records(runs, tmp_path / "records.json")
    show.main(["--width", "60", "--records", str(tmp_path / "records.json")])
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 60 and f"{len(runs)} run(s)" in out


@needs_paper
def test_table1_groups_seeds_and_variants(records):
    t1 = tables.table1(records)
    assert t1.header == ["fusion", "baseline", "remix", "gain (points)"] and t1.n_ours == 2
    # gain: per-seed paired differences (0.90 - 0.80, 0.86 - 0.70): mean 13.00, sample std 4.24; no predictions.csv
    # in these records, so no bootstrap interval (tests/experiments/test_stats.py covers it)
    assert t1.rows[:2] == [["concat", "75.00 ± 7.07 (n=2)", "88.00 ± 2.83 (n=2)", "+13.00 ± 4.24"],  # remix seed 1: the newest (0.86)
                           ["sum (epochs=4)", "60.00 (n=1)", "—", "—"]]
    assert [r[0] for r in t1.rows[2:]] == ["sum", "decision", "film", "gated"]  # the paper's rows we have no run of
    assert render.markdown(t1).startswith("## Table 1: fusion methods, baseline vs remix (fused test accuracy %)\n\n")
    assert "mmtm" not in render.markdown(t1)


@needs_paper
def test_plotted_bars_are_the_tables_seed_values(records, tmp_path):
    t1, t5 = tables.table1(records), tables.table5(records)
    assert t1.bars[0] == ("concat", {"baseline": pytest.approx([80.0, 70.0]), "remix": pytest.approx([90.0, 86.0])})
    assert t1.bars[1] == ("sum (epochs=4)", {"baseline": pytest.approx([60.0]), "remix": []})
    assert t5.bars == [("concat", {"baseline": pytest.approx([80.0, 70.0]), "remix decouple": pytest.approx([82.0, 78.0]),
                                   "remix reassemble": [], "remix full": pytest.approx([90.0, 86.0])})]
    t3 = tables.table3(records)
    assert (t3.unit, t3.bars[0][1]["total"], t3.bars[1][1]["scoring"]) == ("time (s)", [5.0, 7.0], [1.5, 1.5])
    for t in (t1, t3, tables.table6(records)):  # bars, and a table with no runs
        render.render_png(t, tmp_path / f"{t.key}.png")
        assert (tmp_path / f"{t.key}.png").stat().st_size > 0


@needs_paper
def test_tables_2_to_6(records):
    t2 = tables.table2(records)
    assert t2.header == ["method", "fusion", "fused", "audio-only", "video-only", "expansion", "gain (points)",
                         "remix over X (points)"]
    assert t2.rows[:t2.n_ours] == [
        ["baseline", "concat", "75.00 ± 7.07 (n=2)", "55.00 ± 7.07 (n=2)", "40.00 ± 0.00 (n=2)", "1.00 ± 0.00 (n=2)", "—", "—"],
        ["remix", "concat", "88.00 ± 2.83 (n=2)", "50.00 ± 7.07 (n=2)", "65.00 ± 7.07 (n=2)", "1.38 ± 0.18 (n=2)",
         "+13.00 ± 4.24", "+13.00 ± 4.24"],  # remix over X: X = baseline
        ["baseline (epochs=4)", "sum", "60.00 (n=1)", "30.00 (n=1)", "30.00 (n=1)", "—", "—", "—"],
        ["remix", "mmtm", "70.00 (n=1)", "50.00 (n=1)", "50.00 (n=1)", "—", "—", "—"],  # no baseline on mmtm: no gain
    ]  # remix expansion: (1.25 + 1.5) / 2, std of {1.25, 1.5}
    t3 = tables.table3(records)
    assert t3.rows[:2] == [  # the ratio: of the medians over seeds (two seeds: their mean)
        ["baseline", "concat", "4.50 ± 0.71 (n=2)", "0.00 ± 0.00 (n=2)", "6.00 ± 1.41 (n=2)", "6.00", "1.00"],
        ["remix", "concat", "6.00 ± 0.00 (n=2)", "1.50 ± 0.00 (n=2)", "9.00 ± 0.00 (n=2)", "9.00", "1.50"]]
    slow = [dataclasses.replace(r, epoch_s=60.0) if r.name == "m0" else r for r in records]  # one seed slowed
    fast = [dataclasses.replace(r, name="m2", rev="r-m2", seed=2) for r in records if r.name == "m1"]
    assert tables.table3(slow + fast).rows[1][-2:] == ["9.00", "1.50"]  # the median of (60, 9, 9): one slow seed ignored
    assert t3.n_ours == 2  # the paper's comparison only: methods on concat (Greedy on mmtm); not sum, not remix on mmtm
    assert t3.extra[0].bars[1] == ("remix\nconcat", {"x baseline": pytest.approx([9.0 / 6.0, 9.0 / 6.0])})
    t4 = tables.table4(records)  # concatenation too, as in the paper's Table 4
    assert t4.rows[:t4.n_ours] == [["concat", "75.00 ± 7.07 (n=2)", "88.00 ± 2.83 (n=2)", "+13.00 ± 4.24"],
                                   ["mmtm", "—", "70.00 (n=1)", "—"]]
    t5 = tables.table5(records)
    assert t5.header == ["fusion", "baseline", "remix decouple", "remix reassemble", "remix full"]
    assert t5.rows == [["concat", "75.00 ± 7.07 (n=2)", "80.00 ± 2.83 (n=2)", "—", "88.00 ± 2.83 (n=2)"]]
    t6 = tables.table6(records)  # no dropout run: the concat row (a paper row) from the default runs, and the grid to run
    assert t6.rows[0] == ["concat", "75.00 ± 7.07 (n=2)", "88.00 ± 2.83 (n=2)", "—"] and not t6.filled
    md6 = render.markdown(t6)
    assert ("no runs yet: `python -m experiments.grid --methods remix --fusions concat --seeds 0 1 2 "
            "--set train.unimodal_pred=dropout`") in md6


def _csv() -> dict[tuple[str, str, str, str], float]:
    """The paper's tables.csv read here, apart from experiments.reference: (table, row, dataset, column) -> value."""
    with reference.CSV.open(newline="") as f:
        return {(r["table"], r["row"], r["dataset"], r["column"]): float(r["value"]) for r in csv.DictReader(f)}


def _pair(a: float, b: float, spec: str = ".2f") -> str:
    return f"{format(a, spec)} / {format(b, spec)}"


@needs_paper
def test_paper_numbers_and_gains_beside_ours(records):
    """Fake runs in, the paper's CREMA-D / Kinetics-Sounds values (from the CSV) and its gain over its baseline
    beside our values and our gain over our baseline."""
    p = _csv()
    datasets = ("cremad", "kinetics_sounds")

    def both(t, row, col, spec=".2f"):
        return _pair(*(p[t, row, d, col] for d in datasets), spec)

    def gain(t, row, base, col="acc"):
        return _pair(*(p[t, row, d, col] - p[t, base, d, col] for d in datasets), "+.2f")

    def ratio(m):
        return _pair(*(p["3", m, d, "seconds"] / p["3", "baseline", d, "seconds"] for d in datasets))

    md1 = render.markdown(tables.table1(records))
    assert ("| fusion | baseline | paper baseline (CREMA-D / KS) | remix | paper remix (CREMA-D / KS) | gain (points) "
            "| paper gain (CREMA-D / KS) |") in md1
    assert (f"| concat | 75.00 ± 7.07 (n=2) | {both('1', 'concat', 'acc')} | 88.00 ± 2.83 (n=2) | "
            f"{both('1', 'concat+remix', 'acc')} | +13.00 ± 4.24 | {gain('1', 'concat+remix', 'concat')} |") in md1
    assert f"| film | — | {both('1', 'film', 'acc')} | — | — | — | — |" in md1  # the paper's row, no run of ours
    md2 = render.markdown(tables.table2(records))
    assert (f"| remix | concat | 88.00 ± 2.83 (n=2) | {both('2', 'remix', 'acc')} | 50.00 ± 7.07 (n=2) | "
            f"65.00 ± 7.07 (n=2) | 1.38 ± 0.18 (n=2) | {both('2', 'remix', 'factor')} | +13.00 ± 4.24 | "
            f"{gain('2', 'remix', 'baseline')} | +13.00 ± 4.24 | {gain('2', 'remix', 'baseline')} |") in md2
    # X + Remix over X, the paper's too: mla_remix over mla
    assert f"| mla_remix | — | — | {both('2', 'mla_remix', 'acc')} |" in md2
    assert md2.count(gain('2', 'mla_remix', 'mla')) == 1
    assert f"| mla | — | — | {both('2', 'mla', 'acc')} |" in md2
    md3 = render.markdown(tables.table3(records))
    assert f"| 9.00 ± 0.00 (n=2) | {both('3', 'remix', 'seconds', '.0f')} | 9.00 | 1.50 | {ratio('remix')} |" in md3
    assert [ratio(m).split(" / ")[0] for m in ("remix", "resample", "mla")] == ["1.65", "2.95", "3.99"]  # the paper's text
    assert f"| {ratio('mla')} |" in md3
    md5 = render.markdown(tables.table5(records))
    assert f"| concat | 75.00 ± 7.07 (n=2) | {both('5', 'neither', 'acc')} | 80.00 ± 2.83 (n=2) | " in md5
    md6 = render.markdown(tables.table6(records))
    assert f"| {both('6', 'concat+remix', 'dropout')} | {both('6', 'concat', 'dropout')} |" in md6
    assert "Paper's names: concat = Concatenation; sum = Summation" in md6


@needs_paper
def test_png_marks_each_paper_value(records, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t1 = tables.table1(records)
    fig, ax = plt.subplots()
    render._draw_panel(ax, t1.panels()[0], t1.paper)
    marks = [line for line in ax.lines if line.get_marker() in ("D", "^")]
    # one marker per paper value of a plotted column: 5 baselines + 3 remix rows, 2 datasets
    assert sorted(float(m.get_ydata()[0]) for m in marks) == sorted(
        v for (t, row, d, c), v in _csv().items() if t == "1")
    plt.close(fig)
    t3 = tables.table3(records)
    render.render_png(t3, tmp_path / "t3.png")  # seconds, then the ratio with the paper's ratios
    assert (tmp_path / "t3.png").stat().st_size > 0


@needs_paper
def test_each_png_says_which_data_it_is_on_and_titles_what_it_draws(records):
    import matplotlib.pyplot as plt

    params = {"prepare.root": "data/raw", "synth.num_classes": 6, "synth.clips_per_class": 150}
    synth = [dataclasses.replace(r, params={**r.params, **params}) for r in records]
    for t in tables.build(synth):
        fig = render.table_figure(t)
        title = fig.axes[0].get_title()
        assert "ours (bars; dots: seeds): the embedded synthetic dataset (6 classes x 150 clips)" in title, t.key
        if any(t.paper):  # the paper's markers: on its own datasets
            assert "paper (its own tables): ◇ CREMA-D / △ Kinetics-Sounds" in title, t.key
        drawn = {text.get_text() for ax in fig.axes if ax.get_legend() for text in ax.get_legend().get_texts()}
        if t.key == "table2":  # the PNG draws the accuracies, not the expansion factor or the gains
            assert title.startswith("Table 2: balancing methods, test accuracy % (fused, and each modality alone)")
            assert "expansion" not in title and "gain" not in title
            assert {"fused", "audio-only", "video-only"} <= drawn, drawn
        plt.close(fig)
    real = [dataclasses.replace(r, params={**r.params, "prepare.root": "/data/CREMA-D", "prepare.dataset": "cremad"})
            for r in records]
    assert rec.describe_data(real) == "cremad at /data/CREMA-D"
    assert "ours (bars; dots: seeds): cremad at /data/CREMA-D" in render.table_figure(tables.table1(real)).axes[0].get_title()
    assert render.document(tables.build(real)).count("on cremad at /data/CREMA-D.") == 1
    plt.close("all")


@needs_paper
def test_records_file_round_trip_and_paper_only(records, tmp_path, capsys):
    path = tmp_path / "r" / "records.json"
    rec.save_records(records, path)
    assert rec.load_records(path) == records
    tables.main(["--from-records", "--records", str(path), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "tables.md").read_text() == render.document(tables.build(records))
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"table{i}.png" for i in range(1, 7)]
    with pytest.raises(SystemExit, match="no saved records"):
        tables.main(["--from-records", "--records", str(tmp_path / "none.json"), "--out", str(tmp_path / "o2")])
    tables.main(["--paper-only", "--out", str(tmp_path / "paper")])
    md = (tmp_path / "paper" / "paper_tables.md").read_text()
    assert "(n=" not in md and "| fusion | paper baseline (CREMA-D / KS) | paper remix (CREMA-D / KS) |" in md  # ours left out
    for (t, row, d, c), v in _csv().items():  # every number of the paper, in its table's section
        section = md.split(f"## Table {t}:")[1].split("## Table")[0]
        assert (f"{v:.0f}" if c == "seconds" else f"{v:.2f}") in section, (t, row, d, c)


def test_missing_paper_csv_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit, match=f"experiments.tables: the paper's numbers are read from {tmp_path}/no.csv"):
        tables.main(["--paper-csv", str(tmp_path / "no.csv"), "--paper-only", "--out", str(tmp_path)])


def test_grid_commands_and_checks(capsys):
    specs = grid.build_specs(["baseline", "remix"], ["concat", "sum"], [0, 1], ["train.epochs=4"], prefix="p")
    assert [s.name for s in specs][:3] == ["p-baseline-concat-s0", "p-baseline-concat-s1", "p-baseline-sum-s0"]
    assert len(specs) == 8
    assert specs[0].queue_args() == ["exp", "run", "--queue", "-n", "p-baseline-concat-s0", "-S", "train.methods=[baseline]",
                                     "-S", "train.fusion=concat", "-S", "train.seed=0", "-S", "train.epochs=4"]
    assert grid.default_prefix([]) == "grid"
    assert grid.default_prefix(["b=1", "a=2"]) == grid.default_prefix(["a=2", "b=1"]) != grid.default_prefix(["a=3"])
    for bad in (["train.seed=3"], ["train.fusion=sum"], ["epochs"]):
        with pytest.raises(ValueError):
            grid.build_specs(["baseline"], ["concat"], [0], bad)
    grid.main(["--methods", "baseline", "--seeds", "0", "--name", "x", "--set", "train.lr=0.01", "--dry-run"])
    assert capsys.readouterr().out.splitlines() == [
        "dvc exp run --queue -n x-baseline-concat-s0 -S 'train.methods=[baseline]' -S train.fusion=concat "
        "-S train.seed=0 -S train.lr=0.01", "dvc queue start -j 1"]


def test_paper_grid_queues_each_shared_run_once():
    specs = grid.paper_specs([0, 1])
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    # the single grids' names, so --paper and the per-table commands see each other's runs (--skip-existing)
    single = {s.name for methods, fusions, sets in grid.PAPER_GRIDS for s in grid.build_specs(methods, fusions, [0, 1], sets)}
    assert set(names) == single
    assert names.count("grid-baseline-concat-s0") == 1  # Tables 1, 2 and 3 share it
    # 2 x 5 late fusions, 7 more methods on concat, greedy + baseline on mmtm, remix on mmtm, 2 on centralnet, 3 settings,
    # 2 runs of Figure 3c
    assert len(specs) == 2 * (10 + 7 + 2 + 1 + 2 + 3 + 2)
    assert {s.sets for s in specs if s.method == "remix" and s.fusion == "concat"} == {
        (), ("train.ablation=decouple",), ("train.ablation=reassemble",), ("train.unimodal_pred=dropout",),
        ("train.grad_angle=audio",), ("train.grad_angle=audio", "train.ablation=decouple")}
    assert [s.seed for s in specs] == [0] * (len(specs) // 2) + [1] * (len(specs) // 2)  # seed-major
    assert [s.name for s in specs[:3]] == ["grid-baseline-concat-s0", "grid-baseline-sum-s0", "grid-baseline-decision-s0"]
    assert grid.paper_specs([0], ["train.epochs=4"])[0].sets == ("train.epochs=4",)
    with pytest.raises(SystemExit, match="--name"):
        grid.main(["--paper", "--name", "x", "--dry-run"])


STATUS = """Task     Name           Created    Status
a816da0  old-run        Nov 24, 2026   Failed
fe0dfa7  g-boom-s1      06:29 AM   Running
cc29d18  g-remix-s1     06:29 AM   Success
0bbb118                 06:30 AM   Queued

Worker status: 1 active, 0 idle
"""


def test_parse_status_and_wait():
    assert grid.parse_queue_status(STATUS, ["g-boom-s1", "g-remix-s1", "old-run"]) == [
        ("a816da0", "old-run", "Failed"), ("fe0dfa7", "g-boom-s1", "Running"), ("cc29d18", "g-remix-s1", "Success"),
        ("0bbb118", "", "Queued")]
    polls = iter([[("t1", "a", "Queued"), ("t0", "b", "Failed")],  # t0: an earlier run of b, ignored
                  [("t1", "a", "Running"), ("t2", "b", "Queued")],
                  [("t1", "a", "Success"), ("t2", "b", "Running")],
                  [("t1", "a", "Success"), ("t2", "b", "Success")]])
    done, slept = [], []
    grid.wait(["a", "b"], lambda: next(polls), ignore_tasks={"t0"}, interval=5, on_done=done.append, sleep=slept.append)
    assert done == ["a", "b"] and slept == [5, 5, 5]
    with pytest.raises(grid.ExperimentFailed, match="'b'.*t2"):
        grid.wait(["a", "b"], lambda: [("t1", "a", "Success"), ("t2", "b", "Failed")], sleep=slept.append)
    clock = iter(range(0, 100, 10))
    with pytest.raises(grid.GridError, match="timed out"):
        grid.wait(["a"], lambda: [("t1", "a", "Running")], timeout=25, sleep=lambda s: None, clock=lambda: next(clock))


# -- end to end: a real 2 methods x 2 seeds grid in a temporary git + dvc repository ---------------
def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    repo = tmp_path_factory.mktemp("expgrid")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    tracked = subprocess.run(["git", "ls-files", "stages", "pipeline", "train"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()  # as a queued experiment sees it: git-tracked files only
    for rel in tracked + [str(p.relative_to(REPO)) for p in (REPO / "experiments").glob("*.py")]:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, repo / rel)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"].update(TINY_SYNTH)
    params["features"].update(workers=1, short_side=32)
    params["prepare"]["ratios"] = [0.7, 0.1, 0.2]
    params["train"].update(TINY_TRAIN)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert _run(repo, sys.executable, "-m", "dvc", "init", "-q").returncode == 0
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=repo, check=True)
    yield repo
    _run(repo, sys.executable, "-m", "dvc", "queue", "stop")


def test_grid_then_tables_end_to_end(project):
    out = _run(project, sys.executable, "-m", "experiments.grid", "--methods", "baseline", "remix", "--seeds", "0", "1",
               "--name", "e2e", "--poll", "3", "--timeout", "350")
    assert out.returncode == 0, out.stdout + out.stderr
    refs = _run(project, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    acc = {}
    for method in ("baseline", "remix"):
        for seed in (0, 1):
            ref = next(r for r in refs if r.endswith(f"/e2e-{method}-concat-s{seed}"))
            metrics = json.loads(_run(project, "git", "show", f"{ref}:runs/{method}/metrics.json").stdout)
            acc[method, seed] = metrics["acc_fused"]
    paper = project / "paper.csv"  # the tmp repository has no shared/ beside it
    paper.write_text("table,row,dataset,column,value\n1,concat,cremad,acc,60\n1,concat+remix,cremad,acc,61.5\n")
    tab = _run(project, sys.executable, "-m", "experiments.tables", "--out", "out", "--paper-csv", str(paper))
    assert tab.returncode == 0, tab.stdout + tab.stderr
    md = (project / "out" / "tables.md").read_text()
    again = _run(project, sys.executable, "-m", "experiments.tables", "--out", "again", "--paper-csv", str(paper),
                 "--from-records", "--records", "out/records.json")  # the saved runs render the same tables
    assert again.returncode == 0 and (project / "again" / "tables.md").read_text() == md, again.stderr
    shown = [cells.fmt(cells.Stat.of([acc[m, 0], acc[m, 1]]), 100) for m in ("baseline", "remix")]
    gain = (acc["remix", 0] + acc["remix", 1] - acc["baseline", 0] - acc["baseline", 1]) / 2 * 100
    row = next(line for line in md.split("## Table 2")[0].splitlines() if line.startswith("| concat |"))
    assert row.startswith(f"| concat | {shown[0]} | 60.00 / — | {shown[1]} | 61.50 / — | {gain:+.2f} ± "), md
    lo, hi = (float(x) for x in row.split("[")[1].split("]")[0].split(","))  # the bootstrap interval over clips
    assert lo <= gain <= hi and row.endswith(f"{'*' if lo > 0 or hi < 0 else ''} | +1.50 / — |"), row
    saved = rec.load_records(project / "out" / "records.json")  # each run's per-clip predictions were read
    for r in saved:
        assert len(r.clip_keys) == r.metrics["samples"] and r.right["fused"].count("1") == round(
            r.metrics["acc_fused"] * r.metrics["samples"]), r.name
    assert shown[0].endswith("(n=2)")
    t3 = md.split("## Table 3")[1].split("## Table 4")[0]
    row = next(line for line in t3.splitlines() if line.startswith("| baseline | concat |"))
    assert row.endswith("| 1.00 |") and "—" not in row  # times read from each experiment's log.json
    assert "| baseline | concat | " in md.split("## Table 2")[1] and "1.00 ± 0.00 (n=2) |" in md.split("## Table 2")[1]
    assert "no runs yet" in md.split("## Table 4")[1]
    assert sorted(p.name for p in (project / "out").glob("*.png")) == [f"table{i}.png" for i in range(1, 7)]
    shown = _run(project, sys.executable, "-m", "experiments.show", "--width", "80")  # the readable `dvc exp show`
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, shown.stdout
    for (method, seed), value in acc.items():  # each run's row: method, fusion, seed, ..., val %, test %
        assert any(line.split()[:3] == [method, "concat", str(seed)] and line.split()[-1] == f"{100 * value:.1f}"
                   for line in lines), shown.stdout

    bad = _run(project, sys.executable, "-m", "experiments.grid", "--methods", "nosuch", "--seeds", "0", "--name", "bad",
               "--poll", "3", "--timeout", "200")  # a bad method fails before anything is queued, naming the key
    assert bad.returncode != 0 and "experiment bad-nosuch-concat-s0: train.methods: 'nosuch' is not one of" in bad.stderr, \
        bad.stdout + bad.stderr
    assert "bad-nosuch" not in _run(project, sys.executable, "-m", "dvc", "queue", "status").stdout
    import torch

    if not torch.cuda.is_available():  # valid params, but the experiment fails when it runs: loudly, naming it
        bad = _run(project, sys.executable, "-m", "experiments.grid", "--methods", "baseline", "--seeds", "0",
                   "--name", "bad", "--set", "train.device=cuda", "--poll", "3", "--timeout", "200")
        assert bad.returncode != 0 and "experiment 'bad-baseline-concat-s0'" in bad.stderr and "failed" in bad.stderr, \
            bad.stdout + bad.stderr


def _rec(name, method, seed, history, ts="2026-01-01", **overrides):
    params = {"train.ablation": "full", "train.unimodal_pred": "heads", "train.grad_angle": "", "train.warmup_epochs": 1,
              **overrides}
    return rec.Record(name=name, rev=name, timestamp=ts, method=method, fusion="concat", seed=seed, params=params,
                         overrides=overrides, metrics={}, history=tuple(history))


def test_figure3_curves_average_seeds_and_split_by_reassembly(tmp_path):
    from experiments import figure3

    rows = lambda *angles: [{"epoch": e, "grad_angle_audio": a, "assigned_audio": 10 * e, "assigned_video": 5,  # noqa: E731
                             "imbalance_ratio": 2.0 - e} for e, a in enumerate(angles)]
    records = [
        _rec("full0", "remix", 0, rows(10.0, 20.0), **{"train.grad_angle": "audio"}),
        _rec("full1", "remix", 1, rows(30.0, 40.0), **{"train.grad_angle": "audio"}),
        _rec("full1-old", "remix", 1, rows(90.0, 90.0), ts="2025-01-01", **{"train.grad_angle": "audio"}),  # replaced
        _rec("dec0", "remix", 0, rows(50.0, 70.0), **{"train.grad_angle": "audio", "train.ablation": "decouple"}),
        _rec("base0", "baseline", 0, rows(None, None)),
        _rec("lr0", "remix", 0, rows(1.0, 1.0), **{"train.lr": 0.1}),  # another setting: in no curve
    ]
    p = figure3.panels(records, ["audio", "video"], "audio")
    full, dec = p["c"]
    assert (full.n, full.epochs, full.mean) == (2, [0, 1], [20.0, 30.0])
    assert full.std[0] == pytest.approx(math.sqrt(200.0))
    assert (dec.n, dec.mean, math.isnan(dec.std[0])) == (1, [50.0, 70.0], True)
    assert figure3.remix_epoch_mean(dec, warmup_epochs=1) == 70.0
    assert [c.label for c in p["b"]] == ["baseline", "remix"] and p["b"][0].mean == [2.0, 1.0]
    assert p["a"][0].mean == [0.0, 10.0] and p["a"][1].mean == [5.0, 5.0]
    figure3.render(p, "audio", tmp_path / "f.png", warmup_epochs=1)
    assert (tmp_path / "f.png").stat().st_size > 0
    fig = figure3.figure(p, "audio", warmup_epochs=1, data="the embedded synthetic dataset (3 classes x 4 clips)")
    a, b, c = fig.axes
    assert "on the embedded synthetic dataset (3 classes x 4 clips)" in fig._suptitle.get_text()  # which data
    assert "the paper's Figure 3 is on CREMA-D" in fig._suptitle.get_text()
    for ax in (a, b, c):  # the warm-up line is in each panel's legend
        assert "end of warm-up (1 epoch)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert b.get_yscale() == "log" and a.get_yscale() == "linear"  # epoch 0's ratio does not flatten the rest
    assert figure3.panels([], ["audio"], "audio") == {"a": [], "b": [], "c": []}


def test_experiments_and_pipeline_import_graph(monkeypatch):
    """No import cycle among experiments/, pipeline/ and train/ (tables <-> tuning was one, through function-level
    imports), no project module imported inside a function there, and pipeline/ imports nothing of experiments/
    (the preset runner is a pipeline tool; the experiment tooling builds on it, not the reverse)."""
    from tests import test_imports

    monkeypatch.setattr(test_imports, "SCANNED", ("train", "pipeline", "experiments"))
    assert test_imports.cycles() == []
    assert [f"{i.source} -> {i.target} (line {i.line})" for i in test_imports.function_level_offenders()] == []
    assert [f"{i.source} -> {i.target}" for i in test_imports.all_imports()
            if i.source.startswith("pipeline") and i.target.startswith("experiments")] == []
