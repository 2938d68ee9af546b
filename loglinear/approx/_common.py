"""Shared pieces of the surrogates: the result type, margins and input-gradient terms."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from ..data import PreferenceData
from ..losses import _check_theta, softplus

OFFICIAL_CAP = 10.0        # the official code's clamp on the KLDPO weights
DPO_HESSIAN_CURVATURE = 0.25   # sup_m sigma(m) sigma(-m): the DPO loss's curvature bound
KINK_TOL = 1e-12           # ||theta|| below this is the paper-form kink at 0
STALL_NORM = 1e8           # an iterate this large is reported as diverged


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not (np.isfinite(value) and ok):
        kind = "nonnegative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {kind} finite number, got {value}")
    return value


@dataclass(frozen=True)
class ApproxResult:
    """A fitted surrogate with its convergence report.

    Attributes:
        theta: (d,) the estimate.
        objective: the surrogate objective at ``theta`` (WDPO: L + penalty; KLDPO paper:
            tau log sum q e^{l/tau}; KLDPO official: sum_i q_i w_i l_i with w frozen at theta).
        iterations: optimiser iterations (summed over starts / outer loops).
        status: ``"converged"``, ``"max_iter"``, ``"diverged"`` or ``"kink"`` (WDPO paper
            form at theta = 0, certified by its subgradient condition).
        converged: whether the stationarity certificate met its tolerance.
        grad_norm: the certificate: ||gradient|| (or the subgradient gap at the kink).
        seconds: wall time.
        surrogate: ``"wdpo"`` or ``"kldpo"``.
        form: ``"paper"`` or ``"official"``.
        method: the optimiser used.
        hyper: the hyperparameter (rho for WDPO, tau for KLDPO).
        min_hessian_eig: smallest eigenvalue of the objective's Hessian at ``theta``
            (NaN where not defined); > 0 certifies a strict local minimum.
        history: per-iteration objective values of the iterative methods (empty otherwise).
        info: extra diagnostics (contraction factor, implied radius, starts tried, ...).
    """

    theta: np.ndarray
    objective: float
    iterations: int
    status: str
    converged: bool
    grad_norm: float
    seconds: float
    surrogate: str
    form: str
    method: str
    hyper: float
    min_hessian_eig: float = float("nan")
    history: tuple = ()
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------ shared pieces
def _pieces(theta, data: PreferenceData, beta: float):
    """Margins m, sigma(-m) and the per-pair gradient coefficients c (grad l_i = c_i x_i)."""
    theta = _check_theta(theta, data.d)
    m = data.sign * beta * (data.x @ theta - data.offset)
    a = expit(-m)
    c = -data.sign * beta * a
    return theta, m, a, c


def _get(registry: dict, name: str, what: str):
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; allowed: {sorted(registry)}") from None


def _dpo_terms(theta, data, beta, hessian):
    theta, m, a, c = _pieces(theta, data, beta)
    q = data.weight
    value = float(q @ softplus(-m))
    grad = data.x.T @ (q * c)
    hess = None
    if hessian:
        hess = (data.x * (q * beta**2 * a * (1.0 - a))[:, None]).T @ data.x
    return value, grad, hess


