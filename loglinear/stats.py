r"""Statistics for rate studies: power-law exponents with bootstrap confidence intervals.

The rate of an estimator is the slope b of

.. math::  \log \mathrm{RMSE}(n) = a + b \log n,\qquad
           \mathrm{RMSE}(n) = \Big(\frac{1}{R}\sum_{r=1}^R \|\hat\theta_{n,r}-\theta\|^2\Big)^{1/2}

fitted by least squares over the grid of n. Its uncertainty comes from the seeds: a
bootstrap draws R seed indices with replacement (the same indices at every n), recomputes
RMSE(n) and refits the slope; the percentile interval of the refits is the CI.

**Effective sample size.** For importance weights :math:`P` of a sample with base weights
:math:`q` (an empirical sample has :math:`q_i = 1/n`; a compressed sample has the counts
over n), the Kish effective sample size, as a fraction of the sample, is

.. math::  \mathrm{ESS}(P\|q) = \frac{(\sum_i P_i)^2}{\sum_i P_i^2/q_i} \in (0, 1],

which is 1 for :math:`P = q` and :math:`q(\text{support})` when P puts all its mass on
one atom. It is invariant to splitting an atom into copies (so counts and raw samples
agree). For log-normal likelihood ratios with log-sd :math:`\sigma`,
:math:`\mathrm{ESS} = e^{-\sigma^2}`.

**Minibatch gradient variance.** With per-pair gradients :math:`g_i` and a minibatch of b
pairs drawn i.i.d. from q, the minibatch mean gradient has total variance
:math:`\mathrm{tr\,Cov}_q(g)/b`; drawn uniformly without replacement from n pairs, it is
:math:`\frac{n-b}{b(n-1)}\mathrm{tr\,Cov}(g)`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.stats import t as _student_t

from .data import as_generator


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


def bootstrap_exponent(n, errors, *, rng: np.random.Generator | int, n_boot: int = 2000,
                       level: float = 0.95, stat=rmse) -> ExponentCI:
    """Exponent of ``stat`` (default RMSE over seeds) against n, with a seed bootstrap.

    Args:
        n: (N,) sample sizes.
        errors: (N, R) errors, row k for n[k], column r for seed r (NaN = missing).
        rng: the bootstrap's randomness, a Generator or an integer seed (same rng state,
            same interval).
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
    rng = as_generator(rng)
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


def _weights(weights, base):
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must be a non-empty 1-d array, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, nonnegative and not all zero")
    if base is None:
        q = np.full(w.size, 1.0 / w.size)
    else:
        q = np.asarray(base, dtype=float)
        if q.shape != w.shape:
            raise ValueError(f"base must have the shape of weights {w.shape}, got {q.shape}")
        if not np.all(np.isfinite(q)) or np.any(q < 0) or abs(q.sum() - 1.0) > 1e-9:
            raise ValueError("base weights must be nonnegative and sum to one")
        if np.any((q == 0) & (w > 0)):
            raise ValueError("weights put mass where the base weights are zero (P << q fails)")
    return w, q


def effective_sample_size(weights, base=None) -> float:
    r"""Kish ESS as a fraction of the sample: :math:`(\sum P)^2 / \sum_i P_i^2/q_i`.

    Args:
        weights: (n,) nonnegative importance weights P (normalisation irrelevant).
        base: (n,) base weights q summing to one (default uniform 1/n).

    Returns:
        A number in (0, 1]; multiply by n for the count of "effective pairs".
    """
    w, q = _weights(weights, base)
    pos = q > 0
    return float(w.sum() ** 2 / np.sum(w[pos] ** 2 / q[pos]))


def ess_count(weights) -> float:
    r"""Kish ESS as a count, :math:`(\sum w)^2/\sum w^2` (uniform base)."""
    w, _ = _weights(weights, None)
    return float(w.sum() ** 2 / np.sum(w**2))


def gradient_covariance_trace(grads, base=None) -> float:
    r""":math:`\mathrm{tr\,Cov}_q(g) = \sum_i q_i\|g_i - \bar g\|^2`, :math:`\bar g = \sum q_i g_i`.

    Args:
        grads: (n, p) per-pair gradients.
        base: (n,) weights q summing to one (default uniform).
    """
    g = np.asarray(grads, dtype=float)
    if g.ndim != 2 or g.shape[0] == 0:
        raise ValueError(f"grads must be a non-empty (n, p) array, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("grads contain NaN or infinite values")
    _, q = _weights(np.ones(g.shape[0]) if base is None else np.asarray(base, float), base)
    gbar = q @ g
    return float(q @ np.sum((g - gbar) ** 2, axis=1))


def minibatch_gradient_variance(grads, *, batch_size: int, base=None,
                                replace: bool = True) -> float:
    r"""Total variance :math:`E\|\hat g_B - \bar g\|^2` of a minibatch mean gradient.

    .. math::
        \text{i.i.d. from } q:\ \frac{\mathrm{tr\,Cov}_q(g)}{b}, \qquad
        \text{uniform without replacement:}\ \frac{n-b}{b\,(n-1)}\,\mathrm{tr\,Cov}(g).

    Only linear (averaged) minibatch gradients obey this; reweighted ones (KLDPO) are
    measured empirically with :func:`empirical_variance`.
    """
    g = np.asarray(grads, dtype=float)
    b = int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    tr = gradient_covariance_trace(g, base)
    if replace:
        return tr / b
    n = g.shape[0]
    if base is not None:
        raise ValueError("sampling without replacement is defined here for uniform base only")
    if b > n:
        raise ValueError(f"batch_size {b} exceeds the n = {n} pairs (without replacement)")
    return 0.0 if n == 1 else tr * (n - b) / (b * (n - 1))


def empirical_variance(samples) -> float:
    r"""Unbiased total variance of K vector samples: :math:`\frac{1}{K-1}\sum_k\|g_k-\bar g\|^2`.

    Args:
        samples: (K, p) e.g. minibatch gradients, K >= 2.
    """
    g = np.asarray(samples, dtype=float)
    if g.ndim != 2 or g.shape[0] < 2:
        raise ValueError(f"samples must be (K, p) with K >= 2, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("samples contain NaN or infinite values")
    return float(np.sum((g - g.mean(0)) ** 2) / (g.shape[0] - 1))


def mean_ci(values, *, level: float = 0.95) -> dict:
    r"""Mean and two-sided Student-t interval of independent replicate values.

    .. math:: \bar v \pm t_{(1+\text{level})/2,\,n-1}\; s/\sqrt n

    With one value the interval is undefined: ``lo``/``hi``/``half`` are NaN (by design,
    documented; the report prints "n/a"). Non-finite inputs raise ValueError.
    """
    v = np.asarray(values, float).ravel()
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError("mean_ci needs a nonempty array of finite values")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    mean = float(v.mean())
    if v.size == 1:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "half": math.nan, "n": 1}
    se = float(v.std(ddof=1) / math.sqrt(v.size))
    half = float(_student_t.ppf(0.5 + level / 2, v.size - 1) * se)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "half": half, "n": int(v.size)}
