"""Decoding media: video frames with decord, audio with ffmpeg (through ffmpeg-python).

Every function raises :class:`MediaError` with the file and the reason when a clip cannot
be used, so the extractor can reject it and go on.
"""
from __future__ import annotations

import functools
import os
import shutil


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
