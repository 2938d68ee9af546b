r"""The two-level bootstrap of the rates study: environment draws, then seeds within a draw.

A group of the study (setting, estimator, schedule) holds errors e[k, d, r] at sample size
n_k, environment draw d and seed r. Draws are the outer level of the design (each draw is
its own environment, with its own target and its own lambda_min), seeds the inner one. A
replicate of the bootstrap resamples D draws with replacement and, within each resampled
draw, R seeds with replacement (the same indices at every n, as
:func:`loglinear.stats.bootstrap_exponent` does for one level), then recomputes the pooled
statistic

.. math::  \mathrm{RMSE}(n_k) = \Big(\frac{1}{DR}\sum_{d,r} e_{k,d,r}^2\Big)^{1/2}

and the least-squares slope of log RMSE on log n (the exponent), or, across settings and
draws, the slope of log RMSE on log x (an elasticity, x = 1/lambda_min or tr H^{-1}). The
interval is the percentile interval of the replicates. With one draw it reduces to the
seed bootstrap of :func:`loglinear.stats.bootstrap_exponent`.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from ...data import as_generator
from ...stats import fit_power_law, rmse

MIN_VALID = 0.5  # at least this share of replicates must have a finite positive statistic


class TwoLevelFit(NamedTuple):
    """A slope with its two-level bootstrap interval.

    estimate: the slope on all draws and seeds; lo, hi: the percentile interval; se: the
    replicates' standard deviation; r2, intercept: R^2 and intercept of the point fit on
    log-log axes (log stat = intercept + estimate log x); curve: (K,)
    the pooled statistic at each point; curve_lo, curve_hi: (K,) its percentile interval.
    """

    estimate: float
    lo: float
    hi: float
    se: float
    r2: float
    intercept: float
    curve: np.ndarray
    curve_lo: np.ndarray
    curve_hi: np.ndarray


def _check(errors, *, level, n_boot) -> np.ndarray:
    e = np.asarray(errors, dtype=float)
    if e.ndim != 3:
        raise ValueError(f"errors must be (points, draws, seeds), got shape {e.shape}")
    if e.shape[1] < 1 or e.shape[2] < 2:
        raise ValueError(f"the two-level bootstrap needs >= 1 draw and >= 2 seeds, got "
                         f"{e.shape[1]} draws and {e.shape[2]} seeds")
    if not 0 < level < 1 or n_boot < 10:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 10, got {level}, {n_boot}")
    return e


def replicates(errors, *, rng, n_boot: int = 2000, stat=rmse) -> np.ndarray:
    """(n_boot, K) bootstrap values of ``stat`` over draws and seeds at each of K points.

    Args:
        errors: (K, D, R) errors (NaN = left out, e.g. a failed fit).
        rng: a Generator or an integer seed.
        n_boot: replicates.
        stat: reduces (..., M) errors over the last axis (default RMSE, ignoring NaN).
    """
    e = _check(errors, level=0.5, n_boot=n_boot)
    K, D, R = e.shape
    rng = as_generator(rng)
    draws = rng.integers(0, D, size=(n_boot, D))
    seeds = rng.integers(0, R, size=(n_boot, D, R))
    with _quiet():
        return np.stack([stat(e[k][draws[:, :, None], seeds].reshape(n_boot, D * R))
                         for k in range(K)], axis=1)


@contextmanager
def _quiet():
    """Silence numpy's all-NaN warnings: such replicates are counted and refused below."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _slopes(logx, logy) -> np.ndarray:
    """Least-squares slopes of each row of logy (B, K) on logx (B, K) or (K,)."""
    logx = np.broadcast_to(logx, logy.shape)
    xc = logx - logx.mean(axis=1, keepdims=True)
    yc = logy - logy.mean(axis=1, keepdims=True)
    return np.sum(xc * yc, axis=1) / np.sum(xc * xc, axis=1)


