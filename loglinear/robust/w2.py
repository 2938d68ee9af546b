r"""Exact W2-DRO DPO (paper Lemma 1, via Gao & Kleywegt), the order behind Algorithm 1.

.. math::
    V(\theta) = \inf_{\eta\ge0}\ \eta\varepsilon^2 + \sum_i q_i\,
        \varphi(u_i, \beta\|\theta\|, \eta), \qquad
    \varphi(u, b, \eta) = \sup_{t\ge0}\ \mathrm{softplus}(u + bt) - \eta t^2,

with u_i = -m_i. The inner supremum is solved exactly by
:func:`loglinear.robust._w2inner.inner_sup`. Phi(theta, eta) is jointly convex (a
partial supremum of convex functions of (theta, eta)), so the solver runs Newton on
(theta, eta) jointly, with the Hessian of phi from the implicit function theorem; eta is
kept positive by the line search (phi -> inf as eta -> 0 for theta != 0).
"""

from __future__ import annotations

import numpy as np

from ..losses import softplus
from ..optim import newton
from ._base import RobustSolverError, Transport, on_ball, weighted_gram
from ._w2inner import inner_sup, second_order

ETA_RTOL = 1e-13
TIE_RTOL = 1e-12
GTOL = 1e-10
PROFILE_SWITCH = 1e-8   # KKT residual above which the profiled solver takes over


def _profile_eta(u, q, b, eps, eta0=None):
    """eta* = argmin_eta eta eps^2 + sum q phi_i(eta): the root of sum q t_i(eta)^2 = eps^2."""
    pos = q > 0
    s0 = 1.0 / (1.0 + np.exp(-u[pos]))
    if eta0 is None or not np.isfinite(eta0) or eta0 <= 0:
        eta0 = b * np.sqrt(float(q[pos] @ s0**2)) / (2.0 * eps)
    lo, hi = 0.0, np.inf
    eta = eta0
    for _ in range(300):
        phi, t, alt_phi, alt_t = inner_sup(u, b, eta)
        h1 = eps**2 - float(q @ (t * t))
        if h1 > 0:
            hi = eta
        else:
            lo = eta
        if abs(h1) <= ETA_RTOL * eps**2 or (np.isfinite(hi) and hi - lo <= 4e-16 * hi):
            break
        h2 = float(q @ second_order(u, b, eta, t)[8])
        ok = False
        if h2 > 0:
            en = eta - h1 / h2
            if lo < en < hi:
                eta, ok = en, True
        if not ok:
            eta = 2.0 * eta if not np.isfinite(hi) else (0.5 * hi if lo == 0 else
                                                          np.sqrt(lo * hi))
    else:
        raise RobustSolverError("W2 multiplier root did not converge")
    return eta, phi, t, alt_phi, alt_t


def w2_value(theta, data, *, beta: float, radius: float):
    """The exact W2 worst case at fixed theta; see :func:`wasserstein_value`."""
    from .wasserstein import WassersteinValue, _min_norm

    q = data.weight
    m = data.sign * beta * (data.x @ theta - data.offset)
    losses = softplus(-m)
    nominal = float(q @ losses)
    norm = float(np.linalg.norm(theta))
    b = beta * norm
    eps = radius
    if b == 0 or eps == 0:
        s = 1.0 / (1.0 + np.exp(m))
        grad = data.x.T @ (q * -s * data.sign * beta)
        if b == 0:
            grad = _min_norm(grad, eps * beta * float(np.sqrt(q @ s**2)))
        dual = np.inf if eps == 0 and b > 0 else 0.0
        tr = Transport(data.x.copy(), data.y.copy(), q.copy(), np.arange(data.n), 0.0)
        return WassersteinValue(nominal, dual, grad, tr, losses, nominal, 2, np.inf)
    u = -m
    eta, phi, t, alt_phi, alt_t = _profile_eta(u, q, b, eps)
    frac = np.zeros(data.n)
    spent = float(q @ (t * t))
    tie = (q > 0) & (alt_phi >= phi - TIE_RTOL * np.maximum(1.0, np.abs(phi)))
    if abs(spent - eps**2) > 1e-10 * eps**2 and tie.any():
        # at a jump of t(eta) the worst case splits the tied atoms between both maxima
        delta = float(q[tie] @ (alt_t[tie] ** 2 - t[tie] ** 2))
        if delta != 0:
            frac[tie] = min(1.0, max(0.0, (eps**2 - spent) / delta))
    value = eta * eps**2 + float(q @ phi)
    unit = theta / norm
    sig = 1.0 / (1.0 + np.exp(-(u + b * t)))
    sig_alt = 1.0 / (1.0 + np.exp(-(u + b * alt_t)))
    mix_s = (1 - frac) * sig + frac * sig_alt
    mix_ts = (1 - frac) * t * sig + frac * alt_t * sig_alt
    grad = data.x.T @ (q * -mix_s * data.sign * beta) + beta * float(q @ mix_ts) * unit
    pos = np.flatnonzero(q > 0)
    main = pos[(1 - frac[pos]) > 0]
    alt = pos[frac[pos] > 0]
    xs = np.vstack([data.x[main] - (data.sign[main] * t[main])[:, None] * unit,
                    data.x[alt] - (data.sign[alt] * alt_t[alt])[:, None] * unit])
    ws = np.concatenate([q[main] * (1 - frac[main]), q[alt] * frac[alt]])
    src = np.concatenate([main, alt]).astype(np.int64)
    cost = float(q @ ((1 - frac) * t * t + frac * alt_t * alt_t))
    tr = Transport(xs, data.y[src], ws, src, cost)
    return WassersteinValue(value, float(eta), grad, tr, losses, nominal, 2, np.inf)


