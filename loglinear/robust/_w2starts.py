"""Starting points for the W2 solver (docs/theory.md §3.5): the exact minimiser along a
ray, and an L-BFGS run on the exact value that gets near optima a Newton iteration cannot
reach (far optima behind kinks, on separable data at small radii)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from ._base import RobustSolverError
from ._w2value import w2_value

RAY_GROW = 40           # the ray search may extend its upper end by e^RAY_GROW at most
QN_MAX_ITER = 80        # L-BFGS iterations before the kink system takes over
QN_FTOL = 1e-11         # L-BFGS relative decrease at which it hands over


def _ray_start(data, beta, eps, ridge, start):
    """The exact minimiser of V + ridge/2 ||theta||^2 along the ray through ``start``.

    V is convex along the ray, so unimodal in log r; the upper end of the search grows
    until V rises (on separable data the optimum can lie far beyond a bounded start)."""
    direction = start / np.linalg.norm(start)

    def v(tau):
        r = np.exp(tau)
        return w2_value(r * direction, data, beta=beta, radius=eps).value + 0.5 * ridge * r * r

    hi = float(np.log(np.linalg.norm(start)))
    for _ in range(RAY_GROW):
        if v(hi + 1.0) >= v(hi):
            break
        hi += 1.0
    res = minimize_scalar(v, bounds=(hi - 30.0, hi + 1.0), method="bounded",
                          options={"xatol": 1e-10})
    return np.exp(res.x) * direction


def _quasi_newton(data, beta, eps, ridge, x0):
    """L-BFGS on the exact V + ridge/2 ||theta||^2 with its Danskin gradient.

    Quasi-Newton steps with a line search keep making progress where V is a maximum of
    smooth pieces (kinks crossing the path to a far optimum, common on separable data at
    small radii), where Newton's second-order model is wrong on one side of every kink. It
    stops near the optimum, without a certificate; the kink system then solves exactly
    from there. Returns theta, or None."""
    def fg(theta):
        if not np.any(theta):
            return np.inf, np.zeros(data.d)
        try:
            ev = w2_value(theta, data, beta=beta, radius=eps)
        except RobustSolverError:
            return np.inf, np.zeros(data.d)
        return ev.value + 0.5 * ridge * float(theta @ theta), ev.grad + ridge * theta

    res = minimize(fg, x0, jac=True, method="L-BFGS-B",
                   options={"maxiter": QN_MAX_ITER, "gtol": 1e-12, "ftol": QN_FTOL})
    return res.x if np.all(np.isfinite(res.x)) and np.any(res.x) else None
