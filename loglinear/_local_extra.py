r"""Local asymptotics of the estimators that need more than a row of the table in
docs/theory.md §5.6: margin losses other than DPO (IPO), W1 with a finite label-flip cost,
W2 as a joint M-estimator in (theta, eta), and the official WDPO and KLDPO forms
(docs/theory.md §5.8); with the KL dual's joint (theta, lambda) derivatives.

Every kind returns :class:`Pieces`: the Hessian H of the estimating equation, the influence
rows psi_j (the derivative of the population estimating equation along the mixture
direction delta_j - q) and the influence of the objective value; then
V = H^{-1} E_q[psi psi^T] H^{-T} (:func:`sandwich`). This module imports the data and the
losses only: :mod:`loglinear.estimation` registers its kinds (:func:`register`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, logsumexp

from .data import PreferenceData
from .losses import LOSSES, MarginLoss, dpo_margin_terms, margins

TIE_RTOL = 1e-9      # margins (or branch values) this close count as tied: a kink
BUDGET_RTOL = 1e-9   # W2: sum q t^2 must meet eps^2 this closely at eta* (else a tie split)
MAX_STEPS = 200      # safeguarded Newton steps per root (bisection alone needs ~64)
KINK_NORM = 1e-12    # ||w|| below this is the kink at w = 0
OFFICIAL_CAP = 10.0  # the official KLDPO clamp (the value of loglinear.approx.OFFICIAL_CAP)


class Pieces(NamedTuple):
    """H (d, d), influence rows psi (n, d), and the objective's influence (n,)."""

    hessian: np.ndarray
    influence: np.ndarray
    value_influence: np.ndarray


def sandwich(H, infl, q):
    """(H, V, tr H^{-1}, tr V) with V = H^{-1} (sum_j q_j psi_j psi_j^T) H^{-T}.

    H need not be symmetric (a Z-estimator without a potential, as the official KLDPO).
    """
    Hinv = np.linalg.inv(H)
    V = Hinv @ ((infl * q[:, None]).T @ infl) @ Hinv.T
    V = 0.5 * (V + V.T)
    return H, V, float(np.trace(Hinv)), float(np.trace(V))


def _atoms(pop, w, beta):
    """margins m, losses l, sigma(m)sigma(-m), per-atom gradients g (n, d), s beta x (n, d)."""
    m = margins(w, pop, beta=beta)
    l, d1, d2 = dpo_margin_terms(m)
    sbx = (pop.sign * beta)[:, None] * pop.x
    return m, l, d2, d1[:, None] * sbx, sbx


def _gram(sbx, c):
    return (sbx * c[:, None]).T @ sbx


def _nonzero(w, what):
    nw = float(np.linalg.norm(w))
    if nw < KINK_NORM:
        raise ValueError(f"{what} at the kink w = 0: no local normal limit")
    return nw, w / nw


# ------------------------------------------------------------------ margin losses
def margin_pieces(loss: str):
    """The kind of a margin loss l = phi(m) of :data:`loglinear.losses.LOSSES` (IPO):
    H = E_q phi''(m) beta^2 x x^T, psi_j = g_j - E_q g."""
    spec = LOSSES.get(loss)
    if not isinstance(spec, MarginLoss):
        raise ValueError(f"loss {loss!r} is not a margin loss")

    def pieces(pop: PreferenceData, w, *, beta: float) -> Pieces:
        q, m = pop.weight, margins(w, pop, beta=beta)
        sbx = (pop.sign * beta)[:, None] * pop.x
        g = spec.dphi(m, beta)[:, None] * sbx
        phi = spec.phi(m, beta)
        return Pieces(_gram(sbx, q * spec.d2phi(m, beta)), g - q @ g, phi - q @ phi)

    return pieces


