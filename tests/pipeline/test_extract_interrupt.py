"""Extraction killed part-way (SIGKILL): no final name is ever half-written, and a rerun gives a clean run's bytes.

Every extraction here runs in its own process (a fork of a helper interpreter that has imported the
pipeline once, in its own process group, so one ``killpg`` also stops its worker pool). It is killed:

- when a shard's temporary file appears (two workers), when the first finished shard appears;
- after delays drawn from a seeded RNG over a clean run's duration;
- just before each of its renames (every shard, rejects.csv, index.h5, stats.json), over a folder
  that holds a complete extraction with another shard size, as a hand-run or ``--part`` run meets it.

After each kill, every file with a final name (``<split>-NNNNNN.tar``, index.h5, stats.json,
rejects.csv) is absent or complete: the clean run's (or the earlier extraction's) bytes, and an
index.h5 that is there describes exactly the shards that are there. Then extraction runs again and
every file equals the clean run's (stats.json: all but its timings), with no temporary file left.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.extract import SHARD_RE, plan_shards
from pipeline.manifest import read_manifest
from pipeline.shards import IndexReader, sha256_file
from tests.conftest import REPO
from tests.pipeline.test_extract import CFG, prepare

SHARD_SIZE = 4  # 12 clips -> a few shards, so a kill can land between them
SUMMARY = ("index.h5", "stats.json", "rejects.csv")

# The helper: reads one job (JSON) per line, forks a process that runs it, prints that process's pid,
# then its exit code once it ends (-9 when killed). `kill_before_rename: k` makes the process SIGKILL
# its own group just before its k-th os.replace (every final file is renamed into place with one).
HELPER = r"""
import json, os, signal, sys, traceback
import numpy as np
import torch
from pipeline import features as F
from pipeline.extract import extract

