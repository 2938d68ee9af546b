r"""Exact Wasserstein-DRO DPO: fixed-theta values, collapse radii and the p = 1 solvers.

Cost c((x, y), (x', y')) = ||x - x'||_2 + kappa 1[y != y'] (paper.md section 2); the
offset never moves. With b = beta ||theta|| (the Lipschitz constant of l in x):

* p = 1, kappa = inf: :math:`V(\theta) = L(\theta) + \varepsilon\beta\|\theta\|_2`.
* p = 1, finite kappa (Shafieezadeh-Abadeh et al. 2015), using l(x, 1-y) - l(x, y) = m:

  .. math::  V(\theta) = L(\theta) + \min_{\lambda \ge b}\ \lambda\varepsilon
             + \sum_i q_i (m_i - \lambda\kappa)_+ ,

  whose minimiser is lambda* = max(b, m_(k)/kappa), m_(k) the weighted upper
  (epsilon/kappa)-quantile of the margins. With zero offsets m_i <= b ||x_i||, so flips
  never pay off once kappa >= max ||x_i|| and V is the kappa = inf closed form.
* p = 2 (paper Lemma 1; Gao & Kleywegt): see :mod:`loglinear.robust.w2`.

Both V are convex with a kink at theta = 0: theta = 0 is optimal iff
||grad L(0)|| <= eps beta (p = 1) or eps beta (sum q_i sigma(-m_i(0))^2)^{1/2} (p = 2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..data import PreferenceData
from ..fit import FitError, SeparableDataError, fit_dpo
from ..losses import sigmoid, softplus
from ..optim import newton
from ._base import (
    CERT_TOL,
    RobustResult,
    RobustSolverError,
    Transport,
    accurate,
    check_problem,
    check_theta,
    grad_at_zero,
    on_ball,
    weighted_gram,
    zero_offset,
)

TIE_ATOL = 1e-12         # margins this close to lambda kappa count as tied
FAR_SHORTFALL = 1e-10    # the non-attained W1 worst case is represented within this
GTOL = 1e-10


@dataclass(frozen=True)
class WassersteinValue:
    """The exact Wasserstein worst case at a fixed theta.

    Attributes:
        value: sup over the ball of E_P l (the dual value).
        dual: the multiplier (lambda for p = 1, eta for p = 2; inf at radius 0 for p = 2).
        grad: (d,) the Danskin gradient E_{P*} grad_theta l; at theta = 0 the
            minimum-norm subgradient.
        transport: the worst case as a :class:`Transport`.
        losses: (n,) nominal per-pair losses.
        nominal: sum_i q_i l_i.
        p, kappa: the problem.
    """

    value: float
    dual: float
    grad: np.ndarray
    transport: Transport
    losses: np.ndarray
    nominal: float
    p: int
    kappa: float


def check_order(p, kappa) -> tuple[int, float]:
    if p not in (1, 2):
        raise ValueError(f"the Wasserstein order p must be 1 or 2, got {p!r}")
    kappa = float(kappa)
    if not kappa > 0:
        raise ValueError(f"kappa (the label-flip cost) must be > 0 or inf, got {kappa}")
    if p == 2 and np.isfinite(kappa):
        raise ValueError("p = 2 supports kappa = inf only (labels never flipped)")
    return int(p), kappa


def _min_norm(g0: np.ndarray, r: float) -> np.ndarray:
    """The smallest element of g0 + r * (unit ball)."""
    n0 = float(np.linalg.norm(g0))
    return g0 * max(0.0, 1.0 - r / n0) if n0 > 0 else g0


def _w1_dual(m, q, b, eps, kappa):
    """lambda* = argmin_{lambda >= b} lambda eps + sum q (m - lambda kappa)_+."""
    if not np.isfinite(kappa):
        return b
    pos = q > 0
    order = np.argsort(-m[pos], kind="stable")
    ms, qs = m[pos][order], q[pos][order]
    cum = np.cumsum(qs)
    k = int(np.searchsorted(cum, eps / kappa - 1e-15, side="left"))
    lam_q = ms[k] / kappa if k < len(ms) else -np.inf
    return max(b, lam_q)


def _w1_value(theta, data, beta, eps, kappa, transport=True):
    m = data.sign * beta * (data.x @ theta - data.offset)
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
    grad = data.x.T @ (q * ((1 - flip) * g_stay + flip * g_flip))
    if norm > 0:
        grad = grad + leftover * beta * theta / norm
    else:
        grad = _min_norm(grad, leftover * beta)
    transport = _w1_transport(data, theta, m, flip, leftover, b, kappa) if transport else None
    return WassersteinValue(float(value), float(lam), grad, transport, losses, nominal, 1, kappa)


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


def wasserstein_value(theta, data: PreferenceData, *, beta: float, radius: float, p: int = 1,
                      kappa: float = np.inf) -> WassersteinValue:
    r"""The exact worst-case DPO loss over the W_p ball at a fixed theta.

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
        return _w1_value(theta, data, beta, eps, kappa)
    from .w2 import w2_value

    return w2_value(theta, data, beta=beta, radius=eps)


