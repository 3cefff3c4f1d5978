"""train.fusions.mmtm: the MMTM module by hand, its feature masking, identity excitations, overrides, shares."""
from __future__ import annotations

import math

import pytest
import torch

from tests.train.fusions.common import B, C, D, T, W, av_inputs
from train.fusions import build_model
from train.fusions.mmtm import MMTM, MMTMModel


def zero_mmtm(model: MMTMModel) -> None:
    """Every MMTM weight and bias 0: each excitation is 2 * sigmoid(0) = 1 (identity)."""
    with torch.no_grad():
        for p in model.mmtm.parameters():
            p.zero_()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_mmtm_feature_masking_zeroes_only_the_final_features():
    """The trunks and the MMTM modules see the real inputs: the kept samples' features are those of the
    unmasked forward (the cross-modal flow from the dropped modality is still there)."""
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="mmtm").eval()
    inputs = av_inputs()
    keep = torch.tensor([[True, False], [True, True]])  # sample 0 drops video
    with torch.no_grad():
        full = model(inputs)
        out = model(inputs, keep=keep, mask="feature")
    assert torch.equal(out.features["video"][0], torch.zeros(D))
    assert torch.equal(out.features["video"][1], full.features["video"][1])
    assert torch.equal(out.features["audio"], full.features["audio"])  # saw the real video through MMTM
    assert torch.equal(out.raw["video"], full.features["video"])
    torch.testing.assert_close(out.fused, model.fusion(out.features))


def test_mmtm_excitation_by_hand():
    mmtm = MMTM({"a": 2, "b": 3}, ratio=4)
    assert mmtm.code_dim == int(2 * 5 / 4) == 2
    with torch.no_grad():
        mmtm.squeeze.weight.copy_(torch.tensor([[1., 0, 0, 0, 0], [0, 0, 0, 1, -1]]))
        mmtm.squeeze.bias.copy_(torch.tensor([0., -3]))
        mmtm.excite["a"].weight.copy_(torch.eye(2))
        mmtm.excite["a"].bias.zero_()
        mmtm.excite["b"].weight.copy_(torch.tensor([[0., 0], [2, 0], [-1, 5]]))
        mmtm.excite["b"].bias.zero_()
        # S_a = [1, 2], S_b = [0, 1, -1]: Z = ReLU([1, 1 + 1 - 3]) = [1, 0]
        e = mmtm({"a": torch.tensor([[1., 2]]), "b": torch.tensor([[0., 1, -1]])})
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    torch.testing.assert_close(e["a"], torch.tensor([[2 * s(1), 1.0]]))  # 2 * sigmoid([1, 0])
    torch.testing.assert_close(e["b"], torch.tensor([[1.0, 2 * s(2), 2 * s(-1)]]))  # 2 * sigmoid([0, 2, -1])
    assert abs(2 * s(1) - 1.4621171573) < 1e-9 and abs(2 * s(-1) - 0.5378828427) < 1e-9


def test_mmtm_identity_is_the_plain_encoders_and_video_is_squeezed_over_frames():
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="mmtm").eval()
    zero_mmtm(model)
    inputs = av_inputs()
    squeezes = []
    model.mmtm["2"].squeeze.register_forward_pre_hook(lambda mod, args: squeezes.append(args[0].detach()))
    with torch.no_grad():
        out = model(inputs)
        for m in model.modalities:  # excitation 1 everywhere: the stage-wise run is the encoder's own
            torch.testing.assert_close(out.features[m], model.encoders[m](inputs[m]), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(out.scales[m][0], torch.ones(B, 2 * W))
        tr = model.encoders["video"].trunk  # the stage-2 video map, averaged over T and space
        h = tr.layer2(tr.layer1(tr.maxpool(tr.relu(tr.bn1(tr.conv1(inputs["video"].flatten(0, 1)))))))
        expected = h.view(B, T, 2 * W, -1).mean(dim=(1, 3))  # [B, C_2]
    torch.testing.assert_close(squeezes[0][:, 2 * W:], expected, atol=1e-6, rtol=1e-5)

    # an excitation override scales the video channels (repeated over T) before the pooling
    v = torch.linspace(0.5, 1.5, D)
    with torch.no_grad():
        scaled = model(inputs, excitation_override={"video": [torch.ones(2 * W), torch.ones(4 * W), v]})
    torch.testing.assert_close(scaled.features["video"], out.features["video"] * v, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(scaled.features["audio"], out.features["audio"])


def test_mmtm_shares_are_those_of_its_concat_head():
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="mmtm").eval()
    with torch.no_grad():
        out = model(av_inputs())
        shares = model.modality_shares(out.features)
        torch.testing.assert_close(shares, model.fusion.modality_shares(out.features))
    assert type(model.fusion).__name__ == "ConcatFusion"
    torch.testing.assert_close(sum(shares.values()), out.fused, atol=1e-5, rtol=1e-5)
