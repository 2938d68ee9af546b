r"""Exact KL-DRO DPO: the fixed-theta value, the collapse radius and the dedicated solver.

For a KL ball of radius rho around the weighted data q (paper.md section 3, Lemma 12):

.. math::
    V(\theta) = \sup_{KL(P\|q)\le\rho} E_P\, l(\theta)
              = \inf_{\lambda > 0}\ \lambda\rho + \lambda \log \sum_i q_i e^{l_i/\lambda},

with worst case p_i \propto q_i e^{l_i/\lambda^*}, where KL(p_{\lambda^*}\|q) = \rho.
Writing s = 1/lambda, KL(p_s || q) increases from 0 (s = 0) to -log q(M) (s -> inf),
with M the argmax set of the losses; at or beyond that radius lambda* = 0 and
V = max_i l_i (the worst case is q restricted to M).

The dedicated solver profiles lambda out by that 1-D root and runs Newton in theta with
the Schur-complement Hessian of the jointly convex g(theta, lambda):

.. math::
    \nabla^2 V = \sum_i p_i \nabla^2 l_i
      + s\,[\mathrm{Cov}_p(\nabla l) - c c^\top / \mathrm{Var}_p(l)],
    \quad c = \mathrm{Cov}_p(\nabla l, l).

Collapse: with zero offsets every loss equals log 2 at theta = 0, and 0 is a robust
minimiser iff rho >= rho_0 = -min_nu log sum_i q_i e^{nu . z_i} (z_i = (2y_i-1) x_i).
The same holds at any theta_k where all margins tie (degenerate data with offsets, at
most d + 1 affinely independent atoms): the solver returns theta_k there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..data import PreferenceData
from ..fit import FitError, SeparableDataError, fit_dpo, separating_direction
from ..losses import sigmoid
from ..newton import newton
from ._base import (
    CERT_TOL,
    RobustResult,
    RobustSolverError,
    accurate,
    check_problem,
    check_theta,
    on_ball,
    radius_continuation,
    weighted_gram,
    zero_offset,
)

TIE_RTOL = 1e-13        # losses this close to the maximum count as maximal
ROOT_RTOL = 1e-14       # |KL(p_s||q) - rho| <= ROOT_RTOL max(1, rho) ends the lambda root
COLLAPSE_RTOL = 1e-10   # rho >= rho_0 (1 - COLLAPSE_RTOL) is treated as collapsed
GTOL = 1e-10            # Newton gradient tolerance in theta


@dataclass(frozen=True)
class KLValue:
    """The exact KL worst case at a fixed theta.

    Attributes:
        value: sup over the ball of E_P l (the dual value at lambda*).
        dual: lambda* (0 in the degenerate regime, inf at radius 0).
        grad: (d,) the Danskin gradient sum_i p_i grad l_i (a subgradient where V kinks).
        weights: (n,) the worst case p.
        losses: (n,) the per-pair losses at theta.
        primal: sum_i p_i l_i (equals ``value`` up to the root tolerance).
        divergence: KL(p || q).
        degenerate: True when lambda* = 0 (all mass on the largest losses).
        hess: (d, d) the Schur-complement Hessian (None unless requested).
    """

    value: float
    dual: float
    grad: np.ndarray
    weights: np.ndarray
    losses: np.ndarray
    primal: float
    divergence: float
    degenerate: bool
    hess: np.ndarray | None = None


def _kl_of(s, d, q):
    """KL(p_s||q), sum p d, log sum q e^{s d}, p, for d = l - max l <= 0.

    For small s (large lambda, small radii) log Z = s c + log1p(sum q expm1(s (d - c)))
    with c = sum q d: log of a sum near one would carry an absolute error ~1e-16, which
    the value lambda (rho + log Z) magnifies by lambda.
    """
    c = float(q @ d)
    e = s * (d - c)
    if float(np.max(np.abs(e))) <= 1.0:
        em = np.expm1(e)
        tot = float(q @ em)
        p = q * (1.0 + em) / (1.0 + tot)
        logz = s * c + float(np.log1p(tot))
    else:
        w = q * np.exp(s * d)
        zsum = w.sum()
        p = w / zsum
        logz = float(np.log(zsum))
    dbar = float(p @ d)
    return s * dbar - logz, dbar, logz, p


def _profile(losses, q, rho, s0=None):
    """Solve KL(p_s || q) = rho for s = 1/lambda. Returns (s, p, value, kl, degenerate)."""
    pos = q > 0
    lmax = float(losses[pos].max())
    if rho == 0:
        return 0.0, q.copy(), float(q @ losses), 0.0, False
    tie = pos & (losses >= lmax - TIE_RTOL * max(1.0, abs(lmax)))
    qm = float(q[tie].sum())
    rho_m = -np.log(qm) if qm < 1 else 0.0
    if rho >= rho_m:
        p = np.where(tie, q, 0.0) / qm
        return np.inf, p, lmax, rho_m, True
    d = np.where(pos, losses - lmax, 0.0)
    target = rho * (1 + 0.0)
    # F(s) = KL(p_s) - rho is increasing with F'(s) = s Var_p(l); bracket then safeguarded Newton.
    lo, hi = 0.0, np.inf
    if s0 is None or not np.isfinite(s0) or s0 <= 0:
        var = float(q @ (d - q @ d) ** 2)
        s0 = np.sqrt(2 * rho / max(var, 1e-300))
    s = s0
    tol = ROOT_RTOL * max(1.0, rho)
    for _ in range(200):
        kl, dbar, logz, p = _kl_of(s, d, q)
        f = kl - target
        if abs(f) <= tol:
            break
        if f > 0:
            hi = s
        else:
            lo = s
        var = float(p @ (d - dbar) ** 2)
        step_ok = False
        if var > 0:
            s_new = s - f / (s * var)
            if lo < s_new < hi and np.isfinite(s_new):
                s, step_ok = s_new, True
        if not step_ok:
            s = 2.0 * s if not np.isfinite(hi) else (0.5 * (lo + hi) if lo == 0 else
                                                      np.sqrt(lo * hi))
        if np.isfinite(hi) and hi - lo <= 4 * np.finfo(float).eps * hi:
            kl, dbar, logz, p = _kl_of(s, d, q)
            break
    else:
        raise RobustSolverError(f"KL dual root did not converge (rho={rho}, s={s})")
    value = lmax + (rho + logz) / s
    return s, p, value, kl, False


def kl_value(theta, data: PreferenceData, *, beta: float, radius: float,
             hessian: bool = False, _s0: float | None = None) -> KLValue:
    r"""The exact worst-case DPO loss over the KL ball at a fixed theta.

    .. math::  V(\theta) = \inf_{\lambda>0} \lambda\rho + \lambda\log\sum_i q_i e^{l_i/\lambda}

    Args:
        theta: (d,) parameter (of the data's parameterisation).
        data: weighted preference data q.
        beta: DPO temperature.
        radius: rho >= 0.
        hessian: also return the Schur-complement Hessian (smooth regime).

    Returns:
        :class:`KLValue` with the value, lambda*, the Danskin gradient and the worst case.
    """
    beta, rho = check_problem(data, beta, radius, None, "x", {"x"})
    theta = check_theta(theta, data.d)
    m = data.sign * beta * (data.x @ theta - data.offset)
    return _evaluate(m, data, beta, rho, hessian, _s0)


def _evaluate(m, data, beta, rho, hessian, s0=None) -> KLValue:
    from ..losses import softplus

    losses = softplus(-m)
    q = data.weight
    s, p, value, kl, degenerate = _profile(losses, q, rho, s0)
    g = -sigmoid(-m) * data.sign * beta          # dl_i/dm-chain: grad l_i = g_i x_i
    grad = data.x.T @ (p * g)
    hess = None
    if hessian:
        # sum p d2 beta^2 x x' + s Cov_p(grad l) - s c c'/Var_p(l), with one weighted Gram.
        w = p * sigmoid(m) * sigmoid(-m) * beta**2
        smooth = not degenerate and s > 0
        if smooth:
            w = w + s * p * g * g
        hess = weighted_gram(data.x, w)
        if smooth:
            lbar = float(p @ losses)
            dl = losses - lbar
            var = float(p @ dl**2)
            hess -= s * np.outer(grad, grad)
            if var > 0:
                c = data.x.T @ (p * g * dl)
                hess -= (s / var) * np.outer(c, c)
    lam = np.inf if rho == 0 else (0.0 if degenerate else 1.0 / s)
    return KLValue(float(value), float(lam), grad, p, losses, float(p @ losses), float(kl),
                   bool(degenerate), hess)


def _min_log_mgf(z: np.ndarray, q: np.ndarray):
    """min_nu log sum_i q_i e^{nu . z_i} and the tilted P* (E_{P*} z = 0), or -inf.

    Directions v with z_i . v >= 0 for all i (some > 0) make the infimum unattained: the
    atoms with z_i . v > 0 are sent to zero mass, and the problem recurses on the rest.
    """
    keep = q > 0
    log_mass = 0.0
    # Fast path: on non-separable data the minimiser exists and Newton finds it directly;
    # the separating-direction LP (slow at large n) is only needed when it does not.
    with np.errstate(over="ignore", invalid="ignore"):
        first = _mgf_newton(z[keep], q[keep] / q[keep].sum(), max_iter=60)
    if first is not None:
        pstar = np.zeros(len(q))
        pstar[keep] = first[1]
        return first[0], pstar
    for _ in range(z.shape[1] + 1):
        zk, qk = z[keep], q[keep] / q[keep].sum()
        sub = PreferenceData(zk, np.ones(len(qk)), weight=qk, normalize=True)
        v = separating_direction(sub)
        if v is None:
            break
        scale = max(1.0, float(np.abs(zk).max()))
        still = np.abs(zk @ v) <= 1e-9 * scale
        if not still.any():
            return -np.inf, None
        idx = np.flatnonzero(keep)
        log_mass += float(np.log(qk[still].sum()))
        keep = np.zeros_like(keep)
        keep[idx[still]] = True
    res = _mgf_newton(z[keep], q[keep] / q[keep].sum(), max_iter=200)
    if res is None:
        raise RobustSolverError("collapse-radius Newton failed on the reduced data")
    pstar = np.zeros(len(q))
    pstar[keep] = res[1]
    return log_mass + res[0], pstar


def _mgf_newton(zk, qk, *, max_iter):
    """Newton on log sum q e^{nu . z}; (value, tilted weights) or None if not converged."""
    logq = np.log(qk)

    def fun(nu, need_hess):
        a = zk @ nu + logq
        amax = a.max()
        w = np.exp(a - amax)
        tot = w.sum()
        p = w / tot
        val = amax + np.log(tot)
        g = zk.T @ p
        h = weighted_gram(zk, p) - np.outer(g, g) if need_hess else None
        return float(val), g, h

    rep = newton(fun, np.zeros(zk.shape[1]), gtol=1e-13, max_iter=max_iter)
    scale = max(1.0, float(np.abs(zk).max()))
    if not rep.converged or rep.grad_norm > 1e-9 * scale:
        return None
    a = zk @ rep.x + logq
    pk = np.exp(a - a.max())
    return rep.value, pk / pk.sum()


def _surely_below_collapse(data, rho) -> bool:
    """True when one Newton step on log E_q e^{nu . z} already shows rho < rho_0.

    Any nu gives the lower bound rho_0 >= -log E_q e^{nu . z}; the first Newton step from
    nu = 0 usually suffices, which spares the full collapse-radius solve.
    """
    z, q = np.asarray(data.z), np.asarray(data.weight)
    g = z.T @ q
    h = weighted_gram(z, q) - np.outer(g, g)
    nu = -np.linalg.lstsq(h, g, rcond=None)[0]
    a = z @ nu
    amax = float(a.max())
    if amax <= 1.0:   # log1p(E expm1(a)): rho_0 may be tiny (nearly balanced data)
        with np.errstate(divide="ignore"):      # log1p(-1) on separable data: no bound
            bound = -float(np.log1p(q @ np.expm1(a)))
    else:
        bound = -(amax + float(np.log(q @ np.exp(a - amax))))
    slack = 8 * np.finfo(float).eps * max(1.0, abs(amax))    # rounding of the bound itself
    return bool(np.isfinite(bound) and bound > rho * (1 + 1e-9) + slack)


def _equaliser(data, beta):
    """A theta at which every weighted margin is equal (all losses tie), or None.

    Such a point is a kink of V, as theta = 0 is with zero offsets; it exists only for
    degenerate data (at most d + 1 affinely independent atoms). A random subset of
    2(d + 1) atoms is tested first, since consistency of the full system implies theirs.
    """
    keep = np.flatnonzero(data.weight > 0)
    a_mat = np.column_stack([beta * np.asarray(data.z)[keep], -np.ones(len(keep))])
    rhs = beta * (data.sign * data.offset)[keep]
    scale = max(1.0, float(np.abs(a_mat).max()), float(np.abs(rhs).max()))
    k = 2 * (data.d + 1)
    rows = [np.arange(len(keep))]
    if len(keep) > k:
        rows.insert(0, np.random.default_rng(0).choice(len(keep), k, replace=False))
    for idx in rows:
        sol = np.linalg.lstsq(a_mat[idx], rhs[idx], rcond=None)[0]
        if np.abs(a_mat[idx] @ sol - rhs[idx]).max() > 1e-10 * scale:
            return None
    return sol[:-1]


def collapse_radius_kl(data: PreferenceData, *, beta: float) -> float:
    r"""The KL radius at and beyond which the robust optimum is theta = 0 exactly.

    .. math::  \rho_0 = -\min_\nu \log \sum_i q_i e^{\nu\cdot z_i}, \quad z_i = (2y_i-1)x_i

    Needs zero offsets (``data.centered()``): only then are all losses equal at 0.
    ``inf`` for strictly separable data. Independent of beta (which only rescales nu).
    """
    check_problem(data, beta, 0.0, None, "x", {"x"})
    if not zero_offset(data):
        raise ValueError("the collapse radius needs zero offsets (a kink at theta = 0); "
                         "pass data.centered() or env.population(centered=True)")
    val, _ = _min_log_mgf(np.asarray(data.z), np.asarray(data.weight))
    return float(-val)


def _newton_kl(data, beta, rho, ridge, theta0):
    state = {"s": None}

    def fun(theta, need_hess):
        m = data.sign * beta * (data.x @ theta - data.offset)
        ev = _evaluate(m, data, beta, rho, need_hess, state["s"])
        if not ev.degenerate and ev.dual > 0 and np.isfinite(ev.dual):
            state["s"] = 1.0 / ev.dual
        h = None if ev.hess is None else ev.hess + ridge * np.eye(data.d)
        return ev.value + 0.5 * ridge * float(theta @ theta), ev.grad + ridge * theta, h

    def line(theta, step):
        base = data.sign * beta * (data.x @ theta - data.offset)
        dm = data.sign * beta * (data.x @ step)

        def f(t):
            ev = _evaluate(base + t * dm, data, beta, rho, False, state["s"])
            th = theta + t * step
            return ev.value + 0.5 * ridge * float(th @ th)

        return f

    return newton(fun, theta0, gtol=GTOL, max_iter=200, line=line)


def _newton_kl_continued(data, beta, rho, ridge, theta0):
    """Newton at radius rho after a radius continuation, for when Newton alone fails."""
    return radius_continuation(lambda r, x: _newton_kl(data, beta, r, ridge, x), rho, theta0)


def _result(theta, data, beta, rho, bound, mu, solver, t0, status, info, ev=None):
    ev = ev or kl_value(theta, data, beta=beta, radius=rho)
    cert = float(np.linalg.norm(ev.grad + mu * theta))
    if status == "converged" and cert > CERT_TOL:
        status = "inaccurate"
    return RobustResult(theta, ev.value, ev.dual, ev.weights, status, cert, solver,
                        time.perf_counter() - t0, "kl", rho, beta, 1, np.inf, bound, mu, data,
                        info)


def solve_kl(data: PreferenceData, *, beta: float, radius: float, bound: float | None = None,
             method: str = "auto") -> RobustResult:
    r"""Minimise the worst-case expected DPO loss over the KL ball of radius rho.

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
    if theta_k is not None and not _surely_below_collapse(data, rho):
        logm, pstar = _min_log_mgf(np.asarray(data.z), np.asarray(data.weight))
        rho0 = -logm
        if rho >= rho0 * (1 - COLLAPSE_RTOL):
            theta = theta_k
            ev = kl_value(theta, data, beta=beta, radius=rho)
            g = data.x.T @ (-pstar * sigmoid(
                -(data.sign * beta * (data.x @ theta - data.offset))) * data.sign * beta)
            return RobustResult(theta, ev.value, ev.dual, pstar, "collapsed",
                                float(np.linalg.norm(g)), "closed-form",
                                time.perf_counter() - t0, "kl", rho, beta, 1, np.inf, bound,
                                0.0, data, {"collapse_radius": rho0})
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
    try:
        theta_free = None
        iters = 0
        continued = False
        if free_ok:
            rep = _newton_kl(data, beta, rho, 0.0, start)
            if not accurate(rep):
                rep, continued = _newton_kl_continued(data, beta, rho, 0.0, start), True
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
                r = _newton_kl(data, beta, rho, mu_, x0)
                if not accurate(r):
                    r, continued = _newton_kl_continued(data, beta, rho, mu_, x0), True
                if not r.converged:
                    raise RobustSolverError(f"KL ridge Newton failed: {r.status}")
                return r.x

            theta, mu = on_ball(solve_ridge,
                                lambda th: kl_value(th, data, beta=beta, radius=rho).grad,
                                data.d, bound, theta_free)
        return _result(theta, data, beta, rho, bound, mu, "newton", t0, "converged",
                       {"iterations": iters, "continued": continued})
    except RobustSolverError as err:
        if method == "newton":
            raise
        res = solve_kl(data, beta=beta, radius=rho, bound=bound, method="cvxpy")
        res.info["fallback_reason"] = str(err)
        return res
