"""Faults of the train stage, made as a user would: bad params, bad inputs, a work folder broken or in use.

Each test makes one mistake against a project whose ``runs/baseline/train/`` holds a finished run, and
asserts that the error names the key or the file, and that ``runs/`` (the published run and the work
folder) is byte for byte as it was. The stage runs in-process (``stages.train.main``, with torchrun's
launch forbidden, so a broken check cannot start torchrun from the test process); one case runs the command
line to check its one-line error. Kills and lost ranks: ``test_train_kill.py``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import stages.train as stage
from pipeline.params import ConfigError
from tests.conftest import REPO
from tests.train.test_bad_input import a_train_shard
from tests.train.test_data import extracted_features
from train import trainer
from train.checkpoint import LOCK, RESUME, StateError, default_work_dir
from train.config import TrainConfig

TINY = dict(methods=["baseline"], epochs=2, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0,
            guard="none", checkpoint_every=0, verify_shards="size")
OUT = Path("runs/baseline/train")


@pytest.fixture(scope="module")
def features(cremad_raw, tmp_path_factory) -> Path:
    return extracted_features(cremad_raw, tmp_path_factory)


@pytest.fixture(scope="module")
def trained(features, tmp_path_factory) -> Path:
    """``runs/`` after one finished tiny baseline run, whose imbalance ratio is made infinite (strict JSON)."""
    runs = tmp_path_factory.mktemp("trained") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "imbalance_ratio", lambda *a: math.inf)
        trainer.train(index_path=features / "index.h5", out_dir=runs / "baseline" / "train", method="baseline",
                      config=TrainConfig(**TINY), seed=0)
    return runs


def write_params(project: Path, **train) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump({"base": {"seed": 0}, "train": {**TINY, **train}}))


@pytest.fixture
def project(trained, features, tmp_path, monkeypatch) -> Path:
    """A DVC-less project (params.yaml, features/, a copy of ``trained`` as runs/), the working folder."""
    shutil.copytree(trained, tmp_path / "runs")
    shutil.copytree(features, tmp_path / "features")
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def no_launch(nproc, args, **kw):
    raise AssertionError(f"the stage launched torchrun with {nproc} processes: {args}")


def run_stage(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["stages/train.py", "--method", "baseline", *args])
    monkeypatch.setattr(stage.distributed, "launch", no_launch)
    stage.main()


def refused(project: Path, monkeypatch, error, match: str, *args: str) -> None:
    """The stage fails with ``error`` matching ``match``, and runs/ is untouched."""
    before = snapshot(project / "runs")
    assert (project / OUT / "model.pt").is_file()
    with pytest.raises(error, match=match):
        run_stage(monkeypatch, *args)
    assert snapshot(project / "runs") == before


# -- bad params: every check runs before anything is touched ---------------------------------------------------

BAD_PARAMS = {
    "negative batch": ({"batch_size": -8}, r"train\.batch_size: must be >= 1, got -8"),
    "zero width": ({"width": 0}, r"train\.width: must be >= 1, got 0"),
    "zero frame size": ({"frame_size": 0}, r"train\.frame_size: must be >= 1, got 0"),
    "batch below nproc": ({"batch_size": 1, "nproc": 2}, r"train\.batch_size: the global batch \(1\) .* \(2, train\.nproc\)"),
    "zero lr": ({"lr": 0}, r"train\.lr: must be > 0"),
    "zero nproc": ({"nproc": 0}, r"train\.nproc: must be >= 1"),
    "misspelt key": ({"batchsize": 8}, r"train: unknown key\(s\) \['batchsize'\].*'batch_size'"),
    "string for int": ({"epochs": "ten"}, r"train\.epochs"),
    "warm-up past the end": ({"warmup_epochs": 3}, r"train\.warmup_epochs: must be <= epochs \(2\)"),
    "unknown method": ({"methods": ["remx"]}, r"train\.methods: 'remx'"),
    "unknown choice": ({"fusion": "concatenate"}, r"train\.fusion"),
    "bad method param": ({"method_params": {"ogm_ge": {"alpha": -1}}}, r"train\.method_params\.ogm_ge\.alpha"),
}


@pytest.mark.parametrize("case", BAD_PARAMS)
def test_bad_params_fail_naming_the_key_and_leave_the_outputs(project, monkeypatch, case):
    values, match = BAD_PARAMS[case]
    write_params(project, **values)
    refused(project, monkeypatch, ConfigError, match)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("key, value", [("device", "cuda"), ("backend", "nccl")])
def test_cuda_settings_without_cuda_fail_before_anything(project, monkeypatch, key, value):
    write_params(project, **{key: value})
    refused(project, monkeypatch, ConfigError, rf"train\.{key}: {value} needs CUDA")


def test_a_method_not_registered_on_the_command_line(project, monkeypatch):
    refused(project, monkeypatch, ValueError, r"'remx' is not one of", "--method", "remx")


def test_a_world_size_above_the_batch_under_torchrun_by_hand(project, monkeypatch):
    """``torchrun --nproc_per_node=2`` with ``train.nproc: 1`` and a batch of 1: the key named, nothing touched."""
    write_params(project, batch_size=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    refused(project, monkeypatch, ConfigError,
            r"train\.batch_size: the global batch \(1\) must be >= the number of processes \(2, WORLD_SIZE")


def test_the_command_line_ends_with_one_line_naming_the_key(project):
    write_params(project, batch_size=-8)
    before = snapshot(project / "runs")
    proc = subprocess.run([sys.executable, str(REPO / "stages" / "train.py"), "--method", "baseline"], cwd=project,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "train: error: train.batch_size: must be >= 1, got -8"
    assert snapshot(project / "runs") == before


# -- bad input -------------------------------------------------------------------------------------------------

def test_a_deleted_index(project, monkeypatch):
    (project / "features" / "index.h5").unlink()
    refused(project, monkeypatch, FileNotFoundError, r"features/index\.h5: no feature index there; .*dvc repro extract")


def test_a_missing_shard(project, monkeypatch):
    shard = a_train_shard(project / "features")
    shard.unlink()
    refused(project, monkeypatch, FileNotFoundError, rf"{shard.name}: shard listed in .*index\.h5 is missing")


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign"])
def test_a_corrupted_resume_state_is_named_with_what_to_do(project, monkeypatch, kind):
    work = default_work_dir(project / OUT)
    work.mkdir()
    model = (project / OUT / "model.pt").read_bytes()
    if kind == "garbage":
        (work / RESUME).write_bytes(b"not a checkpoint\n" * 10)
    elif kind == "truncated":  # a torch file cut in the middle
        (work / RESUME).write_bytes(model[: len(model) // 2])
    else:  # a torch file, but not a resume state (e.g. a model copied there)
        (work / RESUME).write_bytes(model)
    match = "not a resume state" if kind == "foreign" else "unreadable resume state"
    refused(project, monkeypatch, StateError, rf"train\.work/resume\.pt: {match}.*delete it to start afresh")


def test_a_work_folder_held_by_a_live_run_is_refused_naming_its_pid(project, monkeypatch):
    work = default_work_dir(project / OUT)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from train.checkpoint import work_lock\n"
         "with work_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)", str(work)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused(project, monkeypatch, StateError,
                rf"train\.work: another training run is working in this folder \(PID {holder.pid} on host ")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died (kill -9): its lock file names it still, but the kernel released the lock
    assert f"PID {holder.pid}" in (work / LOCK).read_text()
    run_stage(monkeypatch)
    assert not work.exists() and sorted(p.name for p in (project / OUT).iterdir()) == [
        "live", "log.json", "model.pt", "steps-rank0.jsonl"]


def test_log_json_is_strict_json(trained):
    """An infinite imbalance ratio (a head at chance) is written null, not Infinity."""
    def no_constants(name):
        raise AssertionError(f"log.json holds {name}")
    log = json.loads((trained / "baseline" / "train" / "log.json").read_text(), parse_constant=no_constants)
    assert [row["imbalance_ratio"] for row in log["history"]] == [None, None]
    assert all(math.isfinite(row["loss"]) for row in log["history"])
