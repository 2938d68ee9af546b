r"""A finite-sample bound on the error of a robust estimator to its own target theta(rho),
from one sample and the local curvature of its objective (docs/theory.md §9.5).

Every estimator of :func:`loglinear.inference.covariance` with an objective (DPO, IPO, exact
KL / W1 / W2, WDPO, KLDPO; not the official KLDPO) minimises a convex sample objective V_n
whose gradient at the population target, S_n = grad V_n(theta(rho)), is to first order a
mean of n i.i.d. bounded influence rows psi_j (docs/theory.md §8.1). Bousquet's inequality
bounds ||S_n||_{H^{-1}} by y (:func:`deviation`); a continuation argument puts theta(rho) in
a ball of radius R around theta-hat on which the curvature, relative to H-hat, averages at
least mu-bar(R) (:func:`localise`); then

.. math::  \|\hat\theta-\theta(\rho)\|_2\le\frac{y}{\bar\mu(R)\sqrt{\lambda_{\min}(\hat H)}}.

:func:`robust_local_bound` computes it; :func:`paper_robust_bound` is the paper's Theorem 1
or 2 on the same sample, for comparison. The plug-in steps are listed in §9.5.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import expit

from . import _local_extra
from ._local_extra import kl_joint
from .approx import ApproxResult
from .data import PreferenceData
from .estimation import (
    coverage,
    kl_dual_variable,
    local_asymptotics,
    theorem1_bound,
    theorem2_bound,
)
from .inference import KINDS, _plan, sample_size
from .losses import dpo_loss, margins
from .robust import RobustResult

FIRST = 0.5            # the curvature grid starts at this fraction of y ...
GROWTH = 1.25          # ... and grows by this factor (the resolution of its Riemann sum)
MAX_GROWTH = 60        # ... for at most this many radii
MAX_NEWTON = 100       # KL: Newton steps in log lambda for lambda*(theta)
NEWTON_TOL = 1e-10     # ... until the step is this small (relative, in lambda)
EVENTS = 2             # the union bound: the deviation and the variance's upper bound
NO_POTENTIAL = ("kldpo-official",)


# --------------------------------------------------------------- influence rows
def _tilted_rows(pop, w, *, beta, lam, profiled):
    """KLDPO at temperature lam (r_j (g_j - gbar_p)), and KL with lambda profiled
    (plus the shift of lambda*), the psi rows of docs/theory.md §5.6."""
    _, l, _, g, _ = _local_extra._atoms(pop, w, beta)
    q = pop.weight
    live = q > 0
    u = np.where(live, l / lam, -np.inf)
    logp = np.where(live, np.log(np.where(live, q, 1.0)), -np.inf) + u
    p = np.exp(logp - np.logaddexp.reduce(logp[live]))
    r = np.where(live, p / np.where(live, q, 1.0), 0.0)
    gc = g - p @ g
    rows = r[:, None] * gc
    if not profiled:
        return rows
    lc = l - float(p @ l)
    var_l = float(p @ lc**2)
    cov_gl = (gc * (p * lc)[:, None]).sum(0)
    return rows + np.outer(r - 1.0 - r * lc / lam, lam * cov_gl / var_l)


def _mean_rows(pop, w, *, beta):
    g = _local_extra._atoms(pop, w, beta)[3]
    return g - pop.weight @ g


def _kl_rows(pop, w, *, beta, radius):
    lam = kl_dual_variable(_local_extra._atoms(pop, w, beta)[1], pop.weight, radius)
    if not 0 < lam < np.inf:
        raise ValueError(f"KL dual variable lambda* = {lam}: no local bound")
    return _tilted_rows(pop, w, beta=beta, lam=lam, profiled=True)


def _wdpo_rows(pop, w, *, beta, rho):
    """The paper WDPO's psi rows: the derivative of grad(L + rho beta ||w|| S) along
    delta_j - q, S^2 = E_q sigma(-m)^2 (docs/theory.md §5.6)."""
    _, _, c, g, sbx = _local_extra._atoms(pop, w, beta)
    q, nw = pop.weight, float(np.linalg.norm(w))
    a = expit(-margins(w, pop, beta=beta))
    s = float(np.sqrt(q @ a**2))
    da = -c[:, None] * sbx
    big_a = (q * a) @ da
    ds = (a**2 - s**2) / (2 * s)
    dgrad_s = (a[:, None] * da - big_a) / s - np.outer(ds, big_a) / s**2
    return (g - q @ g) + rho * beta * (np.outer(ds, w / nw) + nw * dgrad_s)


def _piece_rows(pieces):
    def rows(pop, w, *, beta, **hyper):
        return pieces(pop, w, beta=beta, **hyper).influence
    return rows


INFLUENCE = {
    "dpo": _mean_rows, "kl": _kl_rows, "wdpo": _wdpo_rows,
    "w1": lambda pop, w, *, beta, radius: _mean_rows(pop, w, beta=beta),
    "kldpo": lambda pop, w, *, beta, tau: _tilted_rows(pop, w, beta=beta, lam=tau,
                                                       profiled=False),
    "w1flip": _piece_rows(_local_extra.w1flip_pieces),
    **{name: _piece_rows(p) for name, (p, _) in _local_extra.KINDS.items()},
}
"""kind -> ``rows(data, w, *, beta, **hyper) -> (n, d)``: psi_j, the derivative of the
estimating equation along delta_j - q (docs/theory.md §5.6, §5.8), whose weighted Gram
matrix is the J of :func:`loglinear.inference.plug_in`."""


# ------------------------------------------------------------------ deviation
class Deviation(NamedTuple):
    """Bousquet's bound r on ||A S_n|| (docs/theory.md §9.5, step (b)): trace = tr(A J
    A^T) on the sample, trace_ucb its upper confidence bound, top = lambda_max(A J A^T)
    scaled by trace_ucb / trace, score_max = max_j ||A psi_j|| over the sample's atoms."""

    value: float
    trace: float
    trace_ucb: float
    top: float
    score_max: float