def _pieces(data, beta, eps, ridge, theta, eta, need_hess):
    """Phi(theta, eta) + ridge/2 ||theta||^2 with its gradient and Hessian blocks."""
    q, d = data.weight, data.d
    sb, sbo = data.sign * beta, data.sign * beta * data.offset
    norm = float(np.linalg.norm(theta))
    u = -(sb * (data.x @ theta) - sbo)
    b = beta * norm
    phi, t, _, _ = inner_sup(u, b, eta)
    pu, pb, pe, puu, pub, pbb, pue, pbe, pee = second_order(u, b, eta, t)
    unit = theta / norm
    e = beta * unit
    value = eta * eps**2 + float(q @ phi) + 0.5 * ridge * float(theta @ theta)
    # d u_i / d theta = -s_i beta x_i
    g_theta = data.x.T @ (q * pu * -sb) + float(q @ pb) * e + ridge * theta
    g_eta = eps**2 + float(q @ pe)
    if not need_hess:
        return value, g_theta, g_eta, None, None, None
    w = data.x.T @ (q * pub * -sb)
    htt = weighted_gram(data.x, q * puu * beta**2)
    htt += np.outer(w, e) + np.outer(e, w) + float(q @ pbb) * np.outer(e, e)
    htt += float(q @ pb) * beta / norm * (np.eye(d) - np.outer(unit, unit))
    htt[np.diag_indices(d)] += ridge
    hte = data.x.T @ (q * pue * -sb) + float(q @ pbe) * e
    return value, g_theta, g_eta, htt, hte, float(q @ pee)


def _joint(data, beta, eps, ridge):
    """fun(z, need_hess) and line(z, step) for Phi(theta, eta) + ridge/2 ||theta||^2."""
    q, d = data.weight, data.d
    sb, sbo = data.sign * beta, data.sign * beta * data.offset

    def value_at(u, theta, eta):
        norm = float(np.linalg.norm(theta))
        if eta <= 0 or norm == 0:
            return np.inf
        phi = inner_sup(u, beta * norm, eta)[0]
        return eta * eps**2 + float(q @ phi) + 0.5 * ridge * float(theta @ theta)

    def fun(z, need_hess):
        theta, eta = z[:d], float(z[d])
        if eta <= 0 or not np.any(theta):     # outside the domain: reject the trial point
            return np.inf, np.full(d + 1, np.inf), np.eye(d + 1)
        value, g_t, g_e, htt, hte, hee = _pieces(data, beta, eps, ridge, theta, eta, need_hess)
        hess = None
        if need_hess:
            hess = np.empty((d + 1, d + 1))
            hess[:d, :d], hess[:d, d], hess[d, :d], hess[d, d] = htt, hte, hte, hee
        return value, np.concatenate([g_t, [g_e]]), hess

    def line(z, step):
        theta, eta = z[:d], float(z[d])
        base = -(sb * (data.x @ theta) - sbo)
        du = -(sb * (data.x @ step[:d]))
        return lambda tt: value_at(base + tt * du, theta + tt * step[:d], eta + tt * step[d])

    return fun, line


