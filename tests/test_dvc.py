"""A real `dvc repro` in a temporary git repository: reruns exactly what a change touches, and a bad value
stops it before any output is deleted.

The ``check`` stage (stages/check.py) is upstream of every other stage and depends on every value of
params.yaml: any changed value reruns it first (its output keeps the same bytes, so it reruns nothing by
itself), and a bad value, a misspelt section or a missing dataset root stops ``dvc repro`` there.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

TINY_SYNTH = dict(num_classes=3, clips_per_class=3, actors=2, min_duration_s=1.0, max_duration_s=1.5,
                  width=64, height=48, fps=10, clutter=2, workers=1)


TINY_TRAIN = dict(epochs=2, warmup_epochs=1, width=4, batch_size=8, frame_size=24, workers=0, guard="none")
TRAIN_STAGES = {"train@baseline", "train@remix", "evaluate@baseline", "evaluate@remix"}
CHECK = "check"  # the first stage: reruns whenever a value of params.yaml changed


def dvc_env() -> dict[str, str]:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                DVC_NO_ANALYTICS="1")


def dvc(cwd: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=dvc_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def dvc_fails(cwd: Path, *args: str) -> str:
    """The output (stdout and stderr) of a dvc command that must fail."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=dvc_env(), capture_output=True, text=True)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def ran(output: str) -> list[str]:
    """Stages that `dvc repro` ran (not those it skipped or restored)."""
    return re.findall(r"Running stage '([^']+)'", output)


def edit_params(repo: Path, **changes) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        params.setdefault(section, {})[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(repo: Path) -> Path:
    """A git + DVC repository of the project's pipeline (one commit), with the tiny params not committed."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    for name in ("stages", "pipeline", "train"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=repo, check=True)
    edit_params(repo, **{f"synth__{k}": v for k, v in TINY_SYNTH.items()}, features__workers=1,
                features__short_side=32, prepare__ratios=[0.7, 0.1, 0.2], **{f"train__{k}": v for k, v in TINY_TRAIN.items()})
    return repo


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("dvcproj"))


def test_repro_runs_then_skips_then_reruns_only_what_changed(project):
    first = dvc(project, "repro")
    assert ran(first)[:4] == [CHECK, "synth", "prepare", "extract"] and set(ran(first)[4:]) == TRAIN_STAGES
    assert (project / "features" / "index.h5").exists() and list((project / "features").glob("train-*.tar"))
    assert (project / "dvc.lock").exists()
    for method in ("baseline", "remix"):
        metrics = json.loads((project / "runs" / method / "metrics.json").read_text())
        assert metrics["method"] == method and 0 <= metrics["acc_fused"] <= 1

    assert ran(dvc(project, "repro")) == []  # nothing changed: nothing runs

    edit_params(project, features__workers=2)  # extract reruns, makes the same bytes: training does not rerun
    assert ran(dvc(project, "repro")) == [CHECK, "extract"]

    edit_params(project, features__num_frames=2)
    out = ran(dvc(project, "repro"))
    assert out[:2] == [CHECK, "extract"] and set(out[2:]) == TRAIN_STAGES  # a features param: extract and what reads it

    edit_params(project, train__lr=0.002)
    out = ran(dvc(project, "repro"))
    assert out[0] == CHECK and set(out[1:]) == TRAIN_STAGES  # a train param: train and evaluate only

    edit_params(project, train__nproc=2)  # the train stage relaunches itself under torchrun: 2 ranks
    assert set(ran(dvc(project, "repro"))) == TRAIN_STAGES | {CHECK}
    for method in ("baseline", "remix"):
        assert json.loads((project / "runs" / method / "train" / "log.json").read_text())["world_size"] == 2
        assert (project / "runs" / method / "train" / "steps-rank1.jsonl").exists()

    text = (project / "params.yaml").read_text()  # every section is some stage's: a comment is what no stage reads
    assert "\ntrain:" in text
    (project / "params.yaml").write_text(text.replace("\ntrain:", "\n# a note no stage reads\ntrain:  # its comment", 1))
    assert ran(dvc(project, "repro")) == []  # only comments changed: nothing

    edit_params(project, prepare__val_fraction=0.2, prepare__split_file=None)
    out = dvc(project, "repro")
    assert ran(out)[:2] == [CHECK, "prepare"] and "synth" not in ran(out)  # prepare, then extract if the manifest changed


def changed_stages(repo: Path) -> set[str]:
    return set(json.loads(dvc(repo, "status", "--json")))


def test_editing_an_imported_module_reruns_exactly_the_stages_that_import_it(project):
    """dvc.yaml's code deps are the import closures (tests/test_dvc_deps.py): a module edit marks the stages whose
    scripts import it, directly or not, and nothing upstream. The fusion with MMTM (imported lazily, by name; the check
    stage validates train.fusion with the same registry) and a module only the train stage imports."""
    from tests.test_dvc_deps import import_closure, load_pipeline, script_of

    dvc(project, "repro")
    assert changed_stages(project) == set()
    _, stages = load_pipeline(project)
    closures = {name: import_closure(script_of(spec["cmd"]), project) for name, spec in stages.items()}
    mmtm = next(p.relative_to(project) for p in sorted((project / "train").rglob("*.py"))
                if re.search(r"^class MMTM", p.read_text(), re.M))
    train_only = sorted(p for p, by in closures["train@remix"].items()  # not stages/train.py itself
                        if by is not None and p not in closures["evaluate@remix"] and p not in closures[CHECK])
    assert train_only, "no module is imported by train but not by evaluate"
    for module, expected in ((mmtm, TRAIN_STAGES | {CHECK}), (train_only[0], {"train@baseline", "train@remix"})):
        assert {name for name, closure in closures.items() if module in closure} == expected, module
        original = (project / module).read_text()
        (project / module).write_text(original + "\n# an edit\n")
        try:
            assert changed_stages(project) == expected, module  # not synth, prepare or extract
        finally:
            (project / module).write_text(original)
        assert changed_stages(project) == set()


# ---- a bad value through `dvc repro`: the cases of tests/faults/, which run the stages alone there

def outputs(repo: Path) -> dict[str, str]:
    """Every file of the pipeline's outputs (data/, features/, runs/) and dvc.lock -> SHA-256 (links followed)."""
    found = [repo / "dvc.lock", *(p for d in ("data", "features", "runs") for p in sorted((repo / d).rglob("*")))]
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in found if p.is_file()}


