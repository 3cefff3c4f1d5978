"""Reader throughput: the trainer's shard reader against loose files and an in-memory floor; DVC push/pull per layout.

    python benchmarks/loader.py                  # on features/ from `make demo`; writes benchmarks/results/loader.md + .json
    python benchmarks/loader.py --small          # CI smoke test: a tiny generated set, 1 repetition (under a minute)

Three readers of the training split, identical but for where the bytes come from:

- shards: the trainer's reader, `train.data.ShardDataset` over `index.h5` (one open, one seek + read
  per member of the tar shard), with the trainer's train transform (random resized crop + flip,
  ImageNet normalisation), mel normalisation, `RemixBatchSampler` (the trainer's `order`, batch
  size and seed, a seeded two-modality assignment: modality-pure, shard-local batches) and
  `make_loader`;
- folder: the layout of the paper's official code, `visual/<clip>/frame_0000i.jpg` and
  `audio/<clip>.npy`, written by this script from the shards (the same JPEG and mel bytes), read by
  a torch Dataset that opens each file by its path (`FolderDataset`); same decode, transforms,
  sampler, batches, batch size and DataLoader workers;
- floor: the same decode and transforms of the same JPEG and npy bytes held in memory (no I/O),
  through the same DataLoader: what a reader costs beyond decoding and augmenting.

The page cache is not dropped (this is a shared machine): every file is warm. Each layout is read
once in full (which also starts the persistent workers) before timing, so all three start
equally warm. A repetition times `--epochs` epochs of each reader, the readers in a rotating order;
the ratios shards / folder (goal >= 1) and shards / floor (goal >= 0.8) are taken within each
repetition, and their median and range over the repetitions are reported, at 0 and 2 workers.

DVC: for each layout (the shards with index.h5; the loose files), in a temporary git + DVC repo:
`dvc add` the folder, then per repetition `dvc push` to a fresh local-folder remote, delete the
cache and the folder, `dvc pull` (timed separately; the pulled files are checked against the
originals). Ratio loose / shards of each time.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.shards import IndexReader
from train.data import MEL_MEMBER, ShardDataset, estimate_mel_stats, make_loader
from train.sampler import RemixBatchSampler

from _results import write_results  # benchmarks/_results.py: this script's folder is on sys.path

READERS = ("shards", "folder", "floor")


# -- the three readers: ShardDataset with the index's reads replaced --------------------------------

class _IndexView:
    """The index, with :meth:`read_sample` answered from elsewhere (subclasses); the rest delegates."""

    def __init__(self, index: IndexReader):
        self._index = index
        self.frame_members = tuple(m for m in index.members if m.startswith("frame") and m.endswith(".jpg"))

    def __getattr__(self, name):
        if name.startswith("_"):  # pickling/copy probes, and _index itself before __init__ ran
            raise AttributeError(name)
        return getattr(self._index, name)


class FolderIndex(_IndexView):
    """Members read from the official code's layout, one file per member, opened by path."""

    def __init__(self, index: IndexReader, root: Path):
        super().__init__(index)
        self.root = Path(root)

    def paths(self, row: int) -> dict[str, Path]:
        key = self._index.keys[row]
        out = {MEL_MEMBER: self.root / "audio" / f"{key}.npy"}
        for i, m in enumerate(self.frame_members):
            out[m] = self.root / "visual" / key / f"frame_{i:05d}.jpg"
        return out

    def read_sample(self, row: int) -> dict[str, bytes]:
        out = {}
        for member, path in self.paths(row).items():
            with open(path, "rb") as f:
                out[member] = f.read()
        return out


class MemoryIndex(_IndexView):
    """Members held in memory (read once, before timing): no I/O at all."""

    def __init__(self, index: IndexReader, rows):
        super().__init__(index)
        wanted = (MEL_MEMBER, *self.frame_members)
        self.samples = {int(r): {m: v for m, v in index.read_sample(int(r)).items() if m in wanted} for r in rows}

    def read_sample(self, row: int) -> dict[str, bytes]:
        return self.samples[row]


