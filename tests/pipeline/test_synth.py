"""The embedded dataset generator: layouts, decodability, determinism and the designed cues."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import re
import subprocess
import wave
from pathlib import Path

import decord
import numpy as np
import pytest

from pipeline import synth
from pipeline.media import ffmpeg_exe
from pipeline.synth import SynthConfig, generate

# 6 classes x 4 clips (1 ambiguous, 1 misleading, 2 clean each) at a small frame size
SMALL = SynthConfig(num_classes=6, clips_per_class=4, actors=2, min_duration_s=1.0, max_duration_s=1.6,
                    width=96, height=72, fps=12, clutter=4, ambiguous_fraction=0.25,
                    misleading_fraction=0.25, workers=1)
# the same format with the signal knobs at their defaults (what a difficulty profile may set), and the profile
FORMAT = SynthConfig(num_classes=6, clips_per_class=6, actors=3, min_duration_s=1.0, max_duration_s=1.6,
                     width=96, height=72, fps=12, workers=1)
CREMAD_LIKE = dataclasses.replace(FORMAT, difficulty="cremad_like")
KINETICS = dataclasses.replace(SMALL, layout="kinetics_sounds", num_classes=3, clips_per_class=3,
                               test_fraction=0.34, width=64, height=48)
ID_RE = re.compile(r"^(10\d\d)_(IEO|TIE|IOM|IWW|TAI|MTI|IWL|ITH|DFA|ITS|TSI|WSI)_(NEU|HAP|SAD|FEA|DIS|ANG)_(LO|MD|HI|XX)$")
KS_RE = re.compile(r"^[A-Za-z0-9_-]{11}_(\d{6})_(\d{6})$")


def _gen(tmp_path_factory, name: str, seed: int, config: SynthConfig) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp(name) / "raw"
    return root, generate(out_dir=root, seed=seed, config=config)


@pytest.fixture(scope="module")
def cremad(tmp_path_factory):
    return _gen(tmp_path_factory, "cremad1", 0, SMALL)


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    return _gen(tmp_path_factory, "ks", 0, KINETICS)


def _truth(root: Path) -> list[dict]:
    with open(root / synth.TRUTH_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and tuple(rows[0]) == synth.TRUTH_FIELDS
    return rows


def _read_wav(path: Path) -> tuple[np.ndarray, int, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        return x, w.getframerate(), w.getnchannels()


def _md5s(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _peak_hz(x: np.ndarray, sr: int, lo: float = 80.0, hi: float = 1000.0) -> tuple[float, float]:
    """Frequency of the strongest FFT bin in [lo, hi] Hz, and its power over the band's median (tonality)."""
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    band = (f >= lo) & (f <= hi)
    i = power[band].argmax()
    return float(f[band][i]), float(power[band][i] / np.median(power[band]))


def _stripe_angle(path: Path, period_px: float) -> float:
    """Dominant wave-vector angle (deg, mod 180) near the stripe frequency in frame differences.

    Differencing consecutive frames cancels the static background (and its distractor stripes),
    leaving the moving, phase-drifting stripes of the face disk.
    """
    v = decord.VideoReader(str(path))
    g = v.get_batch(list(range(len(v)))).asnumpy().astype(np.float32).mean(-1)  # (T, H, W) grey
    d = g[1:] - g[:-1]  # (T-1, H, W)
    h, w = d.shape[1:]
    P = (np.abs(np.fft.fft2(d * np.outer(np.hanning(h), np.hanning(w)))) ** 2).mean(0)  # (H, W)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None]
    r = np.hypot(fx, fy)
    P = np.where((r > 0.75 / period_px) & (r < 1.33 / period_px), P, 0)
    iy, ix = np.unravel_index(P.argmax(), P.shape)
    return math.degrees(math.atan2(fy[iy, 0], fx[0, ix])) % 180


# ----------------------------------------------------------------------------- cremad layout


