"""Reader throughput at 224 px: JPEG against raw frames, per-sample decode against the byte-batch path, on the CPU.

    python benchmarks/reader_224.py            # ~1-2 minutes; writes benchmarks/results/reader_224.md + .json
    python benchmarks/reader_224.py --small    # smoke test: fewer clips, 1 repetition

Generated CREMA-D-layout clips (320x240, `pipeline.synth`) are extracted twice with the project's
extraction at `short_side: 224`, once per `features.frame_codec` (jpeg at quality 90, raw uint8 .npy).
Then the training split is read with the trainer's train transform (random resized crop 224 + flip,
ImageNet normalisation) by:

- per-sample: `train.data.ShardDataset` + `make_loader` (decode and transform in the DataLoader worker,
  or in this process with 0 workers);
- byte-batch: `train.gpu_batch.ShardBytesDataset` + `make_bytes_loader` (workers read bytes only) and
  `decode_batch(batch, decoder, "cpu")` in this process (the CPU fallback of the GPU path);
- bytes only: the byte-batch loader without `decode_batch`: what the workers of the GPU path must
  supply (the GPU's decode is not measured here: no GPU on this machine).

each at 0 workers (in-process) and 1 worker, one torch thread per process. A repetition times every
(codec, reader, workers) cell in a rotating order; median (min-max) over the repetitions, and the
ratio to the JPEG per-sample cell at the same worker count, taken within each repetition.

Workers needed for a step rate of N samples/s: N / r, rounded up, where r is a path's samples/s with
1 worker (the work a worker does: decode + transform on the per-sample path; seeks + reads on the
byte path, whose decode is the main process's or the GPU's), assuming one free core per worker.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from pipeline.shards import IndexReader
from train.data import ShardDataset, estimate_mel_stats, make_loader
from train.gpu_batch import BatchDecoder, ShardBytesDataset, make_bytes_loader
from train.sampler import RemixBatchSampler

from loader import fmt, summary  # benchmarks/loader.py: median (min-max) cells, this script's folder on sys.path
from _results import write_results  # benchmarks/_results.py

CODECS = ("jpeg", "raw")
READERS = ("per-sample", "byte-batch", "bytes only")
STEP_RATES = (100, 500, 1000, 2000, 5000)  # samples/s of a training step, for the workers-needed table


def make_features(tmp: Path, clips_per_class: int) -> dict[str, Path]:
    """Generated clips extracted at 224 px with each frame codec: codec -> index.h5."""
    from pipeline.datasets import prepare_dataset
    from pipeline.extract import extract
    from pipeline.features import FeatureConfig
    from pipeline.manifest import write_classes, write_manifest
    from pipeline.synth import SynthConfig, generate

    generate(out_dir=tmp / "raw", seed=0, config=SynthConfig(num_classes=3, clips_per_class=clips_per_class, actors=4,
                                                             width=320, height=240, min_duration_s=1.0,
                                                             max_duration_s=2.0, workers=1))
    records, classes = prepare_dataset(dataset="cremad", root=str(tmp / "raw"), split_file=None,
                                       ratios=[0.8, 0.1, 0.1], val_fraction=0.1, group_disjoint=False, seed=0)
    write_manifest(tmp / "manifest.csv", records)
    write_classes(tmp / "classes.txt", classes)
    out = {}
    for codec in CODECS:
        extract(manifest=tmp / "manifest.csv", classes=tmp / "classes.txt", out_dir=tmp / codec,
                config=FeatureConfig(short_side=224, jpeg_quality=90, frame_codec=codec), shard_size=16, workers=1,
                max_reject_fraction=0.05)
        out[codec] = tmp / codec / "index.h5"
    return out


def sizes(index: IndexReader) -> dict:
    """Bytes per sample: whole shards (tar headers included) and the frame members alone."""
    frames = [index.members.index(m) for m in index.frame_members]
    return {"shard_bytes_per_sample": float(index.shard_bytes.sum() / len(index)),
            "frame_bytes_per_sample": float(index.size[:, frames].sum() / len(index))}


class Cell:
    """One (codec, reader, workers) loader, kept alive (persistent workers) across the repetitions."""

    def __init__(self, index: IndexReader, reader: str, workers: int, batch_size: int, seed: int):
        mean, std = estimate_mel_stats(index, "train")
        kw = dict(train=True, frame_size=224, mel_mean=mean, mel_std=std, seed=seed)
        per_sample = reader == "per-sample"
        ds = ShardDataset(index, "train", **kw) if per_sample else ShardBytesDataset(index, "train", **kw)
        self.sampler = RemixBatchSampler(ds.shard_ids(), batch_size=batch_size, drop_last=False, seed=seed)
        self.sampler.set_assignment(None, 2)
        make = make_loader if per_sample else make_bytes_loader
        self.loader = make(ds, self.sampler, workers=workers, pin_memory=False)
        self.decode = BatchDecoder.of(ds) if reader == "byte-batch" else None
        self.samples, self.epoch = len(ds), 0
        self.run(1)  # warm: workers started, files in the page cache

    def run(self, epochs: int) -> float:
        """Samples/s over ``epochs`` epochs."""
        start = time.perf_counter()
        for _ in range(epochs):
            self.epoch += 1
            self.sampler.set_epoch(self.epoch)
            for batch in self.loader:
                if self.decode is not None:
                    self.decode(batch, "cpu")
        return epochs * self.samples / (time.perf_counter() - start)


def time_cells(cells: dict, repeats: int, epochs: int) -> list[dict]:
    """Per repetition: cell -> samples/s, the cells in a rotating order."""
    names, reps = list(cells), []
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        reps.append({name: cells[name].run(epochs) for name in order})
    return reps


def results(reps: list[dict], workers: list[int]) -> dict:
    """cell name -> samples/s summary and ratio to the JPEG per-sample cell at the same worker count."""
    out = {}
    for name in reps[0]:
        w = name.split("|")[2]
        base = f"jpeg|per-sample|{w}"
        out[name] = {"samples_per_s": summary([r[name] for r in reps]),
                     "vs_jpeg_per_sample": summary([r[name] / r[base] for r in reps])}
    return out


def workers_needed(res: dict) -> dict:
    """Path -> step rate -> workers, from the 1-worker medians (N / r rounded up)."""
    out = {}
    for codec in CODECS:
        for reader in ("per-sample", "bytes only"):
            r = res[f"{codec}|{reader}|1"]["samples_per_s"]["median"]
            out[f"{codec}|{reader}"] = {"per_worker": r, **{str(n): math.ceil(n / r) for n in STEP_RATES}}
    return out


def report(meta: dict, size: dict, res: dict, need: dict) -> str:
    lines = [f"## reader at 224 px: {meta['samples']} training samples x {meta['num_frames']} frames, batch "
             f"{meta['batch_size']}, train transform (random resized crop 224 + flip), {meta['repeats']} repetition(s) "
             f"of {meta['epochs']} epoch(s)", "",
             f"{meta['platform']}, {meta['cpus']} CPUs, python {meta['python']}, torch {meta['torch']}, "
             f"torchvision {meta['torchvision']}, {meta['date']}; torch threads 1 per process; load average "
             f"{meta['load_start']:.1f} at the start, {meta['load_end']:.1f} at the end; niceness {meta['nice']}; "
             f"GPU: {meta['gpu']}", "",
             "| codec | shard bytes / sample | frame bytes / sample | vs jpeg |", "|---|---:|---:|---:|"]
    for codec in CODECS:
        s = size[codec]
        lines.append(f"| {codec} | {s['shard_bytes_per_sample']:,.0f} | {s['frame_bytes_per_sample']:,.0f} | "
                     f"{s['shard_bytes_per_sample'] / size['jpeg']['shard_bytes_per_sample']:.1f}x |")
    lines += ["", "samples/s, median (min–max); ratio to jpeg per-sample at the same workers, within each repetition. "
              "byte-batch = workers read bytes, `decode_batch` on the CPU in the main process; bytes only = the "
              "byte loader without decoding (what the GPU path's workers supply).", "",
              "| codec | reader | workers | samples/s | / jpeg per-sample |", "|---|---|---:|---:|---:|"]
    for name, r in res.items():
        codec, reader, w = name.split("|")
        lines.append(f"| {codec} | {reader} | {w} | {fmt(r['samples_per_s'])} | {fmt(r['vs_jpeg_per_sample'], 2)} |")
    lines += ["", "Workers needed for a training step rate of N samples/s: ceil(N / r), r = the path's samples/s with "
              "1 worker (one free core per worker; the GPU decode of the bytes-only paths: not measured).", "",
              "| path | r (samples/s per worker) | " + " | ".join(f"N = {n}" for n in STEP_RATES) + " |",
              "|---|---:|" + "---:|" * len(STEP_RATES)]
    for path, d in need.items():
        lines.append(f"| {path.replace('|', ', ')} | {d['per_worker']:.0f} | "
                     + " | ".join(str(d[str(n)]) for n in STEP_RATES) + " |")
    return "\n".join(lines)


def measure(indexes: dict[str, IndexReader], args) -> tuple[dict, int]:
    cells = {f"{c}|{r}|{w}": Cell(indexes[c], r, w, args.batch_size, seed=0)
             for w in args.workers for c in CODECS for r in READERS}
    reps = time_cells(cells, args.repeats, args.epochs)
    samples = next(iter(cells.values())).samples
    for cell in cells.values():
        del cell.loader
    return results(reps, args.workers), samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="fewer clips, 1 repetition (smoke test)")
    ap.add_argument("--clips-per-class", type=int, default=16, help="generated clips per class (3 classes)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions")
    ap.add_argument("--epochs", type=int, default=4, help="epochs of the training split per repetition and cell")
    ap.add_argument("--batch-size", type=int, default=16, help="samples per batch")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="DataLoader worker counts")
    ap.add_argument("--out", default="benchmarks/results", help="folder for reader_224.md and reader_224.json")
    args = ap.parse_args()
    if args.small:
        args.clips_per_class, args.repeats, args.epochs = 4, 1, 1
    load_start = os.getloadavg()[0]
    torch.set_num_threads(1)  # as torch gives each DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_features(Path(tmp), args.clips_per_class)
        indexes = {c: IndexReader(p) for c, p in paths.items()}
        size = {c: sizes(i) for c, i in indexes.items()}
        res, samples = measure(indexes, args)
    import torchvision

    meta = {"samples": samples, "num_frames": len(indexes["jpeg"].frame_members), "batch_size": args.batch_size,
            "repeats": args.repeats, "epochs": args.epochs, "workers": args.workers, "short_side": 224,
            "frame_size": 224, "jpeg_quality": 90, "platform": platform.platform(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "load_start": load_start,
            "load_end": os.getloadavg()[0], "nice": os.nice(0),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (GPU decode not measured)"}
    need = workers_needed(res)
    text = report(meta, size, res, need)
    print(text)
    write_results(args.out, "reader_224", text, {"meta": meta, "bytes": size, "reader": res, "workers_needed": need},
                  args.small)


if __name__ == "__main__":
    main()
