"""Shared pieces of the surrogates (docs/theory.md §4): the result type and the per-pair DPO
terms (margins, losses, input-gradient coefficients) that WDPO and KLDPO are built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..data import PreferenceData
from ..losses import _check_theta, _nonnegative, _positive, dpo_margin_terms, margins

OFFICIAL_CAP = 10.0        # the official code's clamp on the KLDPO weights (both backends)
DPO_HESSIAN_CURVATURE = 0.25   # sup_m sigma(m) sigma(-m): the DPO loss's curvature bound
KINK_TOL = 1e-12           # ||theta|| below this is the paper-form kink at 0
STALL_NORM = 1e8           # an iterate this large is reported as diverged


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    return (_nonnegative if allow_zero else _positive)(name, value)


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

    def _problem(self) -> str:
        """``wdpo/paper, rho=0.1``: the surrogate, its form and its hyperparameter under
        the name it has in the surrogate's signature."""
        name = HYPER_NAMES.get(self.surrogate, "hyper")
        return f"{self.surrogate}/{self.form}, {name}={float(self.hyper):.6g}"

    def __repr__(self) -> str:
        # one line, no arrays: theta, history and info stay available as fields
        return (f"ApproxResult({self._problem()}, status={self.status!r}, grad_norm="
                f"{float(self.grad_norm):.2e}, ||theta||={float(np.linalg.norm(self.theta)):.6g}"
                f", objective={float(self.objective):.6g}, method={self.method!r}, "
                f"seconds={float(self.seconds):.3g})")

    def summary(self) -> str:
        """A few lines: the surrogate, the status and its certificate, theta's size, the
        objective, and the diagnostics in ``info`` that are single numbers."""
        lines = [f"ApproxResult: {self._problem()}",
                 f"  status       {self.status} (certificate ||grad|| = "
                 f"{float(self.grad_norm):.2e}; {self.method}, {int(self.iterations)} "
                 f"iterations, {float(self.seconds):.3g} s)",
                 f"  theta        d = {np.size(self.theta)}, ||theta|| = "
                 f"{float(np.linalg.norm(self.theta)):.6g}",
                 f"  objective    {float(self.objective):.6g}",
                 f"  min eig(H)   {float(self.min_hessian_eig):.3g}"]
        scalars = {k: v for k, v in self.info.items()
                   if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
        lines += [f"  {k:<12} {float(v):.6g}" for k, v in scalars.items()]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self) if cycle else self.summary())


HYPER_NAMES = {"wdpo": "rho", "kldpo": "tau"}   # ApproxResult.hyper under its own name


# ------------------------------------------------------------------ shared pieces
class DPOPieces(NamedTuple):
    """Per-pair DPO terms at theta (docs/theory.md §2.2), each of shape (n,) but theta (d,).

    ``a`` = sigma(-m) = -phi'(m); ``curvature`` = phi''(m) = sigma(m) sigma(-m);
    ``coef`` = -(2y-1) beta sigma(-m), so that grad_theta l_i = coef_i x_i.
    """

    theta: np.ndarray
    m: np.ndarray
    loss: np.ndarray
    a: np.ndarray
    curvature: np.ndarray
    coef: np.ndarray


def _pieces(theta, data: PreferenceData, beta: float) -> DPOPieces:
    """The DPO terms at theta, from :func:`loglinear.losses.dpo_margin_terms`."""
    theta = _check_theta(theta, data.d)
    m = margins(theta, data, beta=beta)
    loss, d1, d2 = dpo_margin_terms(m)
    a = -d1
    return DPOPieces(theta, m, loss, a, d2, -data.sign * beta * a)


def _dpo_terms(theta, data, beta, hessian):
    """sum_i q_i l_i with its gradient and (optionally) Hessian in theta."""
    p = _pieces(theta, data, beta)
    q = data.weight
    value = float(q @ p.loss)
    grad = data.x.T @ (q * p.coef)
    hess = None
    if hessian:
        hess = (data.x * (q * beta**2 * p.curvature)[:, None]).T @ data.x
    return value, grad, hess
