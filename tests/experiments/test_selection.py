"""experiments.selection: test accuracy selected on validation against the best epoch on test."""
from __future__ import annotations

import pytest

from experiments.records import Record
from experiments.selection import markdown, per_seed


def record(method: str, seed: int, reported: float, tests: list[float], fusion: str = "concat", **params) -> Record:
    history = tuple({"epoch": e, "val_fused": 0.5, "test_fused": t} for e, t in enumerate(tests))
    return Record(name=f"{method}-{seed}", rev="0" * 40, timestamp=f"2026-12-05T00:00:0{seed}", method=method,
                  fusion=fusion, seed=seed, params=params, overrides={}, metrics={"acc_fused": reported},
                  history=history)


def test_official_selection_is_the_best_test_epoch_and_never_below_ours():
    records = [record("remix", 0, 0.70, [0.60, 0.74, 0.70]), record("remix", 1, 0.72, [0.72, 0.71]),
               record("baseline", 0, 0.65, [0.65, 0.66]),
               record("remix", 2, 0.99, [0.99], fusion="sum"),  # another fusion: left out
               record("remix", 3, 0.99, [0.99], **{"train.ablation": "decouple"}),  # an ablation: left out
               Record(name="old", rev="1" * 40, timestamp="t", method="mla", fusion="concat", seed=0, params={},
                      overrides={}, metrics={"acc_fused": 0.9}, history=({"epoch": 0, "val_fused": 0.9},))]
    rows = per_seed(records)
    assert rows == {"baseline": [(0, 65.0, 66.0)],
                    "remix": [(0, pytest.approx(70.0), pytest.approx(74.0)), (1, 72.0, 72.0)]}
    text = markdown(rows, "concat")
    assert "| remix | 2 | 71.0 ± 1.4 | 73.0 ± 1.4 | 2.0 ± 2.8 |" in text