# ----------------------------------------------------------- W1, finite kappa
def w1flip_pieces(pop: PreferenceData, w, *, beta: float, radius: float, kappa: float
                  ) -> Pieces:
    r"""W1 with label-flip cost kappa (docs/theory.md §3.4, §5.8), where V is smooth.

    With lambda* = max(b, m_(k)/kappa) (b = beta ||w||): on a finite support the flipped
    set S and the quantile atom k are locally constant, so V = sum_i q_i f_i with
      quantile regime (lambda* > b): f_i = l_i + 1_S (m_i - m_k) + (eps/kappa) m_k,
      bound regime (lambda* = b): f_i = l_i + 1_S (m_i - kappa b) + eps b,
    and H = E_q H_i (+ (eps - kappa q(S)) beta (I - u u^T)/||w|| in the bound regime),
    psi_j = grad f_j - E_q grad f. Raises ValueError where two atoms tie at the hinge or
    the budget eps/kappa falls on a jump of the margins' distribution (a kink of V).
    """
    eps = float(radius)
    nw, u = _nonzero(w, "w1 (finite kappa) optimum")
    m, l, c, g, sbx = _atoms(pop, w, beta)
    q = pop.weight
    b = beta * nw
    tol = TIE_RTOL * max(1.0, float(np.abs(m).max()))
    pos = np.flatnonzero(q > 0)
    order = pos[np.argsort(-m[pos], kind="stable")]
    cum = np.cumsum(q[order])
    k = int(np.searchsorted(cum, eps / kappa, side="left"))
    lam_q = m[order[k]] / kappa if k < order.size else -np.inf
    H = _gram(sbx, q * c)
    if lam_q * kappa > b * kappa + tol:
        j = order[k]
        tied = (q > 0) & (np.abs(m - m[j]) <= tol)
        same = np.all(pop.z[tied] == pop.z[j]) and np.all(
            pop.sign[tied] * pop.offset[tied] == pop.sign[j] * pop.offset[j])
        flipped = (q > 0) & (m > m[j] + tol)
        q_s, q_k = float(q[flipped].sum()), float(q[tied].sum())
        if not same or not q_s < eps / kappa * (1 - TIE_RTOL) < (q_s + q_k) * (1 - TIE_RTOL):
            raise ValueError("w1 (finite kappa) optimum on a kink: atoms tie at the flip "
                             "threshold lambda* kappa, so V is not smooth there")
        grad = g + flipped[:, None] * (sbx - sbx[j]) + (eps / kappa) * sbx[j]
        f = l + flipped * (m - m[j]) + (eps / kappa) * m[j]
    elif lam_q * kappa < b * kappa - tol:
        if np.any((q > 0) & (np.abs(m - kappa * b) <= tol)):
            raise ValueError("w1 (finite kappa) optimum on a kink: an atom's margin equals "
                             "kappa beta ||w||")
        flipped = (q > 0) & (m > kappa * b)
        H = H + (eps - kappa * float(q[flipped].sum())) * beta * (
            np.eye(pop.d) - np.outer(u, u)) / nw
        grad = g + flipped[:, None] * (sbx - kappa * beta * u) + eps * beta * u
        f = l + flipped * (m - kappa * b) + eps * b
    else:
        raise ValueError("w1 (finite kappa) optimum on a kink: the flip multiplier sits "
                         "where lambda* = beta ||w|| meets the margins' quantile")
    return Pieces(H, grad - q @ grad, f - q @ f)


# ------------------------------------------------------------------------- W2
def _root(g, dg, lo, hi):
    """Roots of elementwise decreasing g on [lo, hi] with g(lo) >= 0 >= g(hi): Newton,
    with bisection wherever a step leaves the shrinking bracket."""
    t = 0.5 * (lo + hi)
    for _ in range(MAX_STEPS):
        gt = g(t)
        up = gt > 0
        lo, hi = np.where(up, t, lo), np.where(up, hi, t)
        with np.errstate(divide="ignore", invalid="ignore"):
            new = t - gt / dg(t)
        new = np.where((new >= lo) & (new <= hi), new, 0.5 * (lo + hi))
        done = np.all(np.abs(new - t) <= 4e-16 * np.maximum(1.0, hi))
        t = new
        if done:
            break
    return t


