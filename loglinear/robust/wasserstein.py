r"""Exact Wasserstein-DRO DPO: the dispatcher over orders and label-flip costs, fixed-theta
values and collapse radii. The solvers live in :mod:`.w1` (p = 1, kappa = inf),
:mod:`.w1flip` (p = 1, finite kappa) and :mod:`.w2` (p = 2).

Cost c((x, y), (x', y')) = ||x - x'||_2 + kappa 1[y != y'] (docs/theory.md §2.4); the
offset never moves. With b = beta ||theta|| (the Lipschitz constant of l in x):

* p = 1, kappa = inf (§3.3): :math:`V(\theta) = L(\theta) + \varepsilon\beta\|\theta\|_2`.
* p = 1, finite kappa (§3.4; Shafieezadeh-Abadeh et al. 2015), using
  l(x, 1-y) - l(x, y) = m:

  .. math::  V(\theta) = L(\theta) + \min_{\lambda \ge b}\ \lambda\varepsilon
             + \sum_i q_i (m_i - \lambda\kappa)_+ ,

  whose minimiser is lambda* = max(b, m_(k)/kappa), m_(k) the weighted upper
  (epsilon/kappa)-quantile of the margins. With zero offsets m_i <= b ||x_i||, so flips
  never pay off once kappa >= max ||x_i|| and V is the kappa = inf closed form.
* p = 2 (§3.5; Xu et al. 2025, Lemma 1, via Gao & Kleywegt): see
  :mod:`loglinear.robust.w2`.

Both V are convex with a kink at theta = 0: theta = 0 is optimal iff
||grad L(0)|| <= eps beta (p = 1) or eps beta (sum q_i sigma(-m_i(0))^2)^{1/2} (p = 2)
(§3.6, the collapse radii).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from ..data import PreferenceData
from ..fit import FitError, SeparableDataError, fit_dpo
from ._base import (
    CERT_TOL,
    RobustResult,
    RobustSolverError,
    WassersteinValue,
    check_problem,
    check_theta,
    grad_at_zero,
    zero_offset,
)
from .w1 import solve_w1_inf, w1_value
from .w1flip import solve_w1_flip
from .w2 import solve_w2, w2_value

COLLAPSE_RTOL = 1e-14   # relative slack of the kink test at eps = eps_0 (rounding only)


def check_order(p, kappa) -> tuple[int, float]:
    """Validate the order p (1 or 2) and the label-flip cost kappa (> 0; inf for p = 2)."""
    if p not in (1, 2):
        raise ValueError(f"the Wasserstein order p must be 1 or 2, got {p!r}")
    kappa = float(kappa)
    if not kappa > 0:
        raise ValueError(f"kappa (the label-flip cost) must be > 0 or inf, got {kappa}")
    if p == 2 and np.isfinite(kappa):
        raise ValueError("p = 2 supports kappa = inf only (labels never flipped)")
    return int(p), kappa


def wasserstein_value(theta, data: PreferenceData, *, beta: float, radius: float, p: int = 1,
                      kappa: float = np.inf) -> WassersteinValue:
    r"""The exact worst-case DPO loss over the W_p ball at a fixed theta (docs/theory.md
    §3.3-3.5).

    .. math::
        V(\theta) = \sup_{W_p(P, q)\le\varepsilon} E_P\, l(\theta)
                  = \inf_{\lambda\ge0}\ \lambda\varepsilon^p
                    + \sum_i q_i \sup_{x',y'}\,[\,l(\theta;x',y') - \lambda c^p\,]

    Args:
        theta: (d,) parameter; data: weighted pairs; beta: DPO temperature;
        radius: epsilon >= 0; p: 1 or 2; kappa: label-flip cost (> 0, inf = never).

    Returns:
        :class:`WassersteinValue` (value, dual multiplier, Danskin gradient, transport).
    """
    beta, eps = check_problem(data, beta, radius, None, "x", {"x"})
    p, kappa = check_order(p, kappa)
    theta = check_theta(theta, data.d)
    if p == 1:
        return w1_value(theta, data, beta=beta, radius=eps, kappa=kappa)
    return w2_value(theta, data, beta=beta, radius=eps)


def collapse_radius_wasserstein(data: PreferenceData, *, beta: float, p: int = 1) -> float:
    r"""The W_p radius (kappa = inf) at and beyond which the robust optimum is theta = 0
    (docs/theory.md §3.6).

    .. math::
        \varepsilon_0 = \|\nabla L(0)\| / (\beta\,\sqrt{\textstyle\sum_i q_i\sigma_i^2})
        \ \ (p=2), \qquad \varepsilon_0 = \|\nabla L(0)\|/\beta \ \ (p=1),

    with sigma_i = sigma(-m_i(0)). With zero offsets grad L(0) = -(beta/2) sum_i q_i z_i,
    so eps_0 = ||sum_i q_i z_i|| / 2 for p = 1 and ||sum_i q_i z_i|| for p = 2: both are
    independent of beta, since L and the penalty both scale with beta near 0.
    """
    beta, _ = check_problem(data, beta, 0.0, None, "x", {"x"})
    p, _ = check_order(p, np.inf)
    g0, s0 = grad_at_zero(data, beta)
    scale = 1.0 if p == 1 else float(np.sqrt(data.weight @ s0**2))
    return float(np.linalg.norm(g0) / (beta * scale))


# --------------------------------------------------------------------------- solvers
def _start(data, beta, bound):
    """A nonzero starting point: the DPO fit, or a bounded one on separable data."""
    try:
        return fit_dpo(data, beta=beta).theta
    except SeparableDataError:
        return fit_dpo(data, beta=beta, bound=1.0 if bound is None else bound).theta
    except FitError:
        return np.full(data.d, 1e-2)


def _finish(theta, data, beta, eps, p, kappa, bound, mu, solver, t0, status, info):
    """The :class:`RobustResult` at theta, with its certificate (docs/theory.md §3.7)."""
    ev = wasserstein_value(theta, data, beta=beta, radius=eps, p=p, kappa=kappa)
    if np.linalg.norm(theta) == 0:
        cert = float(np.linalg.norm(ev.grad))       # min-norm subgradient at the kink
    else:
        cert = float(np.linalg.norm(ev.grad + mu * theta))
    kind = "kkt-residual"
    if info.get("kkt_residual") is not None:
        cert = float(info["kkt_residual"])     # the exact active-set KKT system
    elif "smoothing_gap_bound" in info and status == "converged":
        # finite kappa where the exact active-set system had no solution: at the kinks of V
        # the Danskin gradient is one subgradient of many and certifies nothing; the
        # certificate is the smoothing's bound on the objective gap (docs/theory.md §3.7)
        cert, kind = float(info["smoothing_gap_bound"]), "objective-gap"
    if status in ("converged", "collapsed") and cert > CERT_TOL:
        status = "inaccurate"
    info = {**info, "certificate_kind": kind}
    return RobustResult(theta=theta, objective=ev.value, dual=ev.dual,
                        worst_case=ev.transport, status=status, certificate=cert,
                        solver=solver, seconds=time.perf_counter() - t0, kind="wasserstein",
                        radius=eps, beta=beta, p=p, kappa=kappa, bound=bound,
                        bound_multiplier=mu, data=data, info=info)


def kink_threshold(data, beta, eps, p) -> tuple[float, float]:
    """(||grad L(0)||, the radius of the penalty's subdifferential at 0): theta = 0 is
    optimal iff the first is at most the second (docs/theory.md §3.6)."""
    g0, s0 = grad_at_zero(data, beta)
    r = eps * beta * (1.0 if p == 1 else float(np.sqrt(data.weight @ s0**2)))
    return float(np.linalg.norm(g0)), r


def solve_wasserstein(data: PreferenceData, *, beta: float, radius: float, p: int = 1,
                      kappa: float = np.inf, bound: float | None = None,
                      method: str = "auto") -> RobustResult:
    r"""Minimise the worst-case expected DPO loss over the W_p ball of radius epsilon
    (docs/theory.md §3.3-3.6; statuses and certificates §3.7).

    .. math::  \min_{\|\theta\|\le B}\ \sup_{W_p(P, q)\le\varepsilon} E_P\, l(\theta)

    Args:
        data: weighted preference data (sample or exact population).
        beta: DPO temperature.
        radius: epsilon >= 0; epsilon = 0 is DPO (solved by :func:`loglinear.fit_dpo`).
        p: the order, 1 or 2.
        kappa: the label-flip cost in c = ||x - x'|| + kappa 1[y != y'] (> 0; ``inf``,
            the default, never flips; p = 2 takes ``inf`` only).
        bound: optional ball ||theta|| <= B.
        method: ``"newton"``, ``"cvxpy"`` or ``"auto"``, as below.

    Methods:
        * ``"newton"`` / ``"auto"``: the dedicated solvers: p = 1, kappa = inf: Newton on
          the closed form L + eps beta ||theta|| after an exact kink test at 0; p = 1,
          finite kappa: smoothing homotopy (:mod:`loglinear.robust.w1flip`); p = 2:
          joint Newton in (theta, eta) over the exact inner suprema, and where the
          optimum sits on a kink of V (atoms split between two maxima) Newton on the
          split worst case's KKT system, its tie set found by a smoothing path where
          many atoms tie at once (:mod:`loglinear.robust.w2`; ``info["kink"]``,
          ``info["path"]``).
          ``"auto"`` falls back to cvxpy (p = 1) if the dedicated solver fails.
        * ``"cvxpy"``: the conic reformulation with Clarabel (p = 1 only; the p = 2 dual
          is not DCP).

    Returns:
        :class:`RobustResult`; ``worst_case`` is a :class:`Transport`.

    Raises:
        ValueError: invalid arguments (p, kappa, radius, bound, method; cvxpy with p = 2).
        RobustSolverError: the solver failed (and, for ``"auto"`` with p = 1, so did the
            cvxpy fallback).
    """
    t0 = time.perf_counter()
    beta, eps = check_problem(data, beta, radius, bound, method, {"auto", "newton", "cvxpy"})
    p, kappa = check_order(p, kappa)
    if p == 1 and np.isfinite(kappa) and zero_offset(data) and \
            kappa >= float(np.linalg.norm(data.x, axis=1).max()):
        kappa_eff = np.inf          # flips never pay off: the closed form is exact
    else:
        kappa_eff = kappa
    if method == "cvxpy":
        if p == 2:
            raise ValueError("method='cvxpy' supports p = 1 only; the W2 dual is not DCP")
        from ._cvx import cvx_w1

        theta, info = cvx_w1(data, beta=beta, radius=eps, kappa=kappa, bound=bound)
        mu = info.pop("bound_multiplier", 0.0)
        res = _finish(theta, data, beta, eps, p, kappa, bound, mu, "cvxpy-clarabel", t0,
                      "converged", info)
        if info["clarabel_status"] != "optimal" and (
                np.isfinite(kappa) or res.status != "converged"):
            raise RobustSolverError(
                f"Clarabel returned {info['clarabel_status']!r} (KKT residual at its theta "
                f"{res.certificate:.3g})")
        return res
    if eps == 0:
        fit = fit_dpo(data, beta=beta, bound=bound)
        return _finish(fit.theta, data, beta, eps, p, kappa, bound, fit.bound_multiplier,
                       "newton", t0, "nominal", {"iterations": fit.iterations})
    gnorm0, r0 = kink_threshold(data, beta, eps, p)
    # With zero offsets flips gain nothing at theta = 0, so V_kappa(0) = V_inf(0) <= V_inf
    # <= V_kappa: the kappa = inf kink test is exact for every kappa.
    # At eps = collapse_radius_wasserstein(data) the two sides are the same number computed
    # in two orders: a few ulps of slack make "at and beyond" exact (the optimum a few ulps
    # below the collapse radius is that many ulps from 0).
    if gnorm0 <= r0 * (1 + COLLAPSE_RTOL) and (p == 2 or not np.isfinite(kappa_eff)
                                               or zero_offset(data)):
        return _finish(np.zeros(data.d), data, beta, eps, p, kappa, bound, 0.0, "closed-form",
                       t0, "collapsed", {"grad_norm_at_0": gnorm0, "kink_radius": r0})
    try:
        if p == 2:
            theta, mu, info = solve_w2(data, beta=beta, radius=eps, bound=bound,
                                       start=_start(data, beta, bound))
            solver = "newton"
        elif np.isfinite(kappa_eff):
            theta, mu, info = solve_w1_flip(data, beta=beta, radius=eps, kappa=kappa_eff,
                                            bound=bound, start=_start(data, beta, bound))
            solver = "smoothing-newton"
        else:
            theta, mu, info = solve_w1_inf(data, beta=beta, radius=eps, bound=bound,
                                           start=_start(data, beta, bound))
            solver = "newton"
    except RobustSolverError as err:
        if method == "newton" or p == 2:
            raise
        res = solve_wasserstein(data, beta=beta, radius=eps, p=p, kappa=kappa, bound=bound,
                                method="cvxpy")
        return replace(res, info={**res.info, "fallback_reason": str(err)})
    status = "collapsed" if info.get("collapsed") and not np.any(theta) else "converged"
    return _finish(theta, data, beta, eps, p, kappa, bound, mu, solver, t0, status, info)
