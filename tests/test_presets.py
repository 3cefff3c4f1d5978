"""presets/*.yaml and ``python -m pipeline.presets``: each preset is documented, checked by the stages' config
classes, and runs as a real ``dvc exp run`` in a temporary git + DVC copy of the project, on a few tiny generated
clips at reduced size (the test's own ``--set`` values); the preset's other keys reach the experiment's params."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import presets
from pipeline.features import PRESETS
from tests.conftest import REFERENCE_CREMAD, REPO

NAMES = ("cremad_paper", "kinetics_sounds_paper")
LINE = re.compile(r"^(?P<key>[a-z_]+\.[a-z_.]+): (?P<value>\S.*?)  # \S.*$")
# The test's reductions: tiny features and model, one epoch, one worker each. Everything else is the preset's.
REDUCED = ("features.short_side=32", "features.workers=1", "train.width=8", "train.frame_size=32", "train.epochs=1",
           "train.warmup_epochs=0", "train.batch_size=4", "train.workers=1", "prepare.val_fraction=0.3")


def _run(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", NAMES)
def test_each_preset_opens_with_its_command_and_documents_every_key(name):
    lines = (REPO / "presets" / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith(f"# python -m pipeline.presets {name} --root ")
    body = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
    bad = [ln for ln in body if not LINE.match(ln)]
    assert not bad, f"each line: `section.key: value  # comment`: {bad}"
    values = presets.load_preset(REPO / "presets" / f"{name}.yaml")
    assert len(values) == len(body)  # no key twice
    dataset = values["prepare.dataset"]  # the features agree with the field's conventions in pipeline.features
    for key, value in vars(PRESETS[dataset]).items():
        assert values[f"features.{key}"] == value, key
    paper = {"train.width": 64, "train.batch_size": 64, "train.lr": 5e-5, "train.optimizer": "adam", "train.epochs": 60,
             "train.warmup_epochs": 10, "train.schedule": "step", "train.step_epochs": 30, "train.step_gamma": 0.1,
             "train.frame_size": 224, "features.short_side": 224, "train.device": "auto",
             # the official code's, not the paper's text (silent): fp32, the squashing eval resize, N(1, 0.02) BN init
             "train.amp": "none", "train.eval_resize": "squash", "train.bn_init": "normal", "train.bn_split": 2}
    assert {k: values[k] for k in paper} == paper


def test_the_cremad_split_is_the_standard_one():
    split = REPO / "presets" / "cremad_split"
    assert presets.load_preset(REPO / "presets" / "cremad_paper.yaml")["prepare.split_file"] == "presets/cremad_split"
    rows = {s: list(csv.reader(open(split / f"{s}.csv", encoding="utf-8-sig"))) for s in ("train", "test")}
    assert (len(rows["train"]), len(rows["test"])) == (6698, 744)
    assert all(r[0].split("_")[2] == r[1] for s in rows.values() for r in s)  # label = the id's emotion field
    assert not {r[0] for r in rows["train"]} & {r[0] for r in rows["test"]}
    if REFERENCE_CREMAD.is_dir():  # a byte-for-byte copy of the reference lists
        for s in ("train", "test"):
            assert (split / f"{s}.csv").read_bytes() == (REFERENCE_CREMAD / f"{s}.csv").read_bytes()


def test_bad_presets_and_overrides_fail_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ValueError, match=r"experiment cremad_paper: train\.lr: must be > 0, got 0"):
        presets.run_preset("cremad_paper", root=str(tmp_path), sets=["train.lr=0"], dry_run=True)
    with pytest.raises(ValueError, match=r"train: unknown key\(s\) \[.nosuch.\]"):
        presets.run_preset("cremad_paper", root=str(tmp_path), sets=["train.nosuch=1"], dry_run=True)
    with pytest.raises(ValueError, match="--root .*no such file or folder"):
        presets.run_preset("cremad_paper", root=str(tmp_path / "missing"), dry_run=True)
    with pytest.raises(ValueError, match=r"preset 'nosuch': no .* \(presets: cremad_paper, kinetics_sounds_paper\)"):
        presets.run_preset("nosuch", root=str(tmp_path), dry_run=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.1  # no section\n")
    with pytest.raises(ValueError, match="key 'lr': expected <section>.<key>"):
        presets.run_preset(str(bad), root=str(tmp_path), dry_run=True)
    bad.write_text("train.optimizer: adagrad  # not a choice\n")
    with pytest.raises(ValueError, match=r"train\.optimizer: must be one of adamw \| adam \| sgd"):
        presets.run_preset(str(bad), root=str(tmp_path), dry_run=True)


def test_dry_run_prints_the_dvc_command(cremad_raw, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    split = tiny_split(cremad_raw, tmp_path / "split")
    assert presets.run_preset("cremad_paper", root=str(cremad_raw), sets=["train.seed=1", f"prepare.split_file={split}"],
                              dry_run=True) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"dataset: cremad at {cremad_raw}: 12 clips, 3 classes, ")  # the adapter listed the root
    # in a temporary copy (see the last test), with the untracked code the stages import (-C: this checkout's own)
    assert re.search(r"\ndvc exp run --temp -n cremad_paper (-C (stages|pipeline|train)/\S+ )*-S prepare.dataset=cremad ",
                     out), out
    assert f"-S prepare.root={cremad_raw} -S train.seed=1 -S prepare.split_file={split} evaluate" in out  # root, then --set
    assert "-S 'train.methods=[baseline, remix]'" in out and "-S train.lr=5.0e-05" in out


def test_dry_run_checks_the_roots_layout_with_the_adapter(cremad_raw, kinetics_raw, tmp_path, monkeypatch):
    """--dry-run lists the dataset as prepare will: a root of the wrong layout, an empty one, or one the preset's split
    lists do not describe fails naming what is wrong, before any dvc command (the check of `prepare` itself)."""
    monkeypatch.chdir(REPO)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no VideoFlash/ or AudioWAV/ folder"):
        presets.run_preset("cremad_paper", root=str(tmp_path / "empty"), dry_run=True)
    with pytest.raises(ValueError, match="no VideoFlash/ or AudioWAV/ folder"):  # Kinetics-Sounds' tree for CREMA-D
        presets.run_preset("cremad_paper", root=str(kinetics_raw), dry_run=True)
    with pytest.raises(ValueError, match=r"empty: no clips found"):
        presets.run_preset("kinetics_sounds_paper", root=str(tmp_path / "empty"), dry_run=True)
    with pytest.raises(ValueError, match=r"as listed by the split folder presets/cremad_split\) are flagged"):
        presets.run_preset("cremad_paper", root=str(cremad_raw), dry_run=True)  # the real lists name absent clips


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A git + DVC copy of the project (code, params.yaml, dvc.yaml, presets), committed."""
    repo = tmp_path_factory.mktemp("presets")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    for name in ("stages", "pipeline", "train", "experiments", "presets"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "results"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    assert _run(repo, sys.executable, "-m", "dvc", "init", "-q").returncode == 0
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=repo, check=True)
    return repo


