"""pipeline.datasets: the adapter registry, prepare_dataset by name, and a new adapter file picked up with no other edit."""
import json
import shutil
import subprocess
import sys

import pytest

from pipeline.datasets import PrepareConfig, names, prepare_dataset, registry
from pipeline.datasets.cremad import cremad
from pipeline.datasets.csv_manifest import csv_manifest
from pipeline.datasets.kinetics_sounds import kinetics_sounds
from pipeline.manifest import ManifestError, shard_key
from tests.conftest import REPO
from tests.pipeline.datasets.common import cremad_tree, touch


def test_one_table_of_every_adapter():
    assert registry() == {"cremad": cremad, "csv": csv_manifest, "kinetics_sounds": kinetics_sounds}
    assert names() == ["cremad", "csv", "kinetics_sounds"]
    assert PrepareConfig.__dataclass_fields__["dataset"].metadata["rule"].allowed() == tuple(names())


def test_prepare_dataset(tmp_path):
    ids = [f"10{a:02d}_DFA_{e}_XX" for a in range(1, 9) for e in ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")]
    cremad_tree(tmp_path, ids)
    kw = dict(dataset="cremad", root=str(tmp_path), split_file="", ratios=(0.7, 0.15, 0.15), val_fraction=0.1, group_disjoint=True, seed=5)
    records, classes = prepare_dataset(**kw)
    assert records == prepare_dataset(**kw)[0]
    order = ["train", "val", "test"]
    assert [(order.index(r.split), r.clip_id) for r in records] == sorted((order.index(r.split), r.clip_id) for r in records)
    where = {}
    for r in records:
        assert where.setdefault(r.group, r.split) == r.split
    with pytest.raises(ValueError, match="cremad, csv, kinetics_sounds"):
        prepare_dataset(**{**kw, "dataset": "audioset"})
    with pytest.raises(ValueError, match="ratios"):
        prepare_dataset(**{**kw, "ratios": (0.9, 0.0, 0.1)})


def test_shard_key_collision(tmp_path):
    assert shard_key("a.b c/d-e_f") == "a_b_c_d-e_f"
    touch(tmp_path, "train/x/clip.1.mp4", "train/x/clip_1.mp4", "test/x/t.mp4")
    with pytest.raises(ManifestError, match="collide"):
        prepare_dataset(dataset="kinetics_sounds", root=str(tmp_path), split_file=None, ratios=(0.8, 0.1, 0.1), val_fraction=0.1, group_disjoint=False, seed=0)


NEW_ADAPTER = '''"""flat: <root>/<class>/<clip>.wav, audio only (an adapter dropped in by a test)."""
import os

from pipeline.datasets.base import Clip, adapter, files, finish, need_dir, subdirs


@adapter("flat_wav")
def flat_wav(root, *, split_file=None, val_fraction, seed, ratios, group_disjoint):
    need_dir(root)
    clips = [Clip(n[:-4], c, os.path.join(root, c, n), os.path.join(root, c, n), "")
             for c in subdirs(root) for n in files(os.path.join(root, c), ".wav")]
    return finish(clips, subdirs(root), root, val_fraction=val_fraction, seed=seed, ratios=ratios,
                  group_disjoint=group_disjoint)
'''

PROBE = '''
import json, sys
import pipeline.datasets
from pipeline.datasets import names, prepare_dataset
records, classes = prepare_dataset(dataset="flat_wav", root=sys.argv[1], split_file=None, ratios=(0.6, 0.2, 0.2),
                                   val_fraction=0.1, group_disjoint=False, seed=0)
print(json.dumps({"file": pipeline.datasets.__file__, "names": names(), "classes": classes, "n": len(records)}))
'''


def test_a_new_adapter_file_is_registered_with_no_other_edit(tmp_path):
    root = tmp_path / "project"
    for pkg in ("pipeline", "train"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "pipeline" / "datasets" / "flat_wav.py").write_text(NEW_ADAPTER)
    data = tmp_path / "data"
    touch(data, *[f"{c}/{c}{i}.wav" for c in ("bird", "rain") for i in range(10)])
    proc = subprocess.run([sys.executable, "-c", PROBE, str(data)], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert str(root) in got["file"]  # the copy, not the checkout
    assert got["names"] == sorted([*names(), "flat_wav"]) and got["classes"] == ["bird", "rain"] and got["n"] == 20

    # a second function under the same name is an error naming both
    (root / "pipeline" / "datasets" / "flat_wav2.py").write_text(NEW_ADAPTER.replace("def flat_wav(", "def other("))
    proc = subprocess.run([sys.executable, "-c", "from pipeline.datasets import names; names()"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "dataset adapter 'flat_wav' defined twice" in proc.stderr
