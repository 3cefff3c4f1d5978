"""Shared fixtures: tiny generated datasets (real FLV/WAV and MP4 encodes) made once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.synth import SynthConfig, generate

REPO = Path(__file__).resolve().parents[1]
REFERENCE_CREMAD = REPO.parent / "shared" / "reference" / "cremad"

TINY = dict(num_classes=3, clips_per_class=4, actors=2, min_duration_s=1.0, max_duration_s=2.0,
            width=64, height=48, fps=10, clutter=2, workers=1)


@pytest.fixture(scope="session")
def cremad_raw(tmp_path_factory) -> Path:
    """A CREMA-D-layout tree: 3 classes x 4 clips, 2 actors."""
    root = tmp_path_factory.mktemp("cremad") / "raw"
    generate(out_dir=root, seed=0, config=SynthConfig(layout="cremad", **TINY))
    return root


@pytest.fixture(scope="session")
def kinetics_raw(tmp_path_factory) -> Path:
    """A Kinetics-Sounds-layout tree (MP4 with H.264 + AAC): 3 classes x 4 clips, train/ and test/."""
    root = tmp_path_factory.mktemp("kinetics") / "raw"
    generate(out_dir=root, seed=0, config=SynthConfig(layout="kinetics_sounds", test_fraction=0.25, **TINY))
    return root


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run the test inside its own temporary directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
