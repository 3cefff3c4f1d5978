"""train.models: encoders, masking modes, skip_masked, argument checks (tiny widths, CPU); the fusions:
tests/train/fusions/."""
from __future__ import annotations

import pytest
import torch

from train.fusions import build_model
from train.models import AudioEncoder, AVModel, VisualEncoder, init_norm_weights

W = 4  # base width -> D = 32
D = 8 * W
C = 5
B = 2


def av_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(B, 1, 16, 24, generator=g),      # [B, 1, F, L]
            "video": torch.randn(B, 3, 3, 32, 32, generator=g)}   # [B, T, 3, H, W]


def record_inputs(model: AVModel) -> tuple[dict, list]:
    """Forward pre-hooks storing each encoder's input tensor."""
    seen, handles = {}, []
    for name, enc in model.encoders.items():
        handles.append(enc.register_forward_pre_hook(lambda mod, args, n=name: seen.__setitem__(n, args[0].detach().clone())))
    return seen, handles


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_feature_dim_is_eight_times_width():
    for width in (2, 4):
        a, v = AudioEncoder(width), VisualEncoder(width)
        assert a.feature_dim == v.feature_dim == 8 * width
        assert a(torch.randn(B, 1, 16, 24)).shape == (B, 8 * width)
        assert v(torch.randn(B, 2, 3, 32, 32)).shape == (B, 8 * width)
    enc = AudioEncoder(W)
    assert enc.trunk.layer1[0].conv1.out_channels == W and enc.trunk.layer4[-1].conv2.out_channels == 8 * W
    assert [len(getattr(enc.trunk, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert enc.trunk.conv1.in_channels == 1 and VisualEncoder(W).trunk.conv1.in_channels == 3


def test_visual_encoder_averages_over_frames():
    enc = VisualEncoder(W).eval()
    frame = torch.randn(B, 1, 3, 32, 32)
    with torch.no_grad():
        one = enc(frame)
        many = enc(frame.expand(B, 4, 3, 32, 32).contiguous())
        # and the mean over T of the per-frame features
        frames = torch.randn(B, 3, 3, 32, 32)
        per_frame = torch.stack([enc(frames[:, t:t + 1]) for t in range(3)], dim=1).mean(1)
        avg = enc(frames)
    torch.testing.assert_close(many, one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(avg, per_frame, atol=1e-5, rtol=1e-5)


def test_input_masking_zeroes_encoder_input():
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="concat")
    inputs = av_inputs()
    seen, handles = record_inputs(model)
    keep = torch.tensor([[False, True], [True, True]])  # sample 0 drops audio
    model(inputs, keep=keep, mask="input")
    assert torch.count_nonzero(seen["audio"][0]) == 0
    assert torch.equal(seen["audio"][1], inputs["audio"][1])
    assert torch.equal(seen["video"], inputs["video"])

    keep = torch.tensor([[True, False], [True, False]])  # video dropped for the whole batch
    model(inputs, keep=keep, mask="input")
    assert torch.count_nonzero(seen["video"]) == 0
    assert torch.equal(seen["audio"], inputs["audio"])
    for h in handles:
        h.remove()


def test_feature_masking_zeroes_features_only():
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="gated").eval()
    inputs = av_inputs()
    seen, handles = record_inputs(model)
    keep = torch.tensor([[True, False], [False, True]])
    with torch.no_grad():
        full = model(inputs)
        out = model(inputs, keep=keep, mask="feature")
    assert torch.equal(seen["audio"], inputs["audio"]) and torch.equal(seen["video"], inputs["video"])
    assert torch.equal(out.features["video"][0], torch.zeros(D))
    assert torch.equal(out.features["audio"][1], torch.zeros(D))
    assert torch.equal(out.features["audio"][0], full.features["audio"][0])
    assert torch.equal(out.features["video"][1], full.features["video"][1])
    torch.testing.assert_close(out.unimodal["video"][0], model.heads["video"].bias)
    # keep=None and an all-True keep are the same as no masking
    with torch.no_grad():
        same = model(inputs, keep=torch.ones(B, 2, dtype=torch.bool), mask="feature")
    assert torch.equal(same.fused, full.fused)
    for h in handles:
        h.remove()


def test_skip_masked_does_not_run_encoder():
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="concat")
    calls = {m: 0 for m in model.modalities}
    for m, enc in model.encoders.items():
        enc.register_forward_hook(lambda mod, a, o, n=m: calls.__setitem__(n, calls[n] + 1))
    keep = torch.tensor([[True, False], [True, False]])
    out = model(av_inputs(), keep=keep, mask="input", skip_masked=True)
    assert calls == {"audio": 1, "video": 0}
    assert torch.equal(out.features["video"], torch.zeros(B, D))
    (out.fused.sum() + sum(u.sum() for u in out.unimodal.values())).backward()
    assert all(p.grad is None for p in model.encoders["video"].parameters())
    assert all(p.grad is not None for p in model.encoders["audio"].parameters())

    # the skipped modality's input may be absent
    model({"audio": av_inputs()["audio"]}, keep=keep, skip_masked=True)
    # partial drop: the encoder runs (input-masked) even with skip_masked
    model(av_inputs(), keep=torch.tensor([[True, False], [True, True]]), skip_masked=True)
    assert calls == {"audio": 3, "video": 1}


def test_skip_masked_matches_input_masking_in_eval():
    """Skipping leaves the kept modality's features unchanged; the skipped one's are exactly zero
    (while plain input masking gives the encoder's response to a zero input)."""
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="sum").eval()
    keep = torch.tensor([[False, True], [False, True]])
    with torch.no_grad():
        a = model(av_inputs(), keep=keep, skip_masked=True)
        b = model(av_inputs(), keep=keep)
    assert torch.equal(a.features["video"], b.features["video"])
    assert torch.equal(a.features["audio"], torch.zeros(B, D))


