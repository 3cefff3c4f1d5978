"""Training's reader from a remote source (train.source: an HTTP prefix) against local disk, at added latencies.

    python benchmarks/remote.py            # writes benchmarks/results/remote.md + .json (about 6 minutes on 2 cores)
    python benchmarks/remote.py --small    # CI smoke test: a tiny set, 1 repetition, 1 epoch per reader

The feature set: a generated CREMA-D-layout set (the demo's frame size and features; --small: tiny), extracted into
shards, then replicated (the shards hard-linked under new names, the index rows repeated) to many shards. nginx
(Debian's, tests/servers.py) serves the folder on 127.0.0.1; a delaying proxy (tests/servers.py's FaultProxy in a
child process) in front of it adds a fixed latency to every request: 0, 20 and 50 ms.

Readers, each timed on the same split in the same run, in a rotating order per repetition:

- local: the trainer's reader on the folder (``train.source: local``);
- remote: the same reader with ``train.source: <proxy URL>``: index.h5 fetched, mel statistics by ranged reads,
  shards fetched whole into a fresh cache by the sampler's plan (:mod:`train.prefetch`), default
  ``train.fetch_threads``.

The loader is the trainer's training loader (``train/loaders.py``: the params.yaml ``train`` settings, decode,
workers, batch, frames, augmentation), a seeded two-modality assignment, no model step: the reader's throughput
alone, the hardest case for hiding latency. Two plans: ``shuffle_window 1`` (shard-local batches) with a cache of
about 40 % of the split, and ``shuffle_window 0`` (full shuffle, the params.yaml default) with the default
``train.cache_mb`` (which holds the split here). Per reader: samples/s of the first epoch (every shard fetched:
cold) and of the later ones, each as a ratio to local disk in the same repetition; bytes fetched per epoch over the
split's shard bytes; peak cache bytes over the limit; time to first batch (from opening the index to the first
batch, mel statistics included) at two dataset sizes (the replication factor, and 8 times it).

Fetch strategies (what train/remote.py chose): one epoch's training samples fetched with 4 threads, as whole shards
(one GET each) against one ranged GET per sample (its members are contiguous in the tar), at each latency.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: pipeline, train, tests

from _results import write_results  # noqa: E402  benchmarks/_results.py: this script's folder is on sys.path
from pipeline.shards import IndexReader, IndexRow, ShardEntry, write_index  # noqa: E402
from tests.servers import FaultProxy, Nginx  # noqa: E402
from train import loaders, shard_cache  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.data import estimate_mel_stats  # noqa: E402
from train.remote import Fetcher, UrlSource  # noqa: E402
from train.sampler import RemixBatchSampler  # noqa: E402

LATENCIES_MS = (0, 20, 50)
# (train.shuffle_window, cache limit as a share of the split's shard bytes or None: train.cache_mb, latencies)
PLANS = ((1, 0.5, LATENCIES_MS), (0, None, LATENCIES_MS), (1, 0.9, (20,)), (0, 0.5, (20,)))
MIB = 1 << 20


# -- the feature set ------------------------------------------------------------------------------------------

def base_features(tmp: Path, small: bool) -> Path:
    """Synthesise and extract a CREMA-D-layout set into ``tmp/base``; its features folder."""
    from pipeline.datasets import prepare_dataset
    from pipeline.extract import extract
    from pipeline.features import FeatureConfig
    from pipeline.manifest import write_classes, write_manifest
    from pipeline.synth import SynthConfig, generate

    synth = (dict(num_classes=3, clips_per_class=8, actors=4, width=64, height=48, workers=1) if small else
             dict(num_classes=6, clips_per_class=24, actors=8, width=160, height=120, workers=2))
    root = tmp / "base"
    generate(out_dir=root / "raw", seed=0, config=SynthConfig(**synth))
    records, classes = prepare_dataset(dataset="cremad", root=str(root / "raw"), split_file=None,
                                       ratios=[0.6, 0.2, 0.2], val_fraction=0.1, group_disjoint=True, seed=0)
    write_manifest(root / "manifest.csv", records)
    write_classes(root / "classes.txt", classes)
    extract(manifest=root / "manifest.csv", classes=root / "classes.txt", out_dir=root / "features",
            config=FeatureConfig(short_side=32) if small else FeatureConfig(), shard_size=8 if small else 32,
            workers=synth["workers"], max_reject_fraction=0.05)
    return root / "features"


def replicate(src: Path, dst: Path, copies: int) -> Path:
    """``src``'s feature set ``copies`` times over in ``dst``: shards hard-linked under new numbers, rows repeated
    (the same keys); an index that reads exactly like ``copies`` concatenated sets. Returns ``dst/index.h5``."""
    index = IndexReader(src / "index.h5")
    dst.mkdir(parents=True)
    rows, shards = [], []
    for split_code, split in enumerate(index.splits):
        table = np.flatnonzero(index.shard_split == split_code)
        if table.size == 0:
            continue
        span = int(index.shard_number[table].max()) + 1
        for c in range(copies):
            for j in table:
                number = c * span + int(index.shard_number[j])
                name = f"{split}-{number:06d}.tar"
                os.link(src / index.shard_names[j], dst / name)
                shards.append(ShardEntry(name, split, number, int(index.shard_samples[j]), int(index.shard_bytes[j]),
                                         str(index.shard_sha256[j])))
                for r in np.flatnonzero(index.shard == j):
                    rows.append(IndexRow(str(index.keys[r]), str(index.clip_ids[r]), split, int(index.label[r]), number,
                                         int(index.position[r]), tuple(int(x) for x in index.offset[r]),
                                         tuple(int(x) for x in index.size[r])))
    write_index(dst / "index.h5", rows, shards, members=index.members, class_names=index.class_names,
                feature_params=index.feature_params)
    return dst / "index.h5"


# -- the delaying proxy, in its own process (the GIL of the reader's main process stays the reader's) -------------

def _serve(upstream: str, latency_s: float, ports) -> None:
    proxy = FaultProxy(upstream, latency_s=latency_s).start()
    ports.put(proxy.port)
    while True:
        time.sleep(3600)


class DelayProxy:
    def __init__(self, upstream: str, latency_ms: int):
        ctx = multiprocessing.get_context("fork")
        ports = ctx.Queue()
        self.proc = ctx.Process(target=_serve, args=(upstream, latency_ms / 1000, ports), daemon=True)
        self.proc.start()
        self.url = f"http://127.0.0.1:{ports.get(timeout=30)}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.join(timeout=10)


# -- one reader ------------------------------------------------------------------------------------------------

def in_flight_bytes(index: IndexReader, batches: list[list], lag: int) -> int:
    """Most bytes of distinct shards over any ``lag + 1`` consecutive batches of the plan (what the cache must
    hold at least), plus the largest shard."""
    split_rows = index.indices("train")
    shard_sets = [set(index.shard[split_rows[[it[0] for it in b]]].tolist()) for b in batches]
    most = max(sum(int(index.shard_bytes[j]) for j in set().union(*shard_sets[max(0, n - lag):n + 1]))
               for n in range(len(shard_sets)))
    return most + int(index.shard_bytes.max())


def sampler_for(index: IndexReader, cfg: TrainConfig, window: int, seed: int) -> RemixBatchSampler:
    n = len(index.indices("train"))
    s = RemixBatchSampler(index.shard[index.indices("train")], batch_size=cfg.batch_size, drop_last=False, seed=seed,
                          order=cfg.order, shuffle_window=window)
    s.set_assignment(np.random.default_rng(seed).integers(0, 2, n), 2)
    return s


def read_epochs(open_index, cfg: TrainConfig, window: int, epochs: int, seed: int) -> dict:
    """Open the index, then read ``epochs`` epochs of the training loader: time to first batch, samples/s and bytes
    fetched per epoch, peak cache bytes."""
    t0 = time.perf_counter()
    index = open_index()
    mel_mean, mel_std = estimate_mel_stats(index, "train")
    ds = loaders.dataset(index, "train", cfg.decode, train=True, mel_mean=mel_mean, mel_std=mel_std, seed=seed,
                         **loaders.frame_settings(cfg))
    sampler = sampler_for(index, cfg, window, seed)
    loader = loaders.loader(ds, sampler, workers=cfg.workers, device="cpu")
    cache = getattr(index, "cache", None)
    out = {"ttfb_s": None, "samples_per_s": [], "bytes": [], "samples": len(ds)}
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        before = index.fetcher.stats["bytes"] if cache is not None else 0
        start, n = time.perf_counter(), 0
        for batch in loader:
            if out["ttfb_s"] is None:
                out["ttfb_s"] = time.perf_counter() - t0
            n += len(batch["label"])
        out["samples_per_s"].append(n / (time.perf_counter() - start))
        out["bytes"].append((index.fetcher.stats["bytes"] - before) if cache is not None else 0)
    if cache is not None:
        out.update(peak_bytes=cache.stats["peak_bytes"], limit=cache.limit, fetched=cache.stats["fetched"])
        cache.close()
    del loader
    return out


def remote_opener(url: str, cfg: TrainConfig, cache: Path):
    def open_index():
        shutil.rmtree(cache, ignore_errors=True)
        return shard_cache.open_index("features/index.h5", cfg, cache)
    return open_index


# -- fetch strategies ------------------------------------------------------------------------------------------

def fetch_strategies(index: IndexReader, url: str, tmp: Path, threads: int = 4) -> dict:
    """Seconds and requests to get every training sample's bytes: whole shards, or one ranged GET per sample."""
    source = UrlSource(url, "index.h5", timeout_s=30)
    rows = index.indices("train")
    table = sorted(set(index.shard[rows].tolist()))
    out = {}
    fetcher = Fetcher(retries=0)
    tmp.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda j: fetcher.get_file(source.shard(index.shard_names[j]), tmp / index.shard_names[j],
                                                 what="", size=int(index.shard_bytes[j]),
                                                 sha256=str(index.shard_sha256[j])), table))
    out["whole"] = {"s": time.perf_counter() - t, **fetcher.stats}
    shutil.rmtree(tmp)
    fetcher = Fetcher(retries=0)

    def sample(r: int) -> bytes:
        start = int(index.offset[r].min()) - 512  # the first member's header
        end = int((index.offset[r] + index.size[r]).max())
        return fetcher.get_range(source.shard(index.shard_names[index.shard[r]]), start, end - start, what="")

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(sample, rows))
    out["ranged"] = {"s": time.perf_counter() - t, **fetcher.stats}
    return out


