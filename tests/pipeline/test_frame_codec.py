"""features.frame_codec: raw uint8 frames (frame<i>.npy) against JPEG frames (frame<i>.jpg) of the same clips."""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.features import ExtractConfig, FeatureConfig, resize_short_side
from pipeline.media import decode_frames
from pipeline.params import ConfigError
from pipeline.shards import IndexReader, frame_codec_of
from tests.pipeline.test_extract import CFG, prepare, run

RAW = dataclasses.replace(CFG, frame_codec="raw")


@pytest.fixture(scope="module")
def both(cremad_raw, tmp_path_factory) -> dict[str, tuple[IndexReader, dict]]:
    """The tiny CREMA-D tree extracted with each codec: codec -> (index, stats)."""
    out = tmp_path_factory.mktemp("frame_codec")
    manifest, classes = prepare(cremad_raw, "cremad", out)
    res = {}
    for codec, cfg in (("jpeg", CFG), ("raw", RAW)):
        stats = run(manifest, classes, out / codec, config=cfg)
        res[codec] = (IndexReader(out / codec / "index.h5"), stats)
    return res


def test_members_and_codec_are_self_describing(both):
    (jpg, jpg_stats), (raw, raw_stats) = both["jpeg"], both["raw"]
    assert jpg.frame_members == ("frame0.jpg", "frame1.jpg") and jpg.frame_codec == "jpeg"
    assert raw.frame_members == ("frame0.npy", "frame1.npy") and raw.frame_codec == "raw"
    assert raw.members == ("json", "cls", "mel.npy", "frame0.npy", "frame1.npy") == RAW.members
    assert (jpg_stats["frame_codec"], raw_stats["frame_codec"]) == ("jpeg", "raw")
    assert jpg.feature_params["frame_codec"] == "jpeg" and raw.feature_params["frame_codec"] == "raw"
    assert raw_stats["samples"] == jpg_stats["samples"]
    assert raw_stats["bytes"]["total"] > jpg_stats["bytes"]["total"]  # no compression (tiny frames here: tar blocks and mels dominate)
    assert [frame_codec_of(m) for m in ("frame3.jpg", "frame10.npy", "mel.npy", "json", "frameX.jpg")] == \
        ["jpeg", "raw", None, None, None]


def test_raw_frames_are_the_resized_frames_exactly_and_the_jpegs_within_tolerance(both):
    jpg, raw = both["jpeg"][0], both["raw"][0]
    assert list(jpg.keys) == list(raw.keys)
    for row in range(len(raw)):
        meta = json.loads(raw.read_member(row, "json"))
        decoded, _ = decode_frames(meta["video"], RAW.num_frames)  # what extraction resized and encoded
        for t in range(RAW.num_frames):
            frame = np.load(io.BytesIO(raw.read_member(row, f"frame{t}.npy")), allow_pickle=False)
            assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
            assert min(frame.shape[:2]) == RAW.short_side
            np.testing.assert_array_equal(frame, np.asarray(resize_short_side(decoded[t], RAW.short_side)))
            jpeg = np.asarray(Image.open(io.BytesIO(jpg.read_member(row, f"frame{t}.jpg"))).convert("RGB"))
            assert jpeg.shape == frame.shape
            diff = np.abs(jpeg.astype(np.int16) - frame)
            # quality 90 on tiny frames with per-pixel noise and 4:2:0 chroma: a few levels of 255 on average
            assert diff.mean() < 6.0 and np.median(diff) <= 4, (row, t, diff.mean())


def test_frame_codec_is_checked_and_named():
    with pytest.raises(ConfigError, match=r"^features\.frame_codec: must be one of jpeg \| raw, got 'png'"):
        FeatureConfig(frame_codec="png")
    assert ExtractConfig(frame_codec="raw").features.frame_codec == "raw"
