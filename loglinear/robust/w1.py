r"""Exact W1-robust DPO: the value at a fixed theta for any label-flip cost kappa
(docs/theory.md §3.3-3.4), and the kappa = inf solver (§3.3).

With b = beta ||theta|| (the Lipschitz constant of l in x):

* kappa = inf: :math:`V(\theta) = L(\theta) + \varepsilon\beta\|\theta\|_2`;
* finite kappa (Shafieezadeh-Abadeh et al. 2015), using l(x, 1-y) - l(x, y) = m:

  .. math::  V(\theta) = L(\theta) + \min_{\lambda \ge b}\ \lambda\varepsilon
             + \sum_i q_i (m_i - \lambda\kappa)_+ ,

  whose minimiser is lambda* = max(b, m_(k)/kappa), m_(k) the weighted upper
  (epsilon/kappa)-quantile of the margins (§3.4). The finite-kappa solver is
  :mod:`loglinear.robust.w1flip`.
"""

from __future__ import annotations

import numpy as np

from ..losses import margin_line, margins, sigmoid, softplus
from ..newton import newton
from ._base import (
    RobustSolverError,
    Transport,
    WassersteinValue,
    accurate,
    min_norm,
    on_ball,
    weighted_gram,
)

TIE_ATOL = 1e-12         # margins this close to lambda kappa count as tied
FAR_SHORTFALL = 1e-10    # the non-attained W1 worst case is represented within this
GTOL = 1e-10


def _w1_dual(m, q, b, eps, kappa):
    """lambda* = argmin_{lambda >= b} lambda eps + sum q (m - lambda kappa)_+ (docs/theory.md
    §3.4: a weighted upper quantile of the margins)."""
    if not np.isfinite(kappa):
        return b
    pos = q > 0
    order = np.argsort(-m[pos], kind="stable")
    ms, qs = m[pos][order], q[pos][order]
    cum = np.cumsum(qs)
    k = int(np.searchsorted(cum, eps / kappa - 1e-15, side="left"))
    lam_q = ms[k] / kappa if k < len(ms) else -np.inf
    return max(b, lam_q)


def w1_value(theta, data, *, beta: float, radius: float, kappa: float = np.inf,
             transport: bool = True) -> WassersteinValue:
    """The exact W1 worst case at fixed theta (docs/theory.md §3.3-3.4); see
    :func:`loglinear.robust.wasserstein_value`. ``transport=False`` skips building the
    worst case (``transport`` is then None)."""
    eps = radius
    m = margins(theta, data, beta=beta)
    q = data.weight
    losses = softplus(-m)
    nominal = float(q @ losses)
    norm = float(np.linalg.norm(theta))
    b = beta * norm
    lam = _w1_dual(m, q, b, eps, kappa)
    flip = np.zeros(data.n)
    if np.isfinite(kappa) and eps > 0:
        pos = q > 0
        strict = pos & (m > lam * kappa + TIE_ATOL)
        flip[strict] = 1.0
        spent = kappa * float(q[strict].sum())
        tie = pos & ~strict & (np.abs(m - lam * kappa) <= TIE_ATOL) & (m > b * kappa - TIE_ATOL)
        if lam > b and tie.any():
            frac = (eps - spent) / (kappa * float(q[tie].sum()))
            flip[tie] = min(1.0, max(0.0, frac))
        value = nominal + lam * eps + float(q @ np.maximum(m - lam * kappa, 0.0))
    else:
        value = nominal + eps * b
    leftover = max(0.0, eps - (kappa * float(q @ flip) if np.isfinite(kappa) else 0.0))
    # Danskin: the expected gradient under the (limit) worst case
    g_stay = -sigmoid(-m) * data.sign * beta
    g_flip = sigmoid(m) * data.sign * beta
    if norm == 0 and np.isfinite(kappa) and eps > 0 and tie.any() and np.linalg.norm(
            min_norm(data.x.T @ (q * ((1 - flip) * g_stay + flip * g_flip)),
                     leftover * beta)) > 0:
        flip[tie] = _zero_flips(data, q, tie, g_flip - g_stay, flip,
                                (1 - flip) * g_stay + flip * g_flip, beta, eps, kappa, lam > b)
        leftover = max(0.0, eps - kappa * float(q @ flip))
    grad = data.x.T @ (q * ((1 - flip) * g_stay + flip * g_flip))
    if norm > 0:
        grad = grad + leftover * beta * theta / norm
    else:
        grad = min_norm(grad, leftover * beta)
    transport = _w1_transport(data, theta, m, flip, leftover, b, kappa) if transport else None
    return WassersteinValue(float(value), float(lam), grad, transport, losses, nominal, 1, kappa)


