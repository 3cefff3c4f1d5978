"""experiments.tuning: the same budget per method, the choice made on validation only, the chosen runs reused."""
import dataclasses

import pytest

from experiments import grid, tuning
from experiments import records as rec

DATA = tuning.data_keys()


def _rec(method, setting, val, test, *, seed=0, fusion=None, data=DATA, name=None, **extra):
    params = {"train.ablation": "full", "train.unimodal_pred": "heads", "train.grad_angle": "", **data, **dict(setting),
              **extra}
    overrides = {**data, **dict(setting), **extra}
    return rec.Record(name=name or f"{method}-{setting}-{seed}", rev="r", timestamp="t", method=method,
                         fusion=fusion or tuning.SPACE[method][0], seed=seed, params=params, overrides=overrides,
                         metrics={"acc_fused": test}, val=val)


def test_every_method_gets_the_same_budget():
    assert {len(tuning.candidates(m)) for m in tuning.SPACE} == {4}
    assert {m for methods, _, _ in grid.PAPER_GRIDS for m in methods} == set(tuning.SPACE)  # every table's method tuned
    specs = tuning.tuning_specs(0)
    assert len(specs) == 4 * len(tuning.SPACE) and len({s.name for s in specs}) == len(specs)
    grid.check_params(specs)  # every setting is valid params (a misspelt knob would fail here)


def test_selection_follows_validation_not_test():
    c = tuning.candidates("pmr")
    records = [_rec("pmr", c[0], val=0.60, test=0.95),  # best on test, worst on validation
               _rec("pmr", c[1], val=0.80, test=0.50),  # best on validation: chosen
               _rec("pmr", c[2], val=0.70, test=0.90),
               _rec("pmr", c[3], val=0.99, test=0.99, seed=1),  # another seed: not a tuning run
               _rec("pmr", c[3], val=0.99, test=0.99, data={}),  # the default data: not the grid's
               _rec("pmr", c[3], val=0.99, test=0.99, **{"train.ablation": "decouple"})]  # another table's setting
    choice = tuning.select(records)["pmr"]
    assert choice.setting == c[1] and choice.val == 0.80
    assert [v for _, v in choice.tried] == [0.60, 0.80, 0.70, None]
    # the test ranking is the reverse of validation's: the choice does not move
    flipped = [dataclasses.replace(r, metrics={"acc_fused": 1 - r.metrics["acc_fused"]}) for r in records]
    assert tuning.select(flipped)["pmr"].setting == c[1]
    # a tie on validation goes to the first setting in declared order
    tie = [_rec("mla", s, val=0.7, test=t) for s, t in zip(tuning.candidates("mla"), (0.1, 0.9, 0.9, 0.9))]
    assert tuning.select(tie)["mla"].setting == tuning.candidates("mla")[0]
    assert "baseline" not in tuning.select(records)  # no run: no choice


def test_final_view_keeps_the_chosen_runs_without_their_tuned_keys():
    c = tuning.candidates("baseline")
    records = [_rec("baseline", c[0], 0.9, 0.8), _rec("baseline", c[0], None, 0.7, seed=1),
               _rec("baseline", c[0], None, 0.6, fusion="sum"), _rec("baseline", c[1], 0.5, 0.99)]
    chosen = tuning.select(records)
    view = tuning.final_view(records, chosen)
    assert [(r.seed, r.fusion, r.overrides) for r in view] == [(0, "concat", {}), (1, "concat", {}), (0, "sum", {})]
    assert tuning.final_view(records, {}) == records  # no tuning runs: the tables take every run as before
    md = tuning.chosen_markdown(chosen, view)
    assert "| baseline | concat | 0.001 | weight_decay = 0.0001 | 90.00 | 75.00 ± 7.07 (n=2) |" in md


def test_the_chosen_tuning_run_is_reused_at_its_seed():
    chosen = {m: tuning.candidates(m)[1] for m in tuning.SPACE}
    final = tuning.final_specs(chosen, [0, 1, 2])
    tune = {s.name: s for s in tuning.tuning_specs(0)}
    reused = [s for s in final if s.name in tune]
    assert sorted((s.method, s.fusion, s.seed) for s in reused) == sorted(
        (m, tuning.SPACE[m][0], 0) for m in tuning.SPACE)  # one per method: its chosen setting, same name
    assert all(tune[s.name].sets == s.sets or sorted(tune[s.name].sets) == sorted(s.sets) for s in reused)
    assert len(final) == len({s.name for s in final}) == 3 * len(grid.paper_specs([0]))
    remix = [s for s in final if s.method == "remix"]
    assert all(set(tuning.as_sets(chosen["remix"])) <= set(s.sets) for s in remix)  # every Remix cell at its choice
    # Tables 2-3 first, seed-major within them; then the other tables; Figure 3's runs (grad_angle) last
    t23 = [s for s in final if not any(x.startswith(("train.ablation", "train.unimodal_pred", "train.grad_angle"))
                                       for x in s.sets) and (s.fusion == "concat" or s.method == "greedy"
                                                             or (s.method == "baseline" and s.fusion == "mmtm"))]
    assert final[:len(t23)] == t23 and len(t23) == 3 * (len(tuning.SPACE) + 1)
    assert [s.seed for s in t23] == sorted(s.seed for s in t23)
    assert all("train.grad_angle=audio" in s.sets for s in final[-6:])


@pytest.mark.parametrize("key", ["train.lr", tuning.SPACE["pmr"][1]])
def test_sets_round_trip_through_yaml(key):
    import yaml

    setting = ((key, 0.003),)
    k, v = tuning.as_sets(setting)[0].split("=", 1)
    assert (k, yaml.safe_load(v)) == (key, 0.003)
