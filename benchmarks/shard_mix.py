"""Shards that mix: actors per batch and reader throughput, clips in manifest order against a seeded order, by window.

    python benchmarks/shard_mix.py            # ~3 minutes; writes benchmarks/results/shard_mix.md + .json
    python benchmarks/shard_mix.py --small    # smoke test: fewer clips, 1 repetition

Four layouts of one split, the first today's before this change:

- before: clips in manifest order (sorted by clip id: CREMA-D's ids start with the actor), shards
  cut from it, the sampler's ``shuffle_window`` 1 (each shard shuffled on its own);
- seeded order (``pipeline.extract.clip_order`` with ``base.seed``), window 1;
- seeded order, window 4 (the samples of 4 shards shuffled together);
- seeded order, window 0: a full shuffle of the split every epoch (the official code's
  ``DataLoader(shuffle=True)``).

Mixing, on the real CREMA-D layout without its media: the standard lists (``presets/cremad_split``,
6,698 train / 744 test clips, 91 actors) as empty placeholder files, prepared as the ``cremad_paper``
preset prepares them (``prepare.val_fraction`` of train carved out as val, group-disjoint,
``base.seed``), the train split cut into shards of ``features.shard_size`` clips. Per layout, over
``--mix-epochs`` epochs of ``RemixBatchSampler`` at batch 64 (the paper's, drop_last: full batches
only): the mean number of distinct actors (the manifest's ``group``) and of distinct shards per batch,
with no assignment (the batches of the baseline and of the warm-up) and with a seeded assignment of
half the samples to each of 2 modalities (remix batches, order sequential); and the mean number of
distinct clips a clip shares a batch with over those epochs (window 1 keeps them among its shard's).
Reference: the expected number of distinct actors in 64 clips drawn uniformly without replacement.

Throughput, on generated CREMA-D-layout clips (``pipeline.synth``, 91 actors, small frames), extracted
twice by the project's extraction (manifest order and seeded order, shards of ``--shard-size``):
the training split read by the trainer's reader (``ShardDataset`` + ``make_loader``, train transform,
the trainer's batch size and order, a seeded 2-modality assignment) with each layout's sampler, at
0 and 2 DataLoader workers, one torch thread per process; and "bytes only": every member of every
sample read in the sampler's order in this process, no decode (the seek pattern alone, 10x the
epochs). A repetition times ``--read-epochs`` epochs of each layout in a rotating order; samples/s
median (min-max) over the repetitions, and the ratio to "before" taken within each repetition. Files
warm in the page cache (shared machine: not dropped; each layout read once before timing): this
measures the sampler and seek pattern on a local disk, not a cold or remote read.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.datasets import prepare_dataset
from pipeline.extract import extract, plan_shards
from pipeline.features import FeatureConfig
from pipeline.manifest import ClipRecord, write_classes, write_manifest
from pipeline.params import load_params
from pipeline.shards import IndexReader
from pipeline.synth import SynthConfig, generate
from train.config import TrainConfig
from train.data import ShardDataset, estimate_mel_stats, make_loader
from train.sampler import RemixBatchSampler

from loader import fmt, summary, time_in_turn  # benchmarks/loader.py: this script's folder on sys.path
from _results import write_results  # benchmarks/_results.py

# (name, seeded clip order, shuffle_window); the first is the baseline of every ratio
LAYOUTS = (("before: manifest order, window 1", False, 1), ("seeded order, window 1", True, 1),
           ("seeded order, window 4", True, 4), ("seeded order, full shuffle (window 0)", True, 0))
MIX_BATCH = 64  # the paper's batch size
CREMAD_SPLIT = Path(__file__).resolve().parents[1] / "presets" / "cremad_split"


# -- mixing (metadata only) -----------------------------------------------------------------------

def cremad_records(tmp: Path, seed: int, val_fraction: float) -> list[ClipRecord]:
    """The standard CREMA-D lists prepared as the cremad_paper preset does, over empty placeholder files."""
    for sub, ext in (("VideoFlash", "flv"), ("AudioWAV", "wav")):
        (tmp / sub).mkdir(parents=True)
        for name in ("train", "test"):
            with open(CREMAD_SPLIT / f"{name}.csv", encoding="utf-8-sig") as f:
                for row in csv.reader(f):
                    (tmp / sub / f"{row[0]}.{ext}").touch()
    records, _ = prepare_dataset(dataset="cremad", root=str(tmp), split_file=str(CREMAD_SPLIT), ratios=[0.6, 0.2, 0.2],
                                 val_fraction=val_fraction, group_disjoint=True, seed=seed)
    return records


def split_layout(records: list[ClipRecord], split: str, shard_size: int, shuffle_seed: int | None):
    """([N] shard number, [N] group) of the split's clips in the order an index lists them (shard, position)."""
    plans = [p for p in plan_shards(records, shard_size, shuffle_seed) if p.split == split]
    shard = np.concatenate([np.full(len(p.records), p.number) for p in plans])
    group = np.array([r.group for p in plans for r in p.records])
    return shard, group


