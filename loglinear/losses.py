r"""Per-pair preference losses for log-linear policies, with gradients in theta and in x.

Every loss here is a function of the signed margin

.. math::  m_i = (2 y_i - 1)\,\beta\,(\theta^\top x_i - o_i),

so l_i = phi(m_i) and, by the chain rule,

.. math::
    \nabla_\theta l_i = \phi'(m_i)\,s_i\beta\,x_i, \qquad
    \nabla^2_\theta l_i = \phi''(m_i)\,\beta^2\,x_i x_i^\top, \qquad
    \nabla_x l_i = \phi'(m_i)\,s_i\beta\,\theta,

with s_i = 2 y_i - 1. Functions return per-pair arrays of shape (n,); the caller
weights and reduces (``weighted_mean``), as robust reweighting needs the per-pair values.
Variants are looked up by name in :data:`LOSSES`.

Some remedies of Yan et al. (arXiv 2406.07327) break the margin symmetry, so the registry
also holds losses of the chosen and rejected log-ratios c = log pi(a+)/pi_ref(a+) and
r = log pi(a-)/pi_ref(a-) and of log pi(a+) (docs/theory.md §6):

* Flex-DPO:  l = softplus(-(beta_plus c - beta_minus r));
* DPO + SFT: l = softplus(-beta (c - r)) - sft_weight * log pi(a+|s).

Every entry returns the per-pair value with dl/dc and dl/dr (:class:`PairTerms`);
probability-space partials follow from dl/dpi = (dl/d log pi) / pi
(:func:`probability_partials`), which for DPO gives (dl/dpi-)/(dl/dpi+) = -pi+/pi-.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
from scipy.special import expit

from .data import PreferenceData
from .registry import Registry


def softplus(u: np.ndarray) -> np.ndarray:
    """Stable log(1 + e^u)."""
    u = np.asarray(u, dtype=np.float64)
    return np.logaddexp(0.0, u)


def sigmoid(u: np.ndarray) -> np.ndarray:
    """Stable 1 / (1 + e^{-u})."""
    return expit(u)


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not np.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a positive finite number, got {beta}")
    return beta


def _check_theta(theta, d: int) -> np.ndarray:
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (d,):
        raise ValueError(f"theta must have shape ({d},) to match the data, got {theta.shape}")
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta contains NaN or infinite entries")
    return theta


def margins(theta, data: PreferenceData, *, beta: float) -> np.ndarray:
    r"""Signed margins m_i = (2 y_i - 1) beta (theta . x_i - o_i), shape (n,)."""
    beta = _check_beta(beta)
    theta = _check_theta(theta, data.d)
    return data.sign * beta * (data.x @ theta - data.offset)


def margin_line(theta, step, data: PreferenceData, *, beta: float
                ) -> tuple[np.ndarray, np.ndarray]:
    r"""The margins along a line, for line searches: :math:`m(\theta + t\,\delta) =
    m(\theta) + t\,s` with :math:`s_i = (2y_i - 1)\beta\,x_i^\top\delta`.

    Returns:
        (m, s), each of shape (n,).
    """
    step = _check_theta(step, data.d)
    return margins(theta, data, beta=beta), data.sign * beta * (data.x @ step)


@dataclass(frozen=True)
class MarginLoss:
    """A loss l = phi(m; beta) of the signed margin, with its first two derivatives in m."""

    name: str
    phi: Callable[[np.ndarray, float], np.ndarray]
    dphi: Callable[[np.ndarray, float], np.ndarray]
    d2phi: Callable[[np.ndarray, float], np.ndarray]
    convex: bool = True
    doc: str = ""
    params: tuple[str, ...] = ("beta",)

    def terms(self, chosen_logratio, rejected_logratio, chosen_logp=None, *, beta: float
              ) -> PairTerms:
        """Value and partials in (c, r): l = phi(beta (c - r)), dl/dc = -dl/dr =
        beta phi'(beta (c - r)). ``chosen_logp`` is unused (uniform signature)."""
        beta = _positive("beta", beta)
        c, r = _arrays(chosen_logratio, rejected_logratio)
        m = beta * (c - r)
        d = beta * self.dphi(m, beta)
        return PairTerms(self.phi(m, beta), d, -d)

    def value(self, theta, data: PreferenceData, *, beta: float) -> np.ndarray:
        """Per-pair loss, shape (n,)."""
        return self.phi(margins(theta, data, beta=beta), beta)

    def grad_theta(self, theta, data: PreferenceData, *, beta: float) -> np.ndarray:
        """Per-pair gradients in theta, shape (n, d)."""
        m = margins(theta, data, beta=beta)
        return (self.dphi(m, beta) * data.sign * beta)[:, None] * data.x

    def grad_x(self, theta, data: PreferenceData, *, beta: float) -> np.ndarray:
        """Per-pair gradients in x (the Wasserstein adversary's direction), shape (n, d)."""
        theta = _check_theta(theta, data.d)
        m = margins(theta, data, beta=beta)
        return (self.dphi(m, beta) * data.sign * beta)[:, None] * theta[None, :]

    def hess_theta(self, theta, data: PreferenceData, *, beta: float) -> np.ndarray:
        """Per-pair Hessians in theta, shape (n, d, d). Use :func:`objective` for the sum."""
        m = margins(theta, data, beta=beta)
        c = self.d2phi(m, beta) * beta**2
        return c[:, None, None] * data.x[:, :, None] * data.x[:, None, :]


