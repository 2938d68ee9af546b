r"""KL-robust DPO where the optimum's worst case is degenerate (docs/theory.md §3.1, the
edge case lambda* = 0).

When the radius exceeds -log q(M) for the set M of atoms tied at the largest loss, the worst
case sits on M and V(theta) = max_i l_i(theta) near the optimum: a minimax problem, with a
kink wherever the maximal losses tie. Optima land there with positive probability on small
separable data on the ball (the maximal losses tie at the max-margin direction). The
profiled Newton of :mod:`.kl` cannot converge there, and the Danskin gradient of one worst
case certifies nothing (any P on M with KL(P||q) <= rho is a worst case).

At such an optimum there are multipliers pi on M (a worst case: pi >= 0, sum pi = 1,
KL(pi||q) <= rho) and mu >= 0 for the ball with

.. math::  \sum_{i\in M} \pi_i \nabla l_i(\theta) + \mu\theta = 0,\quad
           l_i(\theta) = t\ (i\in M),\quad \|\theta\| = B \text{ (if } \mu > 0).

:func:`polish` solves this square system by Newton from a nearby point, for the tie set
read off that point, dropping atoms whose multiplier turns negative; the residual of the
first equation is the certificate (a subgradient of V + the normal cone, docs/theory.md
§3.7).
"""

from __future__ import annotations

import numpy as np

from ..losses import margins, sigmoid, softplus

TIE_RTOL = 1e-6         # losses this close to the maximum (relative) form the tie set
MAX_ITER = 50
RTOL = 1e-13


def _system(data, beta, theta, t, pi, mu, idx, on_ball, bound):
    m = margins(theta, data, beta=beta)
    sb = data.sign * beta
    g = -sigmoid(-m[idx]) * sb[idx]                 # dl_i/d(theta) = g_i x_i
    h = sigmoid(m[idx]) * sigmoid(-m[idx]) * beta**2
    xm = data.x[idx]
    grads = g[:, None] * xm                          # (k, d)
    d, k = data.d, idx.size
    stat = grads.T @ pi + mu * theta
    res = [stat, softplus(-m[idx]) - t, [pi.sum() - 1.0]]
    # unknowns (theta, t, pi, [mu]); equations (stationarity, ties, sum pi, [ball])
    size = d + 1 + k + (1 if on_ball else 0)
    jac = np.zeros((size, size))
    jac[:d, :d] = (xm * (pi * h)[:, None]).T @ xm + mu * np.eye(d)
    jac[:d, d + 1:d + 1 + k] = grads.T
    jac[d:d + k, :d] = grads
    jac[d:d + k, d] = -1.0
    jac[d + k, d + 1:d + 1 + k] = 1.0
    if on_ball:
        jac[:d, -1] = theta
        jac[-1, :d] = theta
        res.append([0.5 * (float(theta @ theta) - bound**2)])
    return np.concatenate(res), jac, stat


def _newton(data, beta, theta, idx, on_ball, bound):
    d, k = data.d, idx.size
    lm = softplus(-margins(theta, data, beta=beta))
    q = data.weight[idx]
    z = np.concatenate([theta, [float(lm[idx].max())], q / q.sum(),
                        [0.0] if on_ball else []])
    if on_ball:     # the multiplier of the ball from stationarity along theta
        g = -sigmoid(-margins(theta, data, beta=beta)[idx]) * data.sign[idx] * beta
        z[-1] = max(0.0, -float(((g[:, None] * data.x[idx]).T @ z[d + 1:d + 1 + k]) @ theta)
                    / bound**2)
    for _ in range(MAX_ITER):
        mu = z[-1] if on_ball else 0.0
        res, jac, stat = _system(data, beta, z[:d], z[d], z[d + 1:d + 1 + k], mu, idx,
                                 on_ball, bound)
        if np.linalg.norm(res) <= RTOL * max(1.0, abs(z[d])):
            return z, stat
        z = z + np.linalg.lstsq(jac, -res, rcond=None)[0]
        if not np.all(np.isfinite(z)):
            return None
    mu = z[-1] if on_ball else 0.0
    res, _, stat = _system(data, beta, z[:d], z[d], z[d + 1:d + 1 + k], mu, idx, on_ball,
                           bound)
    return (z, stat) if np.linalg.norm(res) <= 1e3 * RTOL * max(1.0, abs(z[d])) else None


def polish(data, beta, rho, bound, theta0, tol):
    """The exact degenerate optimum near theta0, or None.

    Returns (theta, mu, worst-case weights p (n,), KKT residual) when the system has a
    solution whose multipliers form a worst case (pi >= 0, KL(pi||q) <= rho, mu >= 0) and
    whose stationarity residual is at most ``tol``.
    """
    theta0 = np.asarray(theta0, dtype=float)
    q = data.weight
    losses = softplus(-margins(theta0, data, beta=beta))
    pos = q > 0
    lmax = float(losses[pos].max())
    idx = np.flatnonzero(pos & (losses >= lmax - TIE_RTOL * max(1.0, abs(lmax))))
    on_ball = bound is not None and np.linalg.norm(theta0) >= bound * (1 - 1e-6)
    for _ in range(idx.size):
        if -np.log(q[idx].sum()) > rho * (1 + 1e-12):
            return None                     # not degenerate: the smooth solver's regime
        out = _newton(data, beta, theta0, idx, on_ball, bound)
        if out is None:
            return None
        z, stat = out
        d, k = data.d, idx.size
        pi = z[d + 1:d + 1 + k]
        mu = float(z[-1]) if on_ball else 0.0
        if pi.min() < -1e-12:
            idx = np.delete(idx, int(np.argmin(pi)))     # not in the active set
            continue
        pi = np.clip(pi, 0.0, None)
        pi /= pi.sum()
        keep = pi > 0
        kl = float(pi[keep] @ np.log(pi[keep] / q[idx][keep]))
        if mu < -1e-12 or kl > rho * (1 + 1e-9) or np.linalg.norm(stat) > tol:
            return None
        p = np.zeros(data.n)
        p[idx] = pi
        return z[:d], max(mu, 0.0), p, float(np.linalg.norm(stat))
    return None
