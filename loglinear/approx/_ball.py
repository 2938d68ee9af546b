r"""What the surrogates share with :func:`loglinear.fit.fit_dpo`: separability and the ball.

**Separability.** A surrogate without a finite minimiser (docs/theory.md §2.2) is reported
with :class:`~loglinear.fit.SeparableDataError` unless a bound is given, decided as
``fit_dpo`` decides it: the linear program of :func:`~loglinear.fit.separating_direction`,
run up front on small data and, on large data, only when the fit looks suspicious
(not converged, or a margin past ``SATURATED_MARGIN``).

**The ball** :math:`\Theta = \{\|\theta\| \le B\}`. When the unconstrained minimiser lies
outside (or does not exist), the KKT system :math:`\nabla f + \mu\theta = 0`,
:math:`\|\theta\| = B`, :math:`\mu \ge 0` is solved as ``fit_dpo`` solves it: the minimiser
:math:`\theta(\mu)` of :math:`f + \tfrac{\mu}{2}\|\theta\|^2` has a norm that decreases in
:math:`\mu`, so :math:`\log\mu` is a 1-D root (:func:`~loglinear.newton.ball_multiplier_root`);
the point is then put on the sphere and its multiplier and KKT residual are recomputed
there. The residual is the certificate: the fit is converged only when it is below the
caller's tolerance.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linprog

from ..data import PreferenceData
from ..fit import EAGER_LP, SATURATED_MARGIN, FitError, SeparableDataError, separating_direction
from ..losses import margins
from ..newton import ball_multiplier_root, newton


def check_bound(bound) -> float | None:
    """``None`` or a positive finite radius, else a ``ValueError`` saying so."""
    if bound is None:
        return None
    if isinstance(bound, bool) or not (np.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be a positive finite radius or None, got {bound!r}")
    return float(bound)


def separable_error(direction: np.ndarray, what: str) -> SeparableDataError:
    """The error ``fit_dpo`` raises, worded for the surrogate ``what``."""
    return SeparableDataError(
        direction,
        f"the data are separable: the {what} decreases without bound along direction "
        f"{np.round(direction, 4).tolist()}, so no finite minimiser exists; pass bound=B to "
        "fit on the ball ||theta|| <= B")


def eager_direction(data: PreferenceData) -> np.ndarray | None:
    """``fit_dpo``'s up-front check: the separating direction of small data, else None."""
    return separating_direction(data) if data.n * data.d <= EAGER_LP else None


def suspicious(data: PreferenceData, theta, *, beta: float, converged: bool) -> bool:
    """``fit_dpo``'s lazy trigger on large data: a failed fit or a saturated margin."""
    if data.n * data.d <= EAGER_LP:
        return False          # settled up front
    with np.errstate(over="ignore", invalid="ignore"):
        m = margins(np.asarray(theta, float), data, beta=beta)
    return (not converged) or bool(np.max(m[data.weight > 0]) > SATURATED_MARGIN)


def strictly_separating_direction(data: PreferenceData, *, tol: float = 1e-9
                                  ) -> np.ndarray | None:
    """A unit v with z_i . v > 0 for every weighted pair, or None.

    Solved as the LP  max t  s.t.  z_i . v >= t,  -1 <= v <= 1,  t <= 1. A pair with
    z_i = 0 (a tie a1 = a2) can never be strictly separated, so data with ties give None.
    """
    keep = data.weight > 0
    z = data.z[keep]
    d = data.d
    cost = np.zeros(d + 1)
    cost[-1] = -1.0
    res = linprog(cost, A_ub=np.hstack([-z, np.ones((z.shape[0], 1))]),
                  b_ub=np.zeros(z.shape[0]), bounds=[(-1, 1)] * d + [(None, 1)],
                  method="highs")
    if res.status != 0:
        raise FitError(f"separability LP failed: {res.message}")
    scale = float(np.max(np.abs(z))) if z.size else 1.0
    if -res.fun <= tol * max(scale, 1e-300):
        return None
    return res.x[:d] / np.linalg.norm(res.x[:d])


class BallFit(NamedTuple):
    """A KKT point of min f on ||theta|| <= B with the constraint active."""

    theta: np.ndarray
    value: float
    multiplier: float
    residual: float      # ||grad f + mu theta||, the certificate
    iterations: int
    status: str          # "converged" or why not


def _ridge(fun, mu):
    def f(x, hessian):
        v, g, h = fun(x, hessian)
        return (v + 0.5 * mu * float(x @ x), g + mu * x,
                None if h is None else h + mu * np.eye(x.shape[0]))
    return f


def _ridge_line(line, mu):
    if line is None:
        return None

    def ray(x, step):
        along = line(x, step)
        a, b, c = float(x @ x), 2.0 * float(x @ step), float(step @ step)
        return lambda t: along(t) + 0.5 * mu * (a + t * b + t * t * c)
    return ray


def fit_on_sphere(fun, x0, *, bound: float, gtol: float, max_iter: int, line=None
                  ) -> BallFit:
    """Solve min f(x) s.t. ||x|| <= ``bound`` where the constraint binds (module docstring).

    ``fun(x, hessian) -> (value, grad, hess)`` and ``line(x, step) -> (t -> value)`` as in
    :func:`loglinear.newton.newton`. Converged means the KKT residual is at most ``gtol``.
    """
    iters = [0]
    warm = [np.asarray(x0, dtype=float)]

    def inner(log_mu):
        mu = float(np.exp(log_mu))
        rep = newton(_ridge(fun, mu), warm[0], gtol=gtol * 1e-2, ctol=gtol * 1e-2,
                     max_iter=max_iter, line=_ridge_line(line, mu))
        iters[0] += rep.iterations
        if np.all(np.isfinite(rep.x)):
            warm[0] = rep.x
        return rep

    def norm_gap(log_mu):
        return float(np.linalg.norm(inner(log_mu).x)) - bound

    g0 = fun(np.zeros_like(warm[0]), False)[1]
    hi = np.log(max(float(np.linalg.norm(g0)) / bound, 1e-12)) + 1.0
    try:
        log_mu = ball_multiplier_root(norm_gap, hi=hi, tol=1e-14, error=FitError)
    except FitError as exc:
        x = warm[0]
        return BallFit(x, float("nan"), float("nan"), float("inf"), iters[0], str(exc))
    rep = inner(log_mu)
    if not np.all(np.isfinite(rep.x)) or np.linalg.norm(rep.x) == 0.0:
        return BallFit(rep.x, float("nan"), float("nan"), float("inf"), iters[0],
                       f"ridge Newton {rep.status}")
    theta = rep.x * (bound / np.linalg.norm(rep.x))
    value, g, _ = fun(theta, False)
    # the multiplier from stationarity projected on theta (>= 0 on an active bound)
    mu = max(0.0, -float(g @ theta) / bound**2)
    residual = float(np.linalg.norm(g + mu * theta))
    status = "converged" if residual <= gtol else (
        f"KKT residual {residual:.3g} above {gtol:g} (ridge Newton {rep.status})")
    return BallFit(theta, float(value), mu, residual, iters[0], status)
