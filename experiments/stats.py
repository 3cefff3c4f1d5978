"""Which differences are real: paired per-seed differences and a bootstrap interval over test clips.

Two cells (e.g. ``remix`` and ``baseline`` on concat) are compared run by run at the seeds both have, on the
same test clips (every run of a grid evaluates the same test split; ``runs/<method>/eval/predictions.csv``
holds each clip's prediction):

- **per-seed paired difference**: accuracy(X, seed s) - accuracy(Y, seed s), mean ± sample std over the seeds;
- **95 % bootstrap interval over test clips, pooled over seeds**: with ``d[s, i]`` = 1{X right on clip i at
  seed s} - 1{Y right on clip i at seed s}, the statistic is the mean of ``d`` over seeds and clips (= the mean
  paired difference); clips are resampled with replacement (each resampled clip brings its column of every
  seed, so a clip that is hard for every seed counts as one unit, not as ``n_seeds`` independent ones),
  :data:`RESAMPLES` times with a fixed seed, and the interval is the 2.5th and 97.5th percentiles.

A difference is **significant** (marked ``*``) when its interval excludes zero. The interval covers the
variation over test clips at the seeds run; the per-seed std shows the variation over training seeds.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Mapping, Sequence

import numpy as np

RESAMPLES = 10_000  # bootstrap resamples of the test clips
LEVEL = 0.95  # interval coverage
SEED = 0  # the bootstrap's random generator seed: the same records give the same interval


@dataclasses.dataclass(frozen=True)
class Diff:
    """A paired difference of X over Y (accuracy fractions; formatted in points)."""

    mean: float  # mean over seeds of the per-seed differences (= the mean of d over seeds and clips)
    std: float  # sample std of the per-seed differences (nan for one seed)
    n: int  # seeds paired
    lo: float | None = None  # bootstrap interval (None: no per-clip predictions for some pair)
    hi: float | None = None
    clips: int = 0  # test clips per seed in the interval

    @property
    def significant(self) -> bool:
        return self.lo is not None and (self.lo > 0 or self.hi < 0)


def bootstrap_interval(d: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = SEED) -> tuple[float, float]:
    """Percentile interval of ``d.mean()`` for ``d`` [seeds, clips], resampling clips (columns) with replacement."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] == 0:
        raise ValueError(f"expected differences [seeds, clips] with clips > 0, got shape {d.shape}")
    per_clip = d.mean(axis=0)  # each clip's difference averaged over seeds; resampling clips keeps them whole
    rng = np.random.default_rng(seed)
    n = per_clip.size
    means = np.empty(resamples)
    for lo in range(0, resamples, 1000):  # in chunks: a [1000, clips] index matrix at a time
        idx = rng.integers(0, n, size=(min(1000, resamples - lo), n))
        means[lo:lo + idx.shape[0]] = per_clip[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired(x: Mapping[int, float], y: Mapping[int, float],
           x_clips: Mapping[int, Mapping[str, bool]] | None = None,
           y_clips: Mapping[int, Mapping[str, bool]] | None = None) -> Diff | None:
    """X over Y at the seeds both have: ``x``/``y`` map seed -> accuracy; ``x_clips``/``y_clips`` map seed ->
    {clip key: right?}. The interval needs every paired seed's clips on both sides, over the same clip keys
    (else it is left out: lo = hi = None); None when no seed is shared."""
    seeds = sorted(set(x) & set(y))
    if not seeds:
        return None
    diffs = [x[s] - y[s] for s in seeds]
    std = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
    lo = hi = None
    clips = 0
    if x_clips and y_clips and all(s in x_clips and s in y_clips for s in seeds):
        keys = sorted(x_clips[seeds[0]])
        if all(sorted(c[s]) == keys for c in (x_clips, y_clips) for s in seeds) and keys:
            d = np.array([[float(x_clips[s][k]) - float(y_clips[s][k]) for k in keys] for s in seeds])
            lo, hi = bootstrap_interval(d)
            clips = len(keys)
    return Diff(statistics.fmean(diffs), std, len(seeds), lo, hi, clips)


def fmt_diff(diff: Diff | None, scale: float = 100.0) -> str:
    """``+6.39 ± 2.10 [+3.06, +9.72]*`` (points: per-seed mean ± std, bootstrap interval, * if it excludes 0)."""
    if diff is None:
        return "—"
    text = f"{diff.mean * scale:+.2f}"
    if diff.n > 1:
        text += f" ± {diff.std * scale:.2f}"
    if diff.lo is not None:
        text += f" [{diff.lo * scale:+.2f}, {diff.hi * scale:+.2f}]" + ("*" if diff.significant else "")
    return text


def right_by_clip(rows: Sequence[Mapping[str, str]], column: str) -> dict[str, bool]:
    """{clip key: prediction ``column`` equals the label} from ``predictions.csv`` rows."""
    return {r["key"]: r[column] == r["label"] for r in rows}