# -- the run ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Setup:
    cfg: TrainConfig
    seed: int
    epochs: int
    repeats: int
    copies: int


def one_repetition(rep: int, index_path: Path, proxies: dict, setup: Setup, tmp: Path) -> dict:
    """Every reader once, for both plans, in an order rotated by ``rep``; ratios to local in this repetition."""
    cfg, out = setup.cfg, {}
    local = IndexReader(index_path)
    split = int(local.shard_bytes[local.shard_split == 0].sum())
    for window, fraction, latencies in PLANS:
        if fraction is None:
            limit = cfg.cache_mb * MIB  # the default: holds the split here
        else:
            plan = list(sampler_for(local, cfg, window, setup.seed))
            need = in_flight_bytes(local, plan, 2 * cfg.workers if cfg.workers else 1)
            limit = max(fraction * split, 1.25 * need)
        names = ["local", *(f"{ms} ms" for ms in latencies)]
        names = names[rep % len(names):] + names[:rep % len(names)]
        res = {}
        for name in names:
            if name == "local":
                res[name] = read_epochs(lambda: IndexReader(index_path), cfg, window, setup.epochs, setup.seed)
                continue
            rcfg = dataclasses.replace(cfg, source=proxies[name], cache_mb=limit / MIB)
            res[name] = read_epochs(remote_opener(proxies[name], rcfg, tmp / "cache"), rcfg, window, setup.epochs,
                                    setup.seed)
        for name, r in res.items():
            r["cold_ratio"] = r["samples_per_s"][0] / res["local"]["samples_per_s"][0]
            if setup.epochs > 1:
                r["warm_ratio"] = (statistics.median(r["samples_per_s"][1:])
                                   / statistics.median(res["local"]["samples_per_s"][1:]))
            r["bytes_per_split"] = max(r["bytes"]) / split
            if "limit" in r:
                r["peak_per_limit"] = r["peak_bytes"] / r["limit"]
        out[f"shuffle_window {window}, cache {'default' if fraction is None else fraction}"] = {
            "limit_per_split": limit / split, "readers": res}
    return out


