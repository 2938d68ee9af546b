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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import expit

from .data import PreferenceData


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


@dataclass(frozen=True)
class MarginLoss:
    """A loss l = phi(m; beta) of the signed margin, with its first two derivatives in m."""

    name: str
    phi: Callable[[np.ndarray, float], np.ndarray]
    dphi: Callable[[np.ndarray, float], np.ndarray]
    d2phi: Callable[[np.ndarray, float], np.ndarray]
    convex: bool = True
    doc: str = ""

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


LOSSES: dict[str, MarginLoss] = {
    "dpo": MarginLoss("dpo", _dpo_phi, _dpo_dphi, _dpo_d2phi,
                      doc="-log sigma(m), the Bradley-Terry negative log-likelihood"),
    "ipo": MarginLoss("ipo", _ipo_phi, _ipo_dphi, _ipo_d2phi,
                      doc="(m/beta - 1/(2 beta))^2, identity preference optimisation"),
}


def get_loss(name: str) -> MarginLoss:
    """Look a loss up by name in :data:`LOSSES`."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}") from None


def register_loss(loss: MarginLoss) -> MarginLoss:
    """Add a margin loss to the registry (a name may be registered once)."""
    if loss.name in LOSSES:
        raise ValueError(f"loss {loss.name!r} is already registered")
    LOSSES[loss.name] = loss
    return loss


def dpo_loss(theta, data: PreferenceData, *, beta: float) -> np.ndarray:
    r"""Per-pair DPO loss l_i = softplus(-m_i) (paper.md section 1), shape (n,)."""
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
    spec = get_loss(loss)
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
