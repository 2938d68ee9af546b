r"""W1-DRO DPO with a finite label-flip cost kappa: a smoothing homotopy with profiled Newton
(docs/theory.md §3.4, dedicated solver; the collapse found by comparing values, §3.6).

.. math::
    V(\theta) = L(\theta) + \min_{\lambda\ge\beta\|\theta\|}\ \lambda\varepsilon
        + \sum_i q_i (m_i - \lambda\kappa)_+ .

For a fixed theta the optimal lambda is a weighted quantile of the margins, so V is
piecewise smooth. The hinge is smoothed as mu softplus(./mu) (an error of at most
mu log 2 in value), lambda is profiled out by a monotone 1-D root (or sits on its bound
beta ||theta||), and Newton with the Schur-complement Hessian follows the minimiser as mu
decreases geometrically to MU_MIN times the margin scale; the kink of beta ||theta|| at 0
is smoothed the same way. At the end theta = 0 is compared with the solution in the
exact value and returned when it is no worse (the collapsed regime). The returned objective and
certificate are recomputed from the exact (unsmoothed) value.
"""

from __future__ import annotations

import numpy as np

from ..losses import margin_line, margins, sigmoid, softplus
from ..newton import newton
from ._base import RobustSolverError, on_ball, weighted_gram
from .w1 import w1_value

MU_START = 1e-4
MU_MIN = 1e-10
STAGE_GTOL = 1e-6    # at tiny mu the smoothed Hessian is ill-conditioned; theta is O(mu) off
                     # the nonsmooth optimum anyway, so a stage may stop at this gradient
MU_FACTOR = 1e-2
GENTLE_START = 1e-1    # the retry's first mu (relative to the margin scale)
GENTLE_FACTOR = 1e-1
CROSS_BAND = 10.0       # atoms with |m - lambda kappa| <= CROSS_BAND mu count as tied
CROSS_EXTRA_TIES = 4    # try the exact active-set system with at most d + 1 + this ties
CROSS_ITER = 30
CROSS_ROUNDS = 8        # active-set rounds
CROSS_TOL = 1e-13
CROSS_CHECK = 1e-9      # slack of the partition / multiplier checks
GTOL = 1e-10
ZERO_TOL = 1e-10       # min-norm subgradient at 0 that certifies the collapse


SATURATED = 40.0  # |r| beyond which sigmoid(r) is 0 or 1 to within e^-40 ~ 4e-18


def _hinge_mass(r, q) -> float:
    """sum q softplus(r), with softplus(r) = max(r, 0) taken exactly where |r| > SATURATED
    (the dropped term is below e^-40 relative): for small mu most atoms are saturated."""
    mid = np.abs(r) <= SATURATED
    return float(q[~mid] @ np.maximum(r[~mid], 0.0)) + float(q[mid] @ softplus(r[mid]))


def _profile_lambda(m, q, b, eps, kappa, mu, lam0=None):
    """argmin_{lam >= b} lam eps + mu sum q softplus((m - lam kappa)/mu).

    The root of eps - kappa sum q sigmoid((m - lam kappa)/mu) is bracketed and refined by
    safeguarded Newton. For small mu most atoms are saturated over the bracket (sigmoid
    0 or 1 for every lam in it), so each time the bracket has halved the saturated atoms
    are folded into a constant and the iterations work on the few atoms near the root.
    """
    if eps - kappa * float(q @ sigmoid((m - b * kappa) / mu)) >= 0:
        return b, True
    lo, hi = b, (float(m.max()) + SATURATED * mu) / kappa
    mm, qq, above = m, q, 0.0      # the unsaturated atoms and the q-mass saturated at 1
    width = np.inf

    def restrict():
        nonlocal mm, qq, above, width
        r_lo, r_hi = (mm - lo * kappa) / mu, (mm - hi * kappa) / mu
        ones, keep = r_hi > SATURATED, (r_hi <= SATURATED) & (r_lo >= -SATURATED)
        above += float(qq[ones].sum())
        mm, qq, width = mm[keep], qq[keep], hi - lo

    restrict()
    lam = lam0 if lam0 is not None and lo < lam0 < hi else 0.5 * (lo + hi)
    for _ in range(200):
        s = sigmoid((mm - lam * kappa) / mu)
        g = eps - kappa * (above + float(qq @ s))
        if g > 0:
            hi = lam
        else:
            lo = lam
        if abs(g) <= 1e-15 * max(1.0, eps) or hi - lo <= 4e-16 * max(1.0, abs(hi)):
            break
        h = kappa**2 * float(qq @ (s * (1 - s))) / mu
        ln = lam - g / h if h > 0 else np.nan
        lam = ln if lo < ln < hi else 0.5 * (lo + hi)
        if hi - lo <= 0.5 * width:
            restrict()
    else:
        raise RobustSolverError("W1 flip multiplier root did not converge")
    return lam, False


