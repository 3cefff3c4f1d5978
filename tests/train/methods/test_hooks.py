"""The hooks reach what the loop does: several optimizer steps per batch (MLA's official form needs one per
modality) and a data plan, with no change to the loop."""
from __future__ import annotations

import torch

from tests.train.test_data import extracted_features
from train.config import TrainConfig
from train.methods import Method, registry
from train.trainer import train

TINY = dict(epochs=2, warmup_epochs=0, width=4, batch_size=4, frame_size=24, workers=0, guard="none",
            checkpoint_every=0)


class PerModality(Method):
    """Each batch: one optimizer step per modality, that modality alone (the others masked, their encoders not run)."""

    name = "per_modality_test"
    listed = False

    seen: list = []  # per optimizer step: (global batch number, the encoders with a gradient); set by the test

    def substeps(self, keep, ctx):
        parts = []
        for j in range(len(self.modalities)):
            only = torch.zeros_like(keep)
            only[:, j] = True
            parts.append(only)
        return parts

    def masking(self):
        return "input", True

    def modulate_gradients(self, model, out, y, m_code, ctx):
        moved = [m for m in self.modalities if any(p.grad is not None for p in model.encoders[m].parameters())]
        self.seen.append((ctx.global_step, moved))


def test_several_optimizer_steps_per_batch(cremad_raw, tmp_path_factory, tmp_path, monkeypatch):
    features = extracted_features(cremad_raw, tmp_path_factory)
    monkeypatch.setitem(registry(), PerModality.name, PerModality)
    monkeypatch.setattr(PerModality, "seen", [])
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / "run", method=PerModality.name,
                    config=TrainConfig(**TINY), seed=0)
    seen = PerModality.seen
    batches = sorted({b for b, _ in seen})
    assert len(seen) == 2 * len(batches)  # two optimizer steps per batch
    for b in batches:  # one per modality, each moving only its own encoder
        assert [moved for g, moved in seen if g == b] == [["audio"], ["video"]]
    assert len(summary["history"]) == 2
