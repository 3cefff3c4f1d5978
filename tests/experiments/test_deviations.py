"""experiments.deviations (and experiments.selection.chosen_runs): the official values' arms against the tuned runs."""
from __future__ import annotations

import dataclasses

from experiments import deviations, tuning
from experiments.records import Record
from experiments.selection import chosen_runs

SETTING = {"train.lr": 0.001, "train.weight_decay": 0.0001}  # baseline's first candidate


def record(seed: int, acc: float, *, lr: float = 0.001, val: float = 0.5, right: str = "", **extra) -> Record:
    data = tuning.data_keys()
    params = {**data, **tuning.TABLE_DEFAULTS, **SETTING, "train.lr": lr, **extra}
    overrides = {**data, "train.lr": lr, "train.weight_decay": 0.0001, **extra}
    keys = tuple(f"c{i}" for i in range(len(right)))
    return Record(name=f"b-{seed}-{lr}-{sorted(extra)}", rev=str(seed) * 40, timestamp=f"2026-12-05T00:0{seed}",
                  method="baseline", fusion="concat", seed=seed, params=params, overrides=overrides,
                  metrics={"acc_fused": acc}, val=val, clip_keys=keys, right={"fused": right} if right else {},
                  history=({"epoch": 0, "val_fused": val, "test_fused": acc},))


def test_chosen_runs_keep_the_chosen_setting_without_other_changes():
    runs = [record(0, 0.60, val=0.7), record(0, 0.99, lr=0.003, val=0.6),  # the second candidate loses on val
            record(1, 0.62), record(1, 0.50, **{"train.eval_resize": "squash"})]
    kept = chosen_runs(runs)
    assert sorted((r.seed, r.metrics["acc_fused"]) for r in kept) == [(0, 0.60), (1, 0.62)]
    assert all(r.overrides == {} for r in kept)


def test_the_official_arm_is_paired_with_the_tuned_run_of_each_seed():
    runs = [record(0, 0.60, right="1100"), record(1, 0.70, right="1110"),
            record(0, 0.50, right="1000", **{"train.eval_resize": "squash"}),
            record(1, 0.70, right="1110", **{"train.eval_resize": "squash"}),
            record(1, 0.10, **{"train.bn_init": "normal"})]  # another deviation: not in eval_resize's arm
    chosen = tuning.select(runs, methods=["baseline"])
    final = tuning.final_view(runs, chosen)
    [row] = deviations.rows(final, chosen, ["eval_resize"])
    assert row[0] == "baseline" and row[2] == "2"
    assert row[3] == "65.00 ± 7.07 (n=2)" and row[4] == "60.00 ± 14.14 (n=2)"
    assert row[5].startswith("-5.00 ± 7.07 [")  # official - avremix, per seed: -10 and 0 points


def test_remix_over_the_baseline_is_paired_within_each_arm():
    def remix(seed, acc, right, **extra):
        r = record(seed, acc, right=right, **{"train.warmup_epochs": 4, **extra})
        overrides = {k: v for k, v in r.overrides.items() if k != "train.weight_decay"}  # remix tunes warm-up
        return dataclasses.replace(r, method="remix", name="r" + r.name, overrides=overrides)

    squash = {"train.eval_resize": "squash"}
    runs = [record(0, 0.50, right="1100"), record(1, 0.75, right="1110"),
            remix(0, 0.75, "1110"), remix(1, 1.00, "1111"),  # +25 points at each seed with the defaults
            record(0, 0.50, right="1100", **squash), remix(0, 0.25, "1000", **squash)]  # -25 with the squash
    chosen = tuning.select(runs, methods=["baseline", "remix"])
    rows = deviations.remix_rows(tuning.final_view(runs, chosen), chosen, ["eval_resize", "bn_init"])
    assert [r[:2] for r in rows] == [["avremix's defaults", "2"], ["`train.eval_resize=squash`", "1"],
                                     ["`train.bn_init=normal`", "0"]]
    assert rows[0][2].startswith("+25.00 ± 0.00 [") and rows[1][2].startswith("-25.00") and rows[2][2] == "—"


def test_specs_run_each_chosen_method_at_its_setting_with_one_official_value():
    chosen = tuning.select([record(0, 0.6)], methods=["baseline"])
    specs = deviations.specs(chosen, ["eval_resize", "bn_init"], [0, 1])
    assert len(specs) == 4 and len({s.name for s in specs}) == 4
    for s in specs:
        assert s.method == "baseline" and s.fusion == "concat"
        assert set(tuning.DATA) <= set(s.sets) and "train.lr=0.001" in s.sets
        assert sum(x in s.sets for x in ('train.eval_resize="squash"', 'train.bn_init="normal"')) == 1
    [every] = deviations.specs(chosen, ["all"], [0])  # the presets' combination: each official value at once
    assert {'train.eval_resize="squash"', "train.bn_split=2", 'features.spectrogram="linear"'} <= set(every.sets)
    assert len(deviations.official("all")) == len(deviations.DEVIATIONS) - 1


def test_specs_skip_the_seeds_an_earlier_commit_ran():
    runs = [record(0, 0.6), record(1, 0.5, **{"train.eval_resize": "squash"})]
    chosen = tuning.select(runs, methods=["baseline"])
    specs = deviations.specs(chosen, ["eval_resize", "bn_init"], [0, 1], tuning.final_view(runs, chosen))
    assert sorted((s.seed, "eval_resize" in " ".join(s.sets)) for s in specs) == [(0, False), (0, True), (1, False)]


def test_main_keeps_earlier_commits_arms_in_the_saved_file(tmp_path, monkeypatch):
    """An arm run at an earlier commit (not among HEAD's experiments) stays in the table and in --saved."""
    from experiments import grid
    from experiments.records import load_records, save_records

    grid_runs = [record(0, 0.60, right="1100"), record(1, 0.70, right="1110")]
    old = [record(0, 0.50, right="1000", **{"train.eval_resize": "squash"})]
    new = [record(1, 0.70, right="1110", **{"train.eval_resize": "squash"})]
    save_records(grid_runs, tmp_path / "records.json")
    save_records(old, tmp_path / "saved.json")
    monkeypatch.setattr(grid, "run_grid", lambda *a, **k: [])  # every arm already run
    monkeypatch.setattr(deviations, "collect", lambda cwd: new)  # HEAD's experiments
    deviations.main(["--records", str(tmp_path / "records.json"), "--saved", str(tmp_path / "saved.json"),
                     "--methods", "baseline", "--deviations", "eval_resize", "--out", str(tmp_path)])
    assert sorted(r.seed for r in load_records(tmp_path / "saved.json")) == [0, 1]
    text = (tmp_path / "deviations.md").read_text()
    assert "| baseline | `train.eval_resize=squash`" in text and "| 2 | 65.00 ± 7.07 (n=2) | 60.00 ± 14.14 (n=2) |" in text
