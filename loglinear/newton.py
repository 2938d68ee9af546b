"""Damped Newton's method with an Armijo line search, shared by every smooth fit.

The caller supplies ``fun(x, hessian) -> (value, grad, hess)`` and, optionally,
``line(x, direction) -> (t -> value)``: a cheap evaluator of the objective along a ray.
For margin losses the ray costs one matrix-vector product, after which each trial step
is O(n) scalar work, which keeps a full fit within a few tens of passes over the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.linalg as sla

ARMIJO_C = 1e-4
MAX_BACKTRACK = 60
DIVERGING_STEP = 1e6


@dataclass(frozen=True)
class NewtonReport:
    """Outcome of :func:`newton`."""

    x: np.ndarray
    value: float
    grad: np.ndarray
    grad_norm: float
    iterations: int
    converged: bool
    status: str
    hess: np.ndarray | None = None


def _ray(fun, x, step):
    return lambda t: fun(x + t * step, False)[0]


def _solve(hess: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Newton direction -H^{-1} g, regularised if H is not numerically positive definite."""
    d = grad.shape[0]
    scale = max(float(np.max(np.abs(np.diag(hess)))), 1e-300)
    reg = 0.0
    for _ in range(30):
        try:
            c = sla.cho_factor(hess + reg * np.eye(d), lower=True, check_finite=False)
            step = -sla.cho_solve(c, grad, check_finite=False)
            if np.all(np.isfinite(step)):
                return step
        except np.linalg.LinAlgError:
            pass
        reg = scale * 1e-12 if reg == 0.0 else reg * 10.0
    return -grad


def newton(
    fun: Callable[[np.ndarray, bool], tuple[float, np.ndarray, np.ndarray | None]],
    x0: np.ndarray,
    *,
    gtol: float = 1e-10,
    xtol: float = 1e-10,
    ctol: float = 1e-6,
    max_iter: int = 200,
    line: Callable[[np.ndarray, np.ndarray], Callable[[float], float]] | None = None,
) -> NewtonReport:
    """Minimise a smooth convex function by damped Newton steps.

    Stops when the gradient norm is at most ``gtol`` and the Newton step is at most
    ``xtol * (1 + ||x||)`` (that last step is taken: near the optimum Newton converges
    quadratically, so it lands at float precision), or when the Newton decrement shows
    that no further decrease is representable in floating point and the gradient norm
    (the certificate) is at most ``max(gtol, ctol)`` (status ``"converged"`` in both
    cases, with the achieved gradient norm reported). A vanishing decrement with a
    larger gradient is ``"stalled"`` (next to a kink, or on an objective whose Hessian
    is wrong). Returns ``"max_iter"``, ``"line_search_failed"``, ``"diverging"`` or
    ``"non_finite"`` otherwise; callers decide whether that is an error.
    """
    x = np.array(x0, dtype=np.float64)
    value, grad, hess = fun(x, True)
    status = "max_iter"
    it = 0
    while it < max_iter:
        it += 1
        gnorm = float(np.linalg.norm(grad))
        if not np.isfinite(value) or not np.isfinite(gnorm):
            status = "non_finite"
            break
        if gnorm == 0.0:
            status = "converged"
            break
        step = _solve(hess, grad)
        if np.linalg.norm(step) > DIVERGING_STEP * (1.0 + np.linalg.norm(x)):
            status = "diverging"  # a flat direction (e.g. separable data): let the caller see
            break
        if gnorm <= gtol and np.linalg.norm(step) <= xtol * (1.0 + np.linalg.norm(x)):
            x = x + step
            value, grad, hess = fun(x, True)
            status = "converged"
            break
        slope = float(grad @ step)
        if slope >= 0:  # regularisation fell back to a non-descent direction
            step, slope = -grad, -gnorm**2
        # Newton decrement^2 / 2 below the float resolution of the value: the line search
        # can no longer see progress, but the gradient still can. Take full Newton steps
        # (we are deep in the quadratic region) while they keep shrinking the gradient.
        if -slope < 4 * np.finfo(float).eps * max(1.0, abs(value)):
            for _ in range(5):
                trial = x + step
                tv, tg, th = fun(trial, True)
                if not np.linalg.norm(tg) < gnorm:
                    break
                x, value, grad, hess, gnorm = trial, tv, tg, th, float(np.linalg.norm(tg))
                if np.linalg.norm(step) <= xtol * (1.0 + np.linalg.norm(x)):
                    break
                step = _solve(hess, grad)
            # converged only with a certificate: near a kink, or with a wrong Hessian, the
            # decrement can vanish while the gradient stays large
            status = "converged" if gnorm <= max(gtol, ctol) else "stalled"
            break
        f_along = line(x, step) if line is not None else _ray(fun, x, step)
        t = 1.0
        for _ in range(MAX_BACKTRACK):
            trial = f_along(t)
            if np.isfinite(trial) and trial <= value + ARMIJO_C * t * slope:
                break
            t *= 0.5
        else:
            status = "line_search_failed"
            break
        x = x + t * step
        value, grad, hess = fun(x, True)
    gnorm = float(np.linalg.norm(grad))
    return NewtonReport(x, float(value), grad, gnorm, it, status == "converged", status, hess)


def ball_multiplier_root(norm_gap: Callable[[float], float], *, hi: float = 0.0,
                         tol: float = 1e-13, error: type[Exception] = RuntimeError) -> float:
    """log mu of the ball constraint: the root of ``norm_gap(log_mu) = ||theta(mu)|| - B``.

    ||theta(mu)|| of a ridge-regularised convex problem decreases in mu, so the root is
    bracketed by steps of 2 in log mu from ``hi`` (at most e^60 either way) and found by
    Brent to ``tol``. ``error`` is raised when no bracket exists.
    """
    from scipy.optimize import brentq

    while norm_gap(hi) > 0:
        hi += 2.0
        if hi > 60:
            raise error("could not bracket the ball multiplier")
    lo = hi - 2.0
    while norm_gap(lo) <= 0:
        lo -= 2.0
        if lo < -60:
            raise error("could not bracket the ball multiplier")
    return float(brentq(norm_gap, lo, hi, xtol=tol, rtol=tol))