def misspell_section(repo: Path) -> None:
    text = (repo / "params.yaml").read_text()
    assert "\nfeatures:" in text
    (repo / "params.yaml").write_text(text.replace("\nfeatures:", "\nfeature:", 1))


FAULTS = {  # name: (the mistake, the words of the check's one-line error)
    "bad param": (lambda repo: edit_params(repo, train__lr=0), "check: error: train.lr: must be > 0, got 0"),
    "bad section": (misspell_section, "check: error: params.yaml: unknown section(s) ['feature']"),
    "missing root": (lambda repo: edit_params(repo, prepare__root="data/nope"),
                     "check: error: data/nope: dataset folder not found"),
}


@pytest.mark.parametrize("case", FAULTS)
def test_a_bad_value_stops_dvc_repro_before_any_output_is_deleted(project, case):
    """Issue 20's defect 2: DVC deletes a stage's outputs before running it, so `train.lr: 0` cost model.pt,
    `feature:` the features and a missing root the manifest before the stage's own check refused the value."""
    mistake, error = FAULTS[case]
    dvc(project, "repro")  # every output in place and up to date
    good = (project / "params.yaml").read_text()
    before = outputs(project)
    assert "runs/remix/train/model.pt" in before and "data/manifest.csv" in before and "features/index.h5" in before
    mistake(project)
    try:
        out = dvc_fails(project, "repro")
        assert ran(out) == [CHECK] and "failed to reproduce 'check'" in out, out
        assert error in out, out
        assert outputs(project) == before  # nothing deleted, nothing rewritten, dvc.lock as it was
    finally:
        (project / "params.yaml").write_text(good)
    assert ran(dvc(project, "repro")) == []  # the good values again: nothing to do
