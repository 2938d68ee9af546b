r"""Exact W2-DRO DPO where the optimum sits on a kink of V(theta) (docs/theory.md §3.5,
solver).

With finitely many atoms phi_i(theta, eta) is the larger of two smooth branches, the
values at the local maxima t^lo_i < t^hi_i, wherever both exist. The profiled objective
V(theta) = min_eta Phi(theta, eta) is smooth while at most one tie condition
phi(t^lo_i) = phi(t^hi_i) holds at eta* (one atom, or exact copies of it, split between
its maxima), but where two atoms tie at the same eta* the worst case is no longer unique
and V has a kink, like a vertex of a polyhedral function. Optima land on such kinks with
positive probability on small or separable data.

There the optimum solves a square system. For tie groups G (exact copies merged) with
fractions f_g sent to the larger maximiser, let

.. math::  L(\theta, \eta, f) = \eta\varepsilon^2 + \sum_{i\notin G} q_i \varphi_i
           + \sum_g Q_g [(1 - f_g)\,\varphi(t^{lo}_g) + f_g\,\varphi(t^{hi}_g)]
           + \tfrac{\mu}{2}\|\theta\|^2.

Then grad_theta L = 0, d L / d eta = 0 (the split spends the budget) and
phi(t^hi_g) = phi(t^lo_g) for every g. With 0 <= f_g <= 1 the split is a worst case at
theta, so grad_theta L is a subgradient of V + mu/2 ||theta||^2 there (Danskin): its norm
is the certificate. Newton runs on that system for the tie sets made of the k atoms
closest to a tie, k = 1, ..., d + 1.
"""

from __future__ import annotations

import numpy as np

from ..losses import margins
from ._w2inner import branch_grads, inner_sup, ordered_maxima, split_derivs

MAX_ITER = 40
RTOL = 1e-12          # ||residual|| at which the Newton iteration stops


def _groups(data, cand):
    """Candidate atoms merged into groups of exact copies (same z and signed offset)."""
    key = np.column_stack([data.z[cand], data.sign[cand] * data.offset[cand]])
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return [cand[inverse.ravel() == g] for g in range(first.size)]


def _system(data, beta, eps, ridge, groups, z, need_jac):
    """Residual, Jacobian and value of the kink system at z = (theta, eta, f).

    ``groups`` is (reps, mass, members): one representative atom per tie group, the
    group's total weight, and every atom in a group.
    """
    reps, mass, members = groups
    d, k = data.d, reps.size
    theta, eta, f = z[:d], float(z[d]), z[d + 1:]
    norm = float(np.linalg.norm(theta))
    if not (eta > 0 and 0 < norm < np.inf):     # outside the domain, or a non-finite step
        return None
    q, sb = data.weight, data.sign * beta
    u = -margins(theta, data, beta=beta)
    b = beta * norm
    phi, t, alt_phi, alt_t = inner_sup(u, b, eta)
    if not np.all(np.isfinite(alt_phi[reps])):
        return None                          # a group lost one of its two maxima
    lo, hi, phi_lo, phi_hi = ordered_maxima(t[reps], alt_t[reps], phi[reps], alt_phi[reps])
    rest = q.copy()
    rest[members] = 0.0
    g, g_eta, htt, hte, hee = split_derivs(data.x, sb, u, theta, beta, eta, t, rest, reps, lo,
                                           hi, mass * (1.0 - f), mass * f, need_jac)
    value = (eta * eps**2 + float(rest @ phi) + float(mass @ ((1 - f) * phi_lo + f * phi_hi))
             + 0.5 * ridge * float(theta @ theta))
    res = np.concatenate([g + ridge * theta, [eps**2 + g_eta], mass * (phi_hi - phi_lo)])
    if not need_jac:
        return res, None, value
    xr, sr, ur = data.x[reps], sb[reps], u[reps]
    l_tf = (mass[:, None] * (branch_grads(xr, sr, ur, theta, beta, hi)
                             - branch_grads(xr, sr, ur, theta, beta, lo))).T
    l_ef = mass * (lo**2 - hi**2)
    jac = np.zeros((d + 1 + k, d + 1 + k))
    htt[np.diag_indices(d)] += ridge
    jac[:d, :d], jac[:d, d], jac[d, :d], jac[d, d] = htt, hte, hte, hee
    jac[:d, d + 1:], jac[d + 1:, :d] = l_tf, l_tf.T
    jac[d, d + 1:], jac[d + 1:, d] = l_ef, l_ef
    return res, jac, value


def _newton(data, beta, eps, ridge, groups, z):
    """Damped Newton on the kink system (merit: the residual norm)."""
    out = _system(data, beta, eps, ridge, groups, z, True)
    if out is None:
        return None
    res, jac, _ = out
    for _ in range(MAX_ITER):
        rn = float(np.linalg.norm(res))
        if rn <= RTOL * max(1.0, eps**2):
            return z, res
        step = np.linalg.lstsq(jac, -res, rcond=None)[0]
        tt = 1.0
        while tt > 1e-6:
            trial = _system(data, beta, eps, ridge, groups, z + tt * step, True)
            if trial is not None and np.linalg.norm(trial[0]) < (1.0 - 1e-4 * tt) * rn:
                break
            tt *= 0.5
        else:
            return z, res                   # no further progress: the caller judges res
        z = z + tt * step
        res, jac, _ = trial
    return z, res


def kink_solve(data, beta, eps, ridge, theta, profile, tol):
    """Solve the kink system from theta, whose profiled eta* gives ``profile``.

    ``profile`` is (eta, phi, t, alt_phi, alt_t) at theta. Returns (theta, eta, residual,
    groups) for the first tie set whose solution has 0 <= f <= 1 and a theta residual
    at most ``tol``, or None.
    """
    eta, phi, t, alt_phi, alt_t = profile
    q = data.weight
    both = np.flatnonzero((q > 0) & np.isfinite(alt_phi))
    if both.size == 0:
        return None
    groups = _groups(data, both)
    gap = np.array([float(np.min((phi[g] - alt_phi[g]) / np.maximum(1.0, np.abs(phi[g]))))
                    for g in groups])
    order = np.argsort(gap, kind="stable")
    for k in range(1, min(data.d + 1, len(groups)) + 1):
        chosen = [groups[i] for i in order[:k]]
        reps = np.array([g[0] for g in chosen])
        groups_k = (reps, np.array([q[g].sum() for g in chosen]), np.concatenate(chosen))
        f0 = np.where(t[reps] > alt_t[reps], 1.0, 0.0)
        out = _newton(data, beta, eps, ridge, groups_k, np.concatenate([theta, [eta], f0]))
        if out is None:
            continue
        z, res = out
        f = z[data.d + 1:]
        if np.all(f >= -1e-9) and np.all(f <= 1 + 1e-9) and \
                float(np.linalg.norm(res[:data.d])) <= tol and \
                float(np.linalg.norm(res[data.d:])) <= 1e-10 * max(1.0, eps**2):
            return z[:data.d], float(z[data.d]), float(np.linalg.norm(res[:data.d])), chosen
    return None
