r"""A smoothing path to W2 optima that sit on many kinks at once (docs/theory.md §3.5,
solver).

On separable or nearly separable data at small radii the W2 worst case pushes the atoms
with the smallest margins across the decision boundary, and at the optimum many of them
tie between their two local maxima at once, like the support vectors of a margin
maximiser. There V(theta) is a maximum of many smooth pieces; Newton's second-order model
is wrong on one side of every kink, and the kink system needs the right tie set.

The path replaces each atom's maximum of its two branches by a soft maximum,

.. math::  \varphi^s_i = s \log\big(e^{\varphi^{lo}_i / s} + e^{\varphi^{hi}_i / s}\big),

which is smooth in (theta, eta), with the fraction p_i = sigma((phi_hi - phi_lo)/s) sent to
the larger maximiser playing the role of the tie split. Joint Newton is run for s
decreasing to 0; at the end the atoms with p_i strictly inside (0, 1) are the tie set, and
p is the starting split of the exact kink system (:mod:`._w2kink`), which certifies the
optimum. (Where a branch disappears at its cusp the vanishing branch lies below the other
one, so the soft maximum changes by at most s log(1 + e^{-gap/s}) there.)
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from ..losses import margins
from ..newton import newton
from ._w2inner import branch_grads, inner_sup, ordered_maxima, split_derivs
from ._w2kink import _groups
from ._w2kink import _newton as _kink_newton

S_START = 1e-2        # first smoothing level, relative to the mean loss
S_FACTOR = 0.1        # each level divides s by 10
S_LEVELS = 7          # down to 1e-8 of the mean loss
FIRST_ITER = 150      # Newton iterations at the first level (the start may be far)
LEVEL_ITER = 40       # Newton iterations per later level
SHRINK_LIMIT = 0.125   # a step shrinks ||theta|| by at most this factor (the kink at 0)
SHIFT_TRACE = 1e-8    # the steady path's Hessian shift, relative to the mean curvature
SPLIT_MIN = 1e-6      # atoms with SPLIT_MIN < p < 1 - SPLIT_MIN form the tie set


def _smoothed(data, beta, eps, ridge, s, shift=None):
    """fun(z, need_hess) for the smoothed joint objective, and the split p at z."""
    q, d, sb = data.weight, data.d, data.sign * beta

    def pieces(z, need_hess):
        theta, eta = z[:d], float(z[d])
        norm = float(np.linalg.norm(theta))
        if eta <= 0 or norm == 0 or not np.isfinite(norm):
            return None
        u = -margins(theta, data, beta=beta)
        phi, t, alt_phi, alt_t = inner_sup(u, beta * norm, eta)
        idx = np.flatnonzero((q > 0) & np.isfinite(alt_phi))
        lo, hi, phi_lo, phi_hi = ordered_maxima(t[idx], alt_t[idx], phi[idx], alt_phi[idx])
        p = expit((phi_hi - phi_lo) / s)
        rest = q.copy()
        rest[idx] = 0.0
        soft = s * np.logaddexp(phi_lo / s, phi_hi / s)
        value = (eta * eps**2 + float(rest @ phi) + float(q[idx] @ soft)
                 + 0.5 * ridge * float(theta @ theta))
        g, g_eta, htt, hte, hee = split_derivs(data.x, sb, u, theta, beta, eta, t, rest, idx,
                                               lo, hi, q[idx] * (1 - p), q[idx] * p,
                                               need_hess)
        grad = np.concatenate([g + ridge * theta, [eps**2 + g_eta]])
        hess = None
        if need_hess:
            hess = np.empty((d + 1, d + 1))
            hess[:d, :d], hess[:d, d], hess[d, :d], hess[d, d] = htt, hte, hte, hee
            hess[np.diag_indices(d)] += ridge
            xi, si, ui = data.x[idx], sb[idx], u[idx]
            diff = np.column_stack([branch_grads(xi, si, ui, theta, beta, hi)
                                    - branch_grads(xi, si, ui, theta, beta, lo),
                                    lo**2 - hi**2])
            curv = q[idx] * p * (1 - p) / s
            hess += (diff * curv[:, None]).T @ diff
            if shift == "grad":
                hess[np.diag_indices(d + 1)] += float(np.linalg.norm(grad))
            elif shift == "trace":
                hess[np.diag_indices(d + 1)] += SHIFT_TRACE * float(np.trace(hess)) / (d + 1)
        return value, grad, hess, idx, p

    def fun(z, need_hess):
        out = pieces(z, need_hess)
        if out is None:
            return np.inf, np.full(d + 1, np.inf), np.eye(d + 1)
        return out[:3]

    def line(z, step):
        floor = SHRINK_LIMIT * float(np.linalg.norm(z[:d]))

        def f(tt):
            trial = z + tt * step
            if np.linalg.norm(trial[:d]) < floor:   # toward the kink at 0: a factor at most
                return np.inf
            out = pieces(trial, False)
            return np.inf if out is None else out[0]

        return f

    return fun, line, pieces


def _tie_groups(data, tie, p):
    """The kink system's groups for the tie atoms, and the starting split of each group."""
    groups = _groups(data, tie)
    reps = np.array([g[0] for g in groups])
    where = {int(a): k for k, a in enumerate(tie)}
    q = data.weight
    mass = np.array([q[g].sum() for g in groups])
    return (reps, mass, np.concatenate(groups)), np.array([p[where[int(r)]] for r in reps])