def _problem(data, beta, eps, kappa, ridge, mu):
    q, d = data.weight, data.d
    sb = data.sign * beta
    state = {"lam": None}

    def smooth_b(theta):
        # beta ||theta|| smoothed at 0 as beta (sqrt(||theta||^2 + mu^2) - mu)
        rho = float(np.sqrt(theta @ theta + mu * mu))
        return beta * (rho - mu), rho

    def smooth_value(m, theta):
        b = smooth_b(theta)[0]
        lam, _ = _profile_lambda(m, q, b, eps, kappa, mu, state["lam"])
        return (float(q @ softplus(-m)) + lam * eps
                + mu * _hinge_mass((m - lam * kappa) / mu, q)
                + 0.5 * ridge * float(theta @ theta))

    def fun(theta, need_hess):
        m = margins(theta, data, beta=beta)
        b, rho = smooth_b(theta)
        lam, on_bound = _profile_lambda(m, q, b, eps, kappa, mu, state["lam"])
        state["lam"] = lam
        r = (m - lam * kappa) / mu
        sr = sigmoid(r)
        w = q * sr
        w1 = w * (1.0 - sr) / mu
        s = sigmoid(-m)
        value = (float(q @ softplus(-m)) + lam * eps + mu * _hinge_mass(r, q)
                 + 0.5 * ridge * float(theta @ theta))
        h_theta = data.x.T @ ((w - q * s) * sb)
        h_lam = eps - kappa * float(w.sum())
        unit = theta / rho
        e = beta * unit
        grad = h_theta + ridge * theta + (h_lam * e if on_bound else 0.0)
        hess = None
        if need_hess:
            hess = weighted_gram(data.x, (q * s * (1 - s) + w1) * beta**2)
            h_tl = -kappa * (data.x.T @ (w1 * sb))
            h_ll = kappa**2 * float(w1.sum())
            if on_bound:
                hess += np.outer(h_tl, e) + np.outer(e, h_tl) + h_ll * np.outer(e, e)
                hess += h_lam * beta / rho * (np.eye(d) - np.outer(unit, unit))
            elif h_ll > 0:
                hess -= np.outer(h_tl, h_tl) / h_ll
            hess[np.diag_indices(d)] += ridge
        return value, grad, hess

    def line(theta, step):
        base, dm = margin_line(theta, step, data, beta=beta)
        return lambda t: smooth_value(base + t * dm, theta + t * step)

    return fun, line


def _kkt_solve(data, beta, eps, kappa, ridge, theta, lam, w, tie, up, on_bound):
    """Newton on the KKT system for a fixed partition. Returns (theta, lam, w, resid)."""
    q, d = data.weight, data.d
    sb = data.sign * beta
    nt = int(tie.sum())
    a_t, q_s = sb[tie, None] * data.x[tie], float(q[up].sum())
    gs = data.x.T @ np.where(up, q * sb, 0.0)
    ones, eye = np.ones(nt), np.eye(d)
    resid = np.inf
    for _ in range(CROSS_ITER):
        if not np.all(np.isfinite(theta)):      # a diverged least-squares step
            return None
        m = margins(theta, data, beta=beta)
        s = sigmoid(-m)
        grad_l = data.x.T @ (-q * s * sb) + ridge * theta
        hess_l = weighted_gram(data.x, q * s * (1 - s) * beta**2) + ridge * eye
        norm = float(np.linalg.norm(theta))
        if on_bound:
            u = theta / norm
            e = beta * u
            c = eps - kappa * (q_s + w.sum())
            f = np.concatenate([grad_l + gs + a_t.T @ w + c * e, m[tie] - kappa * beta * norm])
            jac = np.zeros((d + nt, d + nt))
            jac[:d, :d] = hess_l + c * beta / norm * (eye - np.outer(u, u))
            jac[:d, d:] = (a_t - kappa * e[None, :]).T
            jac[d:, :d] = a_t - kappa * e[None, :]
        else:
            f = np.concatenate([grad_l + gs + a_t.T @ w, [eps - kappa * (q_s + w.sum())],
                                m[tie] - lam * kappa])
            jac = np.zeros((d + 1 + nt, d + 1 + nt))
            jac[:d, :d] = hess_l
            jac[:d, d + 1:] = a_t.T
            jac[d, d + 1:] = -kappa * ones
            jac[d + 1:, :d] = a_t
            jac[d + 1:, d] = -kappa
        resid = float(np.linalg.norm(f))
        if resid <= CROSS_TOL * max(1.0, float(np.abs(grad_l).max())):
            return theta, lam, w, resid
        step = np.linalg.lstsq(jac, -f, rcond=None)[0]
        theta = theta + step[:d]
        if on_bound:
            w = w + step[d:]
        else:
            lam, w = lam + step[d], w + step[d + 1:]
    return None


