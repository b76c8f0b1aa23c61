"""Paired differences between two methods over seeds, with a bootstrap interval.

Runs of two methods with the same seed share the data order and subset (and the seed of every random choice
that is not the method's), so the per-seed differences d_s = a_s - b_s are paired. The estimate is their mean;
the interval is the percentile bootstrap of that mean over seeds: with n <= 6 seeds every one of the n^n
resamples is enumerated (exact and deterministic), above that 20,000 resamples from a fixed generator. With 3
seeds there are only 10 distinct resampled means and the 95% interval lies just inside [min d_s, max d_s]
(its ends between the smallest and the next resampled mean, and likewise at the top): coarse, as three
seeds are.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from dataclasses import dataclass

EXACT_UP_TO = 6
SAMPLES = 20_000


@dataclass(frozen=True)
class Difference:
    mean: float
    low: float      # 2.5th percentile of the bootstrap means
    high: float     # 97.5th percentile
    seeds: int

    def text(self, nd: int = 2) -> str:
        return f"{self.mean:+.{nd}f} [{self.low:+.{nd}f}, {self.high:+.{nd}f}]"


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_means(values: list[float]) -> list[float]:
    n = len(values)
    if n <= EXACT_UP_TO:
        return sorted(statistics.fmean(c) for c in itertools.product(values, repeat=n))
    rng = random.Random(0)
    return sorted(statistics.fmean(rng.choices(values, k=n)) for _ in range(SAMPLES))


def paired_difference(a: dict, b: dict) -> Difference | None:
    """a, b: seed -> score. None unless at least two seeds have both."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = [a[s] - b[s] for s in seeds]
    means = bootstrap_means(d)
    return Difference(statistics.fmean(d), _percentile(means, 0.025), _percentile(means, 0.975), len(seeds))