def smoothing_path(data, beta, eps, ridge, z0, tol, *, steady=False):
    """Follow the smoothing path from z0 = (theta, eta), trying the exact kink system
    from the end of every level; returns (theta, eta, residual, n_groups) for the first
    solution with 0 <= f <= 1 and a theta residual at most ``tol``, or None.

    With ``steady`` every Hessian is shifted by a small multiple of its mean curvature
    (steadier where the smoothed objective is far from quadratic). At a level whose
    Newton step diverges (a flat direction: no atom near its boundary, nearly separable
    data with d close to n) the level is redone with the Levenberg shift ||grad||, which
    bounds the step and vanishes at the optimum, so the fixed point is unchanged and
    convergence stays superlinear."""
    d = data.d
    loss_scale = max(float(data.weight @ np.logaddexp(0.0, -margins(z0[:d], data,
                                                                    beta=beta))), 1e-12)
    z = np.asarray(z0, float)
    for level in range(S_LEVELS):
        s = S_START * loss_scale * S_FACTOR**level
        iters = FIRST_ITER if level == 0 else LEVEL_ITER
        fun, line, pieces = _smoothed(data, beta, eps, ridge, s, "trace" if steady else None)
        rep = newton(fun, z, gtol=1e-12 * max(1.0, eps**2), max_iter=iters, line=line)
        if rep.status == "diverging":
            fun, line, pieces = _smoothed(data, beta, eps, ridge, s, "grad")
            rep = newton(fun, rep.x, gtol=1e-12 * max(1.0, eps**2), max_iter=iters, line=line)
        if not np.all(np.isfinite(rep.x)) or not np.isfinite(rep.value):
            return None
        z = rep.x
        out = pieces(z, False)
        if out is None:
            return None
        idx, p = out[3], out[4]
        tie = (p > SPLIT_MIN) & (p < 1 - SPLIT_MIN)
        if not tie.any():
            continue
        groups, f0 = _tie_groups(data, idx[tie], p[tie])
        sol = _kink_newton(data, beta, eps, ridge, groups, np.concatenate([z, f0]))
        if sol is None:
            continue
        zk, res = sol
        f = zk[d + 1:]
        if np.all(f >= -1e-9) and np.all(f <= 1 + 1e-9) and \
                float(np.linalg.norm(res[:d])) <= tol and \
                float(np.linalg.norm(res[d:])) <= 1e-10 * max(1.0, eps**2):
            return zk[:d], float(zk[d]), float(np.linalg.norm(res[:d])), len(f)
    return None