def deviation(rows, weight, *, n: float, t: float) -> Deviation:
    r"""The bound of docs/theory.md §9.5 (b) on the whitened score ||A S_n||_2 from the
    whitened rows xi_j = A psi_j (``rows``, (k, p)) and their weights:

    .. math::  r = \sqrt{\tau^+/n}+\sqrt{2t(\sigma^{+2}+2M\sqrt{\tau^+/n})/n}+tM/(3n),
               \qquad \sqrt{\tau^+}=M\sqrt{t/2n}+\sqrt{M^2t/2n+\hat\tau},

    with :math:`\hat\tau=\sum_jq_j\|\xi_j\|^2`, M = max_j ||xi_j||, sigma^{+2} =
    lambda_max(sum_j q_j xi_j xi_j^T) tau^+ / tau-hat, and t = log(1 / (failure
    probability of each event)).
    """
    q = np.asarray(weight, float)
    xi = np.asarray(rows, float)[q > 0]
    q = q[q > 0]
    sq = np.einsum("ij,ij->i", xi, xi)
    tau = float(q @ sq)
    top = float(np.linalg.eigvalsh((xi * q[:, None]).T @ xi)[-1])
    big_m = float(np.sqrt(sq.max()))
    half = big_m * np.sqrt(t / (2.0 * n))
    tau_ucb = (half + np.sqrt(half**2 + tau)) ** 2
    top_ucb = top * tau_ucb / tau if tau > 0 else 0.0
    root = np.sqrt(tau_ucb / n)
    value = root + np.sqrt(2.0 * t * (top_ucb + 2.0 * big_m * root) / n) + t * big_m / (3 * n)
    return Deviation(float(value), tau, float(tau_ucb), float(top_ucb), big_m)


# ------------------------------------------------------------------- the bound
class RobustBound(NamedTuple):
    """A bound on ||theta-hat - theta(rho)||_2 from one sample (docs/theory.md §9.5).

    value: the bound on the Euclidean error (inf when the curvature runs out first);
    norm_h: r*, the bound on ||theta-hat - theta(rho)||_{H-hat}; deviation: the bound y
    on ||S_n||_{H^{-1}} (:class:`Deviation`); curvature: mu(r*), the smallest relative
    curvature found within r* (1 at theta-hat); lambda_min: lambda_min(H-hat); kind: the
    estimator; trace_v: tr V-hat (the plug-in sandwich, without 1/n); n, delta.
    """

    value: float
    norm_h: float
    deviation: Deviation
    curvature: float
    lambda_min: float
    kind: str
    trace_v: float
    n: float
    delta: float