def _zero_flips(data, q, tie, g_gain, flip, g_now, beta, eps, kappa, spend_all):
    """At theta = 0 the tied atoms (margin m = lambda kappa) flip for free in value, so
    the subdifferential is the union over their flip fractions f of
    g(f) + beta (eps - kappa q . flip(f)) B, and its min-norm element has norm
    min_f max(0, ||g(f)|| - beta leftover(f)) (docs/theory.md §3.7): a small SOCP in f.
    Returns the minimising fractions (the current ones where the SOCP fails)."""
    import cvxpy as cp

    idx = np.flatnonzero(tie)
    g0 = data.x.T @ (q * (g_now - np.where(tie, flip * g_gain, 0.0)))   # ties unflipped
    a = data.x[idx].T * (q[idx] * g_gain[idx])
    spent = kappa * float(q[~tie] @ flip[~tie])
    f = cp.Variable(idx.size)
    used = spent + kappa * (q[idx] @ f)
    cons = [f >= 0, f <= 1, used == eps if spend_all else used <= eps]
    prob = cp.Problem(cp.Minimize(cp.norm(g0 + a @ f) - beta * (eps - used)), cons)
    try:
        prob.solve(solver=cp.CLARABEL)
    except cp.error.SolverError:
        return flip[idx]
    if f.value is None:
        return flip[idx]
    return np.clip(f.value, 0.0, 1.0)


def _w1_transport(data, theta, m, flip, leftover, b, kappa):
    q = data.weight
    pos = np.flatnonzero(q > 0)
    stay = q * (1 - flip)
    src = [pos[stay[pos] > 0], pos[flip[pos] > 0]]
    xs = [data.x[src[0]], data.x[src[1]]]
    ys = [data.y[src[0]], 1 - data.y[src[1]]]
    ws = [stay[src[0]], (q * flip)[src[1]]]
    shortfall = 0.0
    moved = 0.0
    if leftover > 0 and b > 0:
        # the supremum is approached by a vanishing mass travelling far: keep delta of the
        # most-lossy staying atom and move it leftover/delta along -(2y-1) theta/||theta||
        cand = src[0]
        j = cand[np.argmin(m[cand])]
        delta = min(stay[j], FAR_SHORTFALL / max(1.0, float(softplus(m[j]))))
        dist = leftover / delta
        direction = -data.sign[j] * theta / np.linalg.norm(theta)
        k = int(np.flatnonzero(src[0] == j)[0])
        ws[0] = ws[0].copy()
        ws[0][k] -= delta
        src.append(np.array([j]))
        xs.append(data.x[j][None, :] + dist * direction[None, :])
        ys.append(data.y[[j]])
        ws.append(np.array([delta]))
        shortfall = delta * float(softplus(m[j]))
        moved = leftover
    cost = moved + (kappa * float(q @ flip) if np.isfinite(kappa) else 0.0)
    return Transport(np.vstack(xs), np.concatenate(ys), np.concatenate(ws),
                     np.concatenate(src).astype(np.int64), float(cost), shortfall)