torch.set_num_threads(1)  # no intra-op thread pool to lose in the forks (its threads would not exist there)
F.log_mel(np.zeros(F.FeatureConfig().num_samples, np.float32), F.FeatureConfig())  # torch(audio) imported before forking
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setpgid(0, 0)
            signal.alarm(120)  # a hung run ends (exit code -14) rather than hanging the test
            kill_before = job.pop("kill_before_rename")
            if kill_before:
                replace, renames = os.replace, [0]
                def counting_replace(src, dst):
                    renames[0] += 1
                    if renames[0] == kill_before:
                        os.killpg(0, signal.SIGKILL)
                    replace(src, dst)
                os.replace = counting_replace
            extract(config=F.FeatureConfig(**job.pop("config")), **job)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    try:
        os.setpgid(pid, pid)  # also here, so that the group exists before the test may kill it
    except OSError:
        pass
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Extractor:
    """Runs extraction jobs, each in a fresh process the test may SIGKILL (see HELPER)."""

    def __init__(self, manifest: Path, classes: Path):
        self.base = dict(manifest=str(manifest), classes=str(classes), config=dataclasses.asdict(CFG),
                         workers=1, max_reject_fraction=0.5)
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        self.running: int | None = None  # pid of a started job not yet waited for
        self.proc = subprocess.Popen([sys.executable, "-c", HELPER], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline().strip() == "ready", "the extraction helper did not start"

    def start(self, out: Path, *, shard_size: int = SHARD_SIZE, kill_before_rename: int = 0, **kw) -> int:
        job = self.base | dict(out_dir=str(out), shard_size=shard_size, kill_before_rename=kill_before_rename) | kw
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        self.running = int(self.proc.stdout.readline())
        return self.running

    def wait(self) -> int:
        """Exit code of the last started job: 0 done, -9 killed."""
        code = int(self.proc.stdout.readline())
        self.running = None
        return code

    def run(self, out: Path, **kw) -> int:
        self.start(out, **kw)
        return self.wait()

    def close(self) -> None:
        if self.running is not None:  # a test failed between start and wait: stop that job
            kill(self.running)
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def names(folder: Path) -> list[str]:
    return os.listdir(folder) if folder.is_dir() else []


def kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # already ended and reaped
        pass


def fingerprint(path: Path) -> str:
    """SHA-256 of the file; of stats.json, of its content less the timings."""
    if path.name == "stats.json":
        stats = json.loads(path.read_text())
        stats.pop("timing")
        return json.dumps(stats, sort_keys=True)
    return sha256_file(path)


def fingerprints(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (temporary ones included), by relative path."""
    return {str(p.relative_to(folder)): fingerprint(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_nothing_half_written(out: Path, allowed: dict[str, set[str]], what: str) -> list[str]:
    """Every final name under ``out`` holds one of its ``allowed`` versions; an index describes the shards
    present. Returns the temporary files (a killed writer's; the next run must remove them)."""
    temporary = []
    for p in sorted(out.rglob("*")):
        if p.name.startswith(".tmp-"):
            temporary.append(p.name)
            continue
        assert p.is_file() and p.parent == out, f"{what}: unexpected {p}"
        assert p.name in allowed, f"{what}: unexpected file {p.name}"
        assert fingerprint(p) in allowed[p.name], f"{what}: {p.name} is not a complete version of itself"
    if (out / "index.h5").exists():
        index = IndexReader(out / "index.h5")
        shards = {p.name: sha256_file(p) for p in out.iterdir() if SHARD_RE.match(p.name)}
        assert shards == dict(zip(index.shard_names, index.shard_sha256)), \
            f"{what}: index.h5 does not describe the shards beside it"
    return temporary


def assert_rerun_is_clean(ex: Extractor, out: Path, clean: dict[str, str], what: str) -> None:
    assert ex.run(out) == 0, f"{what}: the rerun failed"
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")], f"{what}: temporary files left"
    assert fingerprints(out) == clean, f"{what}: the rerun's files differ from a clean run's"


@pytest.fixture(scope="module")
def extractor(cremad_raw, tmp_path_factory):
    manifest, classes = prepare(cremad_raw, "cremad", tmp_path_factory.mktemp("manifest"))
    ex = Extractor(manifest, classes)
    yield ex
    ex.close()


def test_killed_extraction_leaves_nothing_half_written_and_reruns_to_clean_bytes(extractor, tmp_path):
    ex = extractor
    t0 = time.perf_counter()
    assert ex.run(tmp_path / "clean") == 0
    duration = time.perf_counter() - t0
    clean = fingerprints(tmp_path / "clean")
    shard_names = {p.name for p in (tmp_path / "clean").glob("*.tar")}
    assert len(shard_names) >= 3 and set(clean) == shard_names | set(SUMMARY)
    allowed = {name: {fp} for name, fp in clean.items()}

    def killed_when(out: Path, condition, what: str, **kw) -> None:
        pid = ex.start(out, **kw)
        deadline = time.monotonic() + 60
        while not condition(out):
            assert time.monotonic() < deadline, f"{what}: never happened"
            time.sleep(0.001)
        kill(pid)
        assert ex.wait() == -signal.SIGKILL, f"{what}: the run ended before it was killed"
        assert_nothing_half_written(out, allowed, what)
        assert_rerun_is_clean(ex, out, clean, what)

    killed_when(tmp_path / "tmp", lambda d: any(n.startswith(".tmp-") and n.endswith(".tar") for n in names(d)),
                "killed once a temporary shard appears", workers=2)
    killed_when(tmp_path / "first", lambda d: any(map(SHARD_RE.match, names(d))),
                "killed once the first shard is renamed into place")

    rng, codes = random.Random(4), []  # seed: issue 4
    for n in range(3):
        delay = rng.uniform(0, duration)
        what = f"killed after {delay:.3f} s of a {duration:.3f} s run"
        out = tmp_path / f"random{n}"
        pid = ex.start(out)
        time.sleep(delay)
        kill(pid)
        codes.append(ex.wait())  # killed, or already done when the delay outlasted this run
        assert_nothing_half_written(out, allowed, what)
        assert_rerun_is_clean(ex, out, clean, what)
    assert -signal.SIGKILL in codes, f"no random kill landed before the end of its run: {codes}"


def test_killed_before_each_rename_over_an_earlier_extraction(extractor, tmp_path):
    """A kill at every commit point of a run over a folder holding another run's complete output."""
    ex = extractor
    assert ex.run(tmp_path / "clean") == 0 and ex.run(tmp_path / "earlier", shard_size=1) == 0
    clean, earlier = fingerprints(tmp_path / "clean"), fingerprints(tmp_path / "earlier")
    assert set(earlier) > set(clean)  # shards the new plan does not have, and same-named ones with other bytes
    assert any(earlier[name] != clean[name] for name in clean)
    allowed = {name: {fp for fp in (clean.get(name), earlier.get(name)) if fp} for name in earlier | clean}

    renames = len(plan_shards(read_manifest(ex.base["manifest"]), SHARD_SIZE)) + len(SUMMARY)
    leftovers = set()
    for k in range(1, renames + 1):
        out, what = tmp_path / f"k{k}", f"killed before rename {k} of {renames}"
        shutil.copytree(tmp_path / "earlier", out)
        assert ex.run(out, kill_before_rename=k) == -signal.SIGKILL, f"{what}: not killed"
        leftovers.update(assert_nothing_half_written(out, allowed, what))
        assert_rerun_is_clean(ex, out, clean, what)
    assert leftovers >= {".tmp-index.h5", ".tmp-stats.json", ".tmp-rejects.csv"}  # the kills hit every writer
    assert any(name.endswith(".tar") for name in leftovers)