def w2_maximisers(u, b: float, eta: float):
    r"""Per atom, the maximiser t of f(t) = softplus(u + b t) - eta t^2 on t >= 0 and the
    gap f(t) - (the other local maximum) (inf where there is one maximum).

    The slope g(t) = b sigma(u + bt) - 2 eta t decreases where b^2 sigma(1-sigma) < 2 eta:
    everywhere when 2 eta >= b^2/4, else outside [t1, t2] (docs/theory.md §3.5). Each
    decreasing piece holding a sign change is solved by safeguarded Newton; the larger
    local maximum wins.
    """
    u = np.asarray(u, float)
    T = b / (2.0 * eta)
    g = lambda t: b * expit(u + b * t) - 2.0 * eta * t
    dg = lambda t: b * b * expit(u + b * t) * expit(-u - b * t) - 2.0 * eta
    f = lambda t: np.logaddexp(0.0, u + b * t) - eta * t * t
    zero, top = np.zeros_like(u), np.full_like(u, T)
    c = 2.0 * eta / (b * b)
    if c >= 0.25:
        t = _root(g, dg, zero, top)
        return t, np.full_like(u, np.inf)
    sp = 0.5 * (1.0 + np.sqrt(1.0 - 4.0 * c))
    vm = np.log(c / sp) - np.log(sp)
    t1, t2 = (vm - u) / b, (-vm - u) / b
    end_a, start_c = np.minimum(np.maximum(t1, 0.0), T), np.clip(t2, 0.0, T)
    has_a = (t1 > 0) & (g(end_a) <= 0)
    has_c = (t2 < T) & (g(start_c) >= 0)
    ta = _root(g, dg, zero, np.where(has_a, end_a, top))
    tc = _root(g, dg, np.where(has_c, start_c, zero), top)
    fa, fc = np.where(has_a, f(ta), -np.inf), np.where(has_c, f(tc), -np.inf)
    pick = fa >= fc
    return np.where(pick, ta, tc), np.abs(fa - fc)


def w2_multiplier(pop: PreferenceData, w, *, beta: float, radius: float):
    """(eta*, t): the W2 dual multiplier at w, the root of sum q t(eta)^2 = eps^2, and the
    maximisers. Raises ValueError where eta* sits at a jump of t(eta) or an atom's two
    maxima tie (a kink of V, docs/theory.md §3.5)."""
    eps, q = float(radius), pop.weight
    if not eps > 0:
        raise ValueError(f"w2 needs a radius > 0 (radius 0 is DPO), got {radius}")
    nw, _ = _nonzero(w, "w2 optimum")
    u, b = -margins(w, pop, beta=beta), beta * nw
    spent = lambda log_eta: float(q @ w2_maximisers(u, b, np.exp(log_eta))[0] ** 2) - eps**2
    guess = np.log(max(b * np.sqrt(float(q @ expit(u) ** 2)) / (2.0 * eps), 1e-300))
    lo = hi = guess
    f_lo = f_hi = spent(guess)
    for _ in range(300):      # log eta moves by 2 per step: far beyond any finite root
        if f_lo >= 0 >= f_hi:
            break
        if f_lo < 0:
            lo -= 2.0
            f_lo = spent(lo)
        else:
            hi += 2.0
            f_hi = spent(hi)
    else:
        raise ValueError("w2 multiplier: no bracket for sum q t^2 = eps^2")
    log_eta = brentq(spent, lo, hi, xtol=1e-15, rtol=1e-15) if lo < hi else lo
    eta = float(np.exp(log_eta))
    t, gap = w2_maximisers(u, b, eta)
    live = q > 0
    if abs(float(q @ t**2) - eps**2) > BUDGET_RTOL * eps**2 or np.any(
            gap[live] <= TIE_RTOL * np.maximum(1.0, np.abs(u[live]))):
        raise ValueError("w2 optimum on a kink: the worst case splits tied atoms between "
                         "their two maximisers, so V is not smooth there")
    return eta, t


def w2_joint(pop: PreferenceData, w, eta: float, t, *, beta: float, radius: float):
    r"""Per-atom gradients (n, d + 1) and the Hessian (d + 1, d + 1) of
    Phi(w, eta) = eta eps^2 + sum_i q_i phi(u_i, beta ||w||, eta) at the maximisers t
    (implicit function theorem: phi_xy = f_xy - f_xt f_yt / f_tt; docs/theory.md §5.8)."""
    q, d = pop.weight, pop.d
    nw, e = _nonzero(w, "w2 point")
    u, b = -margins(w, pop, beta=beta), beta * nw
    a = -(pop.sign * beta)[:, None] * pop.x            # grad_w u_i
    s = expit(u + b * t)
    s1 = s * (1.0 - s)
    ftt = np.minimum(b * b * s1 - 2.0 * eta, -1e-300)
    fu, fb, fe = b * s1, s + b * t * s1, -2.0 * t      # f_{t u}, f_{t b}, f_{t eta}
    p_uu, p_ub, p_bb = s1 - fu * fu / ftt, t * s1 - fu * fb / ftt, t * t * s1 - fb * fb / ftt
    p_ue, p_be, p_ee = -fu * fe / ftt, -fb * fe / ftt, -fe * fe / ftt
    grads = np.column_stack([s[:, None] * a + (beta * t * s)[:, None] * e,
                             radius**2 - t * t])
    v = a.T @ (q * p_ub)
    H = np.empty((d + 1, d + 1))
    H[:d, :d] = (_gram(a, q * p_uu) + beta * (np.outer(v, e) + np.outer(e, v))
                 + beta**2 * float(q @ p_bb) * np.outer(e, e)
                 + beta * float(q @ (t * s)) * (np.eye(d) - np.outer(e, e)) / nw)
    H[:d, d] = H[d, :d] = a.T @ (q * p_ue) + beta * float(q @ p_be) * e
    H[d, d] = float(q @ p_ee)
    return grads, H