def _crossover(data, beta, eps, kappa, ridge, theta, mu):
    """From a smoothed solution, solve the exact piecewise-smooth KKT system.

    The atoms split into flipped S (m_i > lambda kappa), tied T (m_i = lambda kappa, with
    multipliers w_i in [0, q_i]) and kept. With that partition fixed, KKT is a smooth
    system in (theta, lambda, w_T) (or (theta, w_T) when lambda = beta ||theta||), solved
    by Newton. Then the partition, the multiplier bounds and lambda's side conditions
    are checked; violators move between the sets (an active-set step) and the system is
    solved again. Returns (theta, kkt_residual) or None (keep smoothing).
    """
    q, d = data.weight, data.d
    m = margins(theta, data, beta=beta)
    norm = float(np.linalg.norm(theta))
    if norm == 0:
        return None
    lam, on_bound = _profile_lambda(m, q, beta * norm, eps, kappa, mu)
    pos = q > 0
    gap0 = m - lam * kappa
    wfull = q * sigmoid(gap0 / mu)
    # first the atoms within CROSS_BAND mu of the hinge; if they are few (mu is small
    # enough to have sorted the atoms) but the active-set steps fail from them, the k
    # atoms nearest to the hinge, k = 1..d + 1
    band = pos & (np.abs(gap0) <= CROSS_BAND * mu)
    if int(band.sum()) > d + 1 + CROSS_EXTRA_TIES:
        return None
    near = np.argsort(np.where(pos, np.abs(gap0), np.inf), kind="stable")
    starts = [band]
    for k in range(1, d + 2):
        tie = np.zeros(data.n, dtype=bool)
        tie[near[:k]] = True
        starts.append(tie & pos)
    for tie in starts:
        out = _active_set(data, beta, eps, kappa, ridge, theta, lam, on_bound, tie,
                          pos & ~tie & (gap0 > 0), wfull)
        if out is not None:
            return out
    return None


def _active_set(data, beta, eps, kappa, ridge, theta, lam, on_bound, tie, up, wfull):
    """Active-set rounds of :func:`_crossover` from one initial partition."""
    q, d = data.weight, data.d
    pos = q > 0
    for _ in range(CROSS_ROUNDS):
        if int(tie.sum()) > d + 1 + CROSS_EXTRA_TIES:
            return None
        sol = _kkt_solve(data, beta, eps, kappa, ridge, theta, lam, wfull[tie], tie, up,
                         on_bound)
        if sol is None:
            return None
        th, lam_new, w, resid = sol
        m = margins(th, data, beta=beta)
        b = beta * float(np.linalg.norm(th))
        lam_new = b if on_bound else lam_new
        slack = CROSS_CHECK * max(1.0, float(np.abs(m).max()))
        gap = m - lam_new * kappa
        idx = np.flatnonzero(tie)
        low, high = w < -slack, w > q[tie] + slack
        bad_up = up & (gap < -slack)
        bad_keep = pos & ~up & ~tie & (gap > slack)
        side_ok = (eps - kappa * (float(q[up].sum()) + w.sum()) >= -slack) if on_bound \
            else lam_new >= b - slack
        if not (low.any() or high.any() or bad_up.any() or bad_keep.any()):
            return (th, resid) if side_ok else None
        # active-set step: multipliers at a bound leave T, violated atoms join it
        tie = tie.copy()
        up = up.copy()
        tie[idx[low | high]] = False
        up[idx[high]] = True
        tie |= bad_up | bad_keep
        up &= ~bad_up
        wfull = wfull.copy()
        wfull[idx] = np.clip(w, 0.0, q[idx])
        wfull[bad_up] = q[bad_up]
        wfull[bad_keep] = 0.0
        theta, lam = th, lam_new
    return None