def test_cremad_layout_ids_and_truth(cremad):
    root, summary = cremad
    flv = sorted(p.stem for p in (root / "VideoFlash").iterdir())
    wav = sorted(p.stem for p in (root / "AudioWAV").iterdir())
    assert flv == wav and len(flv) == 24 == summary["clips"]
    assert all(p.suffix == ".flv" for p in (root / "VideoFlash").iterdir())
    parsed = [ID_RE.match(i) for i in flv]
    assert all(parsed), [i for i, m in zip(flv, parsed) if not m]
    assert all(m[4] == "XX" for m in parsed if m[3] == "NEU")
    assert {m[3] for m in parsed} == set(synth.CREMAD_EMOTIONS)
    actors = {m[1] for m in parsed}
    assert actors == {"1001", "1002"}
    for a in actors:  # every actor has clips of every class
        assert {m[3] for m in parsed if m[1] == a} == set(synth.CREMAD_EMOTIONS)
    rows = _truth(root)
    assert sorted(r["clip_id"] for r in rows) == flv
    assert summary["per_kind"] == {"clean": 12, "ambiguous": 6, "misleading": 6}
    for r in rows:
        assert r["clip_id"].split("_")[2] == r["class_name"]
        if r["audio_kind"] == "clean":
            assert r["audio_class_name"] == r["class_name"]
        elif r["audio_kind"] == "misleading":
            assert r["audio_class_name"] in synth.CREMAD_EMOTIONS and r["audio_class_name"] != r["class_name"]
        else:
            assert r["audio_kind"] == "ambiguous" and r["audio_class_name"] == ""
    assert not list(root.rglob("*.tmp"))


def test_cremad_media_decode(cremad):
    root, _ = cremad
    for wav_path in sorted((root / "AudioWAV").iterdir()):
        x, sr, ch = _read_wav(wav_path)
        assert (sr, ch) == (16000, 1)
        assert len(x) > 0 and np.abs(x).max() > 0.1  # never silent
        dur = len(x) / sr
        assert SMALL.min_duration_s - 0.1 <= dur <= SMALL.max_duration_s + 0.1
        vr = decord.VideoReader(str(root / "VideoFlash" / f"{wav_path.stem}.flv"))
        assert vr[0].shape == (SMALL.height, SMALL.width, 3)
        assert vr.get_avg_fps() == pytest.approx(SMALL.fps, rel=0.01)
        assert abs(len(vr) - dur * SMALL.fps) <= 1


def test_flv_codec_is_flv1(cremad):
    root, _ = cremad
    path = next((root / "VideoFlash").iterdir())
    info = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
    assert "Video: flv1" in info and "Audio:" not in info


# ----------------------------------------------------------------------------- kinetics layout


def test_kinetics_layout_and_media(kinetics):
    root, summary = kinetics
    names = synth.KINETICS_SOUNDS_CLASSES[:3]
    files = sorted(root.rglob("*.mp4"))
    assert len(files) == 9 and summary["per_split"] == {"test": 3, "train": 6}
    rows = {r["clip_id"]: r for r in _truth(root)}
    for f in files:
        split, cls = f.parent.parent.name, f.parent.name
        assert split in ("train", "test") and cls in names
        m = KS_RE.match(f.stem)
        assert m and int(m[2]) > int(m[1]), f.name
        assert rows[f.stem]["class_name"] == cls
        vr = decord.VideoReader(str(f))
        assert vr[0].shape == (KINETICS.height, KINETICS.width, 3) and len(vr) >= KINETICS.min_duration_s * KINETICS.fps - 1
        info = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(f)], capture_output=True, text=True).stderr
        assert re.search(r"Video: h264.*yuv420p", info) and "Audio: aac" in info, info
        pcm = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(f), "-f", "f32le", "-ac", "1", "-ar", "16000", "pipe:"],
                             capture_output=True, check=True).stdout
        x = np.frombuffer(pcm, np.float32)
        assert len(x) >= 16000 * KINETICS.min_duration_s * 0.9 and np.abs(x).max() > 0.1
    assert {f.parent.name for f in files} == set(names)


def test_all_kinetics_sounds_classes_have_distinct_cues():
    assert len(synth.KINETICS_SOUNDS_CLASSES) == len(set(synth.KINETICS_SOUNDS_CLASSES)) == 31
    assert "playing bagpipes" in synth.KINETICS_SOUNDS_CLASSES
    K = 31
    audio = {tuple(synth.audio_cue(c, K).values()) for c in range(K)}
    video = {tuple(synth.video_cue(c, K).values()) for c in range(K)}
    assert len(audio) == len(video) == K


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_any_workers(cremad, tmp_path_factory):
    root, _ = cremad
    other, _ = _gen(tmp_path_factory, "cremad2", 0, dataclasses.replace(SMALL, workers=2))
    assert _md5s(root) == _md5s(other)


