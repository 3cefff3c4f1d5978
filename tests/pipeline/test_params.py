"""The one config mechanism: unknown sections and keys, wrong types, values out of range and bad choices
fail naming the full key."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Optional

import pytest
import yaml

from pipeline.datasets import PrepareConfig
from pipeline.features import ExtractConfig
from pipeline.params import (BaseConfig, Config, ConfigError, from_mapping, load_params, read_section,
                             setting)
from pipeline.synth import SynthConfig
from tests.conftest import REPO
from train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Toy(Config):
    section = "toy"

    count: int = setting(2, min=1)
    rate: float = setting(0.5, min=0.0, max=1.0, max_exclusive=True)
    mode: str = setting("a", choices=("a", "b"))
    flag: bool = setting(False)
    sizes: list[int] = setting([1, 2], min=0)
    path: Optional[str] = setting(None)
    extra: dict = setting({})

    def check(self) -> None:
        if self.mode == "b" and self.count > 3:
            raise ConfigError("count", f"must be <= 3 with mode b, got {self.count}")


def test_defaults_and_conversions():
    toy = from_mapping(Toy, {"rate": 0, "sizes": (3,), "path": "x"}, "toy")
    assert toy == Toy(count=2, rate=0.0, sizes=[3], path="x") and type(toy.rate) is float
    assert Toy().sizes is not Toy().sizes  # a list default is copied per instance
    assert from_mapping(Toy, None, "toy") == Toy()


@pytest.mark.parametrize("mapping,message", [
    ({"cout": 3}, r"^toy: unknown key\(s\) \['cout'\]; known: .* \(did you mean 'cout' -> 'count'\?\)"),
    ({"count": 1.0}, r"^toy\.count: expected int, got float 1\.0$"),
    ({"count": True}, r"^toy\.count: expected int, got bool True$"),  # a bool is no int
    ({"flag": 1}, r"^toy\.flag: expected bool, got int 1$"),
    ({"rate": "0.5"}, r"^toy\.rate: expected float, got str '0\.5'$"),
    ({"rate": float("nan")}, r"^toy\.rate: must be a finite number"),
    ({"mode": 1}, r"^toy\.mode: expected str, got int 1$"),
    ({"sizes": 3}, r"^toy\.sizes: expected a list, got int 3$"),
    ({"sizes": [1, "2"]}, r"^toy\.sizes: item 1: expected int, got str '2'$"),
    ({"extra": []}, r"^toy\.extra: expected a mapping, got list"),
    ({"path": 3}, r"^toy\.path: expected str, got int 3$"),
    ({"count": 0}, r"^toy\.count: must be >= 1, got 0$"),
    ({"rate": 1}, r"^toy\.rate: must be < 1, got 1$"),
    ({"sizes": [1, -1]}, r"^toy\.sizes: item 1: must be >= 0, got -1$"),
    ({"mode": "c"}, r"^toy\.mode: must be one of a \| b, got 'c'$"),
    ({"mode": "b", "count": 4}, r"^toy\.count: must be <= 3 with mode b, got 4$"),  # a cross-key rule
])
def test_bad_values_name_the_full_key(mapping, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(Toy, mapping, "toy")


def test_the_caller_names_the_section():
    with pytest.raises(ValueError, match=r"^train\.method_params\.toy2\.count: must be >= 1, got 0$"):
        from_mapping(Toy, {"count": 0}, "train.method_params.toy2")
    with pytest.raises(ValueError, match=r"^toy\.count: must be >= 1"):  # built directly: the class's section
        Toy(count=0)
    with pytest.raises(ValueError, match=r"^toy: expected a mapping of keys, got list"):
        from_mapping(Toy, [1], "toy")


def test_a_plain_dataclass_is_checked_too():
    @dataclasses.dataclass(frozen=True)
    class Plain:
        n: int = setting(1, min=1)

    assert from_mapping(Plain, {}, "p").n == 1
    with pytest.raises(ValueError, match=r"^p\.n: must be >= 1, got 0$"):
        from_mapping(Plain, {"n": 0}, "p")


def test_unknown_section_names_it_and_lists_the_known(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["trian"] = params.pop("train")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['trian'\]; known: \['base', 'synth', 'prepare', "
                                         r"'features', 'train'\] \(did you mean 'trian' -> 'train'\?\)"):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(ValueError, match=r"^train: missing section"):
        read_section({"base": {}}, TrainConfig)


def test_repo_params_load_into_their_configs():
    params = load_params(REPO / "params.yaml")
    assert read_section(params, BaseConfig).seed >= 0
    read_section(params, SynthConfig)
    read_section(params, PrepareConfig)
    assert read_section(params, ExtractConfig).features.num_frames >= 1


@pytest.mark.parametrize("cls,mapping,message", [
    (BaseConfig, {"seed": -1}, r"base\.seed: must be >= 0, got -1"),
    (BaseConfig, {"seed": "0"}, r"base\.seed: expected int, got str"),
    (SynthConfig, {"clip_per_class": 5}, r"synth: unknown key\(s\) \['clip_per_class'\]"),
    (SynthConfig, {"layout": "ucf"}, r"synth\.layout: must be one of cremad \| kinetics_sounds, got 'ucf'"),
    (PrepareConfig, {"dataset": "audioset"}, r"prepare\.dataset: must be one of .*cremad.*, got 'audioset'"),
    (PrepareConfig, {"ratios": [0.9, 0.0, 0.1]}, r"prepare\.ratios: .*val ratio must be > 0"),
    (PrepareConfig, {"split_file": 1}, r"prepare\.split_file: expected str, got int"),
    (PrepareConfig, {"val_fraction": 0}, r"prepare\.val_fraction: must be > 0, got 0"),
    (ExtractConfig, {"max_reject_fraction": 2}, r"features\.max_reject_fraction: must be <= 1, got 2"),
    (ExtractConfig, {"shard_size": 0}, r"features\.shard_size: must be >= 1, got 0"),
    (ExtractConfig, {"hop_length": 1024}, r"features\.hop_length: must be <= n_fft \(512\), got 1024"),
])
def test_section_rules(cls, mapping, message):
    with pytest.raises(ValueError, match=message):
        cls.from_params(mapping)


def test_extract_stage_fails_on_a_mistyped_key(tmp_path):
    params = load_params(REPO / "params.yaml")
    params["features"]["n_mel"] = params["features"].pop("n_mels")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run([sys.executable, "-m", "stages.extract", "--params", "params.yaml"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert out.returncode != 0 and "features: unknown key(s) ['n_mel']" in out.stderr


def test_floats_as_dvc_writes_them_load_as_floats(tmp_path):
    """`dvc exp run -S train.lr=5.0e-05` writes `lr: 5e-05` (YAML 1.2); PyYAML alone would read a string."""
    text = (REPO / "params.yaml").read_text().replace("  lr: 0.001  #", "  lr: 5e-05  #")
    (tmp_path / "params.yaml").write_text(text.replace("  weight_decay: 0.0001  #", "  weight_decay: 1E+0  #"))
    train = read_section(load_params(tmp_path / "params.yaml"), TrainConfig)
    assert train.lr == 5e-05 and train.weight_decay == 1.0
    assert yaml.safe_load("lr: 5e-05") == {"lr": "5e-05"}  # what it fixes
