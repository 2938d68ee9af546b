r"""cvxpy + Clarabel formulations of the exact robust problems (the cross-check).

Each problem is built once per shape from ``cp.Parameter``s, checked for DPP, cached,
and re-solved with new values. cvxpy is imported here only, never at ``import loglinear``.

KL (exponential cones; the constraint is a q-weighted *mean*, which keeps Clarabel well
scaled at n >= 10^4, unlike sum_i u_i <= n lambda):

.. math::
    \min_{\theta,\lambda\ge0,t,s,u}\ \lambda\rho + t \ \ \text{s.t.}\ \
    \log(1+e^{-m_i}) \le s_i,\ \ \lambda e^{(s_i - t)/\lambda} \le u_i,\ \
    \textstyle\sum_i q_i u_i \le \lambda.

Wasserstein p = 1 (Shafieezadeh-Abadeh, Mohajerin Esfahani & Kuhn 2015):

.. math::
    \min_{\theta,\lambda,s}\ \lambda\varepsilon + \sum_i q_i s_i\ \ \text{s.t.}\ \
    l(\theta;x_i,y_i) \le s_i,\ l(\theta;x_i,1-y_i) - \lambda\kappa \le s_i,\
    \beta\|\theta\|_2 \le \lambda.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ._base import RobustSolverError

CLARABEL_OPTS = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10,
                 "max_iter": 500}
# Tight tolerances sometimes end 'optimal_inaccurate'; one retry at Clarabel's defaults
# (1e-8) is accepted, anything else is an error.
CLARABEL_RETRY = {"max_iter": 500}


def _cp():
    try:
        import cvxpy as cp
    except ImportError as err:  # pragma: no cover - cvxpy is a core dependency
        raise RobustSolverError("method='cvxpy' needs cvxpy and Clarabel installed") from err
    return cp


@lru_cache(maxsize=16)
def _kl_program(n: int, d: int, bounded: bool, nominal: bool):
    cp = _cp()
    A = cp.Parameter((n, d), name="A")          # beta * z_i
    b = cp.Parameter(n, name="b")               # beta * (2y_i - 1) o_i
    q = cp.Parameter(n, nonneg=True, name="q")
    rho = cp.Parameter(nonneg=True, name="rho")
    B = cp.Parameter(pos=True, name="B")
    th = cp.Variable(d, name="theta")
    sv = cp.Variable(n, name="s")
    cons = [cp.logistic(-(A @ th - b)) <= sv]
    if nominal:
        obj = q @ sv
        lam = None
    else:
        lam = cp.Variable(nonneg=True, name="lam")
        t = cp.Variable(name="t")
        u = cp.Variable(n, name="u")
        cons += [cp.constraints.ExpCone(sv - t, lam * np.ones(n), u), q @ u <= lam]
        obj = lam * rho + t
    ball = None
    if bounded:
        ball = cp.norm(th, 2) <= B
        cons.append(ball)
    prob = cp.Problem(cp.Minimize(obj), cons)
    if not prob.is_dcp(dpp=True):  # pragma: no cover - a construction bug
        raise RobustSolverError("KL program is not DPP")
    return prob, {"A": A, "b": b, "q": q, "rho": rho, "B": B}, th, lam, ball


@lru_cache(maxsize=16)
def _w1_program(n: int, d: int, bounded: bool, flips: bool):
    cp = _cp()
    A = cp.Parameter((n, d), name="A")
    b = cp.Parameter(n, name="b")
    q = cp.Parameter(n, nonneg=True, name="q")
    eps = cp.Parameter(nonneg=True, name="eps")
    beta = cp.Parameter(pos=True, name="beta")
    kappa = cp.Parameter(nonneg=True, name="kappa")
    B = cp.Parameter(pos=True, name="B")
    th = cp.Variable(d, name="theta")
    lam = cp.Variable(nonneg=True, name="lam")
    sv = cp.Variable(n, name="s")
    m = A @ th - b
    cons = [cp.logistic(-m) <= sv, beta * cp.norm(th, 2) <= lam]
    if flips:
        cons.append(cp.logistic(m) - kappa * lam <= sv)
    ball = None
    if bounded:
        ball = cp.norm(th, 2) <= B
        cons.append(ball)
    prob = cp.Problem(cp.Minimize(lam * eps + q @ sv), cons)
    if not prob.is_dcp(dpp=True):  # pragma: no cover
        raise RobustSolverError("W1 program is not DPP")
    return prob, {"A": A, "b": b, "q": q, "eps": eps, "beta": beta, "kappa": kappa,
                  "B": B}, th, lam, ball


def _solve(prob) -> str:
    """Solve with Clarabel; returns the status ('optimal' or 'optimal_inaccurate').

    'optimal_inaccurate' is passed back, not accepted here: the caller re-evaluates the
    exact KKT residual at the returned theta and raises unless it is small.
    """
    import warnings

    cp = _cp()
    for opts in (CLARABEL_OPTS, CLARABEL_RETRY):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                prob.solve(solver=cp.CLARABEL, **opts)
        except cp.error.SolverError as err:
            raise RobustSolverError(f"Clarabel failed: {err}") from err
        if prob.status == cp.OPTIMAL:
            return prob.status
    if prob.status != cp.OPTIMAL_INACCURATE:
        raise RobustSolverError(f"Clarabel returned status {prob.status!r} (need 'optimal')")
    return prob.status


def _load(params, data, beta, bound):
    keep = data.weight > 0
    params["A"].value = beta * np.asarray(data.z)[keep]
    params["b"].value = beta * (data.sign * data.offset)[keep]
    params["q"].value = np.asarray(data.weight)[keep]
    if bound is not None:
        params["B"].value = float(bound)
    return int(keep.sum())


def cvx_kl(data, *, beta: float, radius: float, bound=None):
    """Solve KL-DRO DPO with Clarabel. Returns (theta, info)."""
    n = int((data.weight > 0).sum())
    prob, params, th, lam, ball = _kl_program(n, data.d, bound is not None, radius == 0)
    _load(params, data, beta, bound)
    params["rho"].value = float(radius)
    status = _solve(prob)
    info = {"clarabel_status": status, "solver_objective": float(prob.value),
            "solver_dual": None if lam is None else float(lam.value),
            "solve_seconds": prob.solver_stats.solve_time,
            "bound_multiplier": 0.0 if ball is None else max(0.0, float(ball.dual_value)) / bound}
    return np.asarray(th.value, dtype=float), info


def cvx_w1(data, *, beta: float, radius: float, kappa: float, bound=None):
    """Solve type-1 Wasserstein DRO DPO with Clarabel. Returns (theta, info)."""
    flips = bool(np.isfinite(kappa))
    n = int((data.weight > 0).sum())
    prob, params, th, lam, ball = _w1_program(n, data.d, bound is not None, flips)
    _load(params, data, beta, bound)
    params["eps"].value = float(radius)
    params["beta"].value = float(beta)
    params["kappa"].value = float(kappa) if flips else 0.0
    status = _solve(prob)
    info = {"clarabel_status": status, "solver_objective": float(prob.value),
            "solver_dual": float(lam.value),
            "solve_seconds": prob.solver_stats.solve_time,
            "bound_multiplier": 0.0 if ball is None else max(0.0, float(ball.dual_value)) / bound}
    return np.asarray(th.value, dtype=float), info
