"""train.fusions.centralnet: the central branch by hand, its feature masking, hidden states; no modality shares."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.train.fusions.common import B, C, D, T, W, av_inputs
from train.fusions import build_model
from train.fusions.centralnet import CENTRAL_GRID, CentralNetFusion


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_centralnet_feature_masking_hides_the_dropped_modality_from_the_central_branch():
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="centralnet").eval()
    inputs = av_inputs()
    keep = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        full = model(inputs)
        out = model(inputs, keep=keep, mask="feature")
        audio_only = model.predict_dropout(inputs, "audio")
    torch.testing.assert_close(out.fused[0], audio_only[0])  # sample 0: the central branch saw zeros for video
    torch.testing.assert_close(out.fused[1], full.fused[1])
    assert not torch.allclose(full.fused[0], audio_only[0])
    assert torch.equal(out.features["video"][0], torch.zeros(D))
    assert torch.equal(out.features["audio"], full.features["audio"])  # trunks never see other modalities


def test_centralnet_weighted_sum_by_hand():
    """Scalar hidden states (1 channel, 1 x 1), identity central layers: the fused logit is the hand-computed
    s_4 with s_1 = sum_k a_k^1 h_k^1, s_i = a_C^i s_{i-1} + sum_k a_k^i h_k^i."""
    fusion = CentralNetFusion(["a", "b"], {"a": [1] * 4, "b": [1] * 4}, num_classes=1)
    with torch.no_grad():
        fusion.layers = nn.ModuleList([nn.Identity()] * 3)
        fusion.fc.weight.fill_(1.0)
        fusion.fc.bias.zero_()
        fusion.alpha_modal.copy_(torch.tensor([[0.5, 0.1], [1, 0], [0, 1], [2, -1]]))
        fusion.alpha_central.copy_(torch.tensor([1, 0.5, 0.25]))
        h = lambda *xs: [torch.full((1, 1, 1, 1), float(x)) for x in xs]  # noqa: E731
        both = fusion({"a": h(1, 2, 3, 4), "b": h(10, 20, 30, 40)})
        a_only = fusion({"a": h(1, 2, 3, 4), "b": None})  # a skipped modality counts as zeros
    # s1 = 0.5 + 1 = 1.5; s2 = 1.5 + 2 = 3.5; s3 = 0.5 * 3.5 + 30 = 31.75; s4 = 0.25 * 31.75 + 8 - 40
    assert both.item() == pytest.approx(-24.0625)
    # s1 = 0.5; s2 = 2.5; s3 = 1.25; s4 = 0.3125 + 8
    assert a_only.item() == pytest.approx(8.3125)
    with pytest.raises(ValueError, match="hidden states"):
        fusion({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)})


def test_centralnet_hidden_pools_video_over_frames():
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="centralnet")
    maps = torch.randn(B * T, W, 7, 9)  # a stage-1 map of B clips x T frames
    hid = model.fusion.hidden("video", 1, maps, T)
    assert hid.shape == (B, W, CENTRAL_GRID[0], CENTRAL_GRID[0])
    torch.testing.assert_close(hid, model.fusion.hidden("video", 1, maps.view(B, T, W, 7, 9).mean(1), 1))


def test_centralnet_has_no_modality_shares():
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="centralnet").eval()
    assert not model.has_modality_shares
    with torch.no_grad():
        features = model(av_inputs()).features
    with pytest.raises(ValueError, match="train.fusion 'centralnet'"):
        model.modality_shares(features)