class FolderDataset(ShardDataset):
    """A torch Dataset over the loose files under ``root``, opened by path; ShardDataset's decode and transforms."""

    def __init__(self, index: IndexReader, root: Path, **kw):
        super().__init__(FolderIndex(index, root), **kw)


class MemoryDataset(ShardDataset):
    """The floor: ShardDataset's decode and transforms of the split's bytes, held in memory."""

    def __init__(self, index: IndexReader, rows, **kw):
        super().__init__(MemoryIndex(index, rows), **kw)


def write_folder_layout(index: IndexReader, out: Path) -> None:
    """Every sample's frames and mel as the official code lays them out, from the shards' own bytes."""
    frames = sorted((m for m in index.members if m.startswith("frame") and m.endswith(".jpg")),
                    key=lambda m: int(m[len("frame"):-len(".jpg")]))
    (out / "audio").mkdir(parents=True, exist_ok=True)
    for row, key in enumerate(index.keys):
        sample = index.read_sample(row)
        (out / "visual" / key).mkdir(parents=True, exist_ok=True)
        (out / "audio" / f"{key}.npy").write_bytes(sample[MEL_MEMBER])
        for i, m in enumerate(frames):
            (out / "visual" / key / f"frame_{i:05d}.jpg").write_bytes(sample[m])


# -- timing ---------------------------------------------------------------------------------------

def run_epoch(loader, sampler: RemixBatchSampler, epoch: int) -> int:
    sampler.set_epoch(epoch)
    n = 0
    for batch in loader:
        n += int(batch["label"].shape[0])
    return n


def time_readers(datasets: dict[str, ShardDataset], workers: int, *, batch_size: int, order: str, seed: int,
                 num_modalities: int, repeats: int, epochs: int) -> list[dict[str, float]]:
    """Per repetition, samples/s of each reader over ``epochs`` epochs (same plan for all readers)."""
    loaders, samplers = {}, {}
    shard_ids = datasets["shards"].shard_ids()
    assignment = np.random.default_rng(seed).integers(0, num_modalities, len(shard_ids))
    for name, ds in datasets.items():
        s = RemixBatchSampler(shard_ids, batch_size=batch_size, drop_last=False, seed=seed, order=order)
        s.set_assignment(assignment, num_modalities)
        samplers[name], loaders[name] = s, make_loader(ds, s, workers=workers)
    return time_in_turn(loaders, samplers, list(READERS), repeats=repeats, epochs=epochs)


def time_in_turn(loaders: dict, samplers: dict, names: list[str], *, repeats: int, epochs: int) -> list[dict[str, float]]:
    """Per repetition, samples/s of each named loader over ``epochs`` epochs, the names taking turns first; every
    loader read once before (page cache warm, persistent workers started), all shut down after."""
    for name in names:
        run_epoch(loaders[name], samplers[name], 10_000)
    reps = []
    for rep in range(repeats):
        rates = {}
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            start, n = time.perf_counter(), 0
            for e in range(epochs):
                n += run_epoch(loaders[name], samplers[name], rep * epochs + e)
            rates[name] = n / (time.perf_counter() - start)
        reps.append(rates)
    loaders.clear()
    gc.collect()  # shut the persistent workers down before the next setting
    return reps


# -- DVC ------------------------------------------------------------------------------------------

def _dvc_exe() -> str:
    here = Path(sys.executable).parent / "dvc"
    return str(here) if here.exists() else "dvc"


