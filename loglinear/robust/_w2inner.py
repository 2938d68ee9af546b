r"""The exact inner supremum of W2-DRO DPO, one atom at a time and vectorised
(docs/theory.md §3.5, inner supremum).

For an atom with loss argument u = -m and b = beta ||theta|| > 0, moving x along
-(2y-1) theta/||theta|| by t >= 0 costs t^2 and raises the loss to softplus(u + b t):

.. math::  \varphi(u, b, \eta) = \sup_{t\ge0}\ f(t) = \mathrm{softplus}(u + bt) - \eta t^2

(any other direction gains less per unit cost). f'(t) = g(t) = b sigma(u + bt) - 2 eta t
has g(0) > 0 and g(T) < 0 at T = b/(2 eta). With c = 2 eta / b^2, f is concave when
c >= 1/4; otherwise g' = 0 at u + bt = v_-, v_+ with sigma(1 - sigma) = c, so g decreases,
increases, decreases and has at most three roots. The local maxima are the roots on the
two decreasing pieces, and the larger value wins. On each piece g is convex (u + bt < 0)
or concave (u + bt > 0), so Newton converges monotonically from one side, without a
bracket (:func:`_newton_roots`). This is exact up to float rounding: no grid, no local
search. Atoms are processed in blocks, so that temporaries stay small, from guesses at a
nearby eta where the caller has them (the multiplier search of :mod:`._w2value`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from ..losses import softplus
from ._base import weighted_gram

MAX_ITER = 200
STEP_RTOL = 4e-16       # a Newton step below this (relative to max(1, t)) is rounding
BLOCK = 8192            # atoms per block: temporaries stay small and in cache


def sigmoid(z):
    """1 / (1 + e^-z); e^-z = inf gives 0."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _softplus(z):
    """log(1 + e^z) as numpy's logaddexp(0, z) computes it, vectorised."""
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _g_dg(nu, b, two_eta, t):
    """g(t) = b sigma(b t - nu) - 2 eta t and g'(t)."""
    s = 1.0 / (1.0 + np.exp(nu - b * t))
    return b * s - two_eta * t, (b * b) * s * (1.0 - s) - two_eta


def _newton_roots(u, b, eta, t, left, lo, hi):
    """Roots of g(t) = b sigma(u + b t) - 2 eta t on intervals [lo, hi] by Newton from t.

    On [lo, hi] g has a root and decreases, convex there (``left``: u + b t < 0) or
    concave (u + b t > 0). Newton is then monotone from the side of the root where
    g is convex and positive or concave and negative: each step lands between the
    iterate and the root, so no bracket is needed. From the other side one step, clipped
    into [lo, hi], gets there (a tangent lies below a convex g); where g' = 0 (at the
    inflection end of [lo, hi], where a clipped guess may sit) the start is the other
    end. An atom stops when its step is below rounding or points away from the root
    (reached to rounding). eta, left, lo and hi are scalars or arrays like u.
    """
    sign = np.where(left, 1.0, -1.0) if np.ndim(left) else (1.0 if left else -1.0)
    nu, two_eta = -u, 2.0 * eta
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        ta = np.clip(t, lo, hi)
        g, dg = _g_dg(nu, b, two_eta, ta)
        step = g / dg
        towards = step * sign
        ok = dg < 0
        ta = np.where(ok, np.clip(ta - step, lo, hi), np.where(left, lo, hi))
        live = ~ok | (np.abs(step) > STEP_RTOL * np.maximum(1.0, ta))
        # converged atoms stay in the arrays (frozen) until few are left: gathers cost
        # more than a Newton step
        out, idx = None, None
        for _ in range(MAX_ITER):
            if not live.any():
                break
            g, dg = _g_dg(nu, b, two_eta, ta)
            step = g / dg
            towards = step * sign
            ta = np.where(live & (towards < 0), ta - step, ta)
            live &= towards < -STEP_RTOL * np.maximum(1.0, ta)
            k = np.count_nonzero(live)
            if 0 < k <= live.size // 4:
                if out is None:
                    out, idx = ta, np.arange(ta.size)
                else:
                    out[idx] = ta
                idx, nu, ta = idx[live], nu[live], ta[live]
                if np.ndim(sign):
                    sign = sign[live]
                if np.ndim(two_eta):
                    two_eta = two_eta[live]
                live = np.ones(k, dtype=bool)
    if out is None:
        return ta
    out[idx] = ta
    return out


