"""Confidence intervals for evaluation numbers: percentile bootstrap over samples, Wilson for proportions.

Every bootstrapped statistic here is a ratio of sums over samples (a mean is one with unit denominators),
so one draw of sample indices serves several statistics at once and keeps paired quantities paired. A
share of successes gets the Wilson score interval instead, which stays honest at 0 % and 100 % where a
bootstrap collapses to a point.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import torch


def check_settings(resamples: int, level: float) -> None:
    """Fail early (before a long evaluation) on settings no interval can be computed with."""
    _check_resamples(resamples)
    _check_level(level)


def _check_resamples(resamples: int) -> None:
    if resamples < 1:
        raise ValueError(f"bootstrap needs resamples >= 1, got {resamples}")


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"an interval's level needs 0 < level < 1, got {level}")


def resample_indices(samples: int, resamples: int, seed: int) -> torch.Tensor:
    """(resamples, samples) indices drawn with replacement, reproducible from ``seed``."""
    if samples < 1:
        raise ValueError(f"bootstrap needs samples >= 1, got {samples}")
    _check_resamples(resamples)
    return torch.randint(samples, (resamples, samples), generator=torch.Generator().manual_seed(seed))


def ratio_of_sums(numerators: list[float], denominators: list[float], draws: torch.Tensor) -> torch.Tensor:
    """sum(numerators) / sum(denominators) over each draw's samples: (resamples,)."""
    num = torch.tensor(numerators, dtype=torch.float64)[draws].sum(1)
    den = torch.tensor(denominators, dtype=torch.float64)[draws].sum(1)
    return num / den.clamp_min(1e-300)


def percentile_interval(values: torch.Tensor, level: float) -> list[float]:
    """The central ``level`` interval of bootstrap ``values``: [low, high]."""
    _check_level(level)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    return values.to(torch.float64).quantile(q).tolist()


def wilson_interval(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion, as fractions; (0, 1) when there were no trials."""
    _check_level(level)
    if total == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = successes / total
    scale = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / scale
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)
