"""Exact resume after SIGKILL and data-parallel training under torchrun (2 CPU processes, gloo).

Every run is a real process (`tests/train/run_train.py`), killed with SIGKILL to its whole process
group (torchrun and both ranks) when its per-step log reaches a step drawn at random in the middle of an
epoch (so that the state it resumes from is a mid-epoch one, whichever of the last two states is on disk).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tests.conftest import REPO
from tests.train.test_data import extracted_features
from train.data import ShardDataset
from train.fusions import build_model
from pipeline.shards import IndexReader
from train.checkpoint import RESUME, default_work_dir as work
from train.config import TrainConfig
from train.data import multimodal_loader
from train.inference import accuracies, predict
from train.trainer import train

CONFIG = dict(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none",
              checkpoint_every=1)
TIMINGS = ("epoch_s", "score_s", "train_s")
# global batch 2: three steps per epoch on the tiny train split (two at batch 4), so a remix epoch has a middle
MID_EPOCH = {**CONFIG, "batch_size": 2}


def launch(index: Path, out: Path, method: str, nproc: int, *extra: str, config: dict = CONFIG) -> subprocess.Popen:
    args = ["-m", "tests.train.run_train", str(index), str(out), method, json.dumps(config), *extra]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("training did not finish in time (a hang)") from None
    assert proc.returncode == 0, out[-4000:]
    return out


def steps_done(out: Path) -> int:
    path = work(out) / "steps-rank0.jsonl"  # a run in progress writes to its work folder
    return len(path.read_text().splitlines()) if path.exists() else 0


def kill_at(proc: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> None:
    """SIGKILL the process group once rank 0 has logged ``step`` steps."""
    deadline = time.monotonic() + timeout
    while steps_done(out) < step:
        assert proc.poll() is None, "the run ended before the kill step"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def steps(out: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (out / f"steps-rank{rank}.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise-equal selected weights, scores and per-epoch log (timings aside)."""
    wa, wb = torch.load(a / "model.pt", weights_only=False), torch.load(b / "model.pt", weights_only=False)
    assert wa["epoch"] == wb["epoch"]
    for name, t in wa["model"].items():
        assert torch.equal(t, wb["model"][name]), name
    la, lb = (json.loads((p / "log.json").read_text()) for p in (a, b))
    strip = lambda h: [{k: v for k, v in row.items() if k not in TIMINGS} for row in h]  # noqa: E731
    assert strip(la["history"]) == strip(lb["history"]) and la["best"] == lb["best"]
    with h5py.File(a / "scores.h5") as fa, h5py.File(b / "scores.h5") as fb:
        assert sorted(fa) == sorted(fb)
        for g in fa:
            assert np.array_equal(fa[g]["kl"][:], fb[g]["kl"][:]) and np.array_equal(fa[g]["assign"][:], fb[g]["assign"][:])
    assert steps(a, 0) == steps(b, 0)
    assert not work(a).exists() and not work(b).exists()  # published, scratch removed


@pytest.fixture
def index(cremad_raw, tmp_path_factory) -> Path:
    return extracted_features(cremad_raw, tmp_path_factory) / "index.h5"


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_at_a_random_step_then_rerun_gives_the_uninterrupted_weights(index, tmp_path, nproc):
    clean = tmp_path / "clean"
    finish(launch(index, clean, "remix", nproc, config=MID_EPOCH))
    # a step in the middle of a remix epoch, as are its neighbours: whether the kill lands before or after the
    # state of `step` is written, the run resumes mid-epoch, where the ranks' BatchNorm statistics still differ
    log = steps(clean, 0)
    middle = [s for prev, s, nxt in zip(log, log[1:], log[2:]) if prev["epoch"] == s["epoch"] == nxt["epoch"]
              and s["epoch"] >= CONFIG["warmup_epochs"] and prev["step"] >= 1]
    assert middle, f"no mid-epoch step in {[(s['epoch'], s['step']) for s in log]}"
    kill = random.Random(nproc).choice(middle)
    killed = tmp_path / "killed"
    kill_at(launch(index, killed, "remix", nproc, config=MID_EPOCH), killed, kill["global_step"])
    assert (work(killed) / RESUME).exists() and not (killed / "log.json").exists()
    if nproc > 1:  # another world size is refused, naming the state file
        other = tmp_path / "other"
        shutil.copytree(work(killed), work(other))
        with pytest.raises(RuntimeError, match=r"resume.pt: saved by a run on 2 process\(es\), this run has 1"):
            train(index_path=index, out_dir=other, method="remix", config=TrainConfig(**MID_EPOCH), seed=0)
    out = finish(launch(index, killed, "remix", nproc, config=MID_EPOCH))
    resumed = re.search(r"resuming at epoch (\d+), step (\d+)", out)
    assert resumed, out[-2000:]
    # mid-epoch: the kill's epoch (an epoch-end state would name the next one, step 0), at least one step in
    assert int(resumed[1]) == kill["epoch"] and int(resumed[2]) >= kill["step"] - 1 >= 1
    assert_same_run(clean, killed)


