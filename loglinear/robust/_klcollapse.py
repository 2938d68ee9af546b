r"""The KL collapse radius, and the exact test that theta = 0 (or a tie point theta_k) is
the robust optimum (docs/theory.md §3.2).

With zero offsets every loss equals log 2 at theta = 0, and 0 is a robust minimiser iff

.. math::  \rho \ge \rho_0 = -\min_\nu \log \sum_i q_i e^{\nu\cdot z_i},
           \qquad z_i = (2y_i - 1)\,x_i .

The same holds at any theta_k where all margins tie (degenerate data with offsets, at
most d + 1 affinely independent atoms): :func:`loglinear.robust.solve_kl` returns theta_k
there.
"""

from __future__ import annotations

import numpy as np

from ..data import PreferenceData
from ..fit import separating_direction
from ..newton import newton
from ._base import RobustSolverError, check_problem, weighted_gram, zero_offset


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
    return rep.value, pk / pk.sum(), rep.x


def collapse_direction(data) -> np.ndarray | None:
    r"""The direction in which V leaves its kink first as rho falls below rho_0.

    Near the kink, V(theta_k + t u) - V(theta_k) = t g(u) + O(t^2) with g positively
    homogeneous, and g(u) < 0 first (as rho decreases through rho_0) along
    :math:`u = -\nu^*`, the minimiser of :math:`\log E_q e^{\nu\cdot z}`
    (docs/theory.md §3.2). Returns nu* negated, or None when the minimum is not attained.
    """
    q = np.asarray(data.weight)
    keep = q > 0
    with np.errstate(over="ignore", invalid="ignore"):
        res = _mgf_newton(np.asarray(data.z)[keep], q[keep] / q[keep].sum(), max_iter=200)
    if res is None or not np.any(res[2]):
        return None
    return -res[2]


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
    # m_i = c for all i, with m = beta z . theta - beta s o the affine map of
    # losses.margins, as a linear system in (theta, c)
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
    r"""The KL radius at and beyond which the robust optimum is theta = 0 exactly
    (docs/theory.md §3.2).

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