def w2_pieces(pop: PreferenceData, w, *, beta: float, radius: float) -> Pieces:
    r"""W2 (docs/theory.md §3.5, §5.8): the joint M-estimator in z = (w, eta) with
    eta profiled out, as the KL kind profiles lambda:
    H = H_ww - h h^T / H_ee, psi_j = psi_w,j - h psi_eta,j / H_ee (h = H_w eta)."""
    w = np.asarray(w, float)
    eta, t = w2_multiplier(pop, w, beta=beta, radius=radius)
    grads, J = w2_joint(pop, w, eta, t, beta=beta, radius=radius)
    q, d = pop.weight, pop.d
    psi = grads - q @ grads
    h, hee = J[:d, d], J[d, d]
    u, b = -margins(w, pop, beta=beta), beta * float(np.linalg.norm(w))
    phi = np.logaddexp(0.0, u + b * t) - eta * t * t
    return Pieces(J[:d, :d] - np.outer(h, h) / hee, psi[:, :d] - np.outer(psi[:, d], h) / hee,
                  phi - q @ phi)


# -------------------------------------------------------------------------- KL
def kl_joint(pop: PreferenceData, w, lam: float, *, beta: float, radius: float):
    r"""Value, gradient (d + 1,) and Hessian (d + 1, d + 1) of the KL dual
    G(w, lambda) = lambda rho + lambda log E_q e^{l/lambda} (docs/theory.md §3.1):
    G_ww = E_p H_i + Cov_p(g)/lambda, G_w lambda = -Cov_p(g, l)/lambda^2,
    G_lambda lambda = Var_p(l)/lambda^3, with p_i = q_i e^{l_i/lambda}/Z."""
    q, d = pop.weight, pop.d
    m, l, c, g, sbx = _atoms(pop, np.asarray(w, float), beta)
    live = q > 0
    logz = float(logsumexp(l[live] / lam, b=q[live]))
    p = np.where(live, q * np.exp(np.minimum(l / lam - logz, 700.0)), 0.0)
    gbar, lbar = p @ g, float(p @ l)
    gc, lc = g - gbar, l - lbar
    H = np.empty((d + 1, d + 1))
    H[:d, :d] = _gram(sbx, p * c) + (gc * p[:, None]).T @ gc / lam
    H[:d, d] = H[d, :d] = -(gc * (p * lc)[:, None]).sum(0) / lam**2
    H[d, d] = float(p @ lc**2) / lam**3
    grad = np.append(gbar, radius + logz - lbar / lam)
    return lam * radius + lam * logz, grad, H


# ------------------------------------------------------------ official surrogates
def wdpo_official_pieces(pop: PreferenceData, w, *, beta: float, rho: float) -> Pieces:
    r"""Official WDPO, the mean of f_i = l_i + rho beta^2 a_i^2 ||w||^2 (a = sigma(-m),
    docs/theory.md §4.1): an M-estimator with per-atom Hessians
    H_i + rho beta^2 (2 a_i^2 I + 2 w v_i^T + 2 v_i w^T + ||w||^2 v'_i), v_i = grad a_i^2."""
    w = np.asarray(w, float)
    q, d = pop.weight, pop.d
    m, l, c, g, sbx = _atoms(pop, w, beta)
    a = expit(-m)
    nn = float(w @ w)
    v = (-2.0 * a**2 * (1.0 - a))[:, None] * sbx                 # grad a_i^2
    grad = g + rho * beta**2 * (2.0 * a[:, None] ** 2 * w + nn * v)
    vbar = q @ v
    H = (_gram(sbx, q * c) + rho * beta**2 * (
        2.0 * float(q @ a**2) * np.eye(d) + 2.0 * np.outer(w, vbar) + 2.0 * np.outer(vbar, w)
        + nn * _gram(sbx, q * 2.0 * a**2 * (1.0 - a) * (2.0 - 3.0 * a))))
    f = l + rho * beta**2 * a**2 * nn
    return Pieces(H, grad - q @ grad, f - q @ f)


