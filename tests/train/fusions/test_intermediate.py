"""train.fusions.intermediate: what MMTM and CentralNet share (shapes, masking, skip_masked) and tiny real training."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.train.fusions.common import B, C, D, T, W, av_inputs, trunk_inputs
from tests.train.test_data import extracted_features
from train.evaluate import evaluate
from train.fusions import build_model, registry
from train.fusions.centralnet import CentralNetModel
from train.fusions.intermediate import IntermediateModel
from train.fusions.mmtm import MMTMModel
from train.models import ENCODERS, AudioEncoder
from train.config import TrainConfig
from train.trainer import train

INTERMEDIATE = ["mmtm", "centralnet"]
TINY = dict(epochs=3, warmup_epochs=1, width=4, batch_size=4, frame_size=24, workers=0, guard="none")


def test_intermediate_fusions_are_registered():
    assert sorted(n for n, cls in registry().items() if issubclass(cls, IntermediateModel)) == sorted(INTERMEDIATE)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("fusion", INTERMEDIATE)
def test_shapes_and_gradients(fusion):
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion=fusion)
    assert isinstance(model, {"mmtm": MMTMModel, "centralnet": CentralNetModel}[fusion])
    assert model.fusion_name == fusion and model.feature_dim == D and model.modalities == ["audio", "video"]
    out = model(av_inputs())
    assert out.fused.shape == (B, C)
    for m in model.modalities:
        assert out.features[m].shape == (B, D) and out.unimodal[m].shape == (B, C)
        torch.testing.assert_close(out.unimodal[m], model.heads[m](out.features[m]))
        assert torch.equal(out.raw[m], out.features[m])
    out.fused.sum().backward()
    for m in model.modalities:  # the fused logits reach every trunk
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders[m].parameters()), m
    assert model.predict_dropout(av_inputs(), "video").shape == (B, C)


@pytest.mark.parametrize("fusion", INTERMEDIATE)
def test_three_modalities(fusion, monkeypatch):
    monkeypatch.setitem(ENCODERS, "audio2", AudioEncoder)
    model = build_model(["audio", "video", "audio2"], num_classes=C, width=W, fusion=fusion)
    inputs = {**av_inputs(), "audio2": torch.randn(B, 1, 16, 24)}
    if fusion == "mmtm":
        assert model.mmtm["2"].squeeze.in_features == 3 * 2 * W  # all K squeezes concatenated
        assert model.mmtm["2"].code_dim == int(2 * 3 * 2 * W / 4)
    keep = torch.tensor([[True, False, True], [False, True, True]])
    for mask in ("input", "feature"):
        out = model(inputs, keep=keep, mask=mask)
        assert out.fused.shape == (B, C) and set(out.features) == {"audio", "video", "audio2"}


def test_needs_resnet_trunks_and_two_modalities():
    class Toy(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="ResNetTrunk"):
        MMTMModel({"a": Toy(), "b": Toy()}, feature_dim=D, num_classes=C)
    with pytest.raises(ValueError, match=">= 2"):
        CentralNetModel({"audio": AudioEncoder(W)}, feature_dim=D, num_classes=C)
    with pytest.raises(ValueError, match="centralnet"):
        build_model(["audio", "video"], num_classes=C, width=W, fusion="nope")
    assert TrainConfig(fusion="mmtm").fusion == "mmtm" and TrainConfig(fusion="centralnet").fusion == "centralnet"
    with pytest.raises(ValueError, match="train.fusion"):
        TrainConfig(fusion="nope")


@pytest.mark.parametrize("fusion", INTERMEDIATE)
def test_input_masking_zeroes_exactly_the_dropped_inputs(fusion):
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion=fusion)
    inputs = av_inputs()
    seen, handles = trunk_inputs(model)
    keep = torch.tensor([[False, True], [True, False]])  # sample 0 drops audio, sample 1 drops video
    out = model(inputs, keep=keep, mask="input")
    assert torch.count_nonzero(seen["audio"][0]) == 0 and torch.equal(seen["audio"][1], inputs["audio"][1])
    frames = seen["video"].view(B, T, 3, 32, 32)  # the trunk runs [B*T, ...]
    assert torch.equal(frames[0], inputs["video"][0]) and torch.count_nonzero(frames[1]) == 0
    assert out.raw == {}  # no trunk saw every sample's real input
    for h in handles:
        h.remove()


@pytest.mark.parametrize("fusion", INTERMEDIATE)
def test_skip_masked_skips_the_encoder_and_feeds_zeros(fusion):
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion=fusion)
    seen, handles = trunk_inputs(model)
    keep = torch.tensor([[True, False], [True, False]])  # video dropped for the whole batch
    squeezes = []
    if fusion == "mmtm":
        model.mmtm["2"].squeeze.register_forward_pre_hook(lambda mod, args: squeezes.append(args[0].detach()))
    out = model({"audio": av_inputs()["audio"]}, keep=keep, mask="input", skip_masked=True)  # no video input
    assert set(seen) == {"audio"}
    assert torch.equal(out.features["video"], torch.zeros(B, D)) and "video" not in out.raw
    (out.fused.sum() + sum(u.sum() for u in out.unimodal.values())).backward()
    assert all(p.grad is None for p in model.encoders["video"].parameters())
    assert all(p.grad is not None for p in model.encoders["audio"].parameters())
    if fusion == "mmtm":  # the video squeeze is zeros; the video excitation is unused
        assert torch.equal(squeezes[0][:, 2 * W:], torch.zeros(B, 2 * W))
        assert squeezes[0][:, :2 * W].abs().sum() > 0
        assert all(p.grad is None for p in model.mmtm["2"].excite["video"].parameters())
    else:
        assert all(p.grad is None for p in model.fusion.proj["video"].parameters())
    for h in handles:
        h.remove()


@pytest.mark.parametrize("fusion", INTERMEDIATE)
def test_no_late_head_over_final_features(fusion):
    """Zeroing a modality's final features does not remove it from an intermediate fusion (resample asks this)."""
    assert build_model(["audio", "video"], num_classes=C, width=W, fusion=fusion).late_fusion is False


@pytest.mark.parametrize("fusion,method", [("mmtm", "baseline"), ("centralnet", "baseline"),
                                           ("centralnet", "remix")])
def test_tiny_training_runs_and_evaluates(cremad_raw, tmp_path_factory, tmp_path, fusion, method):
    features = extracted_features(cremad_raw, tmp_path_factory)
    cfg = TrainConfig(**TINY, fusion=fusion, mask="input" if method == "remix" else "feature")
    summary = train(index_path=features / "index.h5", out_dir=tmp_path / method / "train", method=method,
                    config=cfg, seed=0)
    assert len(summary["history"]) == 3 and all(math.isfinite(h["loss"]) for h in summary["history"])
    if method == "remix":
        assert [h["phase"] for h in summary["history"]] == ["warmup", "remix", "remix"]
    metrics = evaluate(index_path=features / "index.h5", run_dir=tmp_path / method)
    assert metrics["epoch"] == summary["best"]["epoch"] and 0 <= metrics["acc_fused"] <= 1
    ckpt = torch.load(tmp_path / method / "train" / "model.pt", weights_only=False)
    assert any(k.startswith("mmtm." if fusion == "mmtm" else "fusion.alpha_modal") for k in ckpt["model"])