def expected_distinct(group: np.ndarray, k: int) -> float:
    """Expected distinct groups among ``k`` samples drawn uniformly without replacement: the sum over groups of
    1 - P(none of the group's s samples drawn), P = prod_j (n - s - j) / (n - j), j < k."""
    n, j = group.size, np.arange(k)
    _, sizes = np.unique(group, return_counts=True)
    return float(sum(1 - np.prod(np.clip(n - s - j, 0, None) / (n - j)) for s in sizes))


def batch_mix(shard: np.ndarray, group: np.ndarray, *, window: int, seed: int, epochs: int, remix: bool,
              batch: int) -> dict[str, float]:
    """Mean distinct groups and shards per (full) global batch of ``batch`` over ``epochs`` epochs, and the mean
    number of distinct batch-mates of a sample over those epochs (a window of 1 keeps them among its shard's)."""
    s = RemixBatchSampler(shard, batch_size=batch, drop_last=True, seed=seed, order="sequential",
                          shuffle_window=window)
    if remix:
        s.set_assignment(np.random.default_rng([seed, 7]).permutation(shard.size) % 2, 2)
    groups, shards = [], []
    mates = np.zeros((shard.size, shard.size), bool)  # [N, N] ever in one batch
    for epoch in range(epochs):
        s.set_epoch(epoch)
        for b in s.global_batches():
            i = np.array([x for x, _ in b])
            groups.append(len(np.unique(group[i])))
            shards.append(len(np.unique(shard[i])))
            mates[np.ix_(i, i)] = True
    seen = mates.any(axis=1)  # samples in some full batch
    return {"groups": float(np.mean(groups)), "groups_min": int(min(groups)), "shards": float(np.mean(shards)),
            "mates": float(mates[seen].sum(axis=1).mean() - 1), "batches": len(groups)}


def mixing(records: list[ClipRecord], *, split: str, shard_size: int, seed: int, epochs: int, batch: int) -> dict:
    """Per layout, :func:`batch_mix` without and with a 2-modality assignment; the split's counts."""
    out = {}
    for name, seeded, window in LAYOUTS:
        shard, group = split_layout(records, split, shard_size, seed if seeded else None)
        out[name] = {kind: batch_mix(shard, group, window=window, seed=seed, epochs=epochs, remix=kind == "remix",
                                     batch=batch) for kind in ("multimodal", "remix")}
    shard, group = split_layout(records, split, shard_size, seed)
    meta = {"clips": int(shard.size), "groups": int(np.unique(group).size), "shards": int(np.unique(shard).size),
            "batch": batch, "expected_random": expected_distinct(group, batch)}
    return {"meta": meta, "layouts": out}


# -- throughput (generated clips, the trainer's reader) --------------------------------------------

def generated_features(tmp: Path, *, clips_per_class: int, shard_size: int, seed: int) -> tuple[dict, list]:
    """Generated CREMA-D-layout clips (91 actors) extracted in manifest order and in seeded order: {seeded: index}."""
    generate(out_dir=tmp / "raw", seed=seed, config=SynthConfig(
        layout="cremad", num_classes=6, clips_per_class=clips_per_class, actors=91, width=64, height=48,
        min_duration_s=1.0, max_duration_s=1.5, fps=10, clutter=2, workers=2))
    records, classes = prepare_dataset(dataset="cremad", root=str(tmp / "raw"), split_file=None, ratios=[0.6, 0.2, 0.2],
                                       val_fraction=0.1, group_disjoint=True, seed=seed)
    write_manifest(tmp / "manifest.csv", records)
    write_classes(tmp / "classes.txt", classes)
    indexes = {}
    for seeded in (False, True):
        out = tmp / f"features-{'seeded' if seeded else 'manifest'}"
        extract(manifest=tmp / "manifest.csv", classes=tmp / "classes.txt", out_dir=out, config=FeatureConfig(short_side=32),
                shard_size=shard_size, workers=2, max_reject_fraction=0.05, shuffle_seed=seed if seeded else None)
        indexes[seeded] = IndexReader(out / "index.h5")
    return indexes, records


