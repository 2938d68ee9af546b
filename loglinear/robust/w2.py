r"""Exact W2-DRO DPO: the solver (docs/theory.md §3.5; Xu et al. 2025, Lemma 1, via Gao &
Kleywegt), the order behind the paper's Algorithm 1.

.. math::
    V(\theta) = \inf_{\eta\ge0}\ \eta\varepsilon^2 + \sum_i q_i\,
        \varphi(u_i, \beta\|\theta\|, \eta), \qquad
    \varphi(u, b, \eta) = \sup_{t\ge0}\ \mathrm{softplus}(u + bt) - \eta t^2,

with u_i = -m_i. The inner supremum is solved exactly by
:func:`loglinear.robust._w2inner.inner_sup`, the fixed-theta value :func:`w2_value` (eta*
and the tie split) is in :mod:`._w2value`. Phi(theta, eta) is jointly convex (a
partial supremum of convex functions of (theta, eta)), so the solver runs Newton on
(theta, eta) jointly, with the Hessian of phi from the implicit function theorem; eta is
kept positive by the line search (phi -> inf as eta -> 0 for theta != 0).

Phi is not smooth everywhere: where an atom's two local maxima tie, phi_i is the larger
of two smooth branches. Optima can sit on such kinks (:mod:`._w2kink` solves them
exactly), or next to the kink at theta = 0 near the collapse radius (a radius
continuation and starts along rays reach them); :func:`_solve_ridge` tries these in turn.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..losses import margin_line, margins
from ..newton import NewtonReport, newton
from ._base import RobustSolverError, grad_at_zero, on_ball, radius_continuation
from ._w2inner import branch_grads, inner_sup, ordered_maxima, split_derivs
from ._w2inner import derivs as _derivs
from ._w2kink import kink_solve
from ._w2smooth import smoothing_path
from ._w2starts import _quasi_newton, _ray_start
from ._w2value import _profile_eta, _tie_split, w2_value

__all__ = ["solve_w2", "w2_value"]

GTOL = 1e-10
PROFILE_SWITCH = 1e-8   # exact KKT residual up to which a Newton attempt is accepted
SHRINK_LIMIT = 0.125    # a joint Newton step shrinks ||theta|| by at most this factor
JOINT_MAX_ITER = 60     # smooth problems converge in ~5-20 steps; a kink makes Newton crawl
KINK_AFTER = 15         # joint Newton steps before the kink system is tried
PROFILED_MAX_ITER = 20  # the last resort; each step profiles eta at every trial point


def _pieces(data, beta, eps, ridge, theta, eta, need_hess):
    """Phi(theta, eta) + ridge/2 ||theta||^2 with its gradient and Hessian blocks."""
    q, sb = data.weight, data.sign * beta
    u = -margins(theta, data, beta=beta)
    phi, t, _, _ = inner_sup(u, beta * float(np.linalg.norm(theta)), eta)
    value = eta * eps**2 + float(q @ phi) + 0.5 * ridge * float(theta @ theta)
    g_theta, g_eta, htt, hte, hee = _derivs(data.x, sb, q, u, theta, beta, eta, t, need_hess)
    g_theta = g_theta + ridge * theta
    if htt is not None:
        htt[np.diag_indices(data.d)] += ridge
    return value, g_theta, eps**2 + g_eta, htt, hte, hee


def _joint(data, beta, eps, ridge):
    """fun(z, need_hess) and line(z, step) for Phi(theta, eta) + ridge/2 ||theta||^2."""
    q, d = data.weight, data.d

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
        m, slope = margin_line(theta, step[:d], data, beta=beta)
        base, du = -m, -slope
        floor = SHRINK_LIMIT * float(np.linalg.norm(theta))

        def f(tt):
            th = theta + tt * step[:d]
            if np.linalg.norm(th) < floor:    # toward the kink at 0: at most a factor a step
                return np.inf
            return value_at(base + tt * du, th, eta + tt * step[d])

        return f

    return fun, line


def _profiled_pieces(data, beta, eps, ridge, theta, eta, phi, t, alt_phi, alt_t, need_hess):
    r"""V(theta) + ridge/2 ||theta||^2 at the profiled eta, with its gradient and Hessian.

    Off a tie this is the Schur complement of the joint Hessian. At a tie (eta* at a jump
    of t(eta), the tied atoms T split between their smaller and larger maximisers) eta*
    is held there by the tie condition, and the common fraction f sent to the larger
    maximisers acts as its multiplier: with L = Phi at the split,
    H = L_tt - [L_te, L_tf] [[L_ee, L_ef], [L_ef, 0]]^{-1} [L_te, L_tf]^T.
    (Where two tie conditions hold at once V has a kink; see :mod:`._w2kink`.)
    """
    q, sb = data.weight, data.sign * beta
    u = -margins(theta, data, beta=beta)
    frac, split = _tie_split(q, eps, phi, t, alt_phi, alt_t)
    value = eta * eps**2 + float(q @ phi) + 0.5 * ridge * float(theta @ theta)
    if not split.any():
        g, _, htt, hte, hee = _derivs(data.x, sb, q, u, theta, beta, eta, t, need_hess)
        l_ef = 0.0
    else:
        tie = np.flatnonzero(split)
        lo, hi, _, _ = ordered_maxima(t[tie], alt_t[tie], phi[tie], alt_phi[tie])
        to_hi = np.where(t[tie] <= alt_t[tie], frac[tie], 1.0 - frac[tie])
        rest = q.copy()
        rest[tie] = 0.0
        g, _, htt, hte, hee = split_derivs(data.x, sb, u, theta, beta, eta, t, rest, tie, lo,
                                           hi, q[tie] * (1.0 - to_hi), q[tie] * to_hi,
                                           need_hess)
        if need_hess:
            xt, st, ut, qt = data.x[tie], sb[tie], u[tie], q[tie]
            l_tf = qt @ (branch_grads(xt, st, ut, theta, beta, hi)
                         - branch_grads(xt, st, ut, theta, beta, lo))
            l_ef = float(qt @ (lo**2 - hi**2))
    g = g + ridge * theta
    if not need_hess:
        return value, g, None
    htt[np.diag_indices(data.d)] += ridge
    if l_ef != 0:
        b_mat = np.column_stack([hte, l_tf])
        m_inv = np.array([[0.0, 1.0], [1.0, -hee / l_ef]]) / l_ef   # [[hee, l_ef], [l_ef, 0]]^-1
        return value, g, htt - b_mat @ m_inv @ b_mat.T
    return value, g, htt - np.outer(hte, hte) / max(hee, 1e-300)


def _newton_w2_profiled(data, beta, eps, ridge, theta0):
    """Newton in theta on V(theta) = min_eta Phi, eta profiled out.

    Slower than the joint iteration, but exact where the joint problem is not smooth:
    where eta* sits at a jump of t(eta) (an atom split between two maxima, common on
    small or separable data), and next to the kink at 0, where eta* -> 0 with theta.
    """
    q, d = data.weight, data.d
    state = {"eta": None}

    def eta_at(theta):
        u = -margins(theta, data, beta=beta)
        return _profile_eta(u, q, beta * float(np.linalg.norm(theta)), eps, state["eta"])

    def fun(theta, need_hess):
        if not np.any(theta):
            return np.inf, np.full(d, np.inf), np.eye(d)
        prof = eta_at(theta)
        state["eta"] = prof[0]
        return _profiled_pieces(data, beta, eps, ridge, theta, *prof, need_hess)

    def line(theta, step):
        def f(tt):
            th = theta + tt * step
            if not np.any(th):
                return np.inf
            eta, phi = eta_at(th)[:2]
            return eta * eps**2 + float(q @ phi) + 0.5 * ridge * float(th @ th)

        return f

    return newton(fun, theta0, gtol=GTOL, max_iter=PROFILED_MAX_ITER, line=line)


def _newton_w2(data, beta, eps, ridge, x0, max_iter=JOINT_MAX_ITER):
    """Joint Newton on z = (theta, eta) from x0: theta, with its profiled eta, or z."""
    x0 = np.asarray(x0, float)
    theta0 = x0[:data.d]
    if x0.size == data.d + 1 and x0[data.d] > 0:
        eta0 = float(x0[data.d])
    else:
        u0 = -margins(theta0, data, beta=beta)
        eta0 = _profile_eta(u0, data.weight, beta * float(np.linalg.norm(theta0)), eps)[0]
    fun, line = _joint(data, beta, eps, ridge)
    return newton(fun, np.append(theta0, eta0), gtol=GTOL, max_iter=max_iter, line=line)


def _kkt(data, beta, eps, ridge, rep):
    """The exact KKT residual ||grad V(theta) + ridge theta|| at a converged joint report."""
    theta = rep.x[:data.d]
    if not rep.converged or not np.any(theta):
        return np.inf
    grad = w2_value(theta, data, beta=beta, radius=eps).grad
    return float(np.linalg.norm(grad + ridge * theta))


def solve_w2(data, *, beta: float, radius: float, bound, start):
    """Minimise the exact W2 robust loss (the kink at 0 is checked by the caller)."""
    eps = radius    # the epsilon of docs/theory.md §3.3-3.5
    if np.linalg.norm(start) == 0:
        start = np.full(data.d, 1e-3)
    theta, info = _solve_ridge(data, beta, eps, 0.0, start)
    if bound is None:
        return theta, 0.0, info

    def solve_ridge(mu, x0):
        th, inf = _solve_ridge(data, beta, eps, mu, x0)
        if "stalled" in inf:
            raise RobustSolverError(f"W2 ridge solve failed: {inf['stalled']}")
        return th

    theta, mu = on_ball(solve_ridge, lambda th: w2_value(th, data, beta=beta, radius=eps).grad,
                        data.d, bound, theta)
    return theta, mu, info


def _solve_ridge(data, beta, eps, ridge, start):
    """argmin V + ridge/2 ||theta||^2, with the solver path taken in ``info``.

    The attempts, in order: a short joint Newton run (KINK_AFTER steps,
    :func:`_newton_or_kink`) from ``start``; the smoothing path of
    :mod:`._w2smooth` from the exact minimiser along the ray through ``start`` (optima on
    many kinks at once, on separable data at small radii); L-BFGS then Newton; the full
    joint run from ``start``; joint Newton from the ray minimiser (a far start, e.g. the
    DPO fit on nearly separable data, can make the first step diverge); the smoothing
    path with a steadying Hessian shift; radius continuations from ``start`` and from the
    ray minimiser (next to the kink at 0 the joint problem degenerates); the minimiser
    along -grad L(0) (the direction in which the optimum leaves 0 at the collapse
    radius). Last comes profiled Newton from the best
    iterate. Where all fail the best point found is returned with ``info["stalled"]`` (the
    caller reports its KKT residual and marks the result "inaccurate").
    """
    info = {"iterations": 0, "profiled": False}
    tried = []

    def solve_at(r, x0, short=False):
        rep = _newton_or_kink(data, beta, r, ridge, x0, short)
        info["iterations"] += rep.iterations
        return rep

    ray = []

    def ray_start():
        if not ray:
            ray.append(_ray_start(data, beta, eps, ridge, start))
        return ray[0]

    def descent_start():
        # next to the collapse radius the optimum leaves 0 along -grad L(0)
        g0 = grad_at_zero(data, beta)[0]
        scale = float(np.linalg.norm(start)) / max(float(np.linalg.norm(g0)), 1e-300)
        return _ray_start(data, beta, eps, ridge, -g0 * scale)

    def quasi_newton():
        # from the best iterate so far: L-BFGS to the optimum's neighbourhood, then Newton
        # or the kink system (solve_at tries both) finishes with a certificate
        best = _best(data, beta, eps, ridge, tried) if tried else None
        x0 = _quasi_newton(data, beta, eps, ridge, best if best is not None else ray_start())
        if x0 is None:
            raise RobustSolverError("L-BFGS left the domain")
        return solve_at(eps, x0)

    def smoothed(steady=True):
        x0 = ray_start()
        u0 = -margins(x0, data, beta=beta)
        eta0 = _profile_eta(u0, data.weight, beta * float(np.linalg.norm(x0)), eps)[0]
        out = smoothing_path(data, beta, eps, ridge, np.append(x0, eta0), PROFILE_SWITCH,
                             steady=steady)
        if out is None:
            raise RobustSolverError("the smoothing path found no certified kink")
        th, eta, res, k = out
        value = w2_value(th, data, beta=beta, radius=eps).value + 0.5 * ridge * float(th @ th)
        return NewtonReport(x=np.append(th, eta), value=value, grad=np.zeros(data.d + 1),
                            grad_norm=res, iterations=0, converged=True,
                            status=f"kink ({k} tie groups)")

    attempts = [("joint", lambda: solve_at(eps, start, short=True)),
                ("smoothed", smoothed),
                ("quasi-newton", quasi_newton),
                ("joint-long", lambda: solve_at(eps, start)),
                ("ray", lambda: solve_at(eps, ray_start())),
                ("smoothed-plain", lambda: smoothed(steady=False)),
                ("continued", lambda: radius_continuation(solve_at, eps, start)),
                ("ray-continued", lambda: radius_continuation(solve_at, eps, ray_start())),
                ("descent-ray", lambda: solve_at(eps, descent_start()))]
    for path, run in attempts:
        try:
            rep = run()
        except RobustSolverError:         # a multiplier root failed at a trial point
            continue
        theta = rep.x[:data.d]
        if rep.converged:
            info.update(path=path, eta=float(rep.x[data.d]))
            if rep.status.startswith("kink"):
                info.update(kkt_residual=rep.grad_norm, kink=rep.status)
            return theta, info
        if np.any(theta) and np.isfinite(rep.value):
            tried.append(theta)
    best = _best(data, beta, eps, ridge, tried)
    x = _profiled(data, beta, eps, ridge, best if best is not None and
                  np.linalg.norm(best) > 1e-8 else ray_start(), info)
    if x is not None and np.any(x):
        if info.pop("converged", False):
            info["path"] = "profiled"
            return x, info
        tried.append(x)
    info["stalled"] = info.get("profiled_status", "every Newton attempt stalled")
    best = _best(data, beta, eps, ridge, tried)
    if best is None:
        raise RobustSolverError(f"W2 Newton failed from every start: {info['stalled']}")
    return best, info


def _newton_or_kink(data, beta, eps, ridge, x0, short=False):
    """Joint Newton from x0; if it stalls, the kink system (:mod:`._w2kink`) from its
    iterate (an optimum on a kink of V stalls Newton next to it).

    ``short``: only KINK_AFTER joint steps (a quick first try, without the kink system).
    Returns a report on z = (theta, eta), converged only if its exact KKT residual is at
    most PROFILE_SWITCH; a kink solution has status "kink (k tie groups)" and that
    residual as ``grad_norm``.
    """
    rep = _newton_w2(data, beta, eps, ridge, x0, KINK_AFTER)
    if short and not rep.converged:
        return rep
    if rep.status == "max_iter":
        kink = _kink(data, beta, eps, ridge, rep)
        if kink is not None:
            return kink
        more = _newton_w2(data, beta, eps, ridge, rep.x, JOINT_MAX_ITER - KINK_AFTER)
        rep = replace(more, iterations=rep.iterations + more.iterations)
    if _kkt(data, beta, eps, ridge, rep) <= PROFILE_SWITCH:
        return rep
    return _kink(data, beta, eps, ridge, rep) or replace(rep, converged=False)


def _kink(data, beta, eps, ridge, rep):
    """The kink system solved from a joint report's iterate, as a converged report; None
    if it has no solution there."""
    theta = rep.x[:data.d]
    if np.any(theta) and np.isfinite(rep.value):
        u = -margins(theta, data, beta=beta)
        try:
            profile = _profile_eta(u, data.weight, beta * float(np.linalg.norm(theta)), eps)
        except RobustSolverError:
            profile = None
        out = None if profile is None else kink_solve(data, beta, eps, ridge, theta, profile,
                                                     PROFILE_SWITCH)
        if out is not None:
            th, eta, res, groups = out
            value = w2_value(th, data, beta=beta, radius=eps).value + \
                0.5 * ridge * float(th @ th)
            return replace(rep, x=np.append(th, eta), value=value, grad_norm=res,
                           converged=True, status=f"kink ({len(groups)} tie groups)")
    return None


def _best(data, beta, eps, ridge, cands):
    """The candidate with the lowest exact objective (None if there is none)."""
    cands = [c for c in cands if np.any(c)]
    if not cands:
        return None
    vals = [w2_value(c, data, beta=beta, radius=eps).value + 0.5 * ridge * float(c @ c)
            for c in cands]
    return cands[int(np.argmin(vals))]


def _profiled(data, beta, eps, ridge, x0, info):
    """Profiled Newton from x0; records its work in info; None if its root failed."""
    info["profiled"] = True
    try:
        prof = _newton_w2_profiled(data, beta, eps, ridge, x0)
    except RobustSolverError as err:    # the multiplier root failed at a trial point
        info["profiled_status"] = str(err)
        return None
    info["iterations"] += prof.iterations
    info["profiled_status"] = prof.status
    info["converged"] = prof.converged
    return prof.x
