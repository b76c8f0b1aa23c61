"""gnlorp/paired.py: the interval's coverage simulated at the seeds used, the sign test and the t quantile by hand,
and the verdict words derived from the interval alone."""

from __future__ import annotations

import math
import random

import pytest

from gnlorp.paired import (
    AHEAD, BEHIND, NO_DIFFERENCE, POWER, detectable, paired_difference, sign_test, t_quantile, verdict,
)


@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("shift", [0.0, 1.5])
def test_the_95_interval_covers_the_true_mean_95_percent_of_the_time(n, shift):
    rng = random.Random(n * 100 + int(shift * 10))
    sets = 4000
    covered = 0
    for _ in range(sets):
        a = {s: rng.gauss(shift, 1.0) + 10.0 for s in range(n)}
        b = {s: 10.0 for s in range(n)}
        d = paired_difference(a, b)
        covered += d.low <= shift <= d.high
    assert abs(covered / sets - 0.95) <= 0.02, covered / sets  # binomial sd 0.0034: a 6-sd band


def test_the_t_quantiles_of_the_tables():
    # Student's t table: t(0.975, df)
    for df, want in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)]:
        assert t_quantile(0.975, df) == pytest.approx(want, abs=1e-3)


def test_the_issues_example_by_hand():
    # per-seed differences -2.40, -0.35, -1.01: mean -1.2533, sd 1.0467, half-width 4.303 * 1.0467 / sqrt(3)
    d = paired_difference({0: -2.40, 1: -0.35, 2: -1.01}, {0: 0.0, 1: 0.0, 2: 0.0})
    sd = math.sqrt(((-2.40 + 1.2533333) ** 2 + (-0.35 + 1.2533333) ** 2 + (-1.01 + 1.2533333) ** 2) / 2)
    half = t_quantile(0.975, 2) * sd / math.sqrt(3)
    assert d.per_seed == pytest.approx((-2.40, -0.35, -1.01))
    assert (d.low, d.high) == pytest.approx((-1.2533333 - half, -1.2533333 + half))
    assert d.text() == "-1.25 [-3.85, +1.35]" and d.p_sign == 0.25 and verdict(d) == NO_DIFFERENCE


def test_sign_test_by_hand():
    assert sign_test([1, 2, 3]) == 0.25                     # 2 * (1/8)
    assert sign_test([1, 2, 3, 4, 5]) == 0.0625             # 2 * (1/32)
    assert sign_test([1, -2, 3, 4, 5]) == 2 * 6 / 32        # 2 * (1 + 5) / 32
    assert sign_test([0, 0]) == 1.0 and sign_test([1, -1]) == 1.0


def test_verdict_words_come_from_the_interval():
    ahead = paired_difference({0: 3.0, 1: 3.2, 2: 2.9}, {0: 1.0, 1: 1.1, 2: 0.8})
    assert ahead.low > 0 and verdict(ahead) == AHEAD and verdict(ahead, higher_is_better=False) == BEHIND
    behind = paired_difference({0: 1.0, 1: 1.1, 2: 0.8}, {0: 3.0, 1: 3.2, 2: 2.9})
    assert verdict(behind) == BEHIND and verdict(None) == NO_DIFFERENCE
    assert paired_difference({0: 1.0}, {0: 0.0}) is None  # one seed in common: no interval


@pytest.mark.parametrize("n", [3, 5, 10])
def test_a_true_difference_of_the_detectable_size_is_found_80_percent_of_the_time(n):
    """detectable(sd, n): simulate differences of that true mean and sd 1; the interval excludes 0 in 80% ± 2%."""
    shift = detectable(1.0, n)
    rng = random.Random(7 + n)
    sets = 4000
    found = 0
    for _ in range(sets):
        d = paired_difference({s: rng.gauss(shift, 1.0) for s in range(n)}, {s: 0.0 for s in range(n)})
        found += d.low > 0 or d.high < 0
    assert abs(found / sets - POWER) <= 0.02, (shift, found / sets)  # binomial sd 0.0063


def test_detectable_by_hand_for_many_seeds():
    # large n: the t quantiles tend to the normal's, (1.960 + 0.842) * sd / sqrt(n)
    assert detectable(2.0, 400) == pytest.approx((1.95996 + 0.84162) * 2.0 / 20.0, rel=5e-3)
    assert detectable(0.0, 5) == 0.0 and detectable(1.0, 1) == math.inf
