"""experiments.stats: paired per-seed differences and the bootstrap interval over test clips."""
import math

import numpy as np
import pytest

from experiments import stats


def test_interval_matches_the_normal_approximation_for_many_clips():
    rng = np.random.default_rng(1)
    d = rng.choice([-1.0, 0.0, 1.0], p=[0.2, 0.5, 0.3], size=(1, 2000))  # mean 0.1, std ~0.70
    lo, hi = stats.bootstrap_interval(d)
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert lo == pytest.approx(d.mean() - half, abs=0.006) and hi == pytest.approx(d.mean() + half, abs=0.006)
    assert stats.bootstrap_interval(d) == (lo, hi)  # seeded: the same records give the same interval


def test_clips_are_the_resampled_unit_not_seed_clip_pairs():
    """A clip that goes the same way at every seed is one unit: three identical seeds give the interval of one,
    not one narrower by sqrt(3) as resampling (seed, clip) pairs independently would."""
    row = np.array([[1.0, 0.0, 0.0, 1.0, -1.0, 1.0, 0.0, 1.0, 0.0, 1.0] * 10])
    assert stats.bootstrap_interval(np.vstack([row, row, row])) == pytest.approx(stats.bootstrap_interval(row))
    assert stats.bootstrap_interval(np.zeros((3, 50))) == (0.0, 0.0)
    with pytest.raises(ValueError, match="clips > 0"):
        stats.bootstrap_interval(np.zeros((2, 0)))


def _clips(bits: str) -> dict[str, bool]:
    return {f"c{i:03d}": b == "1" for i, b in enumerate(bits)}


def test_paired_differences_and_significance():
    x = {0: 0.9, 1: 0.8, 2: 0.7}
    y = {0: 0.7, 1: 0.7, 5: 0.1}  # seed 5 has no partner: left out
    diff = stats.paired(x, y)
    assert (diff.n, diff.mean, diff.lo, diff.significant) == (2, pytest.approx(0.15), None, False)
    assert diff.std == pytest.approx(math.sqrt(0.005))  # sample std of (0.2, 0.1)
    assert stats.paired({0: 0.5}, {1: 0.5}) is None
    # X right on 90 of 100 clips, Y on 50, at both seeds: a real gain, its interval above 0
    xc = {s: _clips("1" * 90 + "0" * 10) for s in (0, 1)}
    yc = {s: _clips("1" * 50 + "0" * 50) for s in (0, 1)}
    real = stats.paired({0: 0.9, 1: 0.9}, {0: 0.5, 1: 0.5}, xc, yc)
    assert real.significant and 0 < real.lo < 0.4 < real.hi and real.clips == 100
    # the same clips right and wrong on both sides, shuffled: no difference, an interval around 0
    same = stats.paired({0: 0.5}, {0: 0.5}, {0: _clips("10" * 50)}, {0: _clips("01" * 50)})
    assert same.lo < 0 < same.hi and not same.significant
    # a seed without predictions on one side, or other clip keys: no interval, the per-seed numbers stay
    assert stats.paired({0: 0.9, 1: 0.9}, {0: 0.5, 1: 0.5}, xc, {0: yc[0]}).lo is None
    assert stats.paired({0: 0.9}, {0: 0.5}, {0: _clips("1" * 90 + "0" * 10)}, {0: _clips("1" * 99)}).lo is None


def test_diff_cells():
    assert stats.fmt_diff(stats.Diff(0.13, 0.0424, 2)) == "+13.00 ± 4.24"
    assert stats.fmt_diff(stats.Diff(-0.02, math.nan, 1, -0.05, 0.01, 360)) == "-2.00 [-5.00, +1.00]"
    assert stats.fmt_diff(stats.Diff(0.05, 0.01, 3, 0.02, 0.08, 360)) == "+5.00 ± 1.00 [+2.00, +8.00]*"
    assert stats.fmt_diff(None) == "—"
    assert stats.right_by_clip([{"key": "a", "label": "HAP", "fused": "HAP"}, {"key": "b", "label": "SAD", "fused": "HAP"}],
                               "fused") == {"a": True, "b": False}
