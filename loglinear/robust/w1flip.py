r"""W1-DRO DPO with a finite label-flip cost kappa: a smoothing homotopy with profiled Newton.

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

from ..losses import sigmoid, softplus
from ..optim import newton
from ._base import RobustSolverError, on_ball, weighted_gram

MU_START = 1e-3
MU_MIN = 1e-10
STAGE_GTOL = 1e-6    # at tiny mu the smoothed Hessian is ill-conditioned; theta is O(mu) off
                     # the nonsmooth optimum anyway, so a stage may stop at this gradient
MU_FACTOR = 1e-3
GTOL = 1e-10


def _profile_lambda(m, q, b, eps, kappa, mu, lam0=None):
    """argmin_{lam >= b} lam eps + mu sum q softplus((m - lam kappa)/mu)."""

    def d1(lam):
        return eps - kappa * float(q @ sigmoid((m - lam * kappa) / mu))

    if d1(b) >= 0:
        return b, True
    lo, hi = b, (float(m.max()) + 40.0 * mu) / kappa
    lam = lam0 if lam0 is not None and lo < lam0 < hi else 0.5 * (lo + hi)
    for _ in range(200):
        g = d1(lam)
        if g > 0:
            hi = lam
        else:
            lo = lam
        if abs(g) <= 1e-15 * max(1.0, eps) or hi - lo <= 4e-16 * max(1.0, abs(hi)):
            break
        s = sigmoid((m - lam * kappa) / mu)
        h = kappa**2 * float(q @ (s * (1 - s))) / mu
        ln = lam - g / h if h > 0 else np.nan
        lam = ln if lo < ln < hi else 0.5 * (lo + hi)
    else:
        raise RobustSolverError("W1 flip multiplier root did not converge")
    return lam, False


def _problem(data, beta, eps, kappa, ridge, mu):
    q, d = data.weight, data.d
    sb, sbo = data.sign * beta, data.sign * beta * data.offset
    state = {"lam": None}

    def smooth_b(theta):
        # beta ||theta|| smoothed at 0 as beta (sqrt(||theta||^2 + mu^2) - mu)
        rho = float(np.sqrt(theta @ theta + mu * mu))
        return beta * (rho - mu), rho

    def smooth_value(m, theta):
        b = smooth_b(theta)[0]
        lam, _ = _profile_lambda(m, q, b, eps, kappa, mu, state["lam"])
        return (float(q @ softplus(-m)) + lam * eps
                + mu * float(q @ softplus((m - lam * kappa) / mu))
                + 0.5 * ridge * float(theta @ theta))

    def fun(theta, need_hess):
        m = sb * (data.x @ theta) - sbo
        b, rho = smooth_b(theta)
        lam, on_bound = _profile_lambda(m, q, b, eps, kappa, mu, state["lam"])
        state["lam"] = lam
        r = (m - lam * kappa) / mu
        w = q * sigmoid(r)
        w1 = q * sigmoid(r) * sigmoid(-r) / mu
        s = sigmoid(-m)
        value = (float(q @ softplus(-m)) + lam * eps + mu * float(q @ softplus(r))
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
        base = sb * (data.x @ theta) - sbo
        dm = sb * (data.x @ step)
        return lambda t: smooth_value(base + t * dm, theta + t * step)

    return fun, line


def _homotopy(data, beta, eps, kappa, ridge, theta0):
    m0 = data.sign * beta * (data.x @ theta0 - data.offset)
    scale = max(1.0, float(np.abs(m0).max()))
    mu = MU_START * scale
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
        if mu <= MU_MIN * scale:
            return theta, iters, mu
        mu = max(mu * MU_FACTOR, MU_MIN * scale)


def solve_w1_flip(data, *, beta, eps, kappa, bound, start):
    """Minimise the exact W1 robust loss with finite kappa (caller handles the kink)."""
    if np.linalg.norm(start) == 0:
        start = np.full(data.d, 1e-3)
    from .wasserstein import _w1_value

    theta, iters, mu = _homotopy(data, beta, eps, kappa, 0.0, start)
    info = {"iterations": iters, "smoothing_mu": mu,
            "smoothing_gap_bound": mu * float(np.log(2.0))}
    zero = np.zeros(data.d)
    if _w1_value(zero, data, beta, eps, kappa).value <= _w1_value(theta, data, beta, eps,
                                                                 kappa).value:
        theta = zero
        info["collapsed"] = True
    if bound is None or np.linalg.norm(theta) <= bound:
        return theta, 0.0, info

    def solve_ridge(mu_, x0):
        return _homotopy(data, beta, eps, kappa, mu_, x0)[0]

    theta, mu_b = on_ball(solve_ridge, lambda th: _w1_value(th, data, beta, eps, kappa).grad,
                          data.d, bound, theta)
    return theta, mu_b, info