def time_layouts(indexes: dict, cfg: TrainConfig, *, workers: int, seed: int, repeats: int, epochs: int) -> list[dict]:
    """Per repetition, samples/s of each layout over ``epochs`` epochs."""
    mel_mean, mel_std = estimate_mel_stats(indexes[False], "train")  # the same clips: one normalisation for both
    loaders, samplers = {}, {}
    for name, seeded, window in LAYOUTS:
        ds = ShardDataset(indexes[seeded], "train", train=True, frame_size=cfg.frame_size, mel_mean=mel_mean,
                          mel_std=mel_std, seed=seed)
        s = RemixBatchSampler(ds.shard_ids(), batch_size=cfg.batch_size, drop_last=False, seed=seed, order=cfg.order,
                              shuffle_window=window)
        s.set_assignment(np.random.default_rng(seed).integers(0, 2, len(ds)), 2)
        samplers[name], loaders[name] = s, make_loader(ds, s, workers=workers)
    return time_in_turn(loaders, samplers, [name for name, *_ in LAYOUTS], repeats=repeats, epochs=epochs)


def time_bytes(indexes: dict, cfg: TrainConfig, *, seed: int, repeats: int, epochs: int) -> list[dict]:
    """Per repetition, samples/s of reading every member's bytes of each batch in the sampler's order, in this
    process, with no decode: the seek pattern alone, which is all a window changes."""
    plans = {}
    for name, seeded, window in LAYOUTS:
        index = indexes[seeded]
        rows = index.indices("train")
        s = RemixBatchSampler(index.shard[rows], batch_size=cfg.batch_size, drop_last=False, seed=seed,
                              order=cfg.order, shuffle_window=window)
        s.set_assignment(np.random.default_rng(seed).integers(0, 2, rows.size), 2)
        plans[name] = (index, rows, s)
    names = [name for name, *_ in LAYOUTS]
    reps = []
    for rep in range(repeats + 1):  # repetition 0 warms the page cache, untimed
        rates = {}
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            index, rows, s = plans[name]
            start, n = time.perf_counter(), 0
            for e in range(epochs):
                s.set_epoch(rep * epochs + e)
                for b in s:
                    for i, *_ in b:
                        index.read_sample(int(rows[i]))
                    n += len(b)
            rates[name] = n / (time.perf_counter() - start)
        reps.append(rates)
    return reps[1:]


# -- report ---------------------------------------------------------------------------------------

def ratios(reps: list[dict]) -> dict:
    """Per layout: samples/s over the repetitions, and the ratio to the first layout's within each repetition."""
    base = LAYOUTS[0][0]
    out = {name: summary([x[name] for x in reps]) for name, *_ in LAYOUTS}
    return out | {f"{name}/before": summary([x[name] / x[base] for x in reps]) for name, *_ in LAYOUTS}


