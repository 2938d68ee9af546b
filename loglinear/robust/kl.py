r"""Exact KL-DRO DPO: the dedicated solver (docs/theory.md §3.1-3.2).

For a KL ball of radius rho around the weighted data q:

.. math::
    V(\theta) = \sup_{KL(P\|q)\le\rho} E_P\, l(\theta)
              = \inf_{\lambda > 0}\ \lambda\rho + \lambda \log \sum_i q_i e^{l_i/\lambda}.

The fixed-theta value :func:`kl_value` (the dual, its multiplier and the edge case
lambda* = 0, §3.1) lives in :mod:`._klvalue`, the collapse radius
:func:`collapse_radius_kl` (§3.2) in :mod:`._klcollapse`; both are importable from here.

The solver profiles lambda out by a 1-D root and runs Newton in theta with the
Schur-complement Hessian of the jointly convex g(theta, lambda). Before that, the exact
collapse test: with zero offsets theta = 0 is a robust minimiser iff rho >= rho_0; the
same holds at any theta_k where all margins tie (degenerate data with offsets): the
solver returns theta_k there.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
from scipy.optimize import minimize_scalar

from ..data import PreferenceData
from ..fit import FitError, SeparableDataError, fit_dpo, separating_direction
from ..losses import margin_line, margins, sigmoid
from ..newton import newton
from ._base import (
    CERT_TOL,
    RobustResult,
    RobustSolverError,
    accurate,
    check_problem,
    on_ball,
    radius_continuation,
    zero_offset,
)
from ._klcollapse import (
    _equaliser,
    _min_log_mgf,
    _surely_below_collapse,
    collapse_direction,
    collapse_radius_kl,
)
from ._kldegenerate import polish
from ._klvalue import KLValue, _evaluate, kl_value

__all__ = ["KLValue", "collapse_radius_kl", "kl_value", "solve_kl"]

COLLAPSE_RTOL = 1e-14   # rho >= rho_0 (1 - COLLAPSE_RTOL) is treated as collapsed: rho_0
                        # itself is resolved to a few ulps (Newton on a smooth convex 1-D
                        # minimum), and optima just below it are resolved (shifted losses)
GTOL = 1e-10            # Newton gradient tolerance in theta


DEGENERATE_STREAK = 3   # accepted Newton iterates in a row with lambda* = 0 end the smooth path


class DegenerateWorstCase(RobustSolverError):
    """Profiled Newton met a degenerate worst case (lambda* = 0) at successive iterates:
    the optimum is likely a minimax kink, solved by :mod:`._kldegenerate`."""


def _newton_kl(data, beta, rho, ridge, theta0, m_kink=None):
    """Profiled Newton on V + ridge/2 ||theta||^2 from theta0; the last lambda* warm-starts
    the next root. With ``m_kink`` the values compared are V - l(m_kink), carried at full
    precision (:func:`._klvalue.shifted_losses`), so that optima a hair below the collapse
    radius, where V - log 2 ~ 1e-20, are still resolved."""
    state = {"s": None, "degenerate": 0}

    def fun(theta, need_hess):
        ev = _evaluate(margins(theta, data, beta=beta), data, beta, rho, need_hess, state["s"],
                       m_kink)
        if not ev.degenerate and ev.dual > 0 and np.isfinite(ev.dual):
            state["s"] = 1.0 / ev.dual
        if need_hess:       # an accepted iterate
            state["degenerate"] = state["degenerate"] + 1 if ev.degenerate else 0
            if state["degenerate"] >= DEGENERATE_STREAK:
                raise DegenerateWorstCase("the worst case stays degenerate (lambda* = 0): V is "
                                          "a maximum of losses there, not smooth")
        h = None if ev.hess is None else ev.hess + ridge * np.eye(data.d)
        return ev.excess + 0.5 * ridge * float(theta @ theta), ev.grad + ridge * theta, h

    def line(theta, step):
        base, dm = margin_line(theta, step, data, beta=beta)

        def f(t):
            ev = _evaluate(base + t * dm, data, beta, rho, False, state["s"], m_kink)
            th = theta + t * step
            return ev.excess + 0.5 * ridge * float(th @ th)

        return f

    return newton(fun, theta0, gtol=GTOL, max_iter=200, line=line)


def _newton_kl_continued(data, beta, rho, ridge, theta0, m_kink=None):
    """Newton at radius rho after a radius continuation, for when Newton alone fails."""
    return radius_continuation(lambda r, x: _newton_kl(data, beta, r, ridge, x, m_kink), rho,
                               theta0)


RAY_T_MIN = 1e-30       # the ray search in log t spans [RAY_T_MIN, RAY_T_MAX] x 1/(beta max|z|)
RAY_T_MAX = 1e3


def _ray_start(data, beta, rho, theta_k, m_kink, direction):
    """The exact minimiser of V along theta_k + t u, u the collapse direction, by a bounded
    Brent search in log t (V is convex in t, so unimodal in log t). Near the collapse radius
    the optimum is tiny (it shrinks linearly with rho_0 - rho), and Newton from the DPO fit
    must cross many orders of magnitude; from this point it has one left to settle."""
    u = direction / np.linalg.norm(direction)
    scale = 1.0 / (beta * max(float(np.abs(data.z).max()), 1e-300))

    def f(log_t):
        th = theta_k + np.exp(log_t) * scale * u
        return _evaluate(margins(th, data, beta=beta), data, beta, rho, False, None,
                         m_kink).excess

    res = minimize_scalar(f, bounds=(np.log(RAY_T_MIN), np.log(RAY_T_MAX)), method="bounded",
                          options={"xatol": 1e-6, "maxiter": 500})
    return theta_k + np.exp(res.x) * scale * u


NEAR_COLLAPSE = 0.5     # from rho >= NEAR_COLLAPSE rho_0 the collapse-direction start goes first


def _solve_free(data, beta, rho, start, theta_k, m_kink, near_collapse):
    """Newton from the DPO fit and, where the data have a collapse kink, Newton from the
    exact minimiser along the collapse direction (first when ``near_collapse``: the optimum
    is then orders of magnitude smaller than the DPO fit); then a radius continuation.
    Returns (report, how) with how in {"newton", "ray", "continued"}."""
    def from_fit():
        return _newton_kl(data, beta, rho, 0.0, start, m_kink)

    def from_ray():
        direction = collapse_direction(data)
        if direction is None:
            return None
        return _newton_kl(data, beta, rho, 0.0,
                          _ray_start(data, beta, rho, theta_k, m_kink, direction), m_kink)

    tries = [("newton", from_fit)]
    if theta_k is not None:
        tries.insert(0 if near_collapse else 1, ("ray", from_ray))
    for how, attempt in tries:
        rep = attempt()
        if rep is not None and accurate(rep):
            return rep, how
    return _newton_kl_continued(data, beta, rho, 0.0, start, m_kink), "continued"


def _result(theta, data, beta, rho, bound, mu, solver, t0, status, info, ev=None):
    """The :class:`RobustResult` at theta, with the KKT residual as its certificate
    (docs/theory.md §3.7)."""
    ev = ev or kl_value(theta, data, beta=beta, radius=rho)
    cert = float(np.linalg.norm(ev.grad + mu * theta))
    if status == "converged" and cert > CERT_TOL:
        status = "inaccurate"
    return RobustResult(theta=theta, objective=ev.value, dual=ev.dual, worst_case=ev.weights,
                        status=status, certificate=cert, solver=solver,
                        seconds=time.perf_counter() - t0, kind="kl", radius=rho, beta=beta,
                        p=1, kappa=np.inf, bound=bound, bound_multiplier=mu, data=data,
                        info=info)


def _degenerate(data, beta, rho, bound, res, t0):
    """The result polished on the degenerate (minimax) KKT system from ``res.theta``, or
    None where the optimum is not degenerate there (:mod:`._kldegenerate`)."""
    out = polish(data, beta, rho, bound, res.theta, CERT_TOL)
    if out is None:
        return None
    theta, mu, p, kkt = out
    ev = kl_value(theta, data, beta=beta, radius=rho)
    return replace(res, theta=theta, objective=ev.value, dual=0.0, worst_case=p,
                   status="converged", certificate=kkt, bound_multiplier=mu,
                   seconds=time.perf_counter() - t0,
                   info={**res.info, "degenerate": True, "kkt_residual": kkt})


def solve_kl(data: PreferenceData, *, beta: float, radius: float, bound: float | None = None,
             method: str = "auto") -> RobustResult:
    r"""Minimise the worst-case expected DPO loss over the KL ball of radius rho
    (docs/theory.md §3.1; the collapse test of §3.2; statuses and certificates §3.7).

    .. math::  \min_{\|\theta\|\le B} \inf_{\lambda>0}\ \lambda\rho
               + \lambda\log\sum_i q_i e^{l_i(\theta)/\lambda}

    Args:
        data: weighted preference data (sample or exact population).
        beta: DPO temperature.
        radius: rho >= 0; rho = 0 is DPO (solved by :func:`loglinear.fit_dpo`).
        bound: optional ball ||theta|| <= B.
        method: ``"newton"`` (profiled Newton), ``"cvxpy"`` (exponential-cone dual with
            Clarabel) or ``"auto"`` (Newton; falls back to cvxpy if Newton fails).

    Returns:
        :class:`RobustResult`; ``worst_case`` is the (n,) weight vector p.

    Raises:
        SeparableDataError: separable data and no bound (no finite minimiser).
        RobustSolverError: the solver failed (and, for ``"auto"``, so did the fallback).
    """
    t0 = time.perf_counter()
    beta, rho = check_problem(data, beta, radius, bound, method, {"auto", "newton", "cvxpy"})
    if method == "cvxpy":
        from ._cvx import cvx_kl

        theta, info = cvx_kl(data, beta=beta, radius=rho, bound=bound)
        ev = kl_value(theta, data, beta=beta, radius=rho)
        mu = info.pop("bound_multiplier", 0.0)
        res = _result(theta, data, beta, rho, bound, mu, "cvxpy-clarabel", t0, "converged",
                      info, ev)
        if res.status != "converged":
            # a degenerate worst case (lambda* = 0 on tied maximal losses) is certified by
            # the minimax KKT system, not by one worst case's gradient (docs/theory.md §3.7)
            res = _degenerate(data, beta, rho, bound, res, t0) or res
        if info["clarabel_status"] != "optimal" and res.status != "converged":
            raise RobustSolverError(
                f"Clarabel returned {info['clarabel_status']!r} and the exact KKT residual at "
                f"its theta is {res.certificate:.3g} > {CERT_TOL}")
        return res
    if rho == 0:
        fit = fit_dpo(data, beta=beta, bound=bound)
        return _result(fit.theta, data, beta, rho, bound, fit.bound_multiplier, "newton", t0,
                       "nominal", {"iterations": fit.iterations})
    theta_k = np.zeros(data.d) if zero_offset(data) else _equaliser(data, beta)
    near_collapse = False
    if theta_k is not None and not _surely_below_collapse(data, rho):
        logm, pstar = _min_log_mgf(np.asarray(data.z), np.asarray(data.weight))
        rho0 = -logm
        near_collapse = rho >= NEAR_COLLAPSE * rho0
        if rho >= rho0 * (1 - COLLAPSE_RTOL):
            theta = theta_k
            ev = kl_value(theta, data, beta=beta, radius=rho)
            # the certificate at a collapse is ||sum_i P*_i grad l_i|| (docs/theory.md §3.7)
            g = data.x.T @ (-pstar * sigmoid(-margins(theta, data, beta=beta))
                            * data.sign * beta)
            return RobustResult(theta=theta, objective=ev.value, dual=ev.dual,
                                worst_case=pstar, status="collapsed",
                                certificate=float(np.linalg.norm(g)), solver="closed-form",
                                seconds=time.perf_counter() - t0, kind="kl", radius=rho,
                                beta=beta, p=1, kappa=np.inf, bound=bound,
                                bound_multiplier=0.0, data=data,
                                info={"collapse_radius": rho0})
    try:
        nominal = fit_dpo(data, beta=beta)
        start, free_ok = nominal.theta, True
    except SeparableDataError:
        if bound is None:
            raise SeparableDataError(
                separating_direction(data),
                "the data are separable: the KL-robust loss decreases without bound along a "
                "separating direction; pass bound=B") from None
        start, free_ok = fit_dpo(data, beta=beta, bound=bound).theta, False
    except FitError:
        start, free_ok = np.zeros(data.d) + 1e-3, True
    m_kink = None
    if theta_k is not None:
        m_kink = 0.0 if zero_offset(data) else float(margins(theta_k, data, beta=beta)[
            int(np.argmax(data.weight > 0))])
    try:
        theta_free = None
        iters = 0
        continued = False
        how = "newton"
        if free_ok:
            rep, how = _solve_free(data, beta, rho, start, theta_k, m_kink, near_collapse)
            continued = how == "continued"
            iters += rep.iterations
            if not rep.converged:
                raise RobustSolverError(f"KL Newton did not converge (also with radius "
                                        f"continuation): {rep.status}, "
                                        f"grad norm {rep.grad_norm:.3g}")
            theta_free = rep.x
        mu = 0.0
        theta = theta_free
        if bound is not None:
            def solve_ridge(mu_, x0):
                nonlocal continued
                r = _newton_kl(data, beta, rho, mu_, x0, m_kink)
                if not accurate(r):
                    r, continued = _newton_kl_continued(data, beta, rho, mu_, x0, m_kink), True
                if not r.converged:
                    raise RobustSolverError(f"KL ridge Newton failed: {r.status}")
                return r.x

            theta, mu = on_ball(solve_ridge,
                                lambda th: kl_value(th, data, beta=beta, radius=rho).grad,
                                data.d, bound, theta_free)
        ev = None if m_kink is None else _evaluate(margins(theta, data, beta=beta), data, beta,
                                                   rho, False, None, m_kink)
        return _result(theta, data, beta, rho, bound, mu, "newton", t0, "converged",
                       {"iterations": iters, "continued": continued, "start": how}, ev)
    except RobustSolverError as err:
        if method == "newton":
            raise
        res = solve_kl(data, beta=beta, radius=rho, bound=bound, method="cvxpy")
        return replace(res, info={**res.info, "fallback_reason": str(err)})