def ttfb_by_size(base: Path, tmp: Path, setup: Setup) -> dict:
    """Time to first batch (median of ``repeats``, and its parts), local and at 20 ms, for the set replicated
    ``copies`` and 8 x ``copies`` times."""
    out = {}
    for copies in (setup.copies, 8 * setup.copies):
        folder = tmp / f"x{copies}"
        index_path = replicate(base, folder, copies)
        with Nginx(folder, tmp / f"nginx-x{copies}") as server:
            proxy = DelayProxy(server.url, 20)
            try:
                rcfg = dataclasses.replace(setup.cfg, source=proxy.url)
                runs = {"local": [ttfb(lambda: IndexReader(index_path), setup.cfg, setup.seed)
                                  for _ in range(setup.repeats)],
                        "20 ms": [ttfb(remote_opener(proxy.url, rcfg, tmp / "cache-ttfb"), rcfg, setup.seed)
                                  for _ in range(setup.repeats)]}
            finally:
                proxy.close()
        out[copies] = {"train_samples": len(IndexReader(index_path).indices("train")),
                       "index_bytes": index_path.stat().st_size,
                       **{name: {k: med([r[k] for r in rs]) for k in rs[0]} for name, rs in runs.items()}}
        shutil.rmtree(folder)
    return out


def ttfb(open_index, cfg: TrainConfig, seed: int) -> dict:
    """Seconds from opening the index to the training loader's first batch, and its parts: the index (fetched),
    the mel statistics (ranged reads), the first batch (its shards fetched)."""
    t0 = time.perf_counter()
    index = open_index()
    t1 = time.perf_counter()
    mel_mean, mel_std = estimate_mel_stats(index, "train")
    t2 = time.perf_counter()
    ds = loaders.dataset(index, "train", cfg.decode, train=True, mel_mean=mel_mean, mel_std=mel_std, seed=seed,
                         **loaders.frame_settings(cfg))
    loader = loaders.loader(ds, sampler_for(index, cfg, 1, seed), workers=cfg.workers, device="cpu")
    next(iter(loader))
    t3 = time.perf_counter()
    if getattr(index, "cache", None) is not None:
        index.cache.close()
    return {"total": t3 - t0, "index": t1 - t0, "mel": t2 - t1, "first_batch": t3 - t2}


