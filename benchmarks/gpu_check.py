"""GPU check at the paper's sizes: does the data path keep the training step fed? (issue 14)

    python benchmarks/gpu_check.py            # on a CUDA machine, under 5 minutes; benchmarks/results/gpu_check.{md,json}
    python benchmarks/gpu_check.py --small    # CPU smoke mode (CI): tiny sizes, every path that runs without CUDA

What it measures, at ResNet-18 width 64 (both encoders, concat fusion), batch 64, 3 frames at 224 px, the
default log-mel (64 bins x 3 s), a baseline training step (fused cross-entropy, backward, Adam step):

1. **step alone**: synthetic tensors already on the device (the ceiling any data path can reach), float32
   and bf16 autocast; samples/s and peak GPU memory;
2. **loader + step** (bf16 on CUDA) over generated clips extracted at 224 px (``benchmarks/reader_224.py``'s
   clips): ``cpu decode`` (today's per-sample path: workers decode and transform), ``gpu decode`` (workers
   read JPEG bytes; the batch is decoded with the batched ``decode_jpeg`` on the GPU, one batch ahead on a
   side stream: ``train.gpu_batch``), ``raw frames`` (``features.frame_codec: raw``, no decode); each as
   samples/s and its ratio to the step alone (goal: >= 0.9);
3. **DDP smoke**: a 1-process group (nccl on CUDA, gloo on the CPU) wrapping the model in
   DistributedDataParallel, one step.

Without CUDA (``--small``) the GPU-only cells say so; ``gpu decode`` then decodes the batch on the CPU in the
main process (the same code path, the CPU device). Timing: ``--steps`` timed steps after ``--warmup``
untimed ones, ``torch.cuda.synchronize()`` around the timed span.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: `python benchmarks/gpu_check.py`
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline.shards import IndexReader  # noqa: E402
from reader_224 import make_features  # noqa: E402
from _results import write_results  # noqa: E402
from train.data import ShardDataset, estimate_mel_stats, make_loader, to_inputs  # noqa: E402
from train.fusions import build_model  # noqa: E402
from train.gpu_batch import BatchDecoder, ShardBytesDataset, make_bytes_loader, prefetch  # noqa: E402
from train.inference import autocast  # noqa: E402
from train.sampler import RemixBatchSampler  # noqa: E402

MODS = ["audio", "video"]
PATHS = ("cpu decode", "gpu decode", "raw frames")  # loader + step cells: (codec, reader)
PATH_SPEC = {"cpu decode": ("jpeg", "per-sample"), "gpu decode": ("jpeg", "byte-batch"), "raw frames": ("raw", "byte-batch")}
GOAL = 0.9  # loader + step over step alone


def make_step(model: torch.nn.Module, device: torch.device, amp: str):
    """One training step on a batch of inputs: forward under autocast, fused cross-entropy, backward, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=5e-5, betas=(0.9, 0.999))

    def step(inputs: dict, labels: torch.Tensor) -> None:
        with autocast(device, amp):
            loss = F.cross_entropy(model(inputs).fused.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(batches, step, device: torch.device, steps: int, warmup: int) -> float:
    """Samples/s of ``step`` over ``steps`` batches of the iterator ``batches`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step(*next(batches))
    sync(device)
    start, samples = time.perf_counter(), 0
    for _ in range(steps):
        inputs, labels = next(batches)
        step(inputs, labels)
        samples += len(labels)
    sync(device)
    return samples / (time.perf_counter() - start)


def peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def step_alone(shapes: dict, num_classes: int, args, device: torch.device, amp: str) -> dict:
    """Synthetic inputs on the device, reused every step: the step's own rate."""
    reset_peak(device)
    model = build_model(MODS, num_classes, args.width, "concat").to(device).train()
    inputs = {m: torch.randn(args.batch_size, *shapes[m], device=device) for m in MODS}
    labels = torch.randint(0, num_classes, (args.batch_size,), device=device)
    rate = timed(iter(lambda: (inputs, labels), None), make_step(model, device, amp), device, args.steps, args.warmup)
    return {"samples_per_s": rate, "peak_gib": peak_memory(device)}


def epochs_of(loader, sampler, decode, device: torch.device):
    """(inputs, labels) on the device, epoch after epoch (the sampler's epoch advanced each time)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        batches = prefetch(loader, decode, device) if decode is not None else loader
        for batch in batches:
            yield to_inputs(batch, MODS, device), batch["label"].to(device, non_blocking=True)
        epoch += 1


def loader_and_step(index: IndexReader, path: str, args, device: torch.device, amp: str) -> dict:
    """The full data path of ``path`` feeding the step."""
    reset_peak(device)
    mean, std = estimate_mel_stats(index, "train")
    kw = dict(train=True, frame_size=args.frame_size, mel_mean=mean, mel_std=std, seed=0)
    per_sample = PATH_SPEC[path][1] == "per-sample"
    ds = ShardDataset(index, "train", **kw) if per_sample else ShardBytesDataset(index, "train", **kw)
    sampler = RemixBatchSampler(ds.shard_ids(), batch_size=args.batch_size, drop_last=True, seed=0)
    sampler.set_assignment(None, len(MODS))
    # every sample repeated (fresh augmentation per copy) so that one epoch holds every timed batch: no epoch
    # boundary (a drained worker pipeline) inside the timed span, as in a real epoch of ~100 batches or more
    sampler.set_repeats(np.full(len(ds), math.ceil((args.steps + args.warmup + 1) * args.batch_size / len(ds)),
                                dtype=np.int64))
    make = make_loader if per_sample else make_bytes_loader
    loader = make(ds, sampler, workers=args.workers)
    decode = None if per_sample else BatchDecoder.of(ds)
    model = build_model(MODS, len(index.class_names), args.width, "concat").to(device).train()
    rate = timed(epochs_of(loader, sampler, decode, device), make_step(model, device, amp), device, args.steps,
                 args.warmup)
    return {"samples_per_s": rate, "peak_gib": peak_memory(device), "workers": args.workers}


@contextlib.contextmanager
def one_process_group(backend: str):
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def ddp_smoke(shapes: dict, num_classes: int, args, device: torch.device, amp: str) -> dict:
    """One DDP step in a 1-process group: the backend starts, all-reduces the gradients, the step runs."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    start = time.perf_counter()
    try:
        with one_process_group(backend):
            model = build_model(MODS, num_classes, args.width, "concat").to(device).train()
            ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda"
                                                            else None)
            inputs = {m: torch.randn(args.batch_size, *shapes[m], device=device) for m in MODS}
            labels = torch.randint(0, num_classes, (args.batch_size,), device=device)
            make_step(ddp, device, amp)(inputs, labels)
            sync(device)
        return {"backend": backend, "ok": True, "seconds": time.perf_counter() - start}
    except Exception as e:  # noqa: BLE001 - the check reports what failed instead of stopping
        return {"backend": backend, "ok": False, "error": f"{type(e).__name__}: {e}"}


