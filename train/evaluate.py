"""Evaluation of a selected checkpoint on test: accuracies, macro-F1, imbalance ratio, confusion matrix.

``metrics.json`` is strict JSON (:func:`pipeline.fileio.write_json_strict`): a number that is undefined is
``null``, never ``NaN`` or ``Infinity``; ``imbalance_ratio`` is null when a modality's accuracy is at or below
chance (1 / ``num_classes``). ``num_classes`` is the model's, which is the number of classes present in the
prepared dataset (``data/classes.txt``), not the maximum a layout allows.

Every input is checked (checkpoint, index, shards, that both describe the same features and classes) before
anything is written; ``eval/`` is written into a temporary folder that replaces the old one only when complete
(:func:`pipeline.fileio.staged_dir`), then ``metrics.json`` is replaced atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pipeline.fileio import staged_dir, strict_json_value, write_json_strict
from train.checkpoint import dataset_fingerprint
from train.config import TrainConfig
from train import loaders, shard_cache
from train.methods import build_method
from train.fusions import build_model
from train.inference import accuracies, imbalance_ratio, pick_device, predict


PREDICTIONS = "predictions.csv"  # in runs/<method>/eval/: one row per test clip


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean over the model's classes 0..C-1 of each class's F1 = 2 TP / (2 TP + FP + FN).

    This is scikit-learn's ``f1_score(y_true, y_pred, labels=range(C), average="macro", zero_division=0)``: the
    labels given are the model's classes, so a class with no sample and no prediction in the split counts as 0,
    and a class that is in the split but never predicted (or predicted but not in it) counts as 0 as well.
    """
    f1 = []
    for c in range(num_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        denom = np.sum(y_pred == c) + np.sum(y_true == c)
        f1.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1))


def load_checkpoint(path: Path) -> dict:
    """The selected checkpoint written by training, or an error naming it and saying what to run."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train this method first (`dvc repro train@<method>`), or "
                                f"restore the trained model with `dvc checkout`")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file: torch raises several kinds
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err}): "
                         f"retrain (`dvc repro train@<method>`) or restore it (`dvc checkout`)") from None
    missing = [k for k in ("config", "model", "method", "modalities", "class_names", "epoch", "mel_mean", "mel_std")
               if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a checkpoint of this trainer (no {', '.join(missing)}): retrain it")
    return ckpt


def evaluate(*, index_path: str | os.PathLike, run_dir: str | os.PathLike, split: str = "test") -> dict:
    """Metrics of ``run_dir/train/model.pt`` on ``split``: ``run_dir/metrics.json`` and dvclive plots in ``run_dir/eval``."""
    run_dir = Path(run_dir)
    model_path = run_dir / "train" / "model.pt"
    ckpt = load_checkpoint(model_path)
    try:
        cfg = TrainConfig.from_params(ckpt["config"])
    except ValueError as err:
        raise ValueError(f"{model_path}: its training settings do not hold for this avremix ({err}): retrain it "
                         f"(`dvc repro train@<method>`)") from None
    index = shard_cache.open_index(index_path, cfg, shard_cache.cache_dir_of(run_dir / "train"))  # the run's source
    if split not in index.splits or not len(index.indices(split)):
        raise ValueError(f"{index_path} has no {split} samples: nothing to evaluate on")
    index.verify((split,), content=cfg.verify_shards == "sha256")
    fingerprint = dataset_fingerprint(index)
    if ckpt.get("fingerprint", fingerprint) != fingerprint:
        raise ValueError(f"{model_path} was trained on another feature set than {index_path} "
                         f"(fingerprints differ): rerun train")
    if list(index.class_names) != ckpt["class_names"]:
        raise ValueError(f"{model_path} was trained on classes {ckpt['class_names']}, "
                         f"{index_path} has {list(index.class_names)}: rerun train")
    device = pick_device(cfg.device)
    mods, num_classes = ckpt["modalities"], len(index.class_names)
    method = build_method(ckpt["method"], cfg, mods, num_classes, cfg.method_params)
    model = method.prepare_model(build_model(mods, num_classes, cfg.width, cfg.fusion)).to(device)
    model.load_state_dict(ckpt["model"])
    ds = loaders.dataset(index, split, cfg.decode, train=False, mel_mean=ckpt["mel_mean"], mel_std=ckpt["mel_std"],
                         **loaders.frame_settings(cfg))
    loader = loaders.whole_split_loader(ds, batch_size=64, workers=cfg.workers, num_modalities=len(mods), device=device)
    pred = predict(model, loader, mods, device, cfg.unimodal_pred, method=method)
    acc = accuracies(pred, mods)
    y, y_hat = pred["label"], pred["fused"].argmax(1)
    metrics = {"method": ckpt["method"], "epoch": ckpt["epoch"], "split": split, "samples": int(len(y)),
               "num_classes": num_classes, "chance": 1.0 / num_classes,
               **{f"acc_{k}": v for k, v in acc.items()}, "macro_f1": macro_f1(y, y_hat, num_classes),
               "imbalance_ratio": imbalance_ratio(acc, mods, num_classes)}
    names = list(index.class_names)
    rows = [{"key": str(index.keys[r]), "label": names[y[i]], "fused": names[y_hat[i]],
             **{m: names[int(pred[m][i].argmax())] for m in mods}} for i, r in enumerate(ds.rows)]
    write_outputs(run_dir, metrics, rows)
    return strict_json_value(metrics)


def write_outputs(run_dir: Path, metrics: dict, rows: list[dict[str, str]]) -> None:
    """``run_dir/eval``: dvclive's confusion matrix and ``predictions.csv`` (one row per clip: key, label, the
    fused and each modality's predicted class), replaced only when complete; then ``run_dir/metrics.json``.

    The per-clip predictions are what paired comparisons between runs on the same test clips need
    (:mod:`experiments.stats`: bootstrap intervals over clips)."""
    import csv

    from dvclive import Live

    with staged_dir(run_dir / "eval") as tmp:
        with Live(str(tmp), save_dvc_exp=False, dvcyaml=None) as live:
            live.log_sklearn_plot("confusion_matrix", [r["label"] for r in rows], [r["fused"] for r in rows],
                                  name="confusion_matrix.json")
        with open(tmp / PREDICTIONS, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    write_json_strict(run_dir / "metrics.json", metrics)
