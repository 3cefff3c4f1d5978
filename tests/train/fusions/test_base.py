"""train.fusions.base and the late fusions (concat, sum, decision, film, gated): shapes, any K, any encoders,
predict_dropout, each modality's share of the fused logits (tiny widths, CPU)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from train.fusions import build_model, registry
from train.fusions.base import Fusion
from train.fusions.film import FiLMFusion
from train.models import ENCODERS, AVModel, ModelOutput

W = 4  # base width -> D = 32
D = 8 * W
C = 5
B = 2
LATE = [name for name, cls in registry().items() if issubclass(cls, Fusion)]  # heads on the final features


def av_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(B, 1, 16, 24, generator=g),      # [B, 1, F, L]
            "video": torch.randn(B, 3, 3, 32, 32, generator=g)}   # [B, T, 3, H, W]


class ToyVectorEncoder(nn.Module):
    """A third modality: [B, 5] -> [B, 8 * width]."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8 * width))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_late_fusions_are_registered():
    assert LATE == ["concat", "decision", "film", "gated", "sum"]
    for name in LATE:
        assert registry()[name].name == name


@pytest.mark.parametrize("fusion", LATE)
def test_two_modalities_every_fusion(fusion):
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion=fusion)
    assert model.modalities == ["audio", "video"]
    out = model(av_inputs())
    assert isinstance(out, ModelOutput)
    assert out.fused.shape == (B, C)
    assert set(out.unimodal) == set(out.features) == {"audio", "video"}
    for m in model.modalities:
        assert out.unimodal[m].shape == (B, C)
        assert out.features[m].shape == (B, D)
        torch.testing.assert_close(out.unimodal[m], model.heads[m](out.features[m]))
    # the fused logits depend on (and backprop into) every encoder
    out.fused.sum().backward()
    for m in model.modalities:
        grads = [p.grad for p in model.encoders[m].parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), m


@pytest.mark.parametrize("fusion", LATE)
def test_three_modalities_every_fusion(fusion, monkeypatch):
    monkeypatch.setitem(ENCODERS, "toy", ToyVectorEncoder)
    model = build_model(["audio", "video", "toy"], num_classes=C, width=W, fusion=fusion)
    inputs = {**av_inputs(), "toy": torch.randn(B, 5)}
    out = model(inputs)
    assert out.fused.shape == (B, C)
    assert {m: t.shape for m, t in out.unimodal.items()} == {m: (B, C) for m in ["audio", "video", "toy"]}
    keep = torch.tensor([[True, False, True], [False, True, True]])
    for mask in ("input", "feature"):
        assert model(inputs, keep=keep, mask=mask).fused.shape == (B, C)


@pytest.mark.parametrize("fusion", LATE)
def test_model_from_encoder_dict(fusion):
    """Any dict of encoders works (here two toy vector modalities, no ResNet)."""
    model = AVModel({"a": ToyVectorEncoder(W), "b": ToyVectorEncoder(W)}, feature_dim=D,
                    num_classes=3, fusion=registry()[fusion])
    out = model({"a": torch.randn(B, 5), "b": torch.randn(B, 5)}, keep=torch.tensor([[1, 0], [1, 1]]).bool())
    assert out.fused.shape == (B, 3)
    # input masking: sample 0's "b" features are the encoder's response to a zero input
    torch.testing.assert_close(out.features["b"][0], model.encoders["b"](torch.zeros(1, 5))[0])
    assert model.predict_dropout({"a": torch.randn(B, 5)}, "a").shape == (B, 3)


@pytest.mark.parametrize("fusion", LATE)
def test_predict_dropout(fusion):
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion=fusion).eval()
    inputs = av_inputs()
    with torch.no_grad():
        for m in model.modalities:
            feat = model.encoders[m](inputs[m])
            expected = model.fusion({n: feat if n == m else torch.zeros_like(feat) for n in model.modalities})
            got = model.predict_dropout(inputs, m)
            assert got.shape == (B, C)
            torch.testing.assert_close(got, expected)
            # the same as feature-masking every other modality
            keep = torch.tensor([[n == m for n in model.modalities]] * B)
            torch.testing.assert_close(got, model(inputs, keep=keep, mask="feature").fused)


def test_film_needs_two_modalities():
    with pytest.raises(ValueError):
        FiLMFusion(["audio"], D, C)


@pytest.mark.parametrize("fusion", ["concat", "sum", "decision"])
def test_additive_shares_add_up_to_the_fused_logits(fusion):
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion=fusion).eval()
    assert model.has_modality_shares
    with torch.no_grad():
        out = model(av_inputs())
        shares = model.modality_shares(out.features)
    assert list(shares) == ["audio", "video"] and all(s.shape == (B, C) and s.dtype == torch.float32
                                                      for s in shares.values())
    torch.testing.assert_close(sum(shares.values()), out.fused, atol=1e-5, rtol=1e-5)
    fc = model.fusion.fc
    with torch.no_grad():
        if fusion == "concat":  # its block of the Linear plus bias / K
            expected = out.features["video"] @ fc.weight[:, D:].T + fc.bias / 2
        else:  # its own Linear (decision: / K)
            expected = fc["video"](out.features["video"]) / (2 if fusion == "decision" else 1)
    torch.testing.assert_close(shares["video"], expected)


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_other_shares_are_the_head_with_the_others_zeroed(fusion):
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion=fusion).eval()
    with torch.no_grad():
        inputs = av_inputs()
        shares = model.modality_shares(model(inputs).features)
        for m in model.modalities:
            torch.testing.assert_close(shares[m], model.predict_dropout(inputs, m))


def test_model_takes_a_head_class_or_module():
    encs = lambda: {m: nn.Linear(3, 4) for m in ("a", "v")}  # noqa: E731
    by_class = AVModel(encs(), feature_dim=4, num_classes=2, fusion=registry()["gated"])
    assert by_class.fusion_name == "gated" and type(by_class.fusion).__name__ == "GatedFusion"
    head = registry()["sum"](["a", "v"], 4, 2)
    by_module = AVModel(encs(), feature_dim=4, num_classes=2, fusion=head)
    assert by_module.fusion is head and by_module.fusion_name == "sum" and by_module.late_fusion
    with pytest.raises(TypeError, match="train.fusions.build_model"):
        AVModel(encs(), feature_dim=4, num_classes=2, fusion="concat")


def test_head_without_shares_raises_naming_train_fusion():
    class Hidden(nn.Module):
        def forward(self, feats):
            return sum(feats.values())

    model = AVModel({m: nn.Linear(3, 2) for m in ("a", "v")}, feature_dim=2, num_classes=2, fusion=Hidden())
    assert model.fusion_name == "Hidden" and not model.has_modality_shares
    with pytest.raises(ValueError, match="train.fusion 'Hidden'"):
        model.modality_shares({m: torch.zeros(1, 2) for m in ("a", "v")})