def _two_maxima(u, b, eta, start=None):
    """(phi_a, t_a, phi_c, t_c): the near and far local maxima where g is not monotone
    (2 eta < b^2 / 4); phi = -inf where that maximum does not exist, and then t = 0
    (near) or T = b / (2 eta) (far). ``eta`` is a scalar or an array like u; ``start``
    optional guesses (near, far) for the maximisers.
    """
    n = u.shape[0]
    big_t = b / (2.0 * eta)
    c = 2.0 * eta / (b * b)
    # the roots of s (1 - s) = c, without cancellation: s_- s_+ = c, s_- + s_+ = 1
    sp = 0.5 * (1.0 + np.sqrt(np.maximum(1.0 - 4.0 * c, 0.0)))
    sm = c / sp
    vm = np.log(sm) - np.log(sp)
    t1, t2 = (vm - u) / b, (-vm - u) / b
    # piece A: [0, min(t1, T)], g decreasing and convex; a root iff g at its right end
    # is <= 0 (g(t1) = b s_- - 2 eta t1; g(T) < 0)
    has_a = (t1 > 0) & ((t1 >= big_t) | (b * sm <= 2.0 * eta * t1))
    # piece C: [max(t2, 0), T], g decreasing and concave; a root iff g at its left end >= 0
    has_c = (t2 < big_t) & ((t2 <= 0) | (b * sp >= 2.0 * eta * t2))
    ta, fa = np.zeros(n), np.full(n, -np.inf)
    tc, fc = np.broadcast_to(big_t, (n,)).copy(), np.full(n, -np.inf)
    for k, (t, f, has) in enumerate(((ta, fa, has_a), (tc, fc, has_c))):
        i = np.flatnonzero(has)
        if i.size:
            e, bt = (eta[i], big_t[i]) if np.ndim(eta) else (eta, big_t)
            if k == 0:
                lo, hi = 0.0, np.minimum(t1[i], bt)
            else:
                lo, hi = np.maximum(t2[i], 0.0), bt
            t0 = (lo if k == 0 else hi) if start is None else start[k][i]
            r = _newton_roots(u[i], b, e, np.broadcast_to(t0, (i.size,)), k == 0, lo, hi)
            t[i] = r
            f[i] = _softplus(u[i] + b * r) - e * r * r
    return fa, ta, fc, tc


def _guesses(start, sl):
    """Guesses (near, far) for the maximisers of the atoms ``sl`` from ``start`` = (t,
    alt_t, dt, step) at a nearby eta: the maximiser moved along its tangent, the other
    local maximum where it was."""
    t, alt_t, dt, step = start
    t, alt_t = t[sl], alt_t[sl]
    moved = t + dt[sl] * step
    return np.where(t <= alt_t, moved, alt_t), np.where(t >= alt_t, moved, alt_t)


def _inner_block(u, b, eta, start, slope):
    """:func:`inner_sup` on one block of atoms."""
    big_t = b / (2.0 * eta)
    if 2.0 * eta / (b * b) >= 0.25:
        # g decreasing: one root; g is convex left of the inflection u + b t = 0 and
        # concave right of it, and the root lies left iff g there (b/2 - 2 eta t) <= 0
        t_infl = -u / b
        left = t_infl >= 0.5 * big_t
        lo = np.where(left, 0.0, np.maximum(t_infl, 0.0))
        hi = np.where(left, np.minimum(t_infl, big_t), big_t)
        t0 = np.where(left, lo, hi) if start is None else np.where(left, *start)
        t = _newton_roots(u, b, eta, t0, left, lo, hi)
        out = (_softplus(u + b * t) - eta * t * t, t, np.full(u.shape[0], -np.inf), t)
    else:
        fa, ta, fc, tc = _two_maxima(u, b, eta, start)
        pick_a = fa >= fc
        t = np.where(pick_a, ta, tc)
        out = (np.where(pick_a, fa, fc), t, np.where(pick_a, fc, fa), np.where(pick_a, tc, ta))
    if slope:
        s = sigmoid(u + b * t)
        out += (2.0 * t / np.minimum(b * b * s * (1.0 - s) - 2.0 * eta, -1e-300),)
    return out


