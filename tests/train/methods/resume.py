"""Shared test helper: a method's run stopped mid-training and rerun must equal the uninterrupted run."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import pytest
import torch

from train.checkpoint import RESUME, default_work_dir
from train.config import TrainConfig
from train.trainer import train


def interrupted_then_resumed(features, tmp_path, method: str, cls, cfg: TrainConfig, stop_at: int, monkeypatch, *,
                             seed: int = 0, before_resume: Callable[[Path], None] | None = None) -> dict:
    """Train ``method`` once straight through and once stopped by an exception after optimizer step
    ``stop_at`` (its state of the step before on disk), then rerun: both runs' weights and logs must agree.
    ``before_resume(run_dir)`` runs between the stop and the rerun. Returns the uninterrupted run's summary."""
    cfg = dataclasses.replace(cfg, checkpoint_every=1)
    clean = train(index_path=features / "index.h5", out_dir=tmp_path / "clean", method=method, config=cfg, seed=seed)

    def stop(self, model, out, batch, ctx):
        if ctx.global_step == stop_at:
            raise KeyboardInterrupt("interrupted")

    with monkeypatch.context() as m:
        m.setattr(cls, "after_step", stop)
        with pytest.raises(KeyboardInterrupt):
            train(index_path=features / "index.h5", out_dir=tmp_path / "resumed", method=method, config=cfg, seed=seed)
    assert (default_work_dir(tmp_path / "resumed") / RESUME).exists()
    if before_resume is not None:
        before_resume(tmp_path / "resumed")
    resumed = train(index_path=features / "index.h5", out_dir=tmp_path / "resumed", method=method, config=cfg,
                    seed=seed)
    strip = lambda h: [{k: v for k, v in row.items() if not k.endswith("_s")} for row in h]  # noqa: E731
    assert strip(clean["history"]) == strip(resumed["history"])
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=False)["model"] for d in ("clean", "resumed"))
    assert all(torch.equal(t, b[k]) for k, t in a.items())
    return clean
