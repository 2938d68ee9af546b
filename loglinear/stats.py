r"""Statistics for rate studies: power-law exponents with bootstrap confidence intervals.

The rate of an estimator is the slope b of

.. math::  \log \mathrm{RMSE}(n) = a + b \log n,\qquad
           \mathrm{RMSE}(n) = \Big(\frac{1}{R}\sum_{r=1}^R \|\hat\theta_{n,r}-\theta\|^2\Big)^{1/2}

fitted by least squares over the grid of n. Its uncertainty comes from the seeds: a
bootstrap draws R seed indices with replacement (the same indices at every n), recomputes
RMSE(n) and refits the slope; the percentile interval of the refits is the CI.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class PowerLaw(NamedTuple):
    """y ~ exp(intercept) n^slope, fitted on log-log axes; r2 is the fit's R^2."""

    slope: float
    intercept: float
    r2: float


class ExponentCI(NamedTuple):
    """A fitted exponent with its bootstrap percentile interval.

    estimate: the slope on all seeds; lo, hi: the (1-level)/2 and (1+level)/2 percentiles
    of the bootstrap slopes; se: their standard deviation; samples: (n_boot,) slopes.
    """

    estimate: float
    lo: float
    hi: float
    se: float
    samples: np.ndarray


def fit_power_law(n, y) -> PowerLaw:
    """Least-squares line through (log n, log y); needs >= 2 distinct n and y > 0."""
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    if n.shape != y.shape or n.ndim != 1:
        raise ValueError(f"n and y must be 1-D of equal length, got {n.shape}, {y.shape}")
    if np.any(~np.isfinite(y)) or np.any(y <= 0) or np.any(n <= 0):
        raise ValueError("a power-law fit needs finite positive n and y (log scale)")
    if np.unique(n).size < 2:
        raise ValueError("a power-law fit needs at least two distinct n")
    lx, ly = np.log(n), np.log(y)
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + slope * lx)
    ss = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss if ss > 0 else 1.0
    return PowerLaw(float(slope), float(intercept), r2)


def rmse(errors, axis: int = -1) -> np.ndarray:
    """Root mean square over ``axis``, ignoring NaN (failed fits)."""
    e = np.asarray(errors, dtype=float)
    return np.sqrt(np.nanmean(e**2, axis=axis))


def _slopes(logn, table_boot):
    """Least-squares slopes of log RMSE on log n for a batch (B, N) of RMSE curves."""
    ly = np.log(table_boot)
    xc = logn - logn.mean()
    return (ly - ly.mean(axis=1, keepdims=True)) @ xc / float(xc @ xc)


def bootstrap_exponent(n, errors, *, rng: np.random.Generator, n_boot: int = 2000,
                       level: float = 0.95, stat=rmse) -> ExponentCI:
    """Exponent of ``stat`` (default RMSE over seeds) against n, with a seed bootstrap.

    Args:
        n: (N,) sample sizes.
        errors: (N, R) errors, row k for n[k], column r for seed r (NaN = missing).
        rng: the bootstrap's randomness (same rng state, same interval).
        n_boot: bootstrap replicates.
        level: confidence level of the percentile interval.
        stat: reduces (..., R) errors over the last axis to a positive scale.

    Returns:
        :class:`ExponentCI`.
    """
    n = np.asarray(n, dtype=float)
    e = np.asarray(errors, dtype=float)
    if e.ndim != 2 or e.shape[0] != n.size:
        raise ValueError(f"errors must be (len(n), seeds) = ({n.size}, R), got {e.shape}")
    if e.shape[1] < 2:
        raise ValueError("the seed bootstrap needs at least 2 seeds")
    if not 0 < level < 1 or n_boot < 10:
        raise ValueError("need 0 < level < 1 and n_boot >= 10")
    point = fit_power_law(n, stat(e)).slope
    idx = rng.integers(0, e.shape[1], size=(n_boot, e.shape[1]))
    boot = stat(e[:, idx].transpose(1, 0, 2))  # (B, N)
    ok = np.all(np.isfinite(boot) & (boot > 0), axis=1)
    if ok.sum() < n_boot // 2:
        raise ValueError("most bootstrap replicates have a zero or undefined statistic")
    slopes = _slopes(np.log(n), boot[ok])
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(slopes, [a, 1.0 - a])
    return ExponentCI(point, float(lo), float(hi), float(slopes.std(ddof=1)), slopes)


def elasticity(x, y) -> PowerLaw:
    """d log y / d log x across settings (e.g. error against 1/lambda_min)."""
    return fit_power_law(x, y)
