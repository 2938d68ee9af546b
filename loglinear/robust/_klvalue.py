r"""The exact KL worst case at a fixed theta: the dual value, its multiplier and
derivatives (docs/theory.md §3.1).

For a KL ball of radius rho around the weighted data q:

.. math::
    V(\theta) = \sup_{KL(P\|q)\le\rho} E_P\, l(\theta)
              = \inf_{\lambda > 0}\ \lambda\rho + \lambda \log \sum_i q_i e^{l_i/\lambda},

with worst case p_i \propto q_i e^{l_i/\lambda^*}, where KL(p_{\lambda^*}\|q) = \rho.
Writing s = 1/lambda, KL(p_s || q) increases from 0 (s = 0) to -log q(M) (s -> inf),
with M the argmax set of the losses; at or beyond that radius lambda* = 0 and
V = max_i l_i (the worst case is q restricted to M): the edge case of §3.1.

The Hessian is the Schur complement of the jointly convex g(theta, lambda):

.. math::
    \nabla^2 V = \sum_i p_i \nabla^2 l_i
      + s\,[\mathrm{Cov}_p(\nabla l) - c c^\top / \mathrm{Var}_p(l)],
    \quad c = \mathrm{Cov}_p(\nabla l, l).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import PreferenceData
from ..losses import margins, sigmoid, softplus
from ._base import RobustSolverError, check_problem, check_theta, weighted_gram

TIE_RTOL = 1e-13        # losses this close to the maximum count as maximal
ROOT_RTOL = 1e-14       # |KL(p_s||q) - rho| <= ROOT_RTOL max(1, rho) ends the lambda root


@dataclass(frozen=True)
class KLValue:
    """The exact KL worst case at a fixed theta.

    Attributes:
        value: sup over the ball of E_P l (the dual value at lambda*).
        dual: lambda* (0 in the degenerate regime, inf at radius 0).
        grad: (d,) the Danskin gradient sum_i p_i grad l_i (a subgradient where V kinks).
        weights: (n,) the worst case p.
        losses: (n,) the per-pair losses at theta.
        primal: sum_i p_i l_i (equals ``value`` up to the root tolerance).
        divergence: KL(p || q).
        degenerate: True when lambda* = 0 (all mass on the largest losses).
        hess: (d, d) the Schur-complement Hessian (None unless requested).
        excess: ``value`` minus the loss at the kink the solver evaluates around
            (``value`` itself when no kink is given); carried to full relative precision
            near the collapse radius, where ``value`` sits within rounding of log 2.
    """

    value: float
    dual: float
    grad: np.ndarray
    weights: np.ndarray
    losses: np.ndarray
    primal: float
    divergence: float
    degenerate: bool
    hess: np.ndarray | None = None
    excess: float | None = None


def shifted_losses(m, m_kink: float = 0.0) -> np.ndarray:
    r"""l(m) - l(m_k) for the DPO loss l = softplus(-m), without cancellation.

    .. math::  l(m) - l(m_k) = \log\!\big(1 + \sigma(-m_k)\,(e^{-(m - m_k)} - 1)\big),

    evaluated with ``log1p``/``expm1`` where |m - m_k| <= 1 (elsewhere the plain
    difference has no cancellation). Near the KL collapse radius every margin is tiny and
    every loss is within rounding of log 2; these differences keep full relative precision,
    so the dual value is resolved at any distance from the kink (docs/theory.md §3.2).
    """
    m = np.asarray(m, dtype=np.float64)
    dm = m - m_kink
    out = softplus(-m) - float(softplus(-np.float64(m_kink)))
    near = np.abs(dm) <= 1.0
    out[near] = np.log1p(float(sigmoid(-np.float64(m_kink))) * np.expm1(-dm[near]))
    return out


def _kl_of(s, d, q):
    """KL(p_s||q), sum p d, log sum q e^{s d}, p, for d = l - max l <= 0.

    For small s (large lambda, small radii) log Z = s c + log1p(sum q expm1(s (d - c)))
    with c = sum q d: log of a sum near one would carry an absolute error ~1e-16, which
    the value lambda (rho + log Z) magnifies by lambda.
    """
    c = float(q @ d)
    e = s * (d - c)
    if float(np.max(np.abs(e))) <= 1.0:
        em = np.expm1(e)
        tot = float(q @ em)
        p = q * (1.0 + em) / (1.0 + tot)
        logz = s * c + float(np.log1p(tot))
    else:
        w = q * np.exp(s * d)
        zsum = w.sum()
        p = w / zsum
        logz = float(np.log(zsum))
    dbar = float(p @ d)
    return s * dbar - logz, dbar, logz, p


def _profile(losses, q, rho, s0=None, scale=None):
    """Solve KL(p_s || q) = rho for s = 1/lambda (docs/theory.md §3.1, the multiplier and
    the edge case). Returns (s, p, value, kl, degenerate). ``scale`` is the size of the
    losses' rounding unit (max(1, |max l|) for plain losses; the largest |l| for losses
    shifted by the kink loss, which carry relative precision)."""
    pos = q > 0
    lmax = float(losses[pos].max())
    if rho == 0:
        return 0.0, q.copy(), float(q @ losses), 0.0, False
    if scale is None:
        scale = max(1.0, abs(lmax))
    tie = pos & (losses >= lmax - TIE_RTOL * scale)
    qm = float(q[tie].sum())
    rho_m = -np.log(qm) if qm < 1 else 0.0
    if rho >= rho_m:
        p = np.where(tie, q, 0.0) / qm
        return np.inf, p, lmax, rho_m, True
    d = np.where(pos, losses - lmax, 0.0)
    target = rho * (1 + 0.0)
    # F(s) = KL(p_s) - rho is increasing with F'(s) = s Var_p(l); bracket then safeguarded Newton.
    lo, hi = 0.0, np.inf
    if s0 is None or not np.isfinite(s0) or s0 <= 0:
        var = float(q @ (d - q @ d) ** 2)
        s0 = np.sqrt(2 * rho / max(var, 1e-300))
    s = s0
    tol = ROOT_RTOL * max(1.0, rho)
    for _ in range(200):
        kl, dbar, logz, p = _kl_of(s, d, q)
        f = kl - target
        if abs(f) <= tol:
            break
        if f > 0:
            hi = s
        else:
            lo = s
        var = float(p @ (d - dbar) ** 2)
        step_ok = False
        if var > 0:
            s_new = s - f / (s * var)
            if lo < s_new < hi and np.isfinite(s_new):
                s, step_ok = s_new, True
        if not step_ok:
            s = 2.0 * s if not np.isfinite(hi) else (0.5 * (lo + hi) if lo == 0 else
                                                      np.sqrt(lo) * np.sqrt(hi))
        if np.isfinite(hi) and hi - lo <= 4 * np.finfo(float).eps * hi:
            kl, dbar, logz, p = _kl_of(s, d, q)
            break
    else:
        raise RobustSolverError(f"KL dual root did not converge (rho={rho}, s={s})")
    value = lmax + (rho + logz) / s
    return s, p, value, kl, False


def kl_value(theta, data: PreferenceData, *, beta: float, radius: float,
             hessian: bool = False, _s0: float | None = None) -> KLValue:
    r"""The exact worst-case DPO loss over the KL ball at a fixed theta (docs/theory.md §3.1).

    .. math::  V(\theta) = \inf_{\lambda>0} \lambda\rho + \lambda\log\sum_i q_i e^{l_i/\lambda}

    Args:
        theta: (d,) parameter (of the data's parameterisation).
        data: weighted preference data q.
        beta: DPO temperature.
        radius: rho >= 0.
        hessian: also return the Schur-complement Hessian (smooth regime).

    Returns:
        :class:`KLValue` with the value, lambda*, the Danskin gradient and the worst case.
    """
    beta, rho = check_problem(data, beta, radius, None, "x", {"x"})
    theta = check_theta(theta, data.d)
    return _evaluate(margins(theta, data, beta=beta), data, beta, rho, hessian, _s0)


def _evaluate(m, data, beta, rho, hessian, s0=None, m_kink=None) -> KLValue:
    """:func:`kl_value` from the margins m (n,); ``s0`` warm-starts the root in s = 1/lambda.

    With ``m_kink`` (the common margin at the collapse kink, 0 for zero offsets) the dual is
    solved on the losses shifted by l(m_kink), computed by :func:`shifted_losses`; the value
    is the same, and ``excess`` carries the part above l(m_kink) at full precision.
    """
    losses = softplus(-m)
    q = data.weight
    if m_kink is None:
        lt = losses
        s, p, value, kl, degenerate = _profile(lt, q, rho, s0)
        excess = value
    else:
        lt = shifted_losses(m, m_kink)
        s, p, excess, kl, degenerate = _profile(lt, q, rho, s0,
                                                 max(float(np.abs(lt).max()), 1e-300))
        value = float(softplus(-np.float64(m_kink))) + excess
    g = -sigmoid(-m) * data.sign * beta          # dl_i/dm-chain: grad l_i = g_i x_i
    grad = data.x.T @ (p * g)
    hess = None
    if hessian:
        # sum p d2 beta^2 x x' + s Cov_p(grad l) - s c c'/Var_p(l), with one weighted Gram.
        w = p * sigmoid(m) * sigmoid(-m) * beta**2
        smooth = not degenerate and s > 0
        if smooth:
            w = w + s * p * g * g
        hess = weighted_gram(data.x, w)
        if smooth:
            dl = lt - float(p @ lt)    # a shift leaves the variance alone; lt keeps digits
            var = float(p @ dl**2)
            hess -= s * np.outer(grad, grad)
            if var > 0:
                c = data.x.T @ (p * g * dl)
                hess -= (s / var) * np.outer(c, c)
    lam = np.inf if rho == 0 else (0.0 if degenerate else 1.0 / s)
    return KLValue(float(value), float(lam), grad, p, losses, float(p @ losses), float(kl),
                   bool(degenerate), hess, float(excess))