def _homotopy(data, beta, eps, kappa, ridge, theta0, gentle=False):
    """The smoothing path from theta0; ``gentle`` starts it at a larger mu and shrinks mu
    more slowly (for a far start, e.g. the DPO fit on nearly separable data at small
    beta, where the first stage of the fast path does not converge)."""
    m0 = margins(theta0, data, beta=beta)
    scale = max(1.0, float(np.abs(m0).max()))
    mu = (GENTLE_START if gentle else MU_START) * scale
    factor = GENTLE_FACTOR if gentle else MU_FACTOR
    theta = np.asarray(theta0, dtype=float)
    iters = 0
    while True:
        fun, line = _problem(data, beta, eps, kappa, ridge, mu)
        last = mu <= MU_MIN * scale
        # intermediate stages only need to land near the path; the last one is tight
        rep = newton(fun, theta, gtol=GTOL if last else 1e-6, xtol=1e-10 if last else 1e-4,
                     max_iter=100, line=line)
        iters += rep.iterations
        if not rep.converged and not rep.grad_norm <= STAGE_GTOL:
            raise RobustSolverError(f"W1 flip Newton failed at mu={mu:.2g}: {rep.status}, "
                                    f"grad norm {rep.grad_norm:.3g}")
        theta = rep.x
        cross = _crossover(data, beta, eps, kappa, ridge, theta, mu)
        if cross is not None:
            return cross[0], iters, mu, cross[1]
        if mu <= MU_MIN * scale:
            return theta, iters, mu, None
        mu = max(mu * factor, MU_MIN * scale)


def solve_w1_flip(data, *, beta, radius, kappa, bound, start):
    """Minimise the exact W1 robust loss with finite kappa (caller handles the kink).

    Returns (theta, bound multiplier, info); ``info`` carries the certificate fields of
    docs/theory.md §3.7 (``kkt_residual``, ``smoothing_gap_bound``, ``collapsed``).
    """
    eps = radius    # the epsilon of docs/theory.md §3.3-3.5
    if np.linalg.norm(start) == 0:
        start = np.full(data.d, 1e-3)

    try:
        try:
            theta, iters, mu, kkt = _homotopy(data, beta, eps, kappa, 0.0, start)
        except RobustSolverError:
            theta, iters, mu, kkt = _homotopy(data, beta, eps, kappa, 0.0, start, gentle=True)
    except RobustSolverError:
        # the path can stall as it runs into the kink at 0 (theta ~ mu): theta = 0 is
        # the answer when 0 is in the subdifferential there (min-norm subgradient)
        zero = np.zeros(data.d)
        if np.linalg.norm(w1_value(zero, data, beta=beta, radius=eps, kappa=kappa,
                                   transport=False).grad) > ZERO_TOL:
            raise
        return zero, 0.0, {"iterations": 0, "kkt_residual": None, "collapsed": True,
                           "exact_active_set": False, "smoothing_gap_bound": 0.0}
    info = {"iterations": iters, "smoothing_mu": mu, "kkt_residual": kkt,
            "exact_active_set": kkt is not None,
            "smoothing_gap_bound": 0.0 if kkt is not None else mu * float(np.log(2.0))}
    zero = np.zeros(data.d)
    if kkt is None and w1_value(zero, data, beta=beta, radius=eps, kappa=kappa,
                                transport=False).value <= \
            w1_value(theta, data, beta=beta, radius=eps, kappa=kappa, transport=False).value:
        theta = zero
        info["collapsed"] = True
    if bound is None or np.linalg.norm(theta) <= bound:
        return theta, 0.0, info

    def solve_ridge(mu_, x0):
        return _homotopy(data, beta, eps, kappa, mu_, x0)[0]

    theta, mu_b = on_ball(solve_ridge,
                          lambda th: w1_value(th, data, beta=beta, radius=eps, kappa=kappa).grad,
                          data.d, bound, theta)
    return theta, mu_b, info