def med(values: list[float]) -> float:
    return statistics.median(values)


def report(meta: dict, reps: list[dict], strategies: dict, sizes: dict) -> str:
    lines = [f"## remote reader: {meta['train_samples']} training samples in {meta['train_shards']} shards "
             f"({meta['split_mib']:.1f} MiB), batch {meta['batch_size']}, workers {meta['workers']}, "
             f"{meta['repeats']} repetition(s) of {meta['epochs']} epoch(s)", "",
             f"{meta['platform']}, {meta['cpus']} CPUs, torch {meta['torch']}, {meta['date']}; nginx + a delaying "
             f"proxy on 127.0.0.1; torch threads 1 per process; load average {meta['load_start']:.1f} at the start, "
             f"{meta['load_end']:.1f} at the end. Medians over repetitions (range when more than one).", ""]
    for plan in reps[0]:
        limit = reps[0][plan]["limit_per_split"]
        lines += [f"### {plan}: limit {limit:.2f} x the split's shard bytes", "",
                  "| reader | samples/s, cold epoch | / local | samples/s, later epochs | / local | bytes fetched per "
                  "epoch / split | peak cache / limit | first batch s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in reps[0][plan]["readers"]:
            rs = [rep[plan]["readers"][name] for rep in reps]

            def col(key, digits=2):
                vals = [r[key] for r in rs if key in r]
                return "–" if not vals else rng(vals, digits)

            cold = rng([r["samples_per_s"][0] for r in rs], 0)
            warm = rng([med(r["samples_per_s"][1:]) for r in rs], 0) if meta["epochs"] > 1 else "–"
            lines.append(f"| {name} | {cold} | {col('cold_ratio')} | {warm} | {col('warm_ratio')} | "
                         f"{col('bytes_per_split') if name != 'local' else '–'} | {col('peak_per_limit')} | "
                         f"{col('ttfb_s')} |")
        lines.append("")
    lines += ["### Time to first batch against dataset size (shuffle_window 1; medians)", "",
              "| replication | training samples | index.h5 KiB | local s | 20 ms s | of which: index.h5 | mel "
              "statistics | first batch |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for copies, r in sizes.items():
        g = r["20 ms"]
        lines.append(f"| x{copies} | {r['train_samples']} | {r['index_bytes'] / 1024:.0f} | "
                     f"{r['local']['total']:.2f} | {g['total']:.2f} | {g['index']:.2f} | {g['mel']:.2f} | "
                     f"{g['first_batch']:.2f} |")
    lines += ["", "### Fetch strategies: one epoch's training samples, 4 threads", "",
              "| latency | whole shards s | requests | MiB | one ranged GET per sample s | requests | MiB | "
              "ranged / whole time |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ms, r in strategies.items():
        w, g = r["whole"], r["ranged"]
        lines.append(f"| {ms} ms | {w['s']:.2f} | {w['requests']} | {w['bytes'] / MIB:.2f} | {g['s']:.2f} | "
                     f"{g['requests']} | {g['bytes'] / MIB:.2f} | {g['s'] / w['s']:.1f} |")
    return "\n".join(lines)


def rng(values: list[float], digits: int) -> str:
    m = med(values)
    if len(values) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny set, 1 repetition, 1 epoch (smoke test)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--copies", type=int, default=8, help="replication of the generated set")
    ap.add_argument("--out", default="benchmarks/results", help="folder for remote.md and remote.json")
    args = ap.parse_args()
    from pipeline.params import load_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    cfg = TrainConfig.from_params(params["train"])
    seed = int(params["base"]["seed"])
    if args.small:
        cfg = dataclasses.replace(cfg, batch_size=8, frame_size=24)
        args.repeats, args.epochs, args.copies = 1, 1, 2
    setup = Setup(cfg, seed, args.epochs, args.repeats, args.copies)
    load_start = os.getloadavg()[0]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = base_features(tmp, args.small)
        index_path = replicate(base, tmp / "features", args.copies)
        index = IndexReader(index_path)
        with Nginx(tmp / "features", tmp / "nginx") as server:
            proxies = {f"{ms} ms": DelayProxy(server.url, ms) for ms in LATENCIES_MS}
            try:
                reps = [one_repetition(r, index_path, {k: p.url for k, p in proxies.items()}, setup, tmp)
                        for r in range(setup.repeats)]
                strategies = {ms: fetch_strategies(index, proxies[f"{ms} ms"].url, tmp / "strategy")
                              for ms in LATENCIES_MS}
            finally:
                for p in proxies.values():
                    p.close()
        sizes = ttfb_by_size(base, tmp, setup)
    train = index.shard_split == 0
    meta = {"train_samples": len(index.indices("train")), "train_shards": int(train.sum()),
            "split_mib": float(index.shard_bytes[train].sum()) / MIB, "batch_size": cfg.batch_size,
            "workers": cfg.workers, "fetch_threads": cfg.fetch_threads, "repeats": setup.repeats,
            "epochs": setup.epochs, "copies": setup.copies, "small": args.small, "platform": platform.platform(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_start": load_start, "load_end": os.getloadavg()[0]}
    text = report(meta, reps, strategies, sizes)
    print(text)
    write_results(args.out, "remote", text, {"meta": meta, "repetitions": reps, "fetch": strategies,
                                             "ttfb_by_size": {str(k): v for k, v in sizes.items()}}, args.small)


if __name__ == "__main__":
    main()
