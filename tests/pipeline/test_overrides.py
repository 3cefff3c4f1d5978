"""pipeline.overrides: ``-S`` values applied as DVC applies them (checked against DVC's own Hydra code), then checked
by the stages' config classes."""
from __future__ import annotations

import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from pipeline.overrides import apply_set, check_overrides
from pipeline.params import load_params
from tests.conftest import REPO

PARAMS = {"train": {"lr": 1.0, "lr_by_method": {"a": 1}, "methods": ["baseline"], "nested": {"x": {"y": 1}}}}


@pytest.mark.parametrize("assignment", [
    "train.lr=0.5", "train.methods=[baseline, remix]", "train.lr_by_method={a: 3}", "train.lr_by_method={}",
    "++train.lr_by_method={b: 2}", "+train.new=1", "~train.lr", "++train.nested={x: {z: 2}}",
    "train.lr_by_method.a=5", "train.lr=null",
])
def test_apply_set_agrees_with_dvc(tmp_path, assignment):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(PARAMS))
    apply_overrides(str(path), [assignment])  # what `dvc exp run -S` writes
    ours = yaml.safe_load(yaml.safe_dump(PARAMS))
    apply_set(ours, assignment)
    assert ours == yaml.safe_load(path.read_text())


def test_a_mapping_with_new_keys_needs_plus_plus_as_in_dvc(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(PARAMS))
    with pytest.raises(Exception, match="--set-param"):  # DVC refuses it
        apply_overrides(str(path), ["train.lr_by_method={b: 2}"])
    with pytest.raises(ValueError, match=r"write \+\+train\.lr_by_method=\.\.\."):
        apply_set(yaml.safe_load(yaml.safe_dump(PARAMS)), "train.lr_by_method={b: 2}")


def test_check_overrides_names_the_key():
    base = load_params(REPO / "params.yaml")
    assert check_overrides(["train.epochs=30"], base=base)["train"].epochs == 30
    with pytest.raises(ValueError, match=r"train\.lr: must be > 0, got 0"):
        check_overrides(["train.lr=0"], base=base)
    with pytest.raises(ValueError, match=r"prepare: unknown key\(s\) \['nosuch'\]"):
        check_overrides(["prepare.nosuch=1"], base=base)
