"""pipeline/media.py: the in-process WAV shortcut gives exactly ffmpeg's waveform, and declines what it cannot read."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline import media


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def via_ffmpeg(path: Path, rate: int, monkeypatch) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setattr(media, "read_pcm16_wav", lambda *a: None)
        return media.decode_audio(str(path), rate)


@pytest.mark.parametrize("n", [2, 1601, 48000])
def test_shortcut_equals_ffmpeg_bit_for_bit(tmp_path, monkeypatch, n):
    x = np.random.default_rng(n).integers(-32768, 32767, n, dtype=np.int16)
    x[:2] = [-32768, 32767]
    path = write_wav(tmp_path / "a.wav", x)
    fast = media.read_pcm16_wav(str(path), 16000)
    assert fast is not None and fast.dtype == np.float32
    assert np.array_equal(fast, via_ffmpeg(path, 16000, monkeypatch))
    assert np.array_equal(media.decode_audio(str(path), 16000), fast)


def test_shortcut_declines_what_needs_ffmpeg(tmp_path):
    x = np.arange(-400, 400, dtype=np.int16)
    cases = {
        "other_rate": write_wav(tmp_path / "r.wav", x, rate=22050),
        "stereo": write_wav(tmp_path / "s.wav", np.repeat(x, 2), channels=2),
        "8bit": write_wav(tmp_path / "u8.wav", (x % 256).astype(np.uint8), width=1),
    }
    cut = tmp_path / "cut.wav"
    cut.write_bytes(write_wav(tmp_path / "full.wav", x).read_bytes()[:-10])  # data chunk cut short
    cases["cut"] = cut
    spdif = np.frombuffer(b"\x72\xf8\x1f\x4e" * 4, dtype=np.int16)
    cases["spdif"] = write_wav(tmp_path / "sp.wav", np.concatenate([x, spdif]))
    (tmp_path / "not.wav").write_bytes(b"RIFX0000WAVE")
    cases["not_riff_wave"] = tmp_path / "not.wav"
    for name, path in cases.items():
        assert media.read_pcm16_wav(str(path), 16000) is None, name