def input_shapes(index: IndexReader, frame_size: int) -> dict:
    """Per-sample input shapes of the encoders, from one real sample of the extracted features."""
    mean, std = estimate_mel_stats(index, "train")
    item = ShardDataset(index, "train", train=False, frame_size=frame_size, mel_mean=mean, mel_std=std)[0]
    return {"audio": tuple(item["mel"].shape), "video": tuple(item["frames"].shape)}


def measure(index_paths: dict[str, Path], args, device: torch.device) -> dict:
    """Every cell of the check (see the module docstring)."""
    indexes = {c: IndexReader(p) for c, p in index_paths.items()}
    shapes, classes = input_shapes(indexes["jpeg"], args.frame_size), len(indexes["jpeg"].class_names)
    cuda = device.type == "cuda"
    amp = "bf16" if cuda else "none"
    res = {"step": {"float32": step_alone(shapes, classes, args, device, "none")}}
    res["step"]["bf16"] = step_alone(shapes, classes, args, device, "bf16") if cuda else None  # CPU: no autocast
    base = res["step"][amp if cuda else "float32"]["samples_per_s"]
    res["loader"] = {}
    for path in PATHS:
        cell = loader_and_step(indexes[PATH_SPEC[path][0]], path, args, device, amp)
        res["loader"][path] = {**cell, "vs_step": cell["samples_per_s"] / base}
    res["ddp"] = ddp_smoke(shapes, classes, args, device, amp)
    res["shapes"] = {m: list(s) for m, s in shapes.items()}
    return res


