"""The ``check`` stage's library: every params.yaml section but ``train`` and the dataset it names, checked first.

``dvc repro`` deletes a stage's outputs before it runs the stage's command, so a stage's own checks come too
late to save them. The ``check`` stage (``stages/check.py``) depends on every value of params.yaml and is
upstream of every other stage: DVC runs it first whenever a value changed, and a failing check stops ``dvc
repro`` before any other stage is touched. Its output (:data:`CHECKED_TEXT`) has the same bytes whenever it
passes, so it never reruns anything by itself. It is a ``persist`` output: DVC keeps it while the check runs.

The checks are the stages' own: each section through its config class (types, ranges, choices, cross-key
rules, unknown keys; an unknown or missing section too), and the dataset through the adapter prepare runs
(:func:`pipeline.datasets.prepare_dataset`: the root's layout, the split lists, the share of missing files).
A root that is synth's output is not read (synth may be about to rewrite it): then ``prepare.dataset`` must be
the layout synth writes, and the split lists, if any, must parse.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from pipeline.datasets import PrepareConfig, prepare_dataset
from pipeline.features import ExtractConfig
from pipeline.fileio import atomic_path
from pipeline.params import BaseConfig, ConfigError, read_section
from pipeline.splits import read_split_dir
from pipeline.synth import SynthConfig

CHECKED_TEXT = ("params.yaml and the dataset it names passed `python -m stages.check`. Every stage of dvc.yaml\n"
                "depends on this file, so `dvc repro` runs the check before any stage replaces an output.\n")


def same_path(a: str, b: str) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def check_pipeline(params: Mapping[str, Any], synth_out: str) -> None:
    """Raise naming the key or the file unless the ``base``, ``synth``, ``prepare`` and ``features`` sections and
    the dataset ``prepare.root`` names would pass the stages' checks; ``synth_out`` is synth's output folder."""
    seed = read_section(params, BaseConfig).seed
    synth = read_section(params, SynthConfig)
    prep = read_section(params, PrepareConfig)
    read_section(params, ExtractConfig)
    if not same_path(prep.root, synth_out):
        prepare_dataset(seed=seed, **dataclasses.asdict(prep))
        return
    if prep.dataset != synth.layout:
        raise ConfigError("dataset", f"{prep.dataset!r} does not read the embedded dataset that synth writes to "
                          f"{prep.root} in the {synth.layout!r} layout (synth.layout): set prepare.dataset: "
                          f"{synth.layout}, or prepare.root to your dataset", "prepare")
    if prep.split_file:
        read_split_dir(prep.split_file)


def write_checked(path: str | os.PathLike) -> None:
    """Write :data:`CHECKED_TEXT` to ``path`` (atomically; the same bytes every time)."""
    with atomic_path(path) as tmp:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(CHECKED_TEXT)
