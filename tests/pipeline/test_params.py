"""Strict params: unknown or mistyped keys fail loudly, naming the key."""
import subprocess
import sys

import pytest
import yaml

from pipeline.params import check_keys, from_mapping, load_params
from pipeline.synth import SynthConfig
from tests.conftest import REPO


def test_check_keys_names_unknown_missing_and_mistyped():
    known = {"a": int, "b": (str, type(None))}
    assert check_keys({"a": 1, "b": None}, "sec", known) == {"a": 1, "b": None}
    with pytest.raises(ValueError, match=r"sec: unknown key\(s\) \['c'\], missing key\(s\) \['b'\]"):
        check_keys({"a": 1, "c": 2}, "sec", known)
    with pytest.raises(ValueError, match="sec.a: expected"):
        check_keys({"a": "1", "b": None}, "sec", known)
    with pytest.raises(ValueError, match="sec.a: expected"):
        check_keys({"a": True, "b": None}, "sec", known)


def test_from_mapping_on_synth_config():
    assert from_mapping(SynthConfig, {"clips_per_class": 5}, "synth").clips_per_class == 5
    with pytest.raises(ValueError, match=r"synth: unknown key\(s\) \['clip_per_class'\]"):
        from_mapping(SynthConfig, {"clip_per_class": 5}, "synth")


def test_repo_params_load_into_their_configs():
    params = load_params(REPO / "params.yaml")
    from_mapping(SynthConfig, params["synth"], "synth")
    assert set(params) >= {"base", "synth", "prepare", "features"}


def test_extract_stage_fails_on_a_mistyped_key(tmp_path):
    params = load_params(REPO / "params.yaml")
    params["features"]["n_mel"] = params["features"].pop("n_mels")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, str(REPO / "stages" / "extract.py"), "--params", "params.yaml"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and "features: unknown key(s) ['n_mel']" in out.stderr