def kl_profiled_hessian(data, w, *, beta: float, radius: float, lam: float) -> np.ndarray:
    r"""The Hessian in theta of the KL dual profiled over lambda, from the joint (theta,
    lambda) derivatives of :func:`loglinear._local_extra.kl_joint` (docs/theory.md §8.1):
    :math:`G_{\theta\theta}-G_{\theta\lambda}G_{\lambda\theta}/G_{\lambda\lambda}` at
    lambda*(theta), the root of the increasing :math:`\partial_\lambda G`, found by Newton
    steps in log lambda from ``lam``. Raises ValueError where lambda* = 0 (a kink)."""
    d, start = data.d, lam
    for _ in range(MAX_NEWTON):
        _, grad, H = kl_joint(data, w, lam, beta=beta, radius=radius)
        if not H[d, d] > 0:
            raise ValueError("Var_p(l) = 0: the KL dual is not smooth in lambda here")
        step = float(np.clip(-grad[d] / (lam * H[d, d]), -1.0, 1.0))
        lam *= np.exp(step)
        if abs(step) <= NEWTON_TOL:
            break
    else:
        raise ValueError("lambda* = 0: the worst case sits on the maximal losses, a kink of "
                         "the dual" if lam < 1e-8 * start else "no root for lambda*(theta)")
    _, _, H = kl_joint(data, w, lam, beta=beta, radius=radius)
    return H[:d, :d] - np.outer(H[:d, d], H[:d, d]) / H[d, d]


def _hessian(kind, data, theta, beta, hyper, lam):
    """The sample Hessian of the estimator ``kind`` at theta (None where undefined)."""
    try:
        if kind == "kl":
            H = kl_profiled_hessian(data, theta, beta=beta, lam=lam, **hyper)
        elif kind == "w1flip":
            H = _local_extra.w1flip_pieces(data, theta, beta=beta, **hyper).hessian
        else:
            H = local_asymptotics(kind, data, theta, beta=beta, **hyper).hessian
    except (ValueError, np.linalg.LinAlgError):
        return None
    return H if np.all(np.isfinite(H)) else None


def sphere_curvature(kind, data, theta, *, beta, hyper, steps, whiten, lam=None) -> float:
    """min lambda_min(W H(t) W) over the points t = theta +- step (rows of ``steps``),
    W = ``whiten`` = H-hat^{-1/2}, H(t) the sample Hessian of the estimator ``kind``
    (profiled as in :data:`loglinear.inference.KINDS`; ``lam`` starts KL's search for
    lambda*); -inf where it is undefined (a kink)."""
    worst = np.inf
    for step in np.asarray(steps, float):
        for sign in (1.0, -1.0):
            Ht = _hessian(kind, data, theta + sign * step, beta, hyper, lam)
            if Ht is None:
                return -np.inf
            Wt = whiten @ Ht @ whiten
            worst = min(worst, float(np.linalg.eigvalsh(0.5 * (Wt + Wt.T))[0]))
    return worst


def curvature_radius(sphere, y: float) -> tuple[float, float]:
    r"""(r*, mu): the radius at which the accumulated curvature reaches y,

    .. math::  F(r^\ast)=y,\qquad F(r)=\int_0^r\mu(u)\,du\ \ge\
               \sum_j (r_j-r_{j-1})\,\mu(r_j),

    mu(r) = ``sphere(r)`` made non-increasing by a running minimum, F by its lower Riemann
    sum on the grid r_j = y FIRST GROWTH^{j-1} (docs/theory.md §9.5 (c)); (inf, mu) where mu
    reaches 0 first (no finite bound)."""
    lo, area, mu, r = 0.0, 0.0, np.inf, FIRST * y
    for _ in range(MAX_GROWTH):
        mu = min(mu, sphere(r))
        if not mu > 0:
            return np.inf, mu
        if area + (r - lo) * mu >= y:
            return lo + (y - area) / mu, mu
        area, lo, r = area + (r - lo) * mu, r, r * GROWTH
    return np.inf, mu