def _newton_w2_profiled(data, beta, eps, ridge, theta0):
    """Newton in theta on V(theta) = min_eta Phi, eta profiled out (Schur complement).

    Slower than the joint iteration, but well behaved next to the kink at 0, where the
    joint problem degenerates (eta* -> 0 together with theta).
    """
    q, d = data.weight, data.d
    sb, sbo = data.sign * beta, data.sign * beta * data.offset
    state = {"eta": None}

    def eta_at(theta):
        u = -(sb * (data.x @ theta) - sbo)
        return _profile_eta(u, q, beta * float(np.linalg.norm(theta)), eps, state["eta"])

    def fun(theta, need_hess):
        if not np.any(theta):
            return np.inf, np.full(d, np.inf), np.eye(d)
        eta = eta_at(theta)[0]
        state["eta"] = eta
        value, g_t, _, htt, hte, hee = _pieces(data, beta, eps, ridge, theta, eta, need_hess)
        hess = None if htt is None else htt - np.outer(hte, hte) / max(hee, 1e-300)
        return value, g_t, hess

    def line(theta, step):
        def f(tt):
            th = theta + tt * step
            if not np.any(th):
                return np.inf
            eta, phi = eta_at(th)[:2]
            return eta * eps**2 + float(q @ phi) + 0.5 * ridge * float(th @ th)

        return f

    return newton(fun, theta0, gtol=GTOL, max_iter=60, line=line)


def _newton_w2(data, beta, eps, ridge, theta0):
    q = data.weight
    u0 = -(data.sign * beta * (data.x @ theta0 - data.offset))
    eta0 = _profile_eta(u0, q, beta * float(np.linalg.norm(theta0)), eps)[0]
    fun, line = _joint(data, beta, eps, ridge)
    rep = newton(fun, np.concatenate([theta0, [eta0]]), gtol=GTOL, max_iter=200, line=line)
    return rep


def _ray_start(data, beta, eps, start):
    """The exact minimiser of V along the ray through ``start`` (a start next to the kink)."""
    from scipy.optimize import minimize_scalar

    direction = start / np.linalg.norm(start)

    def v(tau):
        return w2_value(np.exp(tau) * direction, data, beta=beta, radius=eps).value

    hi = float(np.log(np.linalg.norm(start)))
    res = minimize_scalar(v, bounds=(hi - 30.0, hi), method="bounded",
                          options={"xatol": 1e-10})
    return np.exp(res.x) * direction


def solve_w2(data, *, beta: float, eps: float, bound, start):
    """Minimise the exact W2 robust loss (the kink at 0 is checked by the caller)."""
    if np.linalg.norm(start) == 0:
        start = np.full(data.d, 1e-3)
    rep = _newton_w2(data, beta, eps, 0.0, start)
    theta = rep.x[:data.d]
    info = {"iterations": rep.iterations, "eta": float(rep.x[data.d]), "profiled": False}
    cert = float(np.linalg.norm(w2_value(theta, data, beta=beta, radius=eps).grad)) \
        if np.any(theta) else np.inf
    if not rep.converged or cert > PROFILE_SWITCH:
        # next to the kink the joint iteration degenerates: profile eta out instead
        x0 = theta if rep.converged and np.linalg.norm(theta) > 1e-8 else start
        prof = _newton_w2_profiled(data, beta, eps, 0.0, x0)
        if not prof.converged:
            ray = _ray_start(data, beta, eps, start)
            prof = _newton_w2_profiled(data, beta, eps, 0.0, ray)
            if not prof.converged:
                # Within ~1e-4 (relative) of the collapse radius the value is flat to
                # ~1e-9 and Newton may stall: return the best point found; its KKT
                # residual is reported and the result is marked "inaccurate".
                cands = [c for c in (prof.x, ray, theta) if np.any(c)]
                vals = [w2_value(c, data, beta=beta, radius=eps).value for c in cands]
                prof = type(prof)(cands[int(np.argmin(vals))], min(vals), prof.grad,
                                  prof.grad_norm, prof.iterations, False, prof.status,
                                  prof.hess)
                info["stalled"] = prof.status
        theta = prof.x
        info.update(iterations=rep.iterations + prof.iterations, profiled=True)
    if bound is None:
        return theta, 0.0, info

    def solve_ridge(mu, x0):
        r = _newton_w2(data, beta, eps, mu, x0)
        if not r.converged:
            raise RobustSolverError(f"W2 ridge Newton failed: {r.status}")
        return r.x[:data.d]

    theta, mu = on_ball(solve_ridge, lambda th: w2_value(th, data, beta=beta, radius=eps).grad,
                        data.d, bound, theta)
    return theta, mu, info