def inner_sup(u: np.ndarray, b: float, eta: float, start=None, *, slope: bool = False):
    """Exact sup_{t >= 0} softplus(u + b t) - eta t^2 for every atom.

    Returns (phi, t, alt_phi, alt_t): the value and maximiser, plus the other local
    maximum where one exists (``alt_phi = -inf`` otherwise), used to split mass at ties;
    with ``slope``, also dt/d eta = 2 t / f_tt (implicit function theorem). ``start``:
    optional (t, alt_t, dt, step) from a ``slope`` call at eta - step, to start the
    iteration from (it changes the work, not the result).
    """
    u = np.asarray(u, dtype=float)
    n = u.shape[0]
    if b <= 0:
        out = softplus(u), np.zeros(n), np.full(n, -np.inf), np.zeros(n)
        return out + (np.zeros(n),) if slope else out
    if eta <= 0:
        raise ValueError("eta must be > 0 when theta != 0 (the supremum is infinite)")
    if n <= BLOCK:
        guess = None if start is None else _guesses(start, slice(None))
        return _inner_block(u, b, eta, guess, slope)
    out = np.empty((5 if slope else 4, n))
    for lo in range(0, n, BLOCK):
        sl = slice(lo, lo + BLOCK)
        guess = None if start is None else _guesses(start, sl)
        out[:, sl] = _inner_block(u[sl], b, eta, guess, slope)
    return tuple(out)


def tie_eta(u, b, lo, hi, start=None):
    r"""The multiplier at which each atom's two local maxima tie, for atoms on their far
    maximum at eta = lo and on their near one at eta = hi <= b^2/8.

    The gap D(eta) = phi_far - phi_near has derivative -(t_far^2 - t_near^2) < 0
    (envelope theorem) where both maxima exist; below that range only the far one exists
    (D = +inf), above it only the near one (D = -inf). So D has one root in (lo, hi).
    D is close to linear in x = 1/eta (phi_far ~ u + b^2 / (4 eta) once saturated), so
    Newton runs in x, dD/dx = eta^2 (t_far^2 - t_near^2), safeguarded by geometric
    bisection. ``start``: optional first guesses inside (lo, hi).
    """
    k = u.shape[0]
    a, z = np.full(k, float(lo)), np.full(k, float(hi))
    e = np.sqrt(a * z) if start is None else np.broadcast_to(start, (k,)).astype(float)
    out, idx, guess = e.copy(), np.arange(k), None
    for _ in range(MAX_ITER):
        fa, ta, fc, tc = _two_maxima(u, b, e, guess)
        d = fc - fa
        far = d > 0
        a, z = np.where(far, e, a), np.where(far, z, e)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            en = 1.0 / (1.0 / e - d / (e * e * (tc * tc - ta * ta)))
        en = np.where((en > a) & (en < z), en, np.sqrt(a * z))
        # D = 0 to rounding: e is the tie
        tied = np.isfinite(d) & (np.abs(d) <= STEP_RTOL * np.maximum(1.0, np.abs(fc)))
        en = np.where(tied, e, en)
        done = tied | (np.abs(en - e) <= STEP_RTOL * e) | (z - a <= STEP_RTOL * z)
        out[idx] = en
        if done.all():
            break
        keep = ~done
        idx, u, a, z, e = idx[keep], u[keep], a[keep], z[keep], en[keep]
        guess = (ta[keep], tc[keep])
    return out


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
