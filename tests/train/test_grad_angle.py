"""The gradient-direction discrepancy of the paper's Fig. 3c: angle between an encoder's step gradient and its own loss's."""
import math

import torch
import torch.nn.functional as F

from tests.train.test_data import extracted_features
from train.fusions import build_model
from train.config import TrainConfig
from train.diagnostics import gradient_angle, own_gradient
from train.losses import joint_loss
from train.trainer import keep_mask, train


def test_angle_of_hand_set_gradients():
    enc = torch.nn.Linear(2, 1, bias=False)
    enc.weight.grad = torch.tensor([[1.0, 0.0]])
    assert math.isclose(gradient_angle(enc, [torch.tensor([[1.0, 1.0]])]), 45.0, rel_tol=1e-6)
    assert math.isclose(gradient_angle(enc, [torch.tensor([[-3.0, 0.0]])]), 180.0, rel_tol=1e-6)
    assert math.isnan(gradient_angle(enc, [None]))  # no own gradient: undefined


def _batch(b=6, c=3):
    torch.manual_seed(0)
    return ({"audio": torch.randn(b, 1, 16, 20), "video": torch.randn(b, 2, 3, 16, 16)}, torch.arange(b) % c)


def test_own_loss_alone_gives_angle_zero_and_fused_loss_does_not():
    model = build_model(["audio", "video"], 3, width=4)
    inputs, y = _batch()
    keep = keep_mask(torch.full((6,), -1), 2)
    # a step whose loss IS the audio head's loss: the two gradients coincide
    out = model(inputs)
    own = own_gradient(model, out, y, keep, "audio")
    F.cross_entropy(model.heads["audio"](out.features["audio"]), y).backward()
    assert gradient_angle(model.encoders["audio"], own) < 1e-2
    # the joint-training step (fused loss, detached probes): another direction
    model.zero_grad(set_to_none=True)
    out = model(inputs)
    own = own_gradient(model, out, y, keep, "audio")
    cfg = TrainConfig(baseline_loss="fused")
    joint_loss(model, out, y, cfg).backward()
    assert 1.0 < gradient_angle(model.encoders["audio"], own) < 180.0


def test_no_sample_keeps_the_modality_gives_no_own_gradient():
    model = build_model(["audio", "video"], 3, width=4)
    inputs, y = _batch()
    keep = keep_mask(torch.ones(6, dtype=torch.long), 2)  # every sample keeps video only
    out = model(inputs, keep=keep, mask="feature")
    assert own_gradient(model, out, y, keep, "audio") is None


def test_trainer_logs_the_angle_per_epoch(cremad_raw, tmp_path_factory, tmp_path):
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(epochs=2, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none",
                      grad_angle="audio")
    for method in ("baseline", "remix"):
        summary = train(index_path=features / "index.h5", out_dir=tmp_path / method, method=method, config=cfg, seed=0)
        for row in summary["history"]:
            # an epoch in which no step kept audio (remix assigned every sample to video) has no angle
            if row["phase"] == "warmup" or row.get("assigned_audio", 0) > 0:
                assert 0.0 <= row["grad_angle_audio"] <= 180.0, row
            else:
                assert "grad_angle_audio" not in row
