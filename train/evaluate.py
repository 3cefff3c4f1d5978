"""Evaluation of a selected checkpoint on test: accuracies, macro-F1, imbalance ratio, confusion matrix."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from pipeline.fileio import atomic_path
from pipeline.shards import IndexReader
from train.checkpoint import dataset_fingerprint
from train.config import TrainConfig
from train.data import ShardDataset, multimodal_loader
from train.methods import build_method
from train.fusions import build_model
from train.inference import accuracies, imbalance_ratio, pick_device, predict


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean over classes of F1 (a class absent from both true and predicted labels counts as 0)."""
    f1 = []
    for c in range(num_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        denom = np.sum(y_pred == c) + np.sum(y_true == c)
        f1.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1))


def evaluate(*, index_path: str | os.PathLike, run_dir: str | os.PathLike, split: str = "test") -> dict:
    """Metrics of ``run_dir/train/model.pt`` on ``split``: ``run_dir/metrics.json`` and dvclive plots in ``run_dir/eval``."""
    from dvclive import Live

    run_dir = Path(run_dir)
    ckpt = torch.load(run_dir / "train" / "model.pt", map_location="cpu", weights_only=False)
    cfg = TrainConfig(**ckpt["config"])
    index = IndexReader(index_path)
    index.verify((split,), content=cfg.verify_shards == "sha256")
    if ckpt.get("fingerprint", dataset_fingerprint(index)) != dataset_fingerprint(index):
        raise ValueError(f"{run_dir / 'train' / 'model.pt'} was trained on another feature set than {index_path} "
                         f"(fingerprints differ): rerun train")
    if list(index.class_names) != ckpt["class_names"]:
        raise ValueError(f"{run_dir / 'train' / 'model.pt'} was trained on classes {ckpt['class_names']}, "
                         f"{index_path} has {list(index.class_names)}")
    device = pick_device(cfg.device)
    mods, num_classes = ckpt["modalities"], len(index.class_names)
    method = build_method(ckpt["method"], cfg, mods, num_classes, cfg.method_params)
    model = method.prepare_model(build_model(mods, num_classes, cfg.width, cfg.fusion)).to(device)
    model.load_state_dict(ckpt["model"])
    ds = ShardDataset(index, split, train=False, frame_size=cfg.frame_size, mel_mean=ckpt["mel_mean"],
                      mel_std=ckpt["mel_std"])
    loader = multimodal_loader(ds, batch_size=64, workers=cfg.workers, num_modalities=len(mods))
    pred = predict(model, loader, mods, device, cfg.unimodal_pred, method=method)
    acc = accuracies(pred, mods)
    y, y_hat = pred["label"], pred["fused"].argmax(1)
    metrics = {"method": ckpt["method"], "epoch": ckpt["epoch"], "split": split, "samples": int(len(y)),
               **{f"acc_{k}": v for k, v in acc.items()}, "macro_f1": macro_f1(y, y_hat, num_classes),
               "imbalance_ratio": imbalance_ratio(acc, mods, num_classes)}
    with atomic_path(run_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    with Live(str(run_dir / "eval"), save_dvc_exp=False, dvcyaml=None) as live:
        names = list(index.class_names)
        live.log_sklearn_plot("confusion_matrix", [names[i] for i in y], [names[i] for i in y_hat],
                              name="confusion_matrix.json")
    return metrics

