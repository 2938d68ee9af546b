"""The results of an audit: frozen dataclasses of numbers (see :mod:`loglinear.audit.core`
for what each one means and how it is computed)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data import PreferenceData


@dataclass(frozen=True)
class WeakDirection:
    """An eigenvector v of Sigma with a small eigenvalue: a direction the data barely explore.

    Attributes: eigenvalue; vector (d,); loadings, the features with the largest |v_j| as
    (name, v_j); pair, the pair with the largest q_i (x_i . v)^2; share, that pair's
    fraction of the eigenvalue.
    """

    eigenvalue: float
    vector: np.ndarray
    loadings: tuple
    pair: int
    share: float


@dataclass(frozen=True)
class CoverageSummary:
    """The spectrum of Sigma = sum_i q_i x_i x_i^T (ascending eigenvalues, (d,)), its
    eigenvectors (d, d) as columns, lambda_min/max, the participation ratio
    (tr Sigma)^2 / tr Sigma^2, the numerical rank and the weakest directions."""

    eigvals: np.ndarray
    eigvecs: np.ndarray
    lambda_min: float
    lambda_max: float
    effective_dimension: float
    rank: int
    weak: tuple[WeakDirection, ...]


@dataclass(frozen=True)
class FitSummary:
    """The DPO fit. ``se``, ``lo``, ``hi``: (d,) sandwich standard errors and 95% Wald
    intervals, ``None`` with ``se_note`` saying why where no normal limit exists.
    ``bound``: the ball ||theta|| <= bound the fit is on (``None``: unconstrained), with its
    multiplier. ``separable``: no finite fit exists (``direction`` separates the pairs);
    ``default_bound``: no bound was given, so the fit is on the ball of
    :data:`loglinear.audit.core.SEPARABLE_MARGIN`. ``accuracy``: the weighted fraction of
    pairs with a positive margin."""

    theta: np.ndarray
    objective: float
    accuracy: float
    grad_norm: float
    separable: bool
    direction: np.ndarray | None
    bound: float | None
    bound_multiplier: float
    se: np.ndarray | None
    lo: np.ndarray | None
    hi: np.ndarray | None
    se_note: str | None
    default_bound: bool = False


@dataclass(frozen=True)
class CollapseRadii:
    """rho_0 (KL), eps_0 (W1 and W2, kappa = inf); ``None`` with ``note`` for data with
    nonzero offsets, where the collapse radius is not defined."""

    kl: float | None
    w1: float | None
    w2: float | None
    note: str | None = None


@dataclass(frozen=True)
class Shift:
    """How far a KL worst case p moves the data weights q: total variation 1/2 sum|p - q|,
    Kish ESS fraction, largest p_i/q_i, and the rise E_p l - E_q l of the mean loss."""

    total_variation: float
    ess: float
    max_ratio: float
    loss_increase: float


@dataclass(frozen=True)
class Suggestion:
    """The tau rule: ``tau`` (exact), ``tau_first_order`` = sd(l)/sqrt(-log min_ess), the
    implied KL radius rho(tau) and its ``shift``; ``theta`` is where the weights were
    evaluated (the KLDPO solution, or the bounded DPO fit on separable data, ``note``)."""

    tau: float
    tau_first_order: float
    min_ess: float
    implied_radius: float
    loss_sd: float
    theta: np.ndarray
    shift: Shift
    note: str | None = None


@dataclass(frozen=True)
class WorstCase:
    """The exact KL worst case at ``radius`` (chosen by ``rule``): the robust optimum
    ``theta``, its value ``objective`` (sup over the ball) and ``status``, the dual lambda*,
    and per pair (n,): ``p``, ``ratio`` p_i/q_i, ``losses`` and ``margins`` at theta."""

    radius: float
    rule: str
    theta: np.ndarray
    objective: float
    status: str
    dual: float
    p: np.ndarray
    ratio: np.ndarray
    losses: np.ndarray
    margins: np.ndarray
    shift: Shift

    def top(self, k: int) -> np.ndarray:
        """The indices of the k pairs with the largest p_i/q_i (ties by index)."""
        return np.argsort(-self.ratio, kind="stable")[:k]


@dataclass(frozen=True)
class AuditReport:
    """Everything :func:`audit` computed; :func:`loglinear.audit.write_report` writes it."""

    n: int
    d: int
    beta: float
    source: str
    feature_names: tuple[str, ...]
    data: PreferenceData = field(repr=False)
    coverage: CoverageSummary = field(repr=False)
    fit: FitSummary = field(repr=False)
    collapse: CollapseRadii
    suggestion: Suggestion | None = field(repr=False)
    worst_case: WorstCase | None = field(repr=False)
    texts: tuple[dict, ...] | None = field(default=None, repr=False)
    embedding: object = field(default=None, repr=False)
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
