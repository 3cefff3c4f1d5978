"""Smoke tests: the benchmark scripts run in their small mode and print their ratios (speed is not checked)."""
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.servers import nginx_binary


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


def test_shard_mix_small_runs(tmp_path):
    out = run_small("shard_mix", "--out", str(tmp_path), timeout=600)
    rows = [line for line in out.stdout.splitlines() if line.startswith("| before: manifest order")]
    seeded = [line for line in out.stdout.splitlines() if line.startswith("| seeded order, window 1 |")]
    before_actors, seeded_actors = (float(r[0].split("|")[2].split()[0]) for r in (rows, seeded))
    assert seeded_actors > 3 * before_actors  # manifest order: a batch holds a few actors; seeded: near uniform
    assert (tmp_path / "shard_mix_small.md").exists() and (tmp_path / "shard_mix_small.json").exists()


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


def test_difficulty_small_runs(tmp_path):
    """The difficulty check end to end on tiny data: both methods trained and evaluated, every target judged."""
    import json

    out = run_small("difficulty", "--out", str(tmp_path), timeout=600)
    assert "| baseline |" in out.stdout and "| remix |" in out.stdout
    report = json.loads((tmp_path / "difficulty_small.json").read_text())
    assert set(report["targets"]) == {"fused", "imbalance", "ceiling", "resolution"}
    for target in report["targets"].values():
        assert f"| {target['target']} | {target['measured']} | {'PASS' if target['pass'] else 'FAIL'} |" in out.stdout
    assert 0 < report["meta"]["ceiling"] <= 1 and {r["method"] for r in report["runs"]} == {"baseline", "remix"}


def test_every_benchmark_writes_its_results_through_the_one_writer(tmp_path):
    """benchmarks/_results.py writes <name>[_small].md and .json; no script writes its results files itself."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from _results import write_results
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    md = write_results(tmp_path / "out", "bench", "| a |", {"x": [1, 2]}, small=True)
    assert md == tmp_path / "out" / "bench_small.md" and md.read_text() == "| a |\n"
    assert (tmp_path / "out" / "bench_small.json").read_text() == '{\n "x": [\n  1,\n  2\n ]\n}\n'
    write_results(tmp_path / "out", "bench", "t", [])
    assert (tmp_path / "out" / "bench.md").read_text() == "t\n" and (tmp_path / "out" / "bench.json").read_text() == "[]\n"
    own = [p.name for p in sorted((REPO / "benchmarks").glob("*.py")) if p.name != "_results.py"
           and ('.json").write_text(' in p.read_text() or '.md").write_text(' in p.read_text())]
    assert not own, f"these write their results files themselves (use benchmarks/_results.py): {own}"


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed: `apt-get install nginx-light` (.ci/run "
                                                   "installs it)")
def test_remote_benchmark_small_runs(tmp_path):
    """benchmarks/remote.py --small: nginx and the delaying proxies start and stop, every table is printed."""
    out = run_small("remote", "--out", str(tmp_path), timeout=600)
    for row in ("| local |", "| 0 ms |", "| 20 ms |", "| 50 ms |", "### shuffle_window 1, cache 0.5",
                "### shuffle_window 0, cache default", "ranged / whole time", "| x2 |", "| x16 |"):
        assert row in out.stdout, row
    assert (tmp_path / "remote_small.md").exists() and (tmp_path / "remote_small.json").exists()