def _run(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{out.stdout}\n{out.stderr}")
    return time.perf_counter() - start


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dvc_times(source: Path, work: Path, repeats: int) -> dict:
    """`dvc add` once, then ``repeats`` x (`dvc push` to a fresh local remote; delete cache and data; `dvc pull`)."""
    repo = work / "repo"
    repo.mkdir(parents=True)
    env = dict(os.environ, DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(work / "site-cache"),
               GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
    dvc = _dvc_exe()
    subprocess.run(["git", "init", "-q"], cwd=repo, env=env, check=True)
    _run([dvc, "init", "-q"], repo, env)
    shutil.copytree(source, repo / "data")
    expected = _listing(repo / "data")
    out = {"files": len(expected), "bytes": sum(len(v) for v in expected.values()),
           "add_s": _run([dvc, "add", "-q", "data"], repo, env), "push_s": [], "pull_s": []}
    for rep in range(repeats):
        _run([dvc, "remote", "add", "-f", "-d", "bench", str(work / f"remote-{rep}")], repo, env)
        out["push_s"].append(_run([dvc, "push", "-q"], repo, env))
        shutil.rmtree(repo / ".dvc" / "cache")
        shutil.rmtree(repo / "data")
        out["pull_s"].append(_run([dvc, "pull", "-q"], repo, env))
        if _listing(repo / "data") != expected:
            raise RuntimeError(f"dvc pull in {repo} did not give back the pushed files")
    return out


# -- report ---------------------------------------------------------------------------------------

def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def fmt(s: dict, digits: int = 0) -> str:
    if len(s["values"]) == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def report(meta: dict, reader: dict, dvc: dict | None) -> str:
    lines = [f"## reader benchmark: {meta['samples']} training samples, batch {meta['batch_size']}, frame_size "
             f"{meta['frame_size']}, {meta['repeats']} repetition(s) of {meta['epochs']} epoch(s)", "",
             f"{meta['platform']}, {meta['cpus']} CPUs, python {meta['python']}, torch {meta['torch']}, "
             f"{meta['date']}; torch threads 1 per process; load average {meta['load_start']:.1f} at the start, {meta['load_end']:.1f} at the end; "
             f"niceness {meta['nice']}", "",
             "Files warm in the page cache (not dropped: shared machine); each layout read once in full before "
             "timing. Median (min–max) over the repetitions; ratios taken within each repetition.", "",
             "| workers | shards samples/s | folder samples/s | in-memory floor samples/s | shards / folder (goal >= 1) "
             "| shards / floor (goal >= 0.8) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for w, r in reader.items():
        lines.append(f"| {w} | {fmt(r['shards'])} | {fmt(r['folder'])} | {fmt(r['floor'])} | "
                     f"{fmt(r['shards/folder'], 2)} | {fmt(r['shards/floor'], 2)} |")
    if dvc is not None:
        s, f = dvc["shards"], dvc["folder"]
        lines += ["", f"### DVC, local-folder remote, {len(s['push_s'])} repetition(s), median (min–max) seconds", "",
                  "| layout | files | bytes | dvc add s | dvc push s | dvc pull s |", "|---|---:|---:|---:|---:|---:|"]
        for name, d in (("shards (`*.tar` + `index.h5`)", s), ("loose (`visual/<clip>/frame_0000i.jpg`, "
                                                                 "`audio/<clip>.npy`)", f)):
            lines.append(f"| {name} | {d['files']} | {d['bytes']:,} | {d['add_s']:.2f} | "
                         f"{fmt(summary(d['push_s']), 2)} | {fmt(summary(d['pull_s']), 2)} |")
        ratio = lambda k: statistics.median(f[k]) / statistics.median(s[k])  # noqa: E731
        lines += ["", f"loose / shards: dvc add {f['add_s'] / s['add_s']:.2f}x, dvc push {ratio('push_s'):.2f}x, "
                      f"dvc pull {ratio('pull_s'):.2f}x the time (medians)"]
    return "\n".join(lines)


def small_features(tmp: Path) -> Path:
    """A tiny generated feature set (as benchmarks/remix_quality.py --small makes it)."""
    from pipeline.datasets import prepare_dataset
    from pipeline.extract import extract
    from pipeline.features import FeatureConfig
    from pipeline.manifest import write_classes, write_manifest
    from pipeline.synth import SynthConfig, generate

    generate(out_dir=tmp / "raw", seed=0, config=SynthConfig(num_classes=3, clips_per_class=8, actors=4, width=64,
                                                             height=48, workers=1))
    records, classes = prepare_dataset(dataset="cremad", root=str(tmp / "raw"), split_file=None, ratios=[0.6, 0.2, 0.2],
                                       val_fraction=0.1, group_disjoint=True, seed=0)
    write_manifest(tmp / "manifest.csv", records)
    write_classes(tmp / "classes.txt", classes)
    extract(manifest=tmp / "manifest.csv", classes=tmp / "classes.txt", out_dir=tmp / "features",
            config=FeatureConfig(short_side=32), shard_size=4, workers=1, max_reject_fraction=0.05)
    return tmp / "features" / "index.h5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny generated set, 1 repetition (smoke test)")
    ap.add_argument("--index", default="features/index.h5", help="index of the feature set (default: make demo's)")
    ap.add_argument("--repeats", type=int, default=7, help="timed repetitions per worker count")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the training split per repetition and reader")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    ap.add_argument("--dvc-repeats", type=int, default=3, help="dvc push + pull repetitions per layout (0: skip DVC)")
    ap.add_argument("--out", default="benchmarks/results", help="folder for loader.md and loader.json")
    args = ap.parse_args()
    from pipeline.params import load_params
    from train.config import TrainConfig

    params = load_params()
    cfg = TrainConfig.from_params(params["train"])
    seed = int(params["base"]["seed"])
    if args.small:
        cfg = dataclasses.replace(cfg, batch_size=4, frame_size=24)
        args.repeats, args.epochs, args.dvc_repeats = 1, 1, min(args.dvc_repeats, 1)
    load_start = os.getloadavg()[0]
    # one intra-op thread, as torch gives each DataLoader worker: with workers=0 the decode and transforms
    # run in this process, and a 2-thread pool on tiny tensors measured OpenMP contention, not the reader
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        index_path = small_features(tmp) if args.small else Path(args.index)
        if not index_path.exists():
            sys.exit(f"{index_path} not found: run `make demo` first, or use --small")
        index = IndexReader(index_path)
        index.verify(content=False)
        write_folder_layout(index, tmp / "folder")
        rows = index.indices("train")
        mel_mean, mel_std = estimate_mel_stats(index, "train")
        kw = dict(split="train", train=True, frame_size=cfg.frame_size, mel_mean=mel_mean, mel_std=mel_std, seed=seed)
        datasets = {"shards": ShardDataset(index, **kw), "folder": FolderDataset(index, tmp / "folder", **kw),
                    "floor": MemoryDataset(index, rows, **kw)}
        check = [datasets[name][(0, -1, 0)] for name in READERS]  # the three give the same item
        for item in check[1:]:
            assert all(torch.equal(item[k], check[0][k]) for k in ("mel", "frames")), "readers disagree"
        reader = {}
        for w in args.workers:
            reps = time_readers(datasets, w, batch_size=cfg.batch_size, order=cfg.order, seed=seed,
                                num_modalities=len(cfg.modalities), repeats=args.repeats, epochs=args.epochs)
            r = {name: summary([x[name] for x in reps]) for name in READERS}
            r["shards/folder"] = summary([x["shards"] / x["folder"] for x in reps])
            r["shards/floor"] = summary([x["shards"] / x["floor"] for x in reps])
            reader[w] = r
        dvc = None
        if args.dvc_repeats > 0:
            shard_src = tmp / "shard-layout"
            shard_src.mkdir()
            for p in [index_path, *(index.shard_dir / n for n in index.shard_names)]:
                shutil.copy2(p, shard_src / p.name)
            dvc = {"shards": dvc_times(shard_src, tmp / "dvc-shards", args.dvc_repeats),
                   "folder": dvc_times(tmp / "folder", tmp / "dvc-folder", args.dvc_repeats)}
    meta = {"samples": len(rows), "batch_size": cfg.batch_size, "frame_size": cfg.frame_size, "order": cfg.order,
            "repeats": args.repeats, "epochs": args.epochs, "index": "generated (--small)" if args.small else str(index_path),
            "platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_start": load_start, "load_end": os.getloadavg()[0], "nice": os.nice(0)}
    text = report(meta, reader, dvc)
    print(text)
    write_results(args.out, "loader", text, {"meta": meta, "reader": reader, "dvc": dvc}, args.small)


if __name__ == "__main__":
    main()