def robust_local_bound(result, data: PreferenceData, *, beta: float | None = None,
                       delta: float = 0.05, n: float | None = None) -> RobustBound:
    r"""A high-probability bound on ||theta-hat - theta(rho)||_2, the error of an estimator
    to its own population target, from the sample and the fit (docs/theory.md §9.5):

    .. math::  \|\hat\theta-\theta(\rho)\|_{\hat H}\le r^\ast,\qquad
               \|\hat\theta-\theta(\rho)\|_2\le r^\ast/\sqrt{\lambda_{\min}(\hat H)},
               \qquad \int_0^{r^\ast}\mu(r)\,dr=y,

    where y bounds ||S_n||_{H^{-1}}, the whitened score at the target (:func:`deviation`;
    its two events at delta / 2 each), and mu(r) is the smallest eigenvalue of
    H^{-1/2} H(theta) H^{-1/2} over the ball ||theta - theta-hat||_H <= r, taken at
    theta-hat +- r H^{-1/2} e_k along the eigenvectors e_k of H-hat
    (:func:`curvature_radius`). H-hat and psi are the plug-in pieces of
    :func:`loglinear.inference.plug_in` at theta-hat. Valid with probability about
    1 - delta: the scores, their spread and the curvature are plug-ins (§9.5).

    Args:
        result: what ``fit_dpo``, ``solve_kl``, ``solve_wasserstein``, ``fit_wdpo`` or
            ``fit_kldpo`` returned on ``data`` (not the official KLDPO).
        data: the sample; beta: the temperature (required for FitResult, ApproxResult).
        delta: the failure probability, in (0, 1); n: the number of i.i.d. pairs (default
            :func:`loglinear.inference.sample_size`).

    Raises ValueError where the estimator has no normal limit (collapsed, on the boundary
    of Theta, KL lambda* = 0, a kink), has no objective, or for delta outside (0, 1).
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    plan = _plan(result, data, beta)
    if plan.kind in NO_POTENTIAL:
        raise ValueError(f"the {plan.kind} estimator solves an equation without an "
                         "objective: the argument of docs/theory.md §9.5 needs one")
    n = sample_size(data, n=n)
    theta, hyper, b = plan.theta, plan.hyper, plan.beta
    la, _ = KINDS.get(plan.kind)(data, theta, beta=b, **hyper)
    lam, vec = np.linalg.eigh(0.5 * (la.hessian + la.hessian.T))
    if not lam[0] > 0:
        raise ValueError(f"the Hessian at theta-hat is not positive definite (smallest "
                         f"eigenvalue {lam[0]:.3g}): no local bound")
    whiten = (vec / np.sqrt(lam)) @ vec.T
    psi = INFLUENCE[plan.kind](data, theta, beta=b, **hyper)
    dev = deviation(psi @ whiten, data.weight, n=n, t=float(np.log(EVENTS / delta)))
    axes = (vec / np.sqrt(lam)).T                # rows H^{-1/2} e_k: the unit H-sphere
    dual = (kl_dual_variable(dpo_loss(theta, data, beta=b), data.weight, hyper["radius"])
            if plan.kind == "kl" else None)

    def sphere(r):
        return sphere_curvature(plan.kind, data, theta, beta=b, hyper=hyper, steps=r * axes,
                                whiten=whiten, lam=dual)

    norm_h, mu = curvature_radius(sphere, dev.value)
    return RobustBound(value=float(norm_h / np.sqrt(lam[0])), norm_h=float(norm_h),
                       deviation=dev, curvature=float(mu), lambda_min=float(lam[0]),
                       kind=plan.kind, trace_v=float(la.tr_sandwich), n=float(n),
                       delta=float(delta))


# ------------------------------------------------------------ the paper's bound
_THEOREM2 = ("kl", "kldpo")


def paper_robust_bound(result, data: PreferenceData, n: float, *, beta: float | None = None,
                       bound: float, delta: float = 0.05) -> float:
    r"""The paper's bound on ||theta_n - theta(rho)||_2 (docs/theory.md §5.3) on one
    sample: Theorem 2 for KL (lambda_lo = lambda_hi = the solve's lambda*) and KLDPO
    (the temperature tau), Theorem 1 for the Wasserstein estimators and WDPO, with the
    sample's lambda_min(Sigma_D) as the coverage constant and Theta = {||w|| <= bound}.
    inf where lambda_min(Sigma_D) = 0 or KL's lambda* is not positive."""
    lam = coverage(data).lambda_min
    if isinstance(result, RobustResult):
        kind, dual = result.kind, float(result.dual)
        b = result.beta
    elif isinstance(result, ApproxResult):
        kind, dual = result.surrogate, float(result.hyper)
        if beta is None:
            raise ValueError("pass beta=: an ApproxResult does not record its temperature")
        b = beta
    else:
        raise ValueError(f"the paper's Theorems 1-2 are for the robust estimators, got a "
                         f"{type(result).__name__}")
    if not lam > 0 or (kind in _THEOREM2 and not 0 < dual < np.inf):
        return np.inf
    if kind in _THEOREM2:
        return float(theorem2_bound(n, beta=b, bound=bound, lam=lam, dual_lo=dual,
                                    dual_hi=dual, delta=delta))
    return float(theorem1_bound(n, beta=b, bound=bound, lam=lam, delta=delta))