def test_kinetics_same_bytes_any_workers(kinetics, tmp_path_factory):
    root, _ = kinetics
    other, _ = _gen(tmp_path_factory, "ks2", 0, dataclasses.replace(KINETICS, workers=2))
    assert _md5s(root) == _md5s(other)


def test_difficulty_profile_same_bytes_any_workers(tmp_path_factory):
    one, _ = _gen(tmp_path_factory, "like1", 0, CREMAD_LIKE)
    two, _ = _gen(tmp_path_factory, "like2", 0, dataclasses.replace(CREMAD_LIKE, workers=2))
    assert _md5s(one) == _md5s(two)


def test_difficulty_changes_the_bytes(tmp_path_factory):
    """The profile changes the clips it should, and only those: the same names (the plan's ids do not depend on
    the signal knobs); a clip's video differs when the profile changes what every frame shows or the clip's video
    kind, its audio when the profile changes the noise or the clip's audio cue, and is the same otherwise."""
    custom, _ = _gen(tmp_path_factory, "custom", 0, FORMAT)
    like, summary = _gen(tmp_path_factory, "like3", 0, CREMAD_LIKE)
    a, b = _md5s(custom), _md5s(like)
    assert set(a) == set(b) and a[synth.TRUTH_FILE] != b[synth.TRUTH_FILE]
    frames_change = any(getattr(FORMAT, k) != getattr(CREMAD_LIKE, k) for k in ("video_contrast", "video_noise", "clutter"))
    noise_changes = FORMAT.audio_snr_db != CREMAD_LIKE.audio_snr_db
    before = {r["clip_id"]: r for r in _truth(custom)}
    flv = wav = 0
    for r in _truth(like):
        old, cid = before[r["clip_id"]], r["clip_id"]
        video_differs = a[f"VideoFlash/{cid}.flv"] != b[f"VideoFlash/{cid}.flv"]
        assert video_differs == (frames_change or old["video_kind"] != r["video_kind"]), r
        audio_same = (old["audio_kind"], old["audio_class_name"]) == (r["audio_kind"], r["audio_class_name"])
        audio_differs = a[f"AudioWAV/{cid}.wav"] != b[f"AudioWAV/{cid}.wav"]
        assert audio_differs == (noise_changes or not audio_same), r
        flv, wav = flv + video_differs, wav + audio_differs
    assert flv and wav  # the profile makes both modalities harder
    n = CREMAD_LIKE.clips_per_class
    assert summary["per_video_kind"]["ambiguous"] == FORMAT.num_classes * round(CREMAD_LIKE.video_ambiguous_fraction * n)


def test_other_seed_other_bytes(cremad, tmp_path_factory):
    root, _ = cremad
    other, _ = _gen(tmp_path_factory, "cremad3", 1, SMALL)
    a, b = _md5s(root), _md5s(other)
    shared = set(a) & set(b)
    assert all(a[k] != b[k] for k in shared if k != synth.TRUTH_FILE)
    assert a != b


# ----------------------------------------------------------------------------- the designed cues


def test_audio_carries_the_designed_class(cremad):
    """Clean and misleading clips peak at their audio class's f0; ambiguous ones at no class's f0 (or are noise)."""
    root, _ = cremad
    names = list(synth.CREMAD_EMOTIONS)
    f0 = np.array([synth.audio_cue(c, 6)["f0"] for c in range(6)])
    kinds = set()
    for r in _truth(root):
        x, sr, _ = _read_wav(root / "AudioWAV" / f"{r['clip_id']}.wav")
        peak, tonality = _peak_hz(x, sr)
        dist = np.abs(np.log(peak / f0))  # (6,) log-distance to every class pitch
        if r["audio_kind"] == "ambiguous":
            kinds.add("noise" if tonality < 100 else "between")
            assert tonality < 100 or dist.min() > 0.05, r
        else:
            assert tonality > 1000 and dist.argmin() == names.index(r["audio_class_name"]) and dist.min() < 0.03, r
    assert kinds == {"noise", "between"}


