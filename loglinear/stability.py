r"""Numpy statistics for the "beyond log-linear" studies: weight collapse, gradient
variance, and the KLDPO temperature rule.

**Effective sample size.** For importance weights :math:`P` of a sample with base weights
:math:`q` (an empirical sample has :math:`q_i = 1/n`; a compressed sample has the counts
over n), the Kish effective sample size, as a fraction of the sample, is

.. math::  \mathrm{ESS}(P\|q) = \frac{(\sum_i P_i)^2}{\sum_i P_i^2/q_i} \in (0, 1],

which is 1 for :math:`P = q` and :math:`q(\text{support})` when P puts all its mass on
one atom. It is invariant to splitting an atom into copies (so counts and raw samples
agree). For log-normal likelihood ratios with log-sd :math:`\sigma`,
:math:`\mathrm{ESS} = e^{-\sigma^2}`.

**Minibatch gradient variance.** With per-pair gradients :math:`g_i` and a minibatch of b
pairs drawn i.i.d. from q, the minibatch mean gradient has total variance
:math:`\mathrm{tr\,Cov}_q(g)/b`; drawn uniformly without replacement from n pairs, it is
:math:`\frac{n-b}{b(n-1)}\mathrm{tr\,Cov}(g)`.

**The temperature rule** (:func:`suggest_tau`): KLDPO with temperature tau is KL-DRO at
the implied radius :math:`\rho(\tau)` with dual :math:`\lambda^* = \tau` (paper.md section
4). To second order in the loss spread :math:`s = \mathrm{sd}_q(l)`,

.. math::  \rho(\tau) \approx \frac{s^2}{2\tau^2}, \qquad
           \mathrm{ESS}(\tau) \approx e^{-s^2/\tau^2} \approx e^{-2\rho(\tau)},

so a user who wants the reweighting to keep a fraction ``min_ess`` of the data (default
0.9) chooses
:math:`\tau_0 = s/\sqrt{-\log \mathrm{min\_ess}}` at the DPO fit, and the exact rule
refines it to the tau whose weights on the DPO losses have ESS = ``min_ess``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, logsumexp

from .data import PreferenceData
from .losses import softplus

ESS_RTOL = 1e-6        # relative tolerance of the exact tau rule's root in log tau
TAU_RANGE = (1e-4, 1e4)  # bracket of the exact tau rule


def _weights(weights, base):
    w = np.asarray(weights, dtype=float)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must be a non-empty 1-d array, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, nonnegative and not all zero")
    if base is None:
        q = np.full(w.size, 1.0 / w.size)
    else:
        q = np.asarray(base, dtype=float)
        if q.shape != w.shape:
            raise ValueError(f"base must have the shape of weights {w.shape}, got {q.shape}")
        if not np.all(np.isfinite(q)) or np.any(q < 0) or abs(q.sum() - 1.0) > 1e-9:
            raise ValueError("base weights must be nonnegative and sum to one")
        if np.any((q == 0) & (w > 0)):
            raise ValueError("weights put mass where the base weights are zero (P << q fails)")
    return w, q


def effective_sample_size(weights, base=None) -> float:
    r"""Kish ESS as a fraction of the sample: :math:`(\sum P)^2 / \sum_i P_i^2/q_i`.

    Args:
        weights: (n,) nonnegative importance weights P (normalisation irrelevant).
        base: (n,) base weights q summing to one (default uniform 1/n).

    Returns:
        A number in (0, 1]; multiply by n for the count of "effective pairs".
    """
    w, q = _weights(weights, base)
    pos = q > 0
    return float(w.sum() ** 2 / np.sum(w[pos] ** 2 / q[pos]))


def ess_count(weights) -> float:
    r"""Kish ESS as a count, :math:`(\sum w)^2/\sum w^2` (uniform base)."""
    w, _ = _weights(weights, None)
    return float(w.sum() ** 2 / np.sum(w**2))


def gradient_covariance_trace(grads, base=None) -> float:
    r""":math:`\mathrm{tr\,Cov}_q(g) = \sum_i q_i\|g_i - \bar g\|^2`, :math:`\bar g = \sum q_i g_i`.

    Args:
        grads: (n, p) per-pair gradients.
        base: (n,) weights q summing to one (default uniform).
    """
    g = np.asarray(grads, dtype=float)
    if g.ndim != 2 or g.shape[0] == 0:
        raise ValueError(f"grads must be a non-empty (n, p) array, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("grads contain NaN or infinite values")
    _, q = _weights(np.ones(g.shape[0]) if base is None else np.asarray(base, float), base)
    gbar = q @ g
    return float(q @ np.sum((g - gbar) ** 2, axis=1))


def minibatch_gradient_variance(grads, *, batch_size: int, base=None,
                                replace: bool = True) -> float:
    r"""Total variance :math:`E\|\hat g_B - \bar g\|^2` of a minibatch mean gradient.

    .. math::
        \text{i.i.d. from } q:\ \frac{\mathrm{tr\,Cov}_q(g)}{b}, \qquad
        \text{uniform without replacement:}\ \frac{n-b}{b\,(n-1)}\,\mathrm{tr\,Cov}(g).

    Only linear (averaged) minibatch gradients obey this; reweighted ones (KLDPO) are
    measured empirically with :func:`empirical_variance`.
    """
    g = np.asarray(grads, dtype=float)
    b = int(batch_size)
    if b < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    tr = gradient_covariance_trace(g, base)
    if replace:
        return tr / b
    n = g.shape[0]
    if base is not None:
        raise ValueError("sampling without replacement is defined here for uniform base only")
    if b > n:
        raise ValueError(f"batch_size {b} exceeds the n = {n} pairs (without replacement)")
    return 0.0 if n == 1 else tr * (n - b) / (b * (n - 1))


def empirical_variance(samples) -> float:
    r"""Unbiased total variance of K vector samples: :math:`\frac{1}{K-1}\sum_k\|g_k-\bar g\|^2`.

    Args:
        samples: (K, p) e.g. minibatch gradients, K >= 2.
    """
    g = np.asarray(samples, dtype=float)
    if g.ndim != 2 or g.shape[0] < 2:
        raise ValueError(f"samples must be (K, p) with K >= 2, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("samples contain NaN or infinite values")
    return float(np.sum((g - g.mean(0)) ** 2) / (g.shape[0] - 1))


# ---------------------------------------------------------------- rewards / values
def kl_regularised_optimum(env, reward=None) -> float:
    r"""The best achievable :math:`E[r] - \beta KL(\pi\|\pi_{ref})` over all policies.

    .. math:: V^* = \sum_s \mu(s)\,\beta\log\sum_a \pi_{ref}(a|s)\,e^{r(s,a)/\beta},

    attained by :math:`\pi^*\propto\pi_{ref}e^{r/\beta}`; ``env.value(theta, r).objective``
    is at most this, and the difference is the regret of theta under r.
    """
    r = env.reward if reward is None else np.asarray(reward, dtype=float)
    if r.shape != (env.n_states, env.n_actions):
        raise ValueError(f"reward must be an (S, A) table, got {r.shape}")
    logref = env.log_policy(env.theta_ref)
    return float(env.state_dist @ (env.beta * logsumexp(logref + r / env.beta, axis=1)))


# ------------------------------------------------------------------ the tau rule
def loss_spread(theta, data: PreferenceData, *, beta: float) -> float:
    r""":math:`\mathrm{sd}_q(l(\theta))` of the per-pair DPO losses."""
    m = data.sign * beta * (data.x @ np.asarray(theta, float) - data.offset)
    losses = softplus(-m)
    q = data.weight
    return float(np.sqrt(q @ (losses - q @ losses) ** 2))


def kldpo_ess(theta, data: PreferenceData, *, beta: float, tau: float) -> float:
    r"""ESS fraction of the KLDPO (paper) weights :math:`P\propto q e^{l(\theta)/\tau}` at theta."""
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be positive and finite, got {tau}")
    m = data.sign * beta * (data.x @ np.asarray(theta, float) - data.offset)
    losses = softplus(-m)
    q = data.weight
    with np.errstate(divide="ignore"):
        logits = np.log(q) + losses / tau
    p = np.exp(logits - logsumexp(logits))
    return effective_sample_size(p, q)


@dataclass(frozen=True)
class TauSuggestion:
    """The temperature rule's answer.

    Attributes:
        tau: the exact rule: the tau at which the KLDPO weights of the DPO fit's losses
            have ESS = ``min_ess``.
        tau_first_order: :math:`s/\\sqrt{-\\log\\,min\\_ess}`, s the loss sd at the DPO fit.
        min_ess: the target ESS fraction.
        ess_solution: the ESS fraction of the weights at the KLDPO solution for ``tau``
            (at least ``ess_start`` in practice: robust training equalises the losses).
        implied_radius: the KL radius that ``tau`` buys, :math:`\\rho(\\tau)`.
        loss_sd: s, the q-sd of the DPO losses at the DPO fit.
        theta: (d,) the KLDPO solution at ``tau``.
        theta_dpo: (d,) the DPO fit the rule was computed at.
    """

    tau: float
    tau_first_order: float
    min_ess: float
    ess_solution: float
    implied_radius: float
    loss_sd: float
    theta: np.ndarray
    theta_dpo: np.ndarray


def tau_for_ess(theta, data: PreferenceData, *, beta: float, min_ess: float = 0.5) -> float:
    r"""The tau at which the KLDPO weights :math:`P\propto q e^{l(\theta)/\tau}` have ESS
    ``min_ess`` (ESS increases with tau: :math:`-\log\mathrm{ESS} = \Lambda(2/\tau) -
    2\Lambda(1/\tau)` with :math:`\Lambda` the convex log-mgf of the losses)."""
    if not 0.0 < float(min_ess) < 1.0:
        raise ValueError(f"min_ess must lie strictly between 0 and 1, got {min_ess}")
    sd = loss_spread(theta, data, beta=beta)
    if sd <= 0:
        raise ValueError("all losses are equal at theta: reweighting does nothing, any tau "
                         "keeps ESS = 1")
    gap = lambda lt: kldpo_ess(theta, data, beta=beta, tau=float(np.exp(lt))) - min_ess
    lo, hi = np.log(TAU_RANGE[0]), np.log(TAU_RANGE[1])
    if gap(lo) >= 0:
        return float(TAU_RANGE[0])
    if gap(hi) <= 0:
        raise ValueError(f"ESS stays below {min_ess} up to tau = {TAU_RANGE[1]:g}")
    return float(np.exp(brentq(gap, lo, hi, xtol=ESS_RTOL)))


def suggest_tau(data: PreferenceData, *, beta: float, min_ess: float = 0.9) -> TauSuggestion:
    r"""A default KLDPO temperature from the user's own data.

    The rule: **fit DPO, take its per-pair losses, and choose the smallest tau whose
    KLDPO weights on those losses keep an effective fraction ``min_ess`` of the data**
    (default 0.9: the variance of a weighted minibatch mean grows like 1/ESS, so at most
    about 11% extra gradient noise; in the tau study this tau is close to the best of the
    grid under strong preference shifts, beats DPO under a 50/50 shift, and costs some
    value when there is no shift):
    :math:`\mathrm{ESS}(q e^{l(\hat\theta_{DPO})/\tau}\|q) = \mathrm{min\_ess}`.
    To first order it is
    :math:`\tau_0 = \mathrm{sd}_q(l(\hat\theta_{DPO}))/\sqrt{-\log\mathrm{min\_ess}}`,
    about 3.1 loss standard deviations for ESS 0.9 (1.2 for ESS 1/2). The DPO fit is
    where the losses are most spread (robust training equalises them), so the weights met
    during KLDPO training from there keep at least that fraction (checked by the tau
    study).

    Args:
        data: the training data (weighted or raw).
        beta: DPO temperature.
        min_ess: target ESS fraction in (0, 1).

    Raises:
        ValueError: ``min_ess`` out of range, equal losses, or no tau in [1e-4, 1e4].
    """
    from .approx import fit_kldpo, implied_radius_kl
    from .fit import fit_dpo

    if not 0.0 < float(min_ess) < 1.0:
        raise ValueError(f"min_ess must lie strictly between 0 and 1, got {min_ess}")
    theta_dpo = fit_dpo(data, beta=beta).theta
    sd = loss_spread(theta_dpo, data, beta=beta)
    tau = tau_for_ess(theta_dpo, data, beta=beta, min_ess=min_ess)
    tau0 = sd / np.sqrt(-np.log(min_ess))
    theta = fit_kldpo(data, beta=beta, tau=tau, theta0=theta_dpo).theta
    return TauSuggestion(tau, float(tau0), float(min_ess),
                         kldpo_ess(theta, data, beta=beta, tau=tau),
                         implied_radius_kl(tau, data, beta=beta, theta=theta), sd, theta,
                         theta_dpo)


# ----------------------------------------------------- the reweighting iteration
@dataclass(frozen=True)
class ReweightingPath:
    """Algorithm 2 run with a fixed step, with its weight diagnostics.

    Attributes:
        status: ``"converged"`` (gradient norm <= gtol), ``"oscillating"`` (no convergence
            and the weighted loss rose on more than 10% of the last half of the steps),
            ``"stalled"`` (no convergence, monotone) or ``"diverged"`` (non-finite or
            ||theta|| > 1e6).
        iterations: steps taken.
        grad_norm: final ||sum_i W_i grad l_i||.
        min_ess: smallest ESS fraction of the weights met along the path.
        final_ess: ESS fraction of the final weights.
        max_weight_ratio: largest W_i / q_i met along the path.
        theta: (d,) the last iterate.
    """

    status: str
    iterations: int
    grad_norm: float
    min_ess: float
    final_ess: float
    max_weight_ratio: float
    theta: np.ndarray


def reweighting_path(data: PreferenceData, *, beta: float, tau: float, step: float,
                     theta0, form: str = "paper", max_iter: int = 2000,
                     gtol: float = 1e-6) -> ReweightingPath:
    r"""Algorithm 2 of the paper with a fixed step eta, tracking weight collapse.

    .. math:: \theta_{k+1} = \theta_k - \eta\sum_i W_i(\theta_k)\,\nabla l_i(\theta_k),

    W the KLDPO weights (:func:`loglinear.approx.kldpo_weights`, ``form`` paper or
    official). The paper form is gradient descent on the convex
    :math:`\tau\log\sum_i q_i e^{l_i/\tau}`, whose smoothness grows like
    :math:`\beta^2\max\|x\|^2/\tau`, so a step tuned for DPO (eta = 4/(beta^2 max||x||^2))
    stops converging once tau is small enough: that is the divergence this measures.
    """
    from .approx import kldpo_weights

    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"step must be positive and finite, got {step}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    theta = np.array(theta0, dtype=float)
    if theta.shape != (data.d,):
        raise ValueError(f"theta0 must have shape ({data.d},), got {theta.shape}")
    q = data.weight
    pos = q > 0
    min_ess, max_ratio, values = 1.0, 0.0, []
    status, k, gn, ess = "stalled", 0, np.inf, 1.0
    for k in range(int(max_iter) + 1):
        m = data.sign * beta * (data.x @ theta - data.offset)
        losses = softplus(-m)
        W = kldpo_weights(losses, q, tau=tau, form=form)
        ess = effective_sample_size(W, q)
        min_ess = min(min_ess, ess)
        max_ratio = max(max_ratio, float(np.max(W[pos] / q[pos])))
        values.append(float(W @ losses))
        c = -data.sign * beta * expit(-m)  # grad l_i = c_i x_i
        g = data.x.T @ (W * c)
        gn = float(np.linalg.norm(g))
        if not np.isfinite(gn) or not np.all(np.isfinite(theta)) or np.linalg.norm(theta) > 1e6:
            status = "diverged"
            break
        if gn <= gtol:
            status = "converged"
            break
        if k == int(max_iter):
            break
        theta = theta - step * g
    if status == "stalled":
        tail = np.diff(values[len(values) // 2:])
        if tail.size and np.mean(tail > 1e-12 * max(1.0, abs(values[-1]))) > 0.1:
            status = "oscillating"
    return ReweightingPath(status, k, gn, float(min_ess), float(ess), float(max_ratio), theta)
