"""Smoke tests: the benchmark scripts run in their small mode and print their ratios (speed is not checked)."""
import subprocess
import sys

from tests.conftest import REPO


def run_small(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python benchmarks/<script>.py --small <args>`` in the repository; fails the test with its stderr tail."""
    out = subprocess.run([sys.executable, f"benchmarks/{script}.py", "--small", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_extract_benchmark_small_runs():
    out = run_small("extract", timeout=600)
    assert "| 2 |" in out.stdout and "extract / floor" in out.stdout and "loose / shards" in out.stdout


def test_remix_quality_small_runs(tmp_path):
    out = run_small("remix_quality", "--out", str(tmp_path), timeout=900)
    assert "| only_video |" in out.stdout and "| remix, guard extend_warmup |" in out.stdout
    assert (tmp_path / "remix_quality_small.json").exists()


def test_extract_benchmark_profile_small_runs():
    out = run_small("extract", "--profile", "6", timeout=600)
    assert "| decode audio |" in out.stdout and "| decode video (decord) |" in out.stdout
    assert "| **total** |" in out.stdout and "now / before" in out.stdout


def test_loader_benchmark_small_runs(tmp_path):
    out = run_small("loader", "--out", str(tmp_path), timeout=600)
    assert "| 0 |" in out.stdout and "| 2 |" in out.stdout
    assert "shards / folder" in out.stdout and "shards / floor" in out.stdout
    assert "loose / shards: dvc add" in out.stdout and "dvc push" in out.stdout and "dvc pull" in out.stdout
    assert (tmp_path / "loader_small.md").exists() and (tmp_path / "loader_small.json").exists()


def test_epoch_cost_small_runs(tmp_path):
    out = run_small("epoch_cost", "--out", str(tmp_path), timeout=900)
    assert "| remix, input mask + skip + online |" in out.stdout and "epoch / baseline epoch" in out.stdout
    assert (tmp_path / "epoch_cost_small.json").exists()


def test_gpu_check_small_runs_every_path_without_cuda(tmp_path):
    """The GPU check's CPU mode (the same cells; the CUDA-only ones say so): what CI can run of it."""
    out = run_small("gpu_check", "--out", str(tmp_path), timeout=600)
    for cell in ("step alone, float32", "loader + step, cpu decode", "loader + step, gpu decode",
                 "loader + step, raw frames"):
        assert f"| {cell}" in out.stdout, cell
    assert "DDP smoke (gloo, 1 process): ok" in out.stdout or "DDP smoke (nccl, 1 process): ok" in out.stdout
    import json

    res = json.loads((tmp_path / "gpu_check_small.json").read_text())["results"]
    assert all(c["samples_per_s"] > 0 and c["vs_step"] > 0 for c in res["loader"].values())


def test_preset_extract_and_reader_224_small_run(tmp_path):
    out = run_small("preset_extract", timeout=600)
    assert "cremad_paper" in out.stdout and "kinetics_sounds_paper" in out.stdout
    out = run_small("reader_224", "--out", str(tmp_path), timeout=600)
    assert "| jpeg | per-sample |" in out.stdout and "| raw | bytes only |" in out.stdout
    assert (tmp_path / "reader_224_small.json").exists()


def test_pmr_prototypes_small_runs(tmp_path):
    out = run_small("pmr_prototypes", "--out", str(tmp_path), timeout=600)
    assert "| running |" in out.stdout and "| batch |" in out.stdout
    assert (tmp_path / "pmr_prototypes_small.json").exists()