def collapse_radius_wasserstein(data: PreferenceData, *, beta: float, p: int = 1) -> float:
    r"""The W_p radius (kappa = inf) at and beyond which the robust optimum is theta = 0.

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


def _newton_w1_inf(data, beta, eps, ridge, theta0, delta=0.0):
    """Newton on L(θ) + εβ‖θ‖ + ridge/2 ‖θ‖², or, with ``delta > 0``, on the smoothed
    L(θ) + εβ (‖θ‖² + δ²)^{1/2} + ridge/2 ‖θ‖² (C², used by :func:`_w1_inf_smoothing`)."""
    sb, sbo, q = data.sign * beta, data.sign * beta * data.offset, data.weight
    d2 = delta * delta

    def fun(theta, need_hess):
        m = sb * (data.x @ theta) - sbo
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
        base = sb * (data.x @ theta) - sbo
        dm = sb * (data.x @ step)

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


def _finish(theta, data, beta, eps, p, kappa, bound, mu, solver, t0, status, info):
    ev = wasserstein_value(theta, data, beta=beta, radius=eps, p=p, kappa=kappa)
    if np.linalg.norm(theta) == 0:
        cert = float(np.linalg.norm(ev.grad))       # min-norm subgradient at the kink
    else:
        cert = float(np.linalg.norm(ev.grad + mu * theta))
    if info.get("kkt_residual") is not None:
        cert = float(info["kkt_residual"])     # the exact active-set KKT system
    # at the kinks of the finite-kappa problem the Danskin gradient is one subgradient of
    # many, so its norm certifies nothing there; elsewhere a large residual is flagged
    if status == "converged" and cert > CERT_TOL and not (p == 1 and np.isfinite(kappa)):
        status = "inaccurate"
    return RobustResult(theta, ev.value, ev.dual, ev.transport, status, cert, solver,
                        time.perf_counter() - t0, "wasserstein", eps, beta, p, kappa, bound, mu,
                        data, info)


def kink_threshold(data, beta, eps, p) -> tuple[float, float]:
    """(||grad L(0)||, the radius of the penalty's subdifferential at 0)."""
    g0, s0 = grad_at_zero(data, beta)
    r = eps * beta * (1.0 if p == 1 else float(np.sqrt(data.weight @ s0**2)))
    return float(np.linalg.norm(g0)), r


def solve_wasserstein(data: PreferenceData, *, beta: float, radius: float, p: int = 1,
                      kappa: float = np.inf, bound: float | None = None,
                      method: str = "auto") -> RobustResult:
    r"""Minimise the worst-case expected DPO loss over the W_p ball of radius epsilon.

    .. math::  \min_{\|\theta\|\le B}\ \sup_{W_p(P, q)\le\varepsilon} E_P\, l(\theta)

    Methods:
        * ``"newton"`` / ``"auto"``: the dedicated solvers: p = 1, kappa = inf: Newton on
          the closed form L + eps beta ||theta|| after an exact kink test at 0; p = 1,
          finite kappa: smoothing homotopy (:mod:`loglinear.robust.w1flip`); p = 2:
          joint Newton in (theta, eta) over the exact inner suprema, and where the
          optimum sits on a kink of V (atoms split between two maxima) Newton on the
          split worst case's KKT system (:mod:`loglinear.robust.w2`; ``info["kink"]``).
          ``"auto"`` falls back to cvxpy (p = 1) if the dedicated solver fails.
        * ``"cvxpy"``: the conic reformulation with Clarabel (p = 1 only; the p = 2 dual
          is not DCP).

    Returns:
        :class:`RobustResult`; ``worst_case`` is a :class:`Transport`.
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
    if gnorm0 <= r0 and (p == 2 or not np.isfinite(kappa_eff) or zero_offset(data)):
        return _finish(np.zeros(data.d), data, beta, eps, p, kappa, bound, 0.0, "closed-form",
                       t0, "collapsed", {"grad_norm_at_0": gnorm0, "kink_radius": r0})
    try:
        if p == 2:
            from .w2 import solve_w2

            theta, mu, info = solve_w2(data, beta=beta, eps=eps, bound=bound,
                                       start=_start(data, beta, bound))
            solver = "newton"
        elif np.isfinite(kappa_eff):
            from .w1flip import solve_w1_flip

            theta, mu, info = solve_w1_flip(data, beta=beta, eps=eps, kappa=kappa_eff,
                                            bound=bound, start=_start(data, beta, bound))
            solver = "smoothing-newton"
        else:
            theta, mu, info = _solve_w1_inf(data, beta, eps, bound)
            solver = "newton"
    except RobustSolverError as err:
        if method == "newton" or p == 2:
            raise
        res = solve_wasserstein(data, beta=beta, radius=eps, p=p, kappa=kappa, bound=bound,
                                method="cvxpy")
        res.info["fallback_reason"] = str(err)
        return res
    return _finish(theta, data, beta, eps, p, kappa, bound, mu, solver, t0, "converged", info)


def _solve_w1_inf(data, beta, eps, bound):
    start = _start(data, beta, bound)
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
                        lambda th: _w1_value(th, data, beta, eps, np.inf).grad,
                        data.d, bound, rep.x)
    return theta, mu, info
