r"""cvxpy + Clarabel formulations of the exact robust problems (the cross-check;
docs/theory.md §3.1 for KL, §3.4 for W1).

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


# Data enter as constants: a (n, d) Parameter times a variable makes cvxpy's DPP
# canonicalisation build an (n d) x n tensor (94 GiB at n = 10^4, d = 16). The radius,
# kappa and bound are Parameters, so a radius sweep on one dataset compiles once.
_CACHE: dict = {}
_CACHE_SIZE = 4


def _cached(key, data, build):
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is data:
        return hit[1]
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    built = build()
    _CACHE[key] = (data, built)
    return built


def _margins_affine(data, beta):
    """(A, b, q) with margins m = A theta - b over the atoms of positive weight: the margin
    of :func:`loglinear.losses.margins` as an affine map, the form cvxpy needs (DPP)."""
    keep = data.weight > 0
    a = beta * np.asarray(data.z)[keep]
    b = beta * (data.sign * data.offset)[keep]
    return a, b, np.asarray(data.weight)[keep]


def _kl_program(data, beta, bounded: bool, nominal: bool):
    def build():
        cp = _cp()
        a, b, q = _margins_affine(data, beta)
        n, d = a.shape
        rho = cp.Parameter(nonneg=True, name="rho")
        bnd = cp.Parameter(pos=True, name="B")
        th = cp.Variable(d, name="theta")
        sv = cp.Variable(n, name="s")
        cons = [cp.logistic(-(a @ th - b)) <= sv]
        lam = None
        if nominal:
            obj = q @ sv
        else:
            lam = cp.Variable(nonneg=True, name="lam")
            t = cp.Variable(name="t")
            u = cp.Variable(n, name="u")
            cons += [cp.constraints.ExpCone(sv - t, lam * np.ones(n), u), q @ u <= lam]
            obj = lam * rho + t
        ball = None
        if bounded:
            ball = cp.norm(th, 2) <= bnd
            cons.append(ball)
        prob = cp.Problem(cp.Minimize(obj), cons)
        if not prob.is_dcp(dpp=True):  # pragma: no cover - a construction bug
            raise RobustSolverError("KL program is not DPP")
        return prob, {"rho": rho, "B": bnd}, th, lam, ball

    return _cached(("kl", id(data), beta, bounded, nominal), data, build)


def _w1_program(data, beta, bounded: bool, flips: bool):
    def build():
        cp = _cp()
        a, b, q = _margins_affine(data, beta)
        n, d = a.shape
        eps = cp.Parameter(nonneg=True, name="eps")
        kappa = cp.Parameter(nonneg=True, name="kappa")
        bnd = cp.Parameter(pos=True, name="B")
        th = cp.Variable(d, name="theta")
        lam = cp.Variable(nonneg=True, name="lam")
        sv = cp.Variable(n, name="s")
        m = a @ th - b
        cons = [cp.logistic(-m) <= sv, beta * cp.norm(th, 2) <= lam]
        if flips:
            cons.append(cp.logistic(m) - kappa * lam <= sv)
        ball = None
        if bounded:
            ball = cp.norm(th, 2) <= bnd
            cons.append(ball)
        prob = cp.Problem(cp.Minimize(lam * eps + q @ sv), cons)
        if not prob.is_dcp(dpp=True):  # pragma: no cover
            raise RobustSolverError("W1 program is not DPP")
        return prob, {"eps": eps, "kappa": kappa, "B": bnd}, th, lam, ball

    return _cached(("w1", id(data), beta, bounded, flips), data, build)


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


def cvx_kl(data, *, beta: float, radius: float, bound=None):
    """Solve KL-DRO DPO with Clarabel. Returns (theta, info)."""
    prob, params, th, lam, ball = _kl_program(data, beta, bound is not None, radius == 0)
    params["rho"].value = float(radius)
    if bound is not None:
        params["B"].value = float(bound)
    status = _solve(prob)
    info = {"clarabel_status": status, "solver_objective": float(prob.value),
            "solver_dual": None if lam is None else float(lam.value),
            "solve_seconds": prob.solver_stats.solve_time,
            "bound_multiplier": 0.0 if ball is None else max(0.0, float(ball.dual_value)) / bound}
    return np.asarray(th.value, dtype=float), info


def cvx_w1(data, *, beta: float, radius: float, kappa: float, bound=None):
    """Solve type-1 Wasserstein DRO DPO with Clarabel. Returns (theta, info)."""
    flips = bool(np.isfinite(kappa))
    prob, params, th, lam, ball = _w1_program(data, beta, bound is not None, flips)
    params["eps"].value = float(radius)
    params["kappa"].value = float(kappa) if flips else 0.0
    if bound is not None:
        params["B"].value = float(bound)
    status = _solve(prob)
    info = {"clarabel_status": status, "solver_objective": float(prob.value),
            "solver_dual": float(lam.value),
            "solve_seconds": prob.solver_stats.solve_time,
            "bound_multiplier": 0.0 if ball is None else max(0.0, float(ball.dual_value)) / bound}
    return np.asarray(th.value, dtype=float), info