def report(meta: dict, mix: dict, gen_mix: dict, reader: dict) -> str:
    m = mix["meta"]
    lines = [f"## Shards that mix: {meta['date']}, {meta['platform']}, {meta['cpus']} CPUs, torch {meta['torch']}, "
             f"niceness {meta['nice']}, load average {meta['load_start']:.1f} at the start, {meta['load_end']:.1f} at the end",
             "", f"### Actors per batch of {MIX_BATCH}, CREMA-D standard lists (train split: {m['clips']} clips, "
             f"{m['groups']} actors, {m['shards']} shards of {meta['shard_size']}), {meta['mix_epochs']} epochs", "",
             f"Mean distinct actors (min) and shards per full batch; batch-mates: distinct other clips a clip shared "
             f"a batch with over the {meta['mix_epochs']} epochs (mean). Uniform random 64 clips of the split: "
             f"{m['expected_random']:.1f} actors expected.", "",
             "| layout | actors, no assignment | shards, no assignment | batch-mates over the epochs, no assignment "
             "| actors, remix (2 modalities) | shards, remix |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in mix["layouts"].items():
        a, b = r["multimodal"], r["remix"]
        lines.append(f"| {name} | {a['groups']:.1f} ({a['groups_min']}) | {a['shards']:.2f} | {a['mates']:.0f} | "
                     f"{b['groups']:.1f} ({b['groups_min']}) | {b['shards']:.2f} |")
    g = gen_mix["meta"]
    lines += ["", f"### Reader throughput, generated CREMA-D layout (train split: {g['clips']} clips, {g['groups']} "
              f"actors, {g['shards']} shards of {meta['gen_shard_size']}), batch {meta['batch_size']}, frame_size "
              f"{meta['frame_size']}, {meta['repeats']} repetition(s) of {meta['read_epochs']} epoch(s)", "",
              "samples/s median (min-max); ratio to 'before' within each repetition. bytes only: every member of "
              f"each batch read in the sampler's order, no decode (the seek pattern alone; {10 * meta['read_epochs']} "
              "epochs per repetition); n workers: the trainer's "
              "reader (decode and train transform). Actors per batch of "
              f"{g['batch']} on this set (no assignment) for reference: uniform random {g['expected_random']:.1f}.", "",
              "| layout | actors / batch | " + " | ".join(f"{w}: samples/s | {w} / before" for w in reader) + " |",
              "|---|---:|" + "---:|---:|" * len(reader)]
    for name, *_ in LAYOUTS:
        cells = [f"{fmt(r[name])} | {fmt(r[name + '/before'], 2)}" for r in reader.values()]
        lines.append(f"| {name} | {gen_mix['layouts'][name]['multimodal']['groups']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="fewer clips, 1 repetition (smoke test)")
    ap.add_argument("--clips-per-class", type=int, default=100,
                    help="generated clips per class (6 classes, round-robin over 91 actors)")
    ap.add_argument("--shard-size", type=int, default=32, help="clips per shard of the generated set")
    ap.add_argument("--repeats", type=int, default=7, help="timed repetitions per worker count")
    ap.add_argument("--read-epochs", type=int, default=3, help="epochs per repetition and layout")
    ap.add_argument("--mix-epochs", type=int, default=10, help="epochs of the mixing count")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    ap.add_argument("--out", default="benchmarks/results", help="folder for shard_mix.md and shard_mix.json")
    args = ap.parse_args()
    params = load_params()
    cfg = TrainConfig.from_params(params["train"])
    seed, shard_size = int(params["base"]["seed"]), int(params["features"]["shard_size"])
    if args.small:
        args.clips_per_class, args.shard_size, args.repeats, args.read_epochs, args.mix_epochs = 16, 8, 1, 1, 2
    load_start = os.getloadavg()[0]
    torch.set_num_threads(1)  # as torch gives each DataLoader worker (benchmarks/loader.py)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mix = mixing(cremad_records(tmp / "cremad", seed, float(params["prepare"]["val_fraction"])), split="train",
                     shard_size=shard_size, seed=seed, epochs=args.mix_epochs, batch=MIX_BATCH)
        indexes, records = generated_features(tmp / "gen", clips_per_class=args.clips_per_class,
                                              shard_size=args.shard_size, seed=seed)
        gen_mix = mixing(records, split="train", shard_size=args.shard_size, seed=seed, epochs=args.mix_epochs,
                         batch=8 if args.small else MIX_BATCH)
        reps = time_bytes(indexes, cfg, seed=seed, repeats=args.repeats, epochs=10 * args.read_epochs)  # fast: more
        reader = {"bytes only": ratios(reps)}
        for w in args.workers:
            reader[f"{w} workers"] = ratios(time_layouts(indexes, cfg, workers=w, seed=seed, repeats=args.repeats,
                                                         epochs=args.read_epochs))
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "nice": os.nice(0),
            "load_start": load_start, "load_end": os.getloadavg()[0], "shard_size": shard_size,
            "gen_shard_size": args.shard_size, "mix_epochs": args.mix_epochs, "batch_size": cfg.batch_size,
            "frame_size": cfg.frame_size, "repeats": args.repeats, "read_epochs": args.read_epochs,
            "clips_per_class": args.clips_per_class, "small": args.small}
    text = report(meta, mix, gen_mix, reader)
    print(text)
    write_results(args.out, "shard_mix", text, {"meta": meta, "mixing_cremad": mix, "mixing_generated": gen_mix,
                                                "reader": reader}, args.small)


if __name__ == "__main__":
    main()