def kldpo_official_pieces(pop: PreferenceData, w, *, beta: float, tau: float,
                          cap: float = OFFICIAL_CAP) -> Pieces:
    r"""Official KLDPO, the root of G = sum_i q_i c_i g_i with c_i = min(e^{(l_i - lbar)/tau},
    cap), lbar = E_q l (docs/theory.md §4.2): a Z-estimator without a potential,
    H = sum_i W_i H_i + sum_{uncapped} W_i g_i (g_i - E_q g)^T / tau (not symmetric),
    psi_j = c_j g_j - G - (l_j - lbar)/tau sum_{uncapped} W_i g_i. It has no objective
    value to put an interval on (the value influence is NaN)."""
    q = pop.weight
    m, l, c2, g, sbx = _atoms(pop, np.asarray(w, float), beta)
    lbar = float(q @ l)
    raw = np.exp(np.minimum((l - lbar) / tau, 700.0))
    c = np.minimum(raw, cap)
    free = raw < cap
    W = q * c
    G = W @ g
    H = _gram(sbx, W * c2) + ((W * free)[:, None] * g).T @ (g - q @ g) / tau
    infl = c[:, None] * g - G - np.outer((l - lbar) / tau, (W * free) @ g)
    return Pieces(H, infl, np.full(pop.n, np.nan))


# ------------------------------------------- objective influences of the §5.6 kinds
def dpo_value(pop: PreferenceData, w, *, beta: float) -> np.ndarray:
    """l_j - E_q l: the influence of the DPO loss (and of W1's, whose penalty is fixed)."""
    l = _atoms(pop, np.asarray(w, float), beta)[1]
    return l - pop.weight @ l


def tilted_value(pop: PreferenceData, w, *, beta: float, lam: float) -> np.ndarray:
    """lambda (r_j - 1), r_j = e^{l_j/lambda} / E_q e^{l/lambda}: the influence of
    lambda log E_q e^{l/lambda} (KL at lambda = lambda*, KLDPO at lambda = tau)."""
    q, l = pop.weight, _atoms(pop, np.asarray(w, float), beta)[1]
    logz = float(logsumexp(l[q > 0] / lam, b=q[q > 0]))
    return lam * (np.exp(np.minimum(l / lam - logz, 700.0)) - 1.0)


def wdpo_value(pop: PreferenceData, w, *, beta: float, rho: float) -> np.ndarray:
    """(l_j - L) + rho beta ||w|| (a_j^2 - S^2) / (2 S), S^2 = E_q a^2, a = sigma(-m): the
    influence of the paper-form WDPO objective L + rho beta ||w|| S."""
    m, l = _atoms(pop, np.asarray(w, float), beta)[:2]
    a2, q = expit(-m) ** 2, pop.weight
    s2 = float(q @ a2)
    return (l - q @ l) + rho * beta * float(np.linalg.norm(w)) * (a2 - s2) / (2 * np.sqrt(s2))


# ----------------------------------------------------------------- registration
KINDS = {
    "ipo": (margin_pieces("ipo"), None),
    "w2": (w2_pieces, "radius"),
    "wdpo-official": (wdpo_official_pieces, "rho"),
    "kldpo-official": (kldpo_official_pieces, "tau"),
}
"""The kinds added to :data:`loglinear.estimation.LOCAL_KINDS`: name -> (pieces, the name
of the one hyperparameter). W1 with finite kappa takes two (radius, kappa) and is reached
through :func:`w1flip_pieces` (:mod:`loglinear.inference` does)."""


def register(table, kind_cls, asymptotics_cls) -> None:
    """Add :data:`KINDS` to ``table`` as ``kind_cls(name, compute, hyperparameter)``, each
    ``compute`` returning ``asymptotics_cls(H, V, tr H^{-1}, tr V)``."""

    def wrap(pieces):
        def compute(pop, w, **hyper):
            p = pieces(pop, np.asarray(w, float), **hyper)
            return asymptotics_cls(*sandwich(p.hessian, p.influence, pop.weight))

        return compute

    for name, (pieces, hyper) in KINDS.items():
        table.register(name, kind_cls(name, wrap(pieces), hyper))