def test_audio_kind_changes_only_the_audio(tmp_path):
    """Same clip, different audio kind: the video is the same, the audio differs."""
    clip = synth._plan(0, SMALL)[0]
    a, b = (dataclasses.replace(clip, kind=k, audio_label=al) for k, al in (("clean", 0), ("misleading", 4)))
    out = {}
    for name, c in (("a", a), ("b", b)):
        (tmp_path / name / "VideoFlash").mkdir(parents=True)
        (tmp_path / name / "AudioWAV").mkdir()
        synth._render((c, SMALL, 0, str(tmp_path / name)))
        out[name] = {p.parent.name: p.read_bytes() for p in (tmp_path / name).rglob("*.*")}
    assert out["a"]["VideoFlash"] == out["b"]["VideoFlash"]
    assert out["a"]["AudioWAV"] != out["b"]["AudioWAV"]


def test_video_carries_the_class_angle_with_a_random_sign(cremad):
    """The moving disk's stripe angle, measured on decoded frames, is its class's up to sign (flip-invariant)."""
    root, _ = cremad
    names = list(synth.CREMAD_EMOTIONS)
    hits, signs = 0, set()
    rows = _truth(root)
    for r in rows:
        c = names.index(r["class_name"])
        cue = synth.video_cue(c, 6)
        angle = _stripe_angle(root / "VideoFlash" / f"{r['clip_id']}.flv", cue["period"] * SMALL.height)
        folded = min(angle, 180 - angle)  # angle to the x axis, sign dropped
        hits += abs(folded - math.degrees(cue["angle"])) < 10
        if 15 < folded < 75:
            signs.add(angle < 90)
    assert hits >= 0.9 * len(rows)
    assert signs == {True, False}  # both signs occur: a flip maps every class onto itself


def test_ambiguous_video_cue_tells_nothing_of_the_label():
    """An ambiguous clip's disk shows no stripes or stripes half-way between two class angles, at the period of a
    random class: what it shows has the same distribution for every label."""
    K, draws = 6, 3000
    seen = []
    for label in range(K):
        rng = np.random.default_rng([7, label])
        cues = [synth.clip_video_cue(rng, "ambiguous", label, K) for _ in range(draws)]
        plain = sum(c is None for c in cues) / draws
        shown = [(round(math.degrees(c["angle"])), c["period"]) for c in cues if c is not None]
        assert 0.45 < plain < 0.55 and {a for a, _ in shown} == {15, 45, 75}
        seen.append({k: shown.count(k) / len(shown) for k in set(shown)})
        assert synth.clip_video_cue(rng, "clean", label, K) == synth.video_cue(label, K)
    keys = set(seen[0])
    assert all(set(f) == keys for f in seen) and len(keys) == 3 * len({synth.video_cue(c, K)["period"] for c in range(K)})
    for k in keys:  # each (angle, period) equally frequent whatever the label
        assert max(f[k] for f in seen) - min(f[k] for f in seen) < 0.05, k


def test_video_kind_changes_only_the_video(tmp_path):
    """Same clip, clean or ambiguous video: the audio is the same; the video differs, and only inside the disk."""
    clip = synth._plan(0, SMALL)[0]
    out = {}
    for kind in synth.VIDEO_KINDS:
        d = tmp_path / kind
        (d / "VideoFlash").mkdir(parents=True)
        (d / "AudioWAV").mkdir()
        synth._render((dataclasses.replace(clip, video_kind=kind), SMALL, 0, str(d)))
        out[kind] = {p.parent.name: p.read_bytes() for p in d.rglob("*.*")}
    assert out["clean"]["AudioWAV"] == out["ambiguous"]["AudioWAV"]
    assert out["clean"]["VideoFlash"] != out["ambiguous"]["VideoFlash"]
    frames = {cue: synth.synth_video(np.random.default_rng([0, 1]), SMALL, 6, None if cue == "plain" else synth.video_cue(2, 6))
              for cue in ("plain", "class")}
    diff = np.abs(frames["plain"].astype(int) - frames["class"].astype(int)).max(-1)  # (T, H, W)
    changed = (diff > 0).mean((1, 2))  # share of each frame's pixels
    assert (changed > 0.05).all() and (changed < np.pi * (0.28 * 1.1 * SMALL.height + 3) ** 2 / diff[0].size).all()


