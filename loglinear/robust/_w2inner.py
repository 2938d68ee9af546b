r"""The exact inner supremum of W2-DRO DPO, one atom at a time and vectorised.

For an atom with loss argument u = -m and b = beta ||theta|| > 0, moving x along
-(2y-1) theta/||theta|| by t >= 0 costs t^2 and raises the loss to softplus(u + b t):

.. math::  \varphi(u, b, \eta) = \sup_{t\ge0}\ f(t) = \mathrm{softplus}(u + bt) - \eta t^2

(any other direction gains less per unit cost). f'(t) = g(t) = b sigma(u + bt) - 2 eta t
has g(0) > 0 and g(T) < 0 at T = b/(2 eta). With c = 2 eta / b^2, f is concave when
c >= 1/4; otherwise g' = 0 at u + bt = v_-, v_+ with sigma(1 - sigma) = c, so g decreases,
increases, decreases and has at most three roots. The local maxima are the roots on the
two decreasing pieces; each is bracketed and found by safeguarded Newton, and the larger
value wins. This is exact up to float rounding: no grid, no local search.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from ..losses import softplus
from ._base import weighted_gram

MAX_ITER = 200


def _root_decreasing(u, b, eta, lo, hi):
    """Roots of g on brackets [lo, hi] where g(lo) >= 0 >= g(hi) and g decreases.

    Safeguarded Newton (bisection when a step leaves the bracket), iterating only on the
    atoms that have not converged yet.
    """
    t = 0.5 * (lo + hi)
    idx = np.flatnonzero(hi > lo)
    lo_a, hi_a, t_a, u_a = lo[idx], hi[idx], t[idx], u[idx]
    for _ in range(MAX_ITER):
        if idx.size == 0:
            break
        s = expit(u_a + b * t_a)
        g = b * s - 2.0 * eta * t_a
        dg = b * b * s * (1.0 - s) - 2.0 * eta
        pos = g > 0
        lo_a = np.where(pos, t_a, lo_a)
        hi_a = np.where(pos, hi_a, t_a)
        with np.errstate(divide="ignore", invalid="ignore"):
            tn = t_a - g / dg
        ok = (dg < 0) & (tn > lo_a) & (tn < hi_a) & np.isfinite(tn)
        tn = np.where(ok, tn, 0.5 * (lo_a + hi_a))
        done = (np.abs(tn - t_a) <= 4e-16 * np.maximum(1.0, np.abs(tn))) | (
            hi_a - lo_a <= 4e-16 * np.maximum(1.0, hi_a)) | (g == 0)
        t_a = np.where(g == 0, t_a, tn)
        t[idx] = t_a
        keep = ~done
        idx, lo_a, hi_a, t_a, u_a = idx[keep], lo_a[keep], hi_a[keep], t_a[keep], u_a[keep]
    return t


def inner_sup(u: np.ndarray, b: float, eta: float):
    """Exact sup_{t >= 0} softplus(u + b t) - eta t^2 for every atom.

    Returns (phi, t, alt_phi, alt_t): the value and maximiser, plus the other local
    maximum where one exists (``alt_phi = -inf`` otherwise), used to split mass at ties.
    """
    u = np.asarray(u, dtype=float)
    n = u.shape[0]
    if b <= 0:
        return softplus(u), np.zeros(n), np.full(n, -np.inf), np.zeros(n)
    if eta <= 0:
        raise ValueError("eta must be > 0 when theta != 0 (the supremum is infinite)")
    big_t = b / (2.0 * eta)
    c = 2.0 * eta / (b * b)
    zeros = np.zeros(n)
    tmax = np.full(n, big_t)

    def g_at(t):
        return b * expit(u + b * t) - 2.0 * eta * t

    if c >= 0.25:
        t = _root_decreasing(u, b, eta, zeros, tmax)
        return softplus(u + b * t) - eta * t * t, t, np.full(n, -np.inf), t
    # the roots of s (1 - s) = c, without cancellation: s_- s_+ = c, s_- + s_+ = 1
    sp = 0.5 * (1.0 + np.sqrt(1.0 - 4.0 * c))
    sm = c / sp
    vm, vp = np.log(sm) - np.log(sp), np.log(sp) - np.log(sm)
    t1, t2 = (vm - u) / b, (vp - u) / b
    # piece A: [0, min(t1, T)], decreasing; a root iff g there is <= 0
    a_hi = np.clip(t1, 0.0, big_t)
    has_a = (t1 > 0) & (g_at(a_hi) <= 0)
    # piece C: [max(t2, 0), T], decreasing; a root iff g at its left end is >= 0
    c_lo = np.clip(t2, 0.0, big_t)
    has_c = (t2 < big_t) & (g_at(c_lo) >= 0)
    ta = _root_decreasing(u, b, eta, zeros, np.where(has_a, a_hi, zeros))
    tc = _root_decreasing(u, b, eta, np.where(has_c, c_lo, tmax), tmax)
    fa = np.where(has_a, softplus(u + b * ta) - eta * ta * ta, -np.inf)
    fc = np.where(has_c, softplus(u + b * tc) - eta * tc * tc, -np.inf)
    pick_a = fa >= fc
    phi = np.where(pick_a, fa, fc)
    t = np.where(pick_a, ta, tc)
    alt_phi = np.where(pick_a, fc, fa)
    alt_t = np.where(pick_a, tc, ta)
    return phi, t, alt_phi, alt_t


def second_order(u, b, eta, t):
    """Second derivatives of phi(u, b, eta) at the maximiser t (implicit function theorem).

    Returns (phi_u, phi_b, phi_eta, phi_uu, phi_ub, phi_bb, phi_ueta, phi_beta, phi_etaeta).
    """
    s = expit(u + b * t)
    s1 = s * (1.0 - s)
    ftt = b * b * s1 - 2.0 * eta
    ftt = np.minimum(ftt, -1e-300)           # a strict maximum: f_tt < 0
    fu_t, fb_t, fe_t = b * s1, s + b * t * s1, -2.0 * t
    return (s, t * s, -t * t,
            s1 - fu_t * fu_t / ftt,
            t * s1 - fu_t * fb_t / ftt,
            t * t * s1 - fb_t * fb_t / ftt,
            -fu_t * fe_t / ftt,
            -fb_t * fe_t / ftt,
            -fe_t * fe_t / ftt)


def derivs(x, sb, w, u, theta, beta, eta, t, need_hess):
    r"""Derivatives of sum_i w_i phi(u_i, beta ||theta||, eta) at the maximisers t_i.

    u_i = -(sb_i x_i . theta - ...), so d u_i / d theta = -sb_i x_i. Returns the theta
    gradient, the eta derivative and, with ``need_hess``, the blocks (H_tt, H_te, H_ee).
    """
    d = x.shape[1]
    norm = float(np.linalg.norm(theta))
    unit = theta / norm
    e = beta * unit
    pu, pb, pe, puu, pub, pbb, pue, pbe, pee = second_order(u, beta * norm, eta, t)
    g_theta = x.T @ (w * pu * -sb) + float(w @ pb) * e
    g_eta = float(w @ pe)
    if not need_hess:
        return g_theta, g_eta, None, None, None
    v = x.T @ (w * pub * -sb)
    htt = weighted_gram(x, w * puu * beta**2)
    htt += np.outer(v, e) + np.outer(e, v) + float(w @ pbb) * np.outer(e, e)
    htt += float(w @ pb) * beta / norm * (np.eye(d) - np.outer(unit, unit))
    hte = x.T @ (w * pue * -sb) + float(w @ pbe) * e
    return g_theta, g_eta, htt, hte, float(w @ pee)


def split_derivs(x, sb, u, theta, beta, eta, t, rest, idx, lo, hi, w_lo, w_hi, need_hess):
    """:func:`derivs` of a worst case that splits the atoms ``idx`` between their two
    maximisers: sum_i rest_i phi_i(t_i) + sum_k [w_lo_k phi_k(lo_k) + w_hi_k phi_k(hi_k)]
    (``rest`` is zero on ``idx``)."""
    xs = np.vstack([x, x[idx], x[idx]])
    ss = np.concatenate([sb, sb[idx], sb[idx]])
    us = np.concatenate([u, u[idx], u[idx]])
    ts = np.concatenate([t, lo, hi])
    ws = np.concatenate([rest, w_lo, w_hi])
    return derivs(xs, ss, ws, us, theta, beta, eta, ts, need_hess)


def ordered_maxima(t, alt_t, phi, alt_phi):
    """(t_lo, t_hi, phi_lo, phi_hi): an atom's two local maxima ordered by position."""
    first = t <= alt_t
    return (np.where(first, t, alt_t), np.where(first, alt_t, t),
            np.where(first, phi, alt_phi), np.where(first, alt_phi, phi))


def branch_grads(x, sb, u, theta, beta, t):
    """(k, d): the theta gradient of each atom's phi at its fixed maximiser t (envelope)."""
    norm = float(np.linalg.norm(theta))
    s = expit(u + beta * norm * t)
    return (s * -sb)[:, None] * x + (beta * t * s)[:, None] * (theta / norm)
