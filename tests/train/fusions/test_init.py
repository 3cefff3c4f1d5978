"""train.fusions: one registry of every fusion (late heads and intermediate models), build_model by name,
the same models as before the registry (bit for bit), and a new fusion file picked up with no other edit."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.fusions.common import C, D, W, av_inputs
from train.fusions import build_model, names, registry
from train.fusions.base import Fusion
from train.models import ENCODERS, AVModel

REPO = Path(__file__).resolve().parents[3]
LATE = [name for name, cls in registry().items() if issubclass(cls, Fusion)]


def test_one_table_of_every_fusion():
    assert names() == ["centralnet", "concat", "decision", "film", "gated", "mmtm", "sum"]
    assert names() == sorted(registry())
    for name, cls in registry().items():
        assert cls.name == name and callable(cls.build)


def test_unknown_names():
    with pytest.raises(ValueError, match="train.fusion: unknown fusion 'nope'.*centralnet"):
        build_model(["audio", "video"], num_classes=C, width=W, fusion="nope")
    with pytest.raises(ValueError, match="smell"):
        build_model(["audio", "smell"], num_classes=C, width=W, fusion="concat")
    with pytest.raises(ValueError, match="duplicate"):
        build_model(["audio", "audio"], num_classes=C, width=W, fusion="concat")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("fusion", LATE)
def test_existing_fusions_unchanged(fusion):
    """build_model of a late fusion is the model built the old way: same weights, RNG use, outputs."""
    mods = ["audio", "video"]
    torch.manual_seed(3)
    new = build_model(mods, num_classes=C, width=W, fusion=fusion).eval()
    after_new = torch.rand(1)
    torch.manual_seed(3)
    old = AVModel({m: ENCODERS[m](W) for m in mods}, feature_dim=D, num_classes=C, fusion=registry()[fusion]).eval()
    after_old = torch.rand(1)
    assert type(new) is AVModel and torch.equal(after_new, after_old)
    assert new.state_dict().keys() == old.state_dict().keys()
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in new.state_dict().items())
    with torch.no_grad():
        assert torch.equal(new(av_inputs()).fused, old(av_inputs()).fused)


NEW_FUSION = '''"""max: the elementwise max of the features, then Linear(D, C) (a fusion dropped in by a test)."""
import torch
from torch import nn

from train.fusions.base import Fusion


class MaxFusion(Fusion):
    name = "max"

    def __init__(self, modalities, feature_dim, num_classes):
        super().__init__(modalities, feature_dim, num_classes)
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, feats):
        return self.fc(torch.stack(self._gather(feats)).amax(0))
'''

PROBE = '''
import json, torch
import train.fusions
from train.fusions import build_model, names
torch.manual_seed(0)
model = build_model(["audio", "video"], num_classes=3, width=2, fusion="max")
out = model({"audio": torch.randn(2, 1, 16, 24), "video": torch.randn(2, 2, 3, 32, 32)})
shares = model.modality_shares(out.features)
print(json.dumps({"file": train.fusions.__file__, "names": names(), "type": type(model.fusion).__name__,
                  "fusion_name": model.fusion_name, "fused": list(out.fused.shape), "shares": sorted(shares)}))
'''


def _copy_project(tmp_path: Path) -> Path:
    for pkg in ("train", "pipeline"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _run(cwd: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_new_fusion_file_is_registered_with_no_other_edit(tmp_path):
    root = _copy_project(tmp_path)
    (root / "train" / "fusions" / "max.py").write_text(NEW_FUSION)
    proc = _run(root, PROBE)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(got["file"]).resolve().is_relative_to(root.resolve())  # the copy, not the checkout
    assert got["names"] == sorted([*names(), "max"])
    assert got["type"] == "MaxFusion" and got["fusion_name"] == "max" and got["fused"] == [2, 3]
    assert got["shares"] == ["audio", "video"]  # Fusion's default modality_shares

    # a second file reusing a name is an error, naming both classes
    (root / "train" / "fusions" / "max2.py").write_text(NEW_FUSION.replace("class MaxFusion", "class OtherMax"))
    proc = _run(root, "from train.fusions import names; names()")
    assert proc.returncode != 0 and "fusion name 'max' defined twice" in proc.stderr