def tiny_split(raw: Path, out: Path) -> Path:
    """A split folder in the standard lists' format for the tiny CREMA-D tree: one test clip per class (the real
    lists name clips the tiny tree does not have; prepare fails on those, as it should)."""
    out.mkdir()
    ids = sorted(p.stem for p in (raw / "VideoFlash").glob("*.flv"))
    test = {label: i for i in reversed(ids) for label in [i.split("_")[2]]}.values()
    for name, chosen in (("train", [i for i in ids if i not in test]), ("test", list(test))):
        (out / f"{name}.csv").write_text("".join(f"{i},{i.split('_')[2]}\r\n" for i in chosen))
    return out


@pytest.mark.parametrize("name,raw", [("cremad_paper", "cremad_raw"), ("kinetics_sounds_paper", "kinetics_raw")])
def test_a_preset_runs_as_a_dvc_experiment(project, name, raw, request, tmp_path):
    root = request.getfixturevalue(raw)
    sets = list(REDUCED)
    if name == "cremad_paper":
        sets.append(f"prepare.split_file={tiny_split(root, tmp_path / 'split')}")
    proc = _run(project, sys.executable, "-m", "pipeline.presets", name, "--root", str(root), "--set", *sets)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Running stage 'synth'" not in proc.stdout + proc.stderr  # a root outside data/raw needs no synth
    show = json.loads(_run(project, sys.executable, "-m", "dvc", "exp", "show", "--json").stdout)
    exps = [r for base in show for e in (base.get("experiments") or []) for r in e["revs"] if r.get("name") == name]
    assert len(exps) == 1, [e.get("name") for base in show for e in (base.get("experiments") or [])]
    data = exps[0]["data"]
    params = data["params"]["params.yaml"]["data"]
    reduced = {s.partition("=")[0] for s in sets}
    for key, value in presets.load_preset(project / "presets" / f"{name}.yaml").items():
        if key not in reduced:
            section, _, field = key.partition(".")
            assert params[section][field] == value, key
    assert params["prepare"]["root"] == str(root)
    for method in params["train"]["methods"]:
        metrics = data["metrics"][f"runs/{method}/metrics.json"]["data"]
        assert metrics["method"] == method and 0 <= metrics["acc_fused"] <= 1


def _workspace(repo: Path) -> dict[str, bytes]:
    """Every file of the project but git's and DVC's own (whose temporary files and refs change)."""
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*"))
            if p.is_file() and not p.relative_to(repo).parts[0] in (".git", ".dvc")}


def test_a_failed_preset_run_leaves_the_workspace_as_it_was(project, kinetics_raw, tmp_path):
    """A preset whose experiment fails after prepare has run (here: training on a CUDA device this machine lacks)
    leaves params.yaml, dvc.lock and every output as they were: it ran in a temporary copy of the project."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA (train.device=cuda must fail)")
    before, status = _workspace(project), _run(project, "git", "status", "--porcelain").stdout
    sets = [*REDUCED, "prepare.val_fraction=0.4", "train.device=cuda"]  # prepare reruns; then training fails
    proc = _run(project, sys.executable, "-m", "pipeline.presets", "kinetics_sounds_paper", "--root", str(kinetics_raw),
                "--name", "fails", "--set", *sets)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "params.yaml, dvc.lock and the outputs here are unchanged" in proc.stderr, proc.stderr[-3000:]
    after = _workspace(project)
    assert sorted(after) == sorted(before) and [k for k in before if before[k] != after[k]] == []
    assert _run(project, "git", "status", "--porcelain").stdout == status