def _newton_w1_inf(data, beta, eps, ridge, theta0, delta=0.0):
    """Newton on L(θ) + εβ‖θ‖ + ridge/2 ‖θ‖², or, with ``delta > 0``, on the smoothed
    L(θ) + εβ (‖θ‖² + δ²)^{1/2} + ridge/2 ‖θ‖² (C², used by :func:`_w1_inf_smoothing`)."""
    sb, q = data.sign * beta, data.weight
    d2 = delta * delta

    def fun(theta, need_hess):
        m = margins(theta, data, beta=beta)
        nrm = float(np.sqrt(theta @ theta + d2))
        s = sigmoid(-m)
        value = float(q @ softplus(-m)) + eps * beta * nrm + 0.5 * ridge * float(theta @ theta)
        grad = data.x.T @ (-q * s * sb) + ridge * theta
        u = theta / nrm if nrm > 0 else np.zeros_like(theta)
        grad = grad + eps * beta * u
        hess = None
        if need_hess:
            hess = weighted_gram(data.x, q * s * (1 - s) * beta**2)
            if nrm > 0:
                hess += (eps * beta / nrm) * (np.eye(data.d) - np.outer(u, u))
            hess[np.diag_indices_from(hess)] += ridge
        return value, grad, hess

    def line(theta, step):
        base, dm = margin_line(theta, step, data, beta=beta)

        def f(t):
            th = theta + t * step
            return float(q @ softplus(-(base + t * dm))) + eps * beta * float(
                np.sqrt(th @ th + d2)) + 0.5 * ridge * float(th @ th)

        return f

    return newton(fun, theta0, gtol=GTOL, max_iter=200, line=line)


SMOOTH_SHRINK = 0.1     # delta shrinks tenfold per stage


SMOOTH_STOP = 1e-4      # stop smoothing once delta <= SMOOTH_STOP * ||theta_delta||


SMOOTH_STAGES = 14


def _w1_inf_smoothing(data, beta, eps, ridge, theta0):
    """Exact Newton on L + εβ‖θ‖ after a smoothing path, for when Newton alone fails.

    Near the collapse radius the optimum has a small norm and plain Newton can run into the
    kink at θ = 0 (its Hessian term εβ/‖θ‖ blows up and the line search stalls). The
    smoothed objectives L + εβ(‖θ‖² + δ²)^{1/2} are C² and strictly convex; their minimisers
    θ_δ tend to θ* as δ → 0 (the caller has checked that θ* ≠ 0), so δ shrinks tenfold per
    warm-started stage until δ ≪ ‖θ_δ‖, where the exact objective is smooth, and Newton on
    it finishes from there.
    """
    theta = np.asarray(theta0, float)
    delta = max(float(np.linalg.norm(theta)), 1.0)
    for _ in range(SMOOTH_STAGES):
        rep = _newton_w1_inf(data, beta, eps, ridge, theta, delta=delta)
        if not rep.converged:
            break
        theta = rep.x
        if delta <= SMOOTH_STOP * float(np.linalg.norm(theta)):
            break
        delta *= SMOOTH_SHRINK
    return _newton_w1_inf(data, beta, eps, ridge, theta)


def solve_w1_inf(data, *, beta, radius, bound, start):
    """Newton on L + eps beta ||theta|| from ``start`` (smoothing path if it stalls),
    then the ball constraint if ``bound``; returns (theta, bound multiplier, info)."""
    eps = radius    # the epsilon of docs/theory.md §3.3-3.5
    rep = _newton_w1_inf(data, beta, eps, 0.0, start)
    smoothed = not accurate(rep)
    if smoothed:
        rep = _w1_inf_smoothing(data, beta, eps, 0.0, start)
    if not rep.converged:
        raise RobustSolverError(f"W1 Newton did not converge (also after smoothing): "
                                f"{rep.status}, grad norm {rep.grad_norm:.3g}")
    info = {"iterations": rep.iterations, "smoothed": smoothed}
    if bound is None:
        return rep.x, 0.0, info

    def solve_ridge(mu, x0):
        r = _newton_w1_inf(data, beta, eps, mu, x0)
        if not accurate(r):
            r = _w1_inf_smoothing(data, beta, eps, mu, x0)
        if not r.converged:
            raise RobustSolverError(f"W1 ridge Newton failed: {r.status}")
        return r.x

    theta, mu = on_ball(solve_ridge,
                        lambda th: w1_value(th, data, beta=beta, radius=eps).grad,
                        data.d, bound, rep.x)
    return theta, mu, info