def test_video_cues_survive_a_horizontal_flip():
    """Flipping maps a wave-vector angle a to pi - a, which folds back to the same class; classes stay distinct."""
    for K in (6, 8, 31):
        cues = [synth.video_cue(c, K) for c in range(K)]
        assert len({(round(c["angle"], 6), c["period"]) for c in cues}) == K
        for c in cues:
            flipped = math.pi - c["angle"]
            assert math.isclose(min(flipped, math.pi - flipped), c["angle"])
    periods = sorted({synth.video_cue(c, 8)["period"] for c in range(8)})
    assert periods[1] / periods[0] >= 1.7  # farther apart than a random resized crop rescales


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("field,value", [
    ("layout", "ucf101"), ("num_classes", 7), ("num_classes", 1), ("clips_per_class", 0),
    ("actors", 0), ("actors", 92), ("test_fraction", 1.0), ("min_duration_s", 0.0),
    ("max_duration_s", 0.5), ("width", 161), ("height", 8), ("fps", 0), ("sample_rate", 100),
    ("audio_snr_db", float("nan")), ("video_contrast", 0.0), ("video_noise", -0.1),
    ("ambiguous_fraction", 1.5), ("misleading_fraction", 0.9), ("clutter", -1),
    ("video_quality", 40), ("workers", 0), ("num_classes", 2.0), ("clips_per_class", True),
    ("difficulty", "hard"), ("difficulty", None), ("video_ambiguous_fraction", 1.5),
    ("video_ambiguous_fraction", -0.1),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^synth\.{field}: "):  # refused when built: nothing can be generated
        dataclasses.replace(SMALL, **{field: value})


def test_difficulty_profile_sets_its_knobs_and_refuses_others():
    profile = synth.DIFFICULTIES["cremad_like"]
    assert profile and all(getattr(CREMAD_LIKE, k) == v for k, v in profile.items())
    assert any(getattr(FORMAT, k) != v for k, v in profile.items())  # it changes something
    copy = dataclasses.replace(CREMAD_LIKE, workers=2)  # a built profile config rebuilds (its knobs hold the profile's)
    assert all(getattr(copy, k) == v for k, v in profile.items())
    custom = dataclasses.replace(CREMAD_LIKE, difficulty="custom")  # custom: the knobs as they are
    assert all(getattr(custom, k) == v for k, v in profile.items())
    for key, value in profile.items():  # a knob away from both its default and the profile's value: refused
        default = next(f.default for f in dataclasses.fields(SynthConfig) if f.name == key)
        other = next(x for x in ((1, 2, 3) if type(default) is int else (0.45, 0.35, 0.3))
                     if x not in (default, value))  # within every knob's range and cross-key rules
        with pytest.raises(ValueError, match=rf"^synth\.{key}: difficulty cremad_like sets it"):
            dataclasses.replace(FORMAT, difficulty="cremad_like", **{key: other})
        dataclasses.replace(FORMAT, **{key: other})  # fine with custom (within range)
    assert SynthConfig.from_params({"difficulty": "cremad_like"}) == SynthConfig(difficulty="cremad_like")


def test_kinetics_num_classes_limit_and_cremad_ids(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        dataclasses.replace(KINETICS, num_classes=32)
    dataclasses.replace(KINETICS, num_classes=31)
    with pytest.raises(ValueError, match="num_classes: must be <= 6 for layout cremad"):
        dataclasses.replace(KINETICS, layout="cremad", num_classes=7)
    with pytest.raises(ValueError, match="clips_per_class"):  # NEU: only 12 sentences per actor
        dataclasses.replace(SMALL, actors=1, clips_per_class=13)


def test_refuses_non_empty_out_dir(tmp_path):
    (tmp_path / "stale.flv").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        generate(out_dir=tmp_path, seed=0, config=SMALL)


def test_bad_seed(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        generate(out_dir=tmp_path / "x", seed=-1, config=SMALL)
