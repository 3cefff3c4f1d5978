"""params.yaml is the documentation of every key: each key has a comment there and is a field of its
section's config class, and every field of every config class (and of every method's Params) is in it."""
from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
import yaml

from pipeline.datasets import PrepareConfig
from pipeline.features import ExtractConfig
from pipeline.params import SECTIONS, BaseConfig, Config
from pipeline.synth import SynthConfig
from tests.conftest import REPO
from train.config import TrainConfig
from train.methods import registry

CLASSES = {"base": BaseConfig, "synth": SynthConfig, "prepare": PrepareConfig, "features": ExtractConfig,
           "train": TrainConfig}
NESTED = "train.method_params"  # its keys are method names; each one's keys are that method's Params fields

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")


def documented_keys(text: str) -> dict[str, str]:
    """Dotted key path -> its comment ("" if none), for every mapping key of a block-style YAML text."""
    out, stack = {}, []  # stack: (indent, key) of the open mappings
    for line in text.splitlines():
        m = KEY_LINE.match(line)
        if not m:
            assert not line.strip() or line.lstrip().startswith("#"), f"params.yaml: unparsed line {line!r}"
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, _, comment = m["rest"].partition(" #")  # (values hold no " #")
        path = ".".join([k for _, k in stack] + [m["key"]])
        out[path] = comment.strip()
        if not value.strip():  # a mapping opens
            stack.append((indent, m["key"]))
    return out


def config_classes() -> dict[str, type]:
    """Dotted section -> its config class, method Params included."""
    classes = dict(CLASSES)
    for name, method in registry().items():
        if dataclasses.fields(method.Params):
            classes[f"{NESTED}.{name}"] = method.Params
    return classes


@pytest.fixture(scope="module")
def doc() -> dict[str, str]:
    text = (REPO / "params.yaml").read_text(encoding="utf-8")
    keys = documented_keys(text)
    assert {k for k in keys if "." not in k} == set(yaml.safe_load(text))  # the parser sees what YAML sees
    return keys


def test_section_table_matches_the_config_classes():
    assert tuple(CLASSES) == SECTIONS
    for name, cls in CLASSES.items():
        assert issubclass(cls, Config) and cls.section == name


def test_every_key_in_params_yaml_has_a_comment(doc):
    assert [k for k, comment in doc.items() if not comment] == []


def test_every_key_in_params_yaml_is_a_config_field(doc):
    classes = config_classes()
    for path in doc:
        section, _, key = path.rpartition(".")
        if not section:
            assert path in SECTIONS, f"params.yaml: section {path!r} has no config class"
        elif section == NESTED:
            assert key in registry(), f"params.yaml: {path}: no registered method {key!r}"
        else:
            assert section in classes, f"params.yaml: {path}: {section!r} is no config section"
            assert key in {f.name for f in dataclasses.fields(classes[section])}, \
                f"params.yaml: {path} is not a field of {classes[section].__qualname__}"


def test_every_config_field_is_in_params_yaml(doc):
    missing = [f"{section}.{f.name}" for section, cls in config_classes().items() for f in dataclasses.fields(cls)
               if f"{section}.{f.name}" not in doc]
    assert missing == []


def test_config_classes_carry_no_meaning_comments():
    """The meaning is written once, in params.yaml: no comment after a field of a config class."""
    for cls in config_classes().values():
        source = inspect.getsource(cls)
        for f in dataclasses.fields(cls):
            for line in source.splitlines():
                if re.match(rf"\s+{f.name}: .*=", line):
                    assert "#" not in line, f"{cls.__qualname__}.{f.name}: document it in params.yaml, not here"

