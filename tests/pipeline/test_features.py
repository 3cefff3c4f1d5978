"""Feature settings and per-clip computations."""
import numpy as np
import pytest
import torch

from pipeline.features import PRESETS, FeatureConfig, fit_duration, log_linear, log_mel, resize_short_side, spectrogram
from pipeline.media import VideoInfo, frame_indices


def test_frame_indices_are_segment_centres():
    # 3 s at 30 fps, 3 frames: 0.5 s, 1.5 s, 2.5 s (the field's 1 fps)
    assert frame_indices(VideoInfo(90, 30.0, 480, 360), 3) == [15, 45, 75]
    assert frame_indices(VideoInfo(10, 10.0, 64, 48), 4) == [1, 3, 6, 8]
    assert frame_indices(VideoInfo(3, 30.0, 64, 48), 3) == [0, 1, 2]


def test_frame_indices_at_whole_seconds_repeat_the_last_frame_of_a_short_clip():
    # the field's 1 fps extraction: the frames nearest 0 s, 1 s, 2 s
    assert frame_indices(VideoInfo(90, 30.0, 480, 360), 3, "seconds") == [0, 30, 60]
    assert frame_indices(VideoInfo(38, 15.0, 160, 120), 3, "seconds") == [0, 15, 30]
    assert frame_indices(VideoInfo(25, 15.0, 160, 120), 3, "seconds") == [0, 15, 24]  # 1.7 s: no frame at 2 s
    with pytest.raises(ValueError, match="times"):
        frame_indices(VideoInfo(90, 30.0, 480, 360), 3, "fps")


def test_fit_duration_tiles_short_and_cuts_long():
    short = np.arange(4, dtype=np.float32)
    assert fit_duration(short, 10).tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert fit_duration(np.arange(20, dtype=np.float32), 5).tolist() == [0, 1, 2, 3, 4]


def test_resize_keeps_aspect_and_sets_short_side():
    img = resize_short_side(np.zeros((360, 480, 3), np.uint8), 96)
    assert img.size == (128, 96)
    portrait = resize_short_side(np.zeros((200, 100, 3), np.uint8), 50)
    assert portrait.size == (50, 100)


def test_log_mel_shape_dtype_and_pitch():
    cfg = FeatureConfig()
    t = np.arange(cfg.num_samples) / cfg.sample_rate
    mel = log_mel((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), cfg)
    assert mel.shape == cfg.mel_shape == (64, 188) and mel.dtype == np.float16
    # the loudest bin is the one whose mel band holds 440 Hz
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate)
    freqs = torch.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    assert mel.astype(np.float32).mean(1).argmax() == fb[(freqs - 440).abs().argmin()].argmax()


def _numpy_log_stft(wave, n_fft, hop):
    """An independent reference: reflect-pad n_fft / 2 each side, periodic Hann, |rfft|, log(. + 1e-7)."""
    x = np.pad(np.clip(wave.astype(np.float64), -1, 1), n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([x[i:i + n_fft] * window for i in range(0, len(x) - n_fft + 1, hop)], axis=1)  # [n_fft, L]
    return np.log(np.abs(np.fft.rfft(frames, axis=0)) + 1e-7)


def test_linear_spectrogram_is_the_official_log_stft_magnitude():
    cfg = FeatureConfig(spectrogram="linear")
    t = np.arange(cfg.num_samples) / cfg.sample_rate
    noise = 0.01 * np.random.default_rng(0).standard_normal(t.size)  # no bin at float32's rounding floor
    wave = (1.5 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)  # clipped to [-1, 1] first, as OGM-GE does
    spec = spectrogram(wave, cfg)
    assert spec.shape == cfg.mel_shape == (257, 188) and spec.dtype == np.float16
    ref = _numpy_log_stft(wave, cfg.n_fft, cfg.hop_length)
    assert ref.shape == spec.shape
    np.testing.assert_allclose(spec.astype(np.float64), ref, atol=2e-2, rtol=2e-3)  # float16 storage
    assert spec.astype(np.float32).mean(1).argmax() == round(440 * cfg.n_fft / cfg.sample_rate)  # bin 14
    assert np.array_equal(spec, log_linear(wave, cfg))
    assert np.array_equal(spectrogram(wave, FeatureConfig()), log_mel(wave, FeatureConfig()))


def test_presets_follow_the_field():
    # the official code's CREMA-D input: 257 linear-frequency bins, 3 s at 22.05 kHz, hop 353: 188 frames (OGM-GE)
    assert PRESETS["cremad"].mel_shape == (257, 188) and PRESETS["cremad"].frame_times == "seconds"
    assert PRESETS["kinetics_sounds"].mel_shape == (128, 1001)  # 10 s at 10 ms hop
    assert all(p.num_frames == 3 for p in PRESETS.values())


def test_from_params_is_strict():
    assert FeatureConfig.from_params({"duration": 3}).duration == 3.0
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['num_frame'\]"):
        FeatureConfig.from_params({"num_frame": 3})
    with pytest.raises(ValueError, match="features.num_frames: expected int, got str"):
        FeatureConfig.from_params({"num_frames": "3"})
    with pytest.raises(ValueError, match="f_max"):
        FeatureConfig(f_max=9000.0)