def _interval(slopes, level) -> tuple[float, float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(slopes, [a, 1.0 - a])
    return float(lo), float(hi), float(slopes.std(ddof=1))


def exponent(n, errors, *, rng, n_boot: int = 2000, level: float = 0.95,
             stat=rmse) -> TwoLevelFit:
    """Exponent of the pooled ``stat`` against n with its two-level bootstrap interval.

    Args:
        n: (K,) sample sizes (at least two distinct).
        errors: (K, D, R) errors at n[k], draw d, seed r (NaN = left out).
        rng: a Generator or an integer seed (same seed, same interval).
        n_boot, level: replicates and the percentile interval's level.
        stat: the statistic pooled over draws and seeds (default RMSE).

    Raises:
        ValueError: a zero or undefined statistic at some n, or in most replicates.
    """
    n = np.asarray(n, dtype=float)
    e = _check(errors, level=level, n_boot=n_boot)
    if e.shape[0] != n.size:
        raise ValueError(f"errors has {e.shape[0]} rows for {n.size} sample sizes")
    with _quiet():
        curve = stat(e.reshape(e.shape[0], -1))
    point = fit_power_law(n, curve)
    boot = replicates(e, rng=rng, n_boot=n_boot, stat=stat)
    ok = np.all(np.isfinite(boot) & (boot > 0), axis=1)
    if ok.sum() < MIN_VALID * n_boot:
        raise ValueError("most bootstrap replicates have a zero or undefined statistic")
    slopes = _slopes(np.log(n), np.log(boot[ok]))
    lo, hi, se = _interval(slopes, level)
    a = (1.0 - level) / 2.0
    c_lo, c_hi = np.quantile(boot[ok], [a, 1.0 - a], axis=0)
    return TwoLevelFit(point.slope, lo, hi, se, point.r2, point.intercept, curve, c_lo,
                       c_hi)


def elasticity(x, errors, *, rng, n_boot: int = 2000, level: float = 0.95,
               stat=rmse) -> TwoLevelFit:
    """Slope of log ``stat`` on log x across settings, with draws and seeds resampled.

    Args:
        x: (S, D) the covariate of setting s, draw d (e.g. 1/lambda_min of that draw's
            population), positive.
        errors: (S, D, R) errors of setting s, draw d, seed r at one n (NaN = left out).
        rng, n_boot, level, stat: as in :func:`exponent`.

    Each replicate resamples, within every setting, D draws (each with its own x) and R
    seeds within each, and refits the slope over the S * D points: the interval accounts
    for the draw-to-draw spread of x and of the error.
    """
    x = np.asarray(x, dtype=float)
    e = _check(errors, level=level, n_boot=n_boot)
    S, D, R = e.shape
    if x.shape != (S, D) or not np.all(np.isfinite(x) & (x > 0)):
        raise ValueError(f"x must be finite, positive and of shape {(S, D)}, got {x.shape}")
    if np.unique(x).size < 2:
        raise ValueError("an elasticity needs at least two distinct covariate values")
    with _quiet():
        y = stat(e)                                                   # (S, D)
    point = fit_power_law(x.ravel(), y.ravel())
    rng = as_generator(rng)
    draws = rng.integers(0, D, size=(n_boot, S, D))
    seeds = rng.integers(0, R, size=(n_boot, S, D, R))
    s_idx = np.arange(S)[None, :, None]
    xb = x[s_idx, draws]                                              # (B, S, D)
    with _quiet():
        yb = stat(e[s_idx[..., None], draws[..., None], seeds])       # (B, S, D)
    xb, yb = xb.reshape(n_boot, -1), yb.reshape(n_boot, -1)
    ok = (np.all(np.isfinite(yb) & (yb > 0), axis=1)
          & (np.ptp(np.log(xb), axis=1) > 0))
    if ok.sum() < MIN_VALID * n_boot:
        raise ValueError("most bootstrap replicates have a zero or undefined statistic")
    slopes = _slopes(np.log(xb[ok]), np.log(yb[ok]))
    lo, hi, se = _interval(slopes, level)
    return TwoLevelFit(point.slope, lo, hi, se, point.r2, point.intercept, y.ravel(),
                       y.ravel(), y.ravel())
