r"""Finite-sample error bounds for the DPO fit from local curvature (docs/theory.md §9).

The paper's bounds (:mod:`loglinear.estimation`, docs/theory.md §5.3-§5.4) divide by a
strong-convexity constant that holds on all of Theta and are loose by orders of magnitude.
These use the curvature at the fit, through the self-concordance of the logistic loss
(Bach, 2010): :func:`dpo_local_bound` from one sample (§9.2), :func:`dpo_population_bound`
in theorem form with population constants and an explicit n_0 (§9.3), and
:func:`bound_tightness` / :func:`simulate_dpo` beside the paper's Proposition 1 (§9.4).
Both bounds assume Bradley-Terry labels at theta* (a linear reward): given the features,
the labels are independent with P(y = 1 | x) = sigma(beta (x . theta* - o)).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.linalg import cholesky, solve_triangular
from scipy.optimize import brentq
from scipy.special import expit

from .data import PreferenceData, require_data
from .estimation import coverage, estimation_error, proposition1_bound
from .fit import FitResult, fit_dpo
from .inference import sample_size
from .losses import dpo_margin_terms, margins

COUNT_TOL = 1e-6        # n q_i must be this close (relative) to an integer count
SINGULAR_RTOL = 1e-12   # lambda_min(H) below this times lambda_max: H is singular
MAX_SCALE = 1e12        # the root of Phi is searched in (0, MAX_SCALE]


# ------------------------------------------------------------------ ingredients
def chi2_chernoff_quantile(dim: int, delta: float) -> float:
    r"""The root s > d of :math:`\frac d2\log\frac sd-\frac{s-d}2=\log\delta`
    (docs/theory.md §9.1).

    For a vector xi with :math:`E e^{\alpha\cdot\xi}\le e^{\|\alpha\|^2/2}` for all alpha,
    :math:`P(\|\xi\|^2>s)\le(s/d)^{d/2}e^{-(s-d)/2}` (the Chernoff bound of a chi-square
    with d degrees of freedom, which a 1-sub-Gaussian vector inherits), so
    :math:`\|\xi\|^2\le s_\delta` with probability at least 1 - delta. It lies below the
    Laurent-Massart value :math:`d+2\sqrt{d\log(1/\delta)}+2\log(1/\delta)`.
    """
    d = int(dim)
    if d < 1 or d != dim:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    t = np.log(1.0 / delta)

    def gap(s):
        return 0.5 * d * np.log(s / d) - 0.5 * (s - d) + t

    hi = d + 2.0 * np.sqrt(d * t) + 2.0 * t + 1.0
    return float(brentq(gap, d * (1.0 + 1e-12), hi, xtol=1e-12, rtol=1e-14))


def _chol_solve(H, A):
    """(L^{-1} A) with H = L L^T."""
    return solve_triangular(cholesky(H, lower=True), A, lower=True)


def _curvature(data, theta, beta):
    """Positive-weight atoms: weights q, sigma(m)sigma(-m), beta x, the gradient of the
    loss, and the margins."""
    keep = data.weight > 0
    m = margins(theta, data, beta=beta)[keep]
    _, d1, d2 = dpo_margin_terms(m)
    q = data.weight[keep]
    bx = beta * data.x[keep]
    grad = bx.T @ (q * d1 * data.sign[keep])
    return q, d2, bx, grad, m


def _gram(bx, w):
    G = (bx * w[:, None]).T @ bx
    return 0.5 * (G + G.T)


def _check_positive(H, what):
    eig = np.linalg.eigvalsh(H)
    if not eig[0] > SINGULAR_RTOL * max(eig[-1], 1e-300):
        raise ValueError(f"{what} is singular (eigenvalues {eig[0]:.3g} .. {eig[-1]:.3g}): "
                         "the data do not identify theta, and no finite bound exists")
    return float(eig[0])


def localisation(lev_scale, mass_weights, abs_margins, y):
    r"""The radius s of docs/theory.md §9.2 and the saturation level.

    For an atom of margin m at the fit, moving theta by Delta with a = |beta x . Delta|
    keeps, of its curvature, on average over the segment at least the fraction
    r(m, a) = (sigma(|m| + a) - sigma(|m|)) / (a sigma(m) sigma(-m)) (the segment moving
    away from the margin 0; r >= (1 - e^{-a}) / a, the self-concordance bound). With
    s = ||Delta||_H and a_i <= k_i s, the curvature along the segment is at least
    s^2 Psi(s), where s Psi(s) = min sum_j mu_j (sigma(|m_j| + s k_j) - sigma(|m_j|)) /
    (k_j sigma(m_j) sigma(-m_j)) over masses 0 <= mu_j <= pi_j k_j^2 (an atom's leverage)
    summing to 1: a fractional knapsack, filled greedily by the cheapest atoms. s Psi(s)
    increases in s, and s is the root of s Psi(s) = y.

    Args:
        lev_scale: (n,) k_i = ||beta x_i||_{H^{-1}}.
        mass_weights: (n,) pi_i = q_i sigma(m_i) sigma(-m_i).
        abs_margins: (n,) |m_i| at the fit.
        y: the gradient level to invert.

    Returns:
        (s, saturation): saturation = lim s Psi(s); s is inf when y >= saturation (the
        curvature left along the worst direction cannot absorb the gradient).
    """
    live = np.asarray(lev_scale, float) > 0
    k = np.asarray(lev_scale, float)[live]
    pi = np.asarray(mass_weights, float)[live]
    am = np.abs(np.asarray(abs_margins, float))[live]
    cap = pi * k * k
    if cap.sum() < 1.0 - 1e-9:
        raise ValueError(f"the leverages sum to {cap.sum():.6g} < 1: H is not the weighted "
                         "Gram matrix of these atoms")
    tail = expit(-am)                                # sigma(-|m|) = 1 - sigma(|m|)
    curv = tail * expit(am)                          # sigma(m) sigma(-m)

    def fill(cost):
        order = np.argsort(cost, kind="stable")
        cum = np.cumsum(cap[order])
        j = min(int(np.searchsorted(cum, 1.0)), cost.size - 1)
        mu = cap[order][: j + 1].copy()
        mu[-1] -= cum[j] - 1.0
        return float(mu @ cost[order][: j + 1])

    saturation = fill(1.0 / (k * expit(am)))
    if not y < saturation:
        return np.inf, saturation

    def gap(s):   # sigma(|m| + sk) - sigma(|m|), written with small numbers for precision
        return fill((tail - expit(-am - s * k)) / (k * curv)) - y

    hi = max(2.0 * y, 1e-300)
    while gap(hi) < 0:                 # s Psi(s) <= s, so the root is at least y
        hi *= 4.0
        if hi > MAX_SCALE:
            return np.inf, saturation
    return float(brentq(gap, 0.0, hi, xtol=1e-15, rtol=1e-13)), saturation


# ------------------------------------------------------------ the sample bound
class LocalBound(NamedTuple):
    """A bound on ||theta-hat - theta*|| computed from one sample (docs/theory.md §9.2).

    value: the bound on the Euclidean error (inf when vacuous); norm_h: the bound on
    ||.||_{H-hat}; nu: sqrt(s_delta / n), the bound on ||grad L_n(theta*)||_{G^{-1}};
    gradient: y = c nu + ||grad L_n(theta-hat)||_{H^{-1}}; ratio: c =
    sqrt(lambda_max(H^{-1} G)); kappa: max_i ||beta x_i||_{H^{-1}}; saturation: Phi(inf);
    lambda_min: lambda_min(H-hat); n_min: c^2 s_delta / saturation^2, the sample size below
    which c sqrt(s_delta / n) alone reaches the saturation (no finite bound).
    """

    value: float
    norm_h: float
    nu: float
    gradient: float
    ratio: float
    kappa: float
    saturation: float
    lambda_min: float
    n: float
    n_min: float
    delta: float


def _theta_of(fit):
    if isinstance(fit, FitResult):
        if fit.loss != "dpo":
            raise ValueError(f"the bound is for the DPO fit, got a {fit.loss!r} fit")
        if fit.bound_multiplier > 0:
            raise ValueError("the fit lies on the boundary of ||theta|| <= bound: the bound "
                             "needs the unconstrained minimiser (refit without the bound)")
        return np.asarray(fit.theta, float)
    return np.asarray(fit, float)


def _pairs(data, n):
    """n, the number of i.i.d. pairs: the weights must be counts over it."""
    n = sample_size(data, n=n)
    q = data.weight[data.weight > 0]
    c = n * q
    if np.any(np.abs(c - np.round(c)) > COUNT_TOL * np.maximum(c, 1.0)):
        raise ValueError(f"the weights are not counts over n = {n:g} pairs; the bound needs "
                         "n i.i.d. pairs (pass n= when the weights are counts over n)")
    return n


def dpo_local_bound(fit, data: PreferenceData, *, beta: float, delta: float = 0.05,
                    n: float | None = None) -> LocalBound:
    r"""A high-probability bound on ||theta-hat - theta*|| from the sample alone
    (docs/theory.md §9.2).

    .. math::  \|\hat\theta-\theta^\star\|_{\hat H}\le s := \Phi^{-1}(y),\qquad
               \|\hat\theta-\theta^\star\|_2\le s/\sqrt{\lambda_{\min}(\hat H)},\qquad
               y = c\sqrt{s_\delta/n}+\|\nabla L_n(\hat\theta)\|_{\hat H^{-1}},

    with probability at least 1 - delta over the labels given the features (Bradley-Terry
    labels at theta*, §9.1), where H-hat = sum_i q_i sigma(m_i) sigma(-m_i) beta^2 x_i x_i^T
    at theta-hat, G = sum_i q_i beta^2 x_i x_i^T / 4, c^2 = lambda_max(H^{-1} G), s_delta =
    :func:`chi2_chernoff_quantile` (d, delta) and Phi the curvature profile of
    :func:`localisation`. theta-hat need not be an exact minimiser (its gradient enters y).

    Args:
        fit: an unconstrained ``fit_dpo`` result on ``data``, or a (d,) parameter.
        data: n i.i.d. pairs, plain or compressed (weights counts over n).
        beta, delta: the DPO temperature; the failure probability, in (0, 1).
        n: the number of pairs (default :func:`loglinear.inference.sample_size`).

    Raises ValueError for a singular H (theta not identified), weights that are not
    counts over n, a constrained fit or delta outside (0, 1).
    """
    data = require_data(data)
    theta = _theta_of(fit)
    n = _pairs(data, n)
    s_delta = chi2_chernoff_quantile(data.d, delta)
    q, c2, bx, grad, m = _curvature(data, theta, beta)
    H = _gram(bx, q * c2)
    lmin = _check_positive(H, "the Hessian at theta-hat")
    k = np.linalg.norm(_chol_solve(H, bx.T), axis=0)         # ||beta x_i||_{H^{-1}}
    G = _gram(bx, q / 4.0)
    LiG = _chol_solve(H, G)
    ratio = float(np.sqrt(np.linalg.eigvalsh(_chol_solve(H, LiG.T))[-1]))
    nu = float(np.sqrt(s_delta / n))
    y = ratio * nu + float(np.linalg.norm(_chol_solve(H, grad)))
    s, saturation = localisation(k, q * c2, m, y)
    return LocalBound(value=s / np.sqrt(lmin), norm_h=s, nu=nu, gradient=y, ratio=ratio,
                      kappa=float(k.max()), saturation=saturation, lambda_min=lmin,
                      n=float(n), n_min=ratio**2 * s_delta / saturation**2,
                      delta=float(delta))


# -------------------------------------------------------- the population bound
class PopulationBound(NamedTuple):
    """The theorem of docs/theory.md §9.3 at sample sizes n (arrays of n's shape).

    value: bound on ||theta-hat - theta*||_2 (inf below the Chernoff sizes or where
    x >= 1); norm_h: bound on ||.||_H; x: kappa-bar nu-bar; constant: C with
    ||.||_H <= C sqrt((d + log(3/delta)) / n) once n >= n0; n0: the sample size from
    which that holds (x <= 1/2 and both Chernoff events); n_chernoff: the sample size the
    two matrix Chernoff events need; b, ell, big_l, c_pop: the population constants
    max ||beta x||_{H^{-1}}, max sigma sigma' ||beta x||^2_{H^{-1}},
    max ||beta x||^2_{G^{-1}} / 4 and sqrt(lambda_max(H^{-1} G)).
    """

    value: np.ndarray
    norm_h: np.ndarray
    x: np.ndarray
    constant: float
    n0: float
    n_chernoff: float
    b: float
    ell: float
    big_l: float
    c_pop: float
    lambda_min: float


def dpo_population_bound(n, population: PreferenceData, theta_star, *, beta: float,
                         delta: float = 0.05, slack: float = 0.5) -> PopulationBound:
    r"""The local-curvature bound in theorem form, from population constants
    (docs/theory.md §9.3): with probability at least 1 - delta, for n >= n0,

    .. math::  \|\hat\theta-\theta^\star\|_H\le\frac{-\log(1-x)}{b},\qquad
               x=\frac{b\,c_P}{1-\eta}\sqrt{(1+\eta)\,s_{\delta/3}/n}\le\tfrac12,

    hence :math:`\|\hat\theta-\theta^\star\|_H\le C\sqrt{(d+\log(3/\delta))/n}` with
    :math:`C=2\sqrt3\log2\,c_P\sqrt{1+\eta}/(1-\eta)`. H, G and the constants are those of
    ``population`` (the law the sample is drawn from) at ``theta_star``, its DPO optimum
    under a Bradley-Terry model; ``slack`` is the eta of the matrix Chernoff events.
    """
    pop = require_data(population, "population")
    if not 0 < slack < 1:
        raise ValueError(f"slack (the Chernoff deviation eta) must lie in (0, 1), got {slack}")
    eta = float(slack)
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    n = np.asarray(n, dtype=float)
    if np.any(~np.isfinite(n)) or np.any(n < 1):
        raise ValueError("n must be finite and >= 1")
    theta = np.asarray(theta_star, float)
    q, c2, bx, grad, _ = _curvature(pop, theta, beta)
    H = _gram(bx, q * c2)
    if np.linalg.norm(_chol_solve(H, grad)) > 1e-6:
        raise ValueError("theta_star is not the population DPO optimum (its gradient in the "
                         f"H^-1 norm is {np.linalg.norm(_chol_solve(H, grad)):.3g})")
    lmin = _check_positive(H, "the population Hessian")
    G = _gram(bx, q / 4.0)
    kh = np.linalg.norm(_chol_solve(H, bx.T), axis=0)
    kg = np.linalg.norm(_chol_solve(G, bx.T), axis=0)
    LiG = _chol_solve(H, G)
    c_pop = float(np.sqrt(np.linalg.eigvalsh(_chol_solve(H, LiG.T))[-1]))
    b, ell, big_l = float(kh.max()), float(np.max(c2 * kh**2)), float(np.max(kg**2) / 4.0)
    d = pop.d
    h_lo = eta + (1.0 - eta) * np.log1p(-eta)       # Tropp's lower-tail exponent
    h_hi = (1.0 + eta) * np.log1p(eta) - eta        # ... and the upper-tail one
    n_chernoff = float(np.log(3.0 * d / delta) * max(ell / h_lo, big_l / h_hi))
    s3 = chi2_chernoff_quantile(d, delta / 3.0)
    scale = b * c_pop * np.sqrt(1.0 + eta) / (1.0 - eta)      # x = scale sqrt(s3 / n)
    x = scale * np.sqrt(s3 / n)
    ok = (n >= n_chernoff) & (x < 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm_h = np.where(ok, -np.log1p(-np.where(ok, x, 0.0)) / b, np.inf)
    const = 2.0 * np.sqrt(3.0) * np.log(2.0) * c_pop * np.sqrt(1.0 + eta) / (1.0 - eta)
    n0 = max(n_chernoff, 4.0 * scale**2 * s3)
    return PopulationBound(value=norm_h / np.sqrt(lmin), norm_h=norm_h, x=x, constant=const,
                           n0=float(n0), n_chernoff=n_chernoff, b=b, ell=ell, big_l=big_l,
                           c_pop=c_pop, lambda_min=lmin)


# ------------------------------------------------------------------ tightness
class Tightness(NamedTuple):
    """A bound against the errors it bounds, over replicates (docs/theory.md §9.4).

    quantile: the empirical (1 - delta) quantile of the error; bound: the median bound;
    ratio: bound / quantile; violations: the fraction of replicates whose error exceeds
    its bound; violation_se: sqrt(delta (1 - delta) / R); vacuous: the fraction with an
    infinite bound; paper_bound, paper_ratio: the same for the paper's bound (NaN when
    not given).
    """

    replicates: int
    quantile: float
    bound: float
    ratio: float
    violations: float
    violation_se: float
    vacuous: float
    paper_bound: float
    paper_ratio: float
    delta: float


def bound_tightness(errors, bounds, *, delta: float = 0.05, paper_bounds=None) -> Tightness:
    """Tightness and validity of R replicates' bounds (inf allowed: vacuous) against
    their errors ||theta-hat - theta*||, each (R,); ``paper_bounds`` (optional, (R,) or a
    scalar) puts the paper's bound beside them. ``delta``: the bounds' failure probability.
    """
    e = np.asarray(errors, float)
    b = np.broadcast_to(np.asarray(bounds, float), e.shape)
    if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)):
        raise ValueError("errors must be a 1-D array of at least 2 finite values")
    if np.any(np.isnan(b)):
        raise ValueError("bounds contain NaN")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    quant = float(np.quantile(e, 1.0 - delta))
    med = float(np.median(b))
    paper, paper_ratio = np.nan, np.nan
    if paper_bounds is not None:
        paper = float(np.median(np.broadcast_to(np.asarray(paper_bounds, float), e.shape)))
        paper_ratio = paper / quant
    return Tightness(replicates=int(e.size), quantile=quant, bound=med, ratio=med / quant,
                     violations=float(np.mean(e > b)),
                     violation_se=float(np.sqrt(delta * (1.0 - delta) / e.size)),
                     vacuous=float(np.mean(~np.isfinite(b))), paper_bound=paper,
                     paper_ratio=paper_ratio, delta=float(delta))


class DPOReplicates(NamedTuple):
    """Per-replicate errors ||w-hat - w*||, local bounds and the paper's Proposition 1
    bound in the Euclidean norm, each (R,)."""

    errors: np.ndarray
    bounds: np.ndarray
    paper_bounds: np.ndarray


def paper_dpo_bound(data: PreferenceData, n: float, *, beta: float, bound: float,
                    delta: float = 0.05) -> float:
    r"""Proposition 1 (docs/theory.md §5.4) as a Euclidean bound on one sample:
    :func:`~loglinear.estimation.proposition1_bound` /
    :math:`\sqrt{\lambda_{\min}(\Sigma_D)}`, valid since
    :math:`\|v\|_2\le\|v\|_{\Sigma_D}/\sqrt{\lambda_{\min}(\Sigma_D)}`."""
    lam = coverage(data).lambda_min
    if not lam > 0:
        return np.inf
    return float(proposition1_bound(n, beta=beta, bound=bound, dim=data.d, delta=delta)
                 / np.sqrt(lam))


def simulate_dpo(env, n: int, *, replicates: int, seed: int, delta: float = 0.05,
                 bound: float) -> DPOReplicates:
    """R replicates of the centred DPO fit on ``env.sample_counts(n)``: the error to
    w* = theta* - theta_ref, :func:`dpo_local_bound` and :func:`paper_dpo_bound` (with
    Theta = {||w|| <= bound}). Replicates use ``SeedSequence(seed).spawn(replicates)``."""
    w_star = env.theta_star() - env.theta_ref
    out = np.empty((3, int(replicates)))
    for r, ss in enumerate(np.random.SeedSequence(seed).spawn(int(replicates))):
        data = env.sample_counts(n, np.random.default_rng(ss), centered=True)
        fit = fit_dpo(data, beta=env.beta)
        out[0, r] = estimation_error(fit.theta, w_star)
        out[1, r] = dpo_local_bound(fit, data, beta=env.beta, delta=delta, n=n).value
        out[2, r] = paper_dpo_bound(data, n, beta=env.beta, bound=bound, delta=delta)
    return DPOReplicates(*out)