def _mem(cell: dict) -> str:
    return f"{cell['peak_gib']:.2f}" if cell.get("peak_gib") is not None else "—"


def report(meta: dict, res: dict) -> str:
    dtype = "bf16" if meta["cuda"] else "float32"
    lines = [f"## GPU check: {meta['device']}, {meta['date']}", "",
             f"ResNet-18 width {meta['width']} x 2 encoders, concat fusion, batch {meta['batch_size']}, inputs "
             f"{res['shapes']}, Adam; {meta['steps']} timed steps after {meta['warmup']}; {meta['cpus']} CPUs, "
             f"torch {meta['torch']}, torchvision {meta['torchvision']}; loader workers {meta['workers']}.", "",
             "| cell | samples/s | / step alone | peak GiB |", "|---|---:|---:|---:|"]
    for dt in ("float32", "bf16"):
        cell = res["step"][dt]
        lines.append(f"| step alone, {dt} | " + (f"{cell['samples_per_s']:.1f} | — | {_mem(cell)} |" if cell
                                                 else "not measured (no CUDA) | — | — |"))
    for path, cell in res["loader"].items():
        ok = "" if cell["vs_step"] >= GOAL else " (below the goal)"
        lines.append(f"| loader + step, {path}, {dtype} | {cell['samples_per_s']:.1f} | {cell['vs_step']:.2f}{ok} | "
                     f"{_mem(cell)} |")
    ddp = res["ddp"]
    lines += ["", f"DDP smoke ({ddp['backend']}, 1 process): " + (f"ok in {ddp['seconds']:.1f} s" if ddp["ok"]
                                                                  else f"FAILED: {ddp['error']}"),
              "", f"Goal: loader + step >= {GOAL} x step alone. "
              + ("" if meta["cuda"] else "No CUDA here: `gpu decode` decoded on the CPU in the main process; "
                 "every GPU figure: not measured.")]
    return "\n".join(lines)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="CPU smoke mode: width 8, batch 4, 3 steps, few clips")
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64: the paper's)")
    ap.add_argument("--batch-size", type=int, default=64, help="samples per step (the paper's 64)")
    ap.add_argument("--frame-size", type=int, default=224, help="square crop side (px)")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per cell")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (cudnn autotune, workers start)")
    ap.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)), help="loader workers")
    ap.add_argument("--clips-per-class", type=int, default=48, help="generated clips per class (3 classes)")
    ap.add_argument("--out", default="benchmarks/results", help="folder for gpu_check.md / .json")
    args = ap.parse_args()
    if args.small:
        args.width, args.batch_size, args.steps, args.warmup, args.clips_per_class = 8, 4, 3, 1, 4
        args.workers = min(args.workers, 1)
    return args


def main() -> None:
    args = _args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = make_features(Path(tmp), args.clips_per_class)
        print(f"features: {time.perf_counter() - t0:.0f} s", flush=True)
        res = measure(paths, args, device)
    import torchvision

    meta = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})",
            "cuda": device.type == "cuda", "date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "width": args.width,
            "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "workers": args.workers,
            "small": args.small}
    text = report(meta, res)
    print(text)
    write_results(args.out, "gpu_check", text, {"meta": meta, "results": res}, args.small)


if __name__ == "__main__":
    main()
