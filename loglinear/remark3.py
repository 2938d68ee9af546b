r"""Remark 3 answered as predictions: the rates of the robust estimators under a radius
schedule, their bias, and the schedule at which a certificate is kept (docs/theory.md §8).

At a fixed radius inside the non-collapsed regime every exact estimator is a smooth
M-estimator of its own target theta(rho) and converges to it at n^-1/2 (§8.1). Against the
DPO optimum theta* the error is bias plus noise (§8.3): with the robustness parameter
shrinking like n^-a the bias is ||theta(rho_n) - theta*|| ~ ||B|| rho_n^gamma, with
gamma = 1/2 for KL (the variance expansion L + sqrt(2 rho Var l)) and gamma = 1 for the
Wasserstein balls and WDPO (L + eps x penalty), so

.. math::  \text{exponent against }\theta^\star = -\min(\tfrac12,\ \gamma a),\qquad
           \text{exponent against }\theta(\rho_n) = -\tfrac12 .

:data:`RATES` holds each estimator's gamma and the schedule exponents that keep the
pointwise certificate and the truth inside the ball (§8.4); :func:`bias_slope` computes
B on an exact population. For KLDPO the parameter that shrinks is 1/tau.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import PreferenceData, require_data
from .losses import dpo_margin_terms, margins
from .registry import Registry

AGAINST = ("theta_star", "target")
TIE_RTOL = 1e-9    # two margins (or a margin and the norm term) this close are a kink


@dataclass(frozen=True)
class RatePrediction:
    """The rate predictions of one estimator (docs/theory.md §8.3-§8.4).

    Attributes:
        name: the estimator (``kl``, ``w1``, ``w1flip``, ``w2``, ``wdpo``, ``kldpo``).
        hyperparameter: what shrinks like n^-a: ``radius`` (rho or eps), ``rho`` (the WDPO
            weight) or ``inverse_tau`` (1/tau).
        gamma: the bias order, ||theta(r) - theta*|| ~ ||B|| r^gamma as r -> 0.
        certificate: a_c, the schedule exponent at which the pointwise certificate
            V_n(theta) >= L(theta) keeps a probability strictly between 1/2 and 1: it tends
            to 1 for a < a_c and to 1/2 for a > a_c.
        containment: the exponent at which the population stays in the ball with a fixed
            probability (finite support); NaN where it never does (labels never move).
        doc: one line.
    """

    name: str
    hyperparameter: str
    gamma: float
    certificate: float
    containment: float
    doc: str


RATES: Registry[RatePrediction] = Registry("estimator with a rate prediction", {
    "kl": RatePrediction("kl", "radius", 0.5, 1.0, 1.0,
                         "KL ball: L + sqrt(2 rho Var l) + O(rho)"),
    "w1": RatePrediction("w1", "radius", 1.0, 0.5, np.nan,
                         "W1, kappa = inf: L + eps beta ||theta|| exactly"),
    "w1flip": RatePrediction("w1flip", "radius", 1.0, 0.5, 0.5,
                             "W1, finite kappa: L + eps max(beta ||theta||, max_i m_i / kappa)"),
    "w2": RatePrediction("w2", "radius", 1.0, 0.5, np.nan,
                         "W2, kappa = inf: L + eps G + O(eps^2)"),
    "wdpo": RatePrediction("wdpo", "rho", 1.0, 0.5, np.nan, "WDPO (paper form): L + rho G"),
    "kldpo": RatePrediction("kldpo", "inverse_tau", 1.0, 0.5, 0.5,
                            "KLDPO: L + Var(l) / (2 tau) + O(tau^-2)"),
})


def bias_order(ball: str) -> float:
    r"""gamma in ||theta(r) - theta*|| ~ ||B|| r^gamma (docs/theory.md §8.3): 1/2 for KL
    (Duchi, Glynn & Namkoong's variance expansion), 1 for W1, W1 with flips, W2, WDPO and
    KLDPO (in 1/tau)."""
    return RATES.get(ball).gamma


def certificate_exponent(ball: str) -> float:
    """a_c: radii shrinking like n^-a keep the pointwise certificate with probability
    tending to 1 for a < a_c and lose it (probability 1/2) for a > a_c (docs/theory.md
    §8.4): 1 for KL (rho ~ 1/n), 1/2 for the Wasserstein balls and WDPO (eps ~ n^-1/2)."""
    return RATES.get(ball).certificate


def _schedule(a) -> float:
    try:
        a = float(a)
    except (TypeError, ValueError):
        raise TypeError(f"a must be a number, got {type(a).__name__}") from None
    if not (np.isfinite(a) and a >= 0):
        raise ValueError(f"a (the schedule exponent of rho_n = c n^-a) must be a finite "
                         f"number >= 0, got {a}")
    return a


def predicted_exponent(ball: str, a: float, *, against: str) -> float:
    r"""The predicted slope of log error against log n under the schedule r_n = c n^-a
    (docs/theory.md §8.3), inside the non-collapsed regime:

    .. math::  \text{against}=\texttt{"theta\_star"}:\ -\min(\tfrac12,\gamma a),\qquad
               \text{against}=\texttt{"target"}:\ -\tfrac12,

    with gamma = :func:`bias_order` (ball). a = 0 is a fixed radius: its bias does not
    shrink (exponent 0 against theta*) while the error to its own target theta(rho) shrinks
    at n^-1/2. KL: -min(1/2, a/2), so n^-1/2 needs a >= 1; the Wasserstein balls:
    -min(1/2, a), so a >= 1/2.
    """
    gamma = bias_order(ball)
    a = _schedule(a)
    if against not in AGAINST:
        raise ValueError(f"against must be one of {AGAINST}, got {against!r}")
    if against == "target":
        return -0.5
    return -min(0.5, gamma * a)


def certificate_limit(ball: str, a: float) -> float:
    """The limit, as n -> oo, of the probability that the robust objective at theta-hat is
    at least the population risk there, under r_n = c n^-a (docs/theory.md §8.4): 1 for
    a < a_c, 1/2 for a > a_c, NaN at a = a_c (a level in (1/2, 1) set by c)."""
    a_c, a = certificate_exponent(ball), _schedule(a)
    return 1.0 if a < a_c else 0.5 if a > a_c else np.nan


# ------------------------------------------------------------------ the bias slope
def _population_pieces(pop, theta, beta):
    """Per-atom losses l, gradients g (n, d), a = sigma(-m), sigma sigma', z = s beta x;
    the population Hessian H = E_q sigma sigma' z z^T."""
    m = margins(theta, pop, beta=beta)
    l, d1, d2 = dpo_margin_terms(m)
    z = (pop.sign * beta)[:, None] * pop.x
    q = pop.weight
    H = (z * (q * d2)[:, None]).T @ z
    return m, l, d1[:, None] * z, -d1, d2, z, 0.5 * (H + H.T)


def _nonzero(theta):
    norm = float(np.linalg.norm(theta))
    if norm == 0.0:
        raise ValueError("theta* = 0 sits on the Wasserstein kink: there is no bias slope")
    return norm


def _slope_kl(pop, theta, beta, kappa):
    m, l, g, a, c, z, H = _population_pieces(pop, theta, beta)
    q = pop.weight
    lc = l - q @ l
    var = float(q @ lc**2)
    if not var > 0:
        raise ValueError("Var_q(l) = 0 at theta*: the KL variance expansion is degenerate")
    cov = (g - q @ g).T @ (q * lc)
    return H, np.sqrt(2.0) * cov / np.sqrt(var)


def _slope_kldpo(pop, theta, beta, kappa):
    m, l, g, a, c, z, H = _population_pieces(pop, theta, beta)
    q = pop.weight
    return H, (g - q @ g).T @ (q * (l - q @ l))


def _slope_w1(pop, theta, beta, kappa):
    H = _population_pieces(pop, theta, beta)[-1]
    return H, beta * theta / _nonzero(theta)


def _slope_w1flip(pop, theta, beta, kappa):
    if not kappa > 0:
        raise ValueError(f"kappa (the label-flip cost) must be > 0, got {kappa}")
    m, l, g, a, c, z, H = _population_pieces(pop, theta, beta)
    live = pop.weight > 0
    norm_term = beta * _nonzero(theta)
    top = float(m[live].max()) / kappa
    scale = max(norm_term, abs(top))
    if abs(norm_term - top) <= TIE_RTOL * scale:
        raise ValueError("beta ||theta*|| equals max_i m_i / kappa: the penalty has a kink "
                         "at theta*, and no bias slope")
    if norm_term > top:
        return H, beta * theta / _nonzero(theta)
    tied = live & (m >= kappa * top - TIE_RTOL * scale * kappa)
    zt = z[tied]
    if np.ptp(zt, axis=0).max(initial=0.0) > TIE_RTOL * max(1.0, np.abs(zt).max()):
        raise ValueError("several atoms of different z share the largest margin: the "
                         "penalty has a kink at theta*, and no bias slope")
    return H, zt[0] / kappa


def _slope_w2(pop, theta, beta, kappa):
    m, l, g, a, c, z, H = _population_pieces(pop, theta, beta)
    q = pop.weight
    norm = _nonzero(theta)
    R = float(np.sqrt(q @ a**2))
    grad_R = -((q * a * c) @ z) / R                    # grad a_i = -sigma sigma' z_i
    return H, beta * (theta / norm * R + norm * grad_R)


_SLOPES = {"kl": _slope_kl, "kldpo": _slope_kldpo, "w1": _slope_w1,
           "w1flip": _slope_w1flip, "w2": _slope_w2, "wdpo": _slope_w2}


def bias_slope(ball: str, population: PreferenceData, theta_star, *, beta: float,
               kappa: float = np.inf) -> np.ndarray:
    r"""B in theta(r) = theta* + B r^gamma + o(r^gamma) as r -> 0 (docs/theory.md §8.3),
    with H the population DPO Hessian at theta* and g_i, l_i the per-atom gradients and
    losses there:

    * ``kl`` (gamma = 1/2): :math:`B=-\sqrt2\,H^{-1}\mathrm{Cov}_q(g,l)/\mathrm{sd}_q(l)`;
    * ``kldpo`` (in 1/tau): :math:`B=-H^{-1}\mathrm{Cov}_q(g,l)`;
    * ``w1``: :math:`B=-\beta H^{-1}\theta^\star/\|\theta^\star\|`;
    * ``w1flip``: :math:`B=-H^{-1}\nabla\max(\beta\|\theta\|,\max_i m_i/\kappa)`;
    * ``w2`` and ``wdpo``: :math:`B=-H^{-1}\nabla G(\theta^\star)`,
      :math:`G=\beta\|\theta\|(\sum_iq_i\sigma(-m_i)^2)^{1/2}` (docs/theory.md §4.1).

    Args:
        ball: a name of :data:`RATES`.
        population: the exact population, in the parameterisation the ball acts on (centred
            data for the Wasserstein balls: docs/theory.md §2.3).
        theta_star: (d,) its DPO optimum.
        beta: the DPO temperature.
        kappa: the label-flip cost (``w1flip`` only).

    Raises:
        ValueError: theta* = 0 (a Wasserstein kink), Var_q(l) = 0 (KL), a kink of the
            finite-kappa penalty at theta*, a singular H, or theta_star not the optimum.
    """
    RATES.get(ball)
    pop = require_data(population, "population")
    theta = np.asarray(theta_star, dtype=float)
    if theta.shape != (pop.d,) or not np.all(np.isfinite(theta)):
        raise ValueError(f"theta_star must be a finite vector of shape ({pop.d},)")
    if ball != "w1flip" and np.isfinite(kappa):
        raise ValueError(f"kappa applies to w1flip only, got kappa={kappa} for {ball!r}")
    H, grad_penalty = _SLOPES[ball](pop, theta, beta, kappa)
    eig = np.linalg.eigvalsh(H)
    if not eig[0] > 1e-12 * max(eig[-1], 1e-300):
        raise ValueError("the population Hessian is singular: theta* is not identified")
    _, _, g, *_ = _population_pieces(pop, theta, beta)
    stationarity = float(np.linalg.norm(pop.weight @ g))
    if stationarity > 1e-6 * max(1.0, float(np.sqrt(eig[-1]))):
        raise ValueError(f"theta_star is not the population DPO optimum (gradient norm "
                         f"{stationarity:.3g})")
    return -np.linalg.solve(H, grad_penalty)
