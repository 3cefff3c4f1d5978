"""Inference shared by training, scoring and evaluation: device choice, autocast, whole-split prediction, metrics.

Shapes: N samples of a split, C classes.
"""
from __future__ import annotations

import contextlib
from typing import Mapping

import numpy as np
import torch

from train import distributed
from train.data import to_inputs


def pick_device(name: str, d: distributed.Dist | None = None) -> torch.device:
    """``train.device`` -> a torch device (this rank's GPU under DDP)."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device: cuda requested but torch.cuda.is_available() is False")
        return torch.device("cuda", d.local_rank if d is not None and d.enabled else 0)
    return torch.device("cpu")


def autocast(device: torch.device, amp: str = "bf16"):
    """bf16 autocast on CUDA with ``amp: bf16``; a no-op on the CPU."""
    if device.type == "cuda" and amp == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict(model, loader, modalities: list[str], device, unimodal_pred: str = "heads",
            amp: str = "bf16", method=None) -> dict[str, np.ndarray]:
    """Fused and unimodal logits over a whole split, in dataset order: name -> [N, C], and "label" -> [N].

    ``method``: its ``fused_logits`` gives the fused prediction (default: the fusion head);
    ``unimodal_pred``: "heads" (the unimodal heads) or "dropout" (the fusion head, other modalities zeroed).
    """
    model.eval()
    out: dict[str, list] = {"fused": [], **{m: [] for m in modalities}}
    index, labels = [], []
    for batch in loader:
        inputs = to_inputs(batch, modalities, device)
        with autocast(device, amp):
            res = model(inputs)
            fused = res.fused if method is None else method.fused_logits(model, res, inputs)
            out["fused"].append(fused.float().cpu())
            for m in modalities:
                logits = model.predict_dropout(inputs, m) if unimodal_pred == "dropout" else res.unimodal[m]
                out[m].append(logits.float().cpu())
        index.append(batch["index"])
        labels.append(batch["label"])
    order = torch.cat(index).argsort()
    result = {k: torch.cat(v)[order].numpy() for k, v in out.items()}
    result["label"] = torch.cat(labels)[order].numpy()
    return result


def accuracies(pred: dict[str, np.ndarray], modalities: list[str]) -> dict[str, float]:
    """"fused" and each modality -> accuracy of its argmax against the labels."""
    y = pred["label"]
    return {k: float((pred[k].argmax(1) == y).mean()) for k in ["fused", *modalities]}


def imbalance_ratio(acc: Mapping[str, float], modalities: list[str], num_classes: int) -> float:
    """Strongest over weakest unimodal accuracy above chance (1 = balanced; inf when one is at chance)."""
    chance = 1.0 / num_classes
    above = [max(acc[m] - chance, 0.0) for m in modalities]
    return float(max(above) / min(above)) if min(above) > 0 else float("inf")