def test_a_state_of_another_configuration_is_not_resumed(index, tmp_path):
    out = tmp_path / "run"
    kill_at(launch(index, out, "remix", 1), out, 3)
    log = finish(launch(index, out, "remix", 1, config={**CONFIG, "lr": 0.002}))
    assert "from another configuration" in log and "resuming" not in log
    done = steps(out, 0)  # published: the work folder is gone
    assert [s["global_step"] for s in done] == list(range(1, len(done) + 1))  # a fresh step log, no step twice


def test_two_ranks_take_modality_pure_steps_together_and_metrics_cover_whole_splits(index, tmp_path):
    out = tmp_path / "ddp"
    finish(launch(index, out, "remix", 2))
    r0, r1 = steps(out, 0), steps(out, 1)
    assert len(r0) == len(r1) > 0  # equal step counts
    summary = json.loads((out / "log.json").read_text())
    remix_epochs = {h["epoch"] for h in summary["history"] if h["phase"] == "remix"}
    assert remix_epochs
    for a, b in zip(r0, r1):
        assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"])
        assert a["samples"] + b["samples"] == a["global_samples"] == b["global_samples"]
        if a["epoch"] in remix_epochs:
            assert a["modality"] == b["modality"] and len(a["modality"]) == 1  # one modality per global step
    # each rank's share of an epoch: disjoint, together every training sample once
    n_train = summary["train_samples"]
    for e in range(3):
        assert sum(s["global_samples"] for s in r0 if s["epoch"] == e) == n_train - summary["history"][e]["dropped"]

    # the validation metrics of the selected epoch, recomputed by one process over the whole split
    ckpt = torch.load(out / "model.pt", weights_only=False)
    model = build_model(ckpt["modalities"], len(ckpt["class_names"]), CONFIG["width"], "concat")
    model.load_state_dict(ckpt["model"])
    val = ShardDataset(IndexReader(index), "val", train=False, frame_size=CONFIG["frame_size"],
                       mel_mean=ckpt["mel_mean"], mel_std=ckpt["mel_std"])
    pred = predict(model, multimodal_loader(val, batch_size=64, workers=0, num_modalities=2), ckpt["modalities"],
                   torch.device("cpu"))
    acc = accuracies(pred, ckpt["modalities"])
    assert {f"val_{k}": v for k, v in acc.items()} == {k: v for k, v in summary["best"].items()
                                                       if k.startswith("val_") and k != "val_select"}


def test_two_ranks_finish_when_a_subset_is_smaller_than_the_world_size(index, tmp_path):
    out = tmp_path / "lopsided"
    log = finish(launch(index, out, "remix", 2, "--lopsided"), timeout=300)
    summary = json.loads((out / "log.json").read_text())
    for row in summary["history"]:
        if row["phase"] == "remix":
            assert (row["assigned_audio"], row["assigned_video"]) == (summary["train_samples"] - 1, 1)
            assert row["dropped_video"] == 1  # the one video sample cannot be split over 2 ranks: dropped, counted
            assert row["dropped_audio"] <= 1 and row["dropped"] == row["dropped_audio"] + 1  # <= 1 per modality
    assert len(steps(out, 0)) == len(steps(out, 1))
    assert "dropped" in log