def test_bad_arguments():
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="concat")
    with pytest.raises(ValueError):
        model(av_inputs(), keep=torch.ones(B, 2, dtype=torch.bool), mask="feature", skip_masked=True)
    with pytest.raises(ValueError):
        model(av_inputs(), mask="nope")
    with pytest.raises(ValueError):
        model(av_inputs(), keep=torch.ones(B, 3, dtype=torch.bool))
    with pytest.raises(ValueError):
        build_model(["audio", "smell"], num_classes=C, width=W, fusion="concat")
    with pytest.raises(TypeError, match="train.fusions.build_model"):  # a fusion name is build_model's argument
        AVModel({"audio": AudioEncoder(W)}, feature_dim=D, num_classes=C, fusion="concat")


def test_bn_init_normal_draws_every_batchnorm_weight_around_one_and_ones_draws_nothing():
    torch.manual_seed(0)
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="concat")
    weights = lambda m: torch.cat([b.weight.detach().flatten() for b in m.modules()  # noqa: E731
                                   if isinstance(b, torch.nn.BatchNorm2d)])
    assert torch.equal(weights(model), torch.ones_like(weights(model)))  # torchvision's init
    state = torch.get_rng_state()
    assert init_norm_weights(model, "ones") is model
    assert torch.equal(state, torch.get_rng_state()) and torch.equal(weights(model), torch.ones_like(weights(model)))
    w = weights(init_norm_weights(model, "normal"))
    assert w.numel() > 100 and abs(w.mean().item() - 1) < 0.01 and 0.01 < w.std().item() < 0.03
    with pytest.raises(ValueError, match="bn_init"):
        init_norm_weights(model, "zeros")


def test_bn_split_normalises_each_chunk_apart_and_keeps_the_first_chunks_statistics_like_data_parallel():
    import copy

    torch.manual_seed(0)
    model = build_model(["audio", "video"], num_classes=C, width=W, fusion="concat").train()
    replica = copy.deepcopy(model.encoders["audio"])  # the reference: nn.DataParallel over 2 devices, by hand
    x = torch.randn(5, 1, 16, 24)
    first, second = x.chunk(2)  # 3 + 2 samples, as DataParallel scatters 5 over 2 devices
    expected = torch.cat([replica(first), copy.deepcopy(replica)(second)])  # the second replica's stats are dropped
    model.bn_slices = 2
    out = model({"audio": x, "video": torch.randn(5, 3, 3, 32, 32)})
    torch.testing.assert_close(out.features["audio"], expected, rtol=0, atol=1e-6)
    for (name, a), (_, b) in zip(model.encoders["audio"].named_buffers(), replica.named_buffers()):
        assert torch.equal(a, b), name  # running statistics and num_batches_tracked: the first chunk's only
    model.bn_slices = 1
    whole = model.encoders["audio"](x)
    assert (whole - out.features["audio"]).abs().max() > 1e-3  # whole-batch statistics differ
    model.eval().bn_slices = 2
    torch.testing.assert_close(model({"audio": x, "video": torch.randn(5, 3, 3, 32, 32)}).features["audio"],
                               model.encoders["audio"](x))  # eval: running statistics, no chunks
