"""Smoke tests: the benchmark scripts run in their small mode and print their ratios (speed is not checked)."""
import subprocess
import sys

from tests.conftest import REPO


def test_extract_benchmark_small_runs():
    out = subprocess.run([sys.executable, "benchmarks/extract.py", "--small"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| 2 |" in out.stdout and "extract / floor" in out.stdout and "loose / shards" in out.stdout


def test_remix_quality_small_runs(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/remix_quality.py", "--small", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| only_video |" in out.stdout and "| remix, guard extend_warmup |" in out.stdout
    assert (tmp_path / "remix_quality_small.json").exists()


def test_extract_benchmark_profile_small_runs():
    out = subprocess.run([sys.executable, "benchmarks/extract.py", "--small", "--profile", "6"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| decode audio |" in out.stdout and "| decode video (decord) |" in out.stdout
    assert "| **total** |" in out.stdout and "now / before" in out.stdout


def test_loader_benchmark_small_runs(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/loader.py", "--small", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| 0 |" in out.stdout and "| 2 |" in out.stdout
    assert "shards / folder" in out.stdout and "shards / floor" in out.stdout
    assert "loose / shards: dvc add" in out.stdout and "dvc push" in out.stdout and "dvc pull" in out.stdout
    assert (tmp_path / "loader_small.md").exists() and (tmp_path / "loader_small.json").exists()


def test_epoch_cost_small_runs(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/epoch_cost.py", "--small", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| remix, input mask + skip + online |" in out.stdout and "epoch / baseline epoch" in out.stdout
    assert (tmp_path / "epoch_cost_small.json").exists()


def test_gpu_check_small_runs_every_path_without_cuda(tmp_path):
    """The GPU check's CPU mode (the same cells; the CUDA-only ones say so): what CI can run of it."""
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--small", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for cell in ("step alone, float32", "loader + step, cpu decode", "loader + step, gpu decode",
                 "loader + step, raw frames"):
        assert f"| {cell}" in out.stdout, cell
    assert "DDP smoke (gloo, 1 process): ok" in out.stdout or "DDP smoke (nccl, 1 process): ok" in out.stdout
    import json

    res = json.loads((tmp_path / "gpu_check_small.json").read_text())["results"]
    assert all(c["samples_per_s"] > 0 and c["vs_step"] > 0 for c in res["loader"].values())


def test_preset_extract_and_reader_224_small_run(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/preset_extract.py", "--small"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cremad_paper" in out.stdout and "kinetics_sounds_paper" in out.stdout
    out = subprocess.run([sys.executable, "benchmarks/reader_224.py", "--small", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| jpeg | per-sample |" in out.stdout and "| raw | bytes only |" in out.stdout
    assert (tmp_path / "reader_224_small.json").exists()


def test_pmr_prototypes_small_runs(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/pmr_prototypes.py", "--small", "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| running |" in out.stdout and "| batch |" in out.stdout
    assert (tmp_path / "pmr_prototypes_small.json").exists()