# DPO: phi(m) = softplus(-m); phi' = -sigma(-m); phi'' = sigma(m) sigma(-m).
def _dpo_phi(m, beta):
    return softplus(-m)


def _dpo_dphi(m, beta):
    return -sigmoid(-m)


def _dpo_d2phi(m, beta):
    p = sigmoid(m)
    return p * (1.0 - p)


# IPO (Azar et al. 2024): (h - 1/(2 beta))^2 with h = m / beta the labelled log-ratio margin.
def _ipo_phi(m, beta):
    return ((m - 0.5) / beta) ** 2


def _ipo_dphi(m, beta):
    return 2.0 * (m - 0.5) / beta**2


def _ipo_d2phi(m, beta):
    return np.full_like(m, 2.0 / beta**2)


def dpo_margin_terms(m, *, value: bool = True
                     ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    r"""The DPO loss of the signed margin and its first two derivatives, per pair
    (docs/theory.md §2.2):

    .. math::  \phi(m) = \mathrm{softplus}(-m), \qquad \phi'(m) = -\sigma(-m), \qquad
               \phi''(m) = \sigma(m)\,\sigma(-m).

    All three come from one :math:`e^{-|m|}`, so none suffers the cancellation of
    :math:`1 - \sigma`: phi'' keeps full relative accuracy for every margin.

    Args:
        m: (n,) signed margins (:func:`margins`).
        value: compute phi (else ``None`` is returned in its place).

    Returns:
        (phi, phi', phi''), each of shape (n,).
    """
    m = np.asarray(m, dtype=np.float64)
    e = np.abs(m)
    np.negative(e, out=e)
    np.exp(e, out=e)            # e = exp(-|m|)
    inv = 1.0 + e
    np.reciprocal(inv, out=inv)  # 1 / (1 + e)
    phi = None
    if value:
        phi = np.log1p(e)
        phi += np.maximum(-m, 0.0)
    d2 = e * inv                 # sigma(-|m|)
    d1 = np.where(m >= 0, d2, inv)
    np.negative(d1, out=d1)
    d2 *= inv                    # sigma(-|m|) sigma(|m|)
    return phi, d1, d2


class PairTerms(NamedTuple):
    """Per-pair value and partials in the chosen and rejected log-probabilities."""

    value: np.ndarray
    d_chosen: np.ndarray
    d_rejected: np.ndarray


def _positive(name: str, v: float) -> float:
    v = float(v)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {v}")
    return v


def _nonnegative(name: str, v: float) -> float:
    v = float(v)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a nonnegative finite number, got {v}")
    return v


def _arrays(*arrays):
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    shape = out[0].shape
    for a in out:
        if a.shape != shape or a.ndim != 1:
            raise ValueError("pair arrays must be 1-d of equal length, got "
                             f"{[b.shape for b in out]}")
        if not np.all(np.isfinite(a)):
            raise ValueError("pair arrays contain NaN or infinite entries")
    return out


def flex_dpo_terms(chosen_logratio, rejected_logratio, chosen_logp=None, *,
                   beta_plus: float, beta_minus: float) -> PairTerms:
    r"""Flex-DPO: separate temperatures on the chosen and rejected log-ratios.

    .. math::  l = -\log\sigma(\beta^+ c - \beta^- r), \quad
               \partial_c l = -\beta^+\sigma(-u), \quad \partial_r l = \beta^-\sigma(-u),

    with u = beta_plus c - beta_minus r. A small beta_minus damps the push on the rejected
    response (Yan et al., section 5). ``chosen_logp`` is unused (uniform signature).
    """
    bp, bm = _positive("beta_plus", beta_plus), _positive("beta_minus", beta_minus)
    c, r = _arrays(chosen_logratio, rejected_logratio)
    u = bp * c - bm * r
    s = expit(-u)
    return PairTerms(np.logaddexp(0.0, -u), -bp * s, bm * s)


def dpo_terms(chosen_logratio, rejected_logratio, chosen_logp=None, *, beta: float
              ) -> PairTerms:
    r"""DPO as a function of (c, r): Flex-DPO with beta_plus = beta_minus = beta.

    .. math::  l = -\log\sigma(\beta(c - r)), \quad \partial_c l = -\partial_r l
               = -\beta\sigma(-\beta(c - r)).
    """
    return flex_dpo_terms(chosen_logratio, rejected_logratio, beta_plus=beta, beta_minus=beta)


def dpo_sft_terms(chosen_logratio, rejected_logratio, chosen_logp, *, beta: float,
                  sft_weight: float) -> PairTerms:
    r"""DPO plus an SFT term on the chosen response (Yan et al., section 5).

    .. math::  l = -\log\sigma(\beta(c - r)) - c_{sft}\log\pi_\theta(a^+|s), \quad
               \partial_c l = -\beta\sigma(-\beta(c - r)) - c_{sft}.

    (d log pi+ = d c, since the reference is fixed.)
    """
    w = _nonnegative("sft_weight", sft_weight)
    (lp,) = _arrays(chosen_logp)
    base = dpo_terms(chosen_logratio, rejected_logratio, beta=beta)
    if lp.shape != base.value.shape:
        raise ValueError("chosen_logp must match the log-ratio arrays in shape")
    return PairTerms(base.value - w * lp, base.d_chosen - w, base.d_rejected)


def probability_partials(terms: PairTerms, p_chosen, p_rejected) -> tuple[np.ndarray, np.ndarray]:
    r"""Partials in probability space: dl/dpi = (dl/d log pi) / pi, per pair.

    For DPO the ratio of the two is exactly -pi+ / pi- (docs/theory.md §6): the push on
    the rejected probability grows without bound as pi- -> 0.
    """
    p_c, p_r = _arrays(p_chosen, p_rejected)
    if np.any(p_c <= 0) or np.any(p_r <= 0):
        raise ValueError("probabilities must be strictly positive")
    return terms.d_chosen / p_c, terms.d_rejected / p_r


@dataclass(frozen=True)
class PairLoss:
    """A per-pair loss of (c, r, log pi+) that is not a function of the margin alone.

    ``terms(c, r, chosen_logp, **hyperparameters) -> PairTerms``; ``params`` names the
    hyperparameters it takes.
    """

    name: str
    terms: Callable[..., PairTerms]
    params: tuple[str, ...]
    doc: str = ""


LOSSES: Registry[MarginLoss | PairLoss] = Registry("loss")
"""Every per-pair loss by name: margin losses (usable by fits and robust solvers) and pair
losses of (c, r, log pi+) (usable where log-probabilities are known, e.g. the 3D
dynamics). Every entry has ``terms`` and ``params``."""


def get_loss(name: str, *, margin: bool = False) -> MarginLoss | PairLoss:
    """Look a loss up by name in :data:`LOSSES`; ``margin=True`` insists on a margin loss."""
    loss = LOSSES.get(name)
    if margin and not isinstance(loss, MarginLoss):
        raise ValueError(f"loss {name!r} depends on (c, r, log pi+), not on the margin "
                         f"alone; margin losses: "
                         f"{sorted(k for k, v in LOSSES.items() if isinstance(v, MarginLoss))}")
    return loss


def register_loss(loss: MarginLoss | PairLoss) -> MarginLoss | PairLoss:
    """Add a loss to :data:`LOSSES` (a name may be registered once)."""
    return LOSSES.register(loss.name, loss)

register_loss(MarginLoss("dpo", _dpo_phi, _dpo_dphi, _dpo_d2phi,
                         doc="-log sigma(m), the Bradley-Terry negative log-likelihood"))
register_loss(MarginLoss("ipo", _ipo_phi, _ipo_dphi, _ipo_d2phi,
                         doc="(m/beta - 1/(2 beta))^2, identity preference optimisation"))
register_loss(PairLoss("flex-dpo", flex_dpo_terms, ("beta_plus", "beta_minus"),
                       "separate beta+ (chosen) and beta- (rejected)"))
register_loss(PairLoss("dpo-sft", dpo_sft_terms, ("beta", "sft_weight"),
                       "DPO - sft_weight * log pi(chosen)"))


def dpo_loss(theta, data: PreferenceData, *, beta: float) -> np.ndarray:
    r"""Per-pair DPO loss l_i = softplus(-m_i) (docs/theory.md §2.2), shape (n,)."""
    return LOSSES["dpo"].value(theta, data, beta=beta)


def ipo_loss(theta, data: PreferenceData, *, beta: float) -> np.ndarray:
    """Per-pair IPO loss, shape (n,)."""
    return LOSSES["ipo"].value(theta, data, beta=beta)


def dpo_grad_theta(theta, data, *, beta):
    """Per-pair DPO gradients in theta, shape (n, d)."""
    return LOSSES["dpo"].grad_theta(theta, data, beta=beta)


def dpo_grad_x(theta, data, *, beta):
    r"""Per-pair DPO gradients in x: -(2y-1) beta sigma(-m) theta, shape (n, d)."""
    return LOSSES["dpo"].grad_x(theta, data, beta=beta)


def weighted_mean(values: np.ndarray, data: PreferenceData) -> float:
    """sum_i q_i values_i."""
    return float(data.weight @ values)


@dataclass(frozen=True)
class Objective:
    """Value, gradient and Hessian of a weighted loss at one theta."""

    value: float
    grad: np.ndarray
    hess: np.ndarray | None
    margins: np.ndarray


def objective(theta, data: PreferenceData, *, beta: float, loss: str = "dpo",
              hessian: bool = True, weight: np.ndarray | None = None) -> Objective:
    r"""L(theta) = sum_i q_i l_i(theta) with its gradient and (optionally) Hessian.

    ``weight`` overrides the data's weights (used by reweighting schemes); it is not
    renormalised.
    """
    spec = get_loss(loss, margin=True)
    beta = _check_beta(beta)
    m = margins(theta, data, beta=beta)
    q = data.weight if weight is None else weight
    value = float(q @ spec.phi(m, beta))
    g1 = q * spec.dphi(m, beta) * data.sign * beta
    grad = data.x.T @ g1
    hess = None
    if hessian:
        c = q * spec.d2phi(m, beta) * beta**2
        hess = (data.x * c[:, None]).T @ data.x
    return Objective(value, grad, hess, m)


_DEPRECATED = {"PAIR_LOSSES": "LOSSES", "get_pair_loss": "get_loss"}


def __getattr__(name: str):
    # loglinear.pairlosses was merged into this module; its names live on for one release.
    if name in _DEPRECATED:
        import warnings

        warnings.warn(f"loglinear.losses.{name} is deprecated; use {_DEPRECATED[name]}",
                      DeprecationWarning, stacklevel=2)
        return globals()[_DEPRECATED[name]]
    raise AttributeError(f"module 'loglinear.losses' has no attribute {name!r}")
