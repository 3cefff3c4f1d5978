"""Decoding media: video frames with decord, audio with ffmpeg (through ffmpeg-python).

Every function raises :class:`MediaError` with the file and the reason when a clip cannot
be used, so the extractor can reject it and go on.

One shortcut: a plain 16-bit PCM mono WAV already at the wanted sample rate is read in-process
(:func:`read_pcm16_wav`), since for it ffmpeg does nothing but ``int16 / 32768`` (exact in
float32); starting the ffmpeg process cost ~17 ms of the ~27 ms a 3 s WAV took. Any other file,
or a WAV with anything unusual, still goes to ffmpeg, so the waveform (and the shards) are
byte-identical either way.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import struct

import numpy as np


class MediaError(Exception):
    """A clip that cannot be decoded; the message is the reject reason."""


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The ffmpeg binary: ``$AVREMIX_FFMPEG``, else imageio-ffmpeg's static build, else PATH.

    imageio-ffmpeg's build comes first because it is pinned in pyproject.toml: the
    embedded dataset's bytes then do not depend on which ffmpeg a machine has.
    """
    env = os.environ.get("AVREMIX_FFMPEG")
    if env:
        return env
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        found = shutil.which("ffmpeg")
        if found:
            return found
    raise RuntimeError("no ffmpeg: install imageio-ffmpeg or set AVREMIX_FFMPEG")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What decord reports for a video stream."""

    num_frames: int  # frames decord can index
    fps: float  # average frame rate (frames/s)
    width: int  # px
    height: int  # px

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def check_file(path: str, what: str) -> None:
    """Raise MediaError unless ``path`` is a readable, non-empty regular file."""
    if not os.path.exists(path):
        raise MediaError(f"{what} file not found")
    if not os.path.isfile(path):
        raise MediaError(f"{what} path is not a regular file")
    if not os.access(path, os.R_OK):
        raise MediaError(f"{what} file is not readable (permission denied)")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{what} file is empty (0 bytes)")


FRAME_TIMES = ("centres", "seconds")  # which frames extraction keeps: see frame_indices


def frame_indices(info: VideoInfo, num_frames: int, times: str = "centres") -> list[int]:
    """Indices of the ``num_frames`` frames kept of a clip.

    ``centres``: evenly spaced times, the centres of equal segments; for a 3 s clip and 3 frames that is 0.5 s,
    1.5 s and 2.5 s. ``seconds``: the frames nearest 0 s, 1 s, 2 s, ... (what ``ffmpeg -r 1`` keeps, the field's
    1 fps extraction that the official code reads), the last frame repeated for a clip shorter than that.
    """
    if times == "seconds":
        return [min(round(i * info.fps), info.num_frames - 1) for i in range(num_frames)]
    if times != "centres":
        raise ValueError(f"times: one of {FRAME_TIMES}, got {times!r}")
    centres = [(i + 0.5) * info.duration_s / num_frames for i in range(num_frames)]
    return [min(int(t * info.fps), info.num_frames - 1) for t in centres]


def decode_frames(path: str, num_frames: int, times: str = "centres") -> tuple[np.ndarray, VideoInfo]:
    """Decode ``num_frames`` RGB frames of a video with decord, at the times of :func:`frame_indices`.

    Returns (frames [T, H, W, 3] uint8, info). Raises MediaError for a missing,
    unreadable, corrupt or too short video.
    """
    import decord

    check_file(path, "video")
    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        h, w = vr[0].shape[:2]
        info = VideoInfo(num_frames=len(vr), fps=float(vr.get_avg_fps()), width=w, height=h)
        if info.num_frames < num_frames:
            raise MediaError(
                f"video has {info.num_frames} decodable frame(s), fewer than num_frames={num_frames} (truncated?)"
            )
        frames = vr.get_batch(frame_indices(info, num_frames, times)).asnumpy()  # [T, H, W, 3]
    except MediaError:
        raise
    except (RuntimeError, OSError, IndexError, AssertionError, decord.DECORDError) as e:  # corrupt input: RuntimeError
        # or DECORDError (a plain Exception); decord asserts num_frames > 0 on some truncated files
        raise MediaError(f"video cannot be decoded: {_first_line(e)}") from None
    return frames, info


def decode_audio(path: str, sample_rate: int) -> np.ndarray:
    """Decode the first audio stream of ``path`` to mono float32 at ``sample_rate`` with ffmpeg.

    Returns the waveform [S]. Raises MediaError for a missing file, no audio track,
    undecodable or zero-length audio.
    """
    import ffmpeg

    check_file(path, "audio")
    wave = read_pcm16_wav(path, sample_rate)
    if wave is not None:
        return wave
    try:
        out, _ = (
            ffmpeg.input(path)
            .output("pipe:", map="0:a:0", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate)
            .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1")
            .run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
        )
    except ffmpeg.Error as e:
        msg = e.stderr.decode("utf-8", "replace")
        if "matches no streams" in msg:
            raise MediaError("no audio track") from None
        raise MediaError(f"audio cannot be decoded: {_first_line(msg)}") from None
    wave = np.frombuffer(out, dtype="<f4").copy()  # [S]
    if wave.size == 0:
        raise MediaError("audio has zero length")
    return wave


def read_pcm16_wav(path: str, sample_rate: int) -> np.ndarray | None:
    """The samples of a plain 16-bit PCM mono WAV at ``sample_rate``, as float32 [S]; else None.

    Returns exactly what :func:`decode_audio`'s ffmpeg command gives for such a file (no
    resampling, no downmix; s16 -> float32 is ``x / 32768``, exact). None, leaving the file to
    ffmpeg, for anything else: another format, rate, channel count or sample format
    (WAVE_FORMAT_EXTENSIBLE included), no or empty ``data`` chunk, a second ``fmt `` or ``data``
    chunk, a chunk cut short, trailing bytes, an S/PDIF sync word in the samples (ffmpeg would
    probe it as a compressed bitstream), or a read error.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] != b"RIFF" or head[8:] != b"WAVE":
                return None
            rest = f.read()  # the chunks
    except OSError:
        return None
    pos, fmt, pcm = 0, None, None
    while pos + 8 <= len(rest):
        tag, size = rest[pos:pos + 4], int.from_bytes(rest[pos + 4:pos + 8], "little")
        body = rest[pos + 8:pos + 8 + size]
        if len(body) != size:
            return None
        if tag == b"fmt ":
            if fmt is not None:
                return None
            fmt = body
        elif tag == b"data":
            if pcm is not None or fmt is None:
                return None
            pcm = body
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    if pos < len(rest) or fmt is None or len(fmt) < 16 or not pcm or len(pcm) % 2 or SPDIF_SYNC in pcm:
        return None
    if struct.unpack("<HHIIHH", fmt[:16]) != (1, 1, sample_rate, 2 * sample_rate, 2, 16):
        return None  # format tag PCM, 1 channel, rate, byte rate, block align, bits per sample
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)  # [S]


SPDIF_SYNC = b"\x72\xf8\x1f\x4e"  # IEC 61937 preamble as ffmpeg's WAV demuxer probes it in PCM data


def _first_line(e: object) -> str:
    """The first line of an error, without ffmpeg's ``[ctx @ 0xADDR]`` (it changes run to run)."""
    text = re.sub(r"\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]
