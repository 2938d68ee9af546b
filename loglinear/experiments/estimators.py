"""The one registry of estimators used by the study runners: name -> how to fit it.

Every entry maps (data, beta, hyperparameter) to the centered parameter w = theta -
theta_ref. Runners look estimators up here and never branch on their names, so an
estimator whose module is still missing is simply reported as unavailable.

Hyperparameters: the robust estimators take a radius (KL: rho; W1/W2: eps; WDPO: the W2
radius rho_o of its first-order expansion). KLDPO takes a temperature tau, which acts as an
*inverse* radius (KLDPO with temperature tau is KL-DRO with lambda* = tau, and a larger
ball means a smaller lambda*), so radius schedules c n^{-a} become tau = c n^{+a} for it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..data import PreferenceData


@dataclass(frozen=True)
class Estimator:
    """One estimator of the rates study.

    Attributes:
        name: registry key (also the ``estimator`` column of the records).
        fit: ``fit(data, *, beta, param, bound) -> w`` (d,), raising on failure.
        param: name of the hyperparameter (``None`` for DPO).
        inverse: True when the hyperparameter is a temperature (grows as the ball shrinks).
        local_kind: the kind passed to :func:`loglinear.estimation.local_asymptotics`
            (``None``: no local prediction).
        theorem: which bound of paper.md section 5 applies (``prop1``, ``thm1``, ``thm2``).
        collapse: ``collapse(pop, *, beta) -> radius`` at which the population optimum
            collapses to w = 0, or ``None``.
        requires: ``"module:attribute"`` that must import for the estimator to be
            available.
    """

    name: str
    fit: Callable[..., np.ndarray]
    param: str | None
    inverse: bool
    local_kind: str | None
    theorem: str
    collapse: Callable[..., float] | None = None
    requires: str | None = None

    def available(self) -> bool:
        if self.requires is None:
            return True
        module, _, attr = self.requires.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return False
        return not attr or hasattr(mod, attr)

    def hyperparameter(self, *, base: float, exponent: float, n: int,
                       reference_n: float = 1.0) -> float:
        """The schedule's value at n: base (n/n0)^{-a} (base (n/n0)^{+a} for a temperature)."""
        sign = 1.0 if self.inverse else -1.0
        return float(base) * (float(n) / float(reference_n)) ** (sign * float(exponent))


# ----------------------------------------------------------------------- fits
def _fit_dpo(data: PreferenceData, *, beta, param, bound):
    from ..fit import fit_dpo

    return fit_dpo(data, beta=beta, bound=bound).theta


def _accurate_theta(res) -> np.ndarray:
    """The solution of a robust solve, or an error if it is flagged inaccurate (a study
    records the failure with its reason instead of an unreliable estimate)."""
    from ..robust import RobustSolverError

    if res.status == "inaccurate":
        raise RobustSolverError(f"{res.solver} solve is inaccurate (KKT residual "
                                f"{res.certificate:.3g}): {res.info}")
    return np.asarray(res.theta, float)


def _fit_kl(data, *, beta, param, bound):
    from ..robust import solve_kl

    return _accurate_theta(solve_kl(data, beta=beta, radius=param, bound=bound))


def _fit_w1(data, *, beta, param, bound):
    from ..robust import solve_wasserstein

    return _accurate_theta(solve_wasserstein(data, beta=beta, radius=param, p=1, bound=bound))


def _fit_w2(data, *, beta, param, bound):
    from ..robust import solve_wasserstein

    return _accurate_theta(solve_wasserstein(data, beta=beta, radius=param, p=2, bound=bound))


def _fit_wdpo(data, *, beta, param, bound):
    from ..approx import fit_wdpo

    return np.asarray(fit_wdpo(data, beta=beta, rho=param, form="paper").theta, float)


def _fit_kldpo(data, *, beta, param, bound):
    from ..approx import fit_kldpo

    return np.asarray(fit_kldpo(data, beta=beta, tau=param, form="paper").theta, float)


# ------------------------------------------------------------ collapse radii
def _collapse_kl(pop, *, beta):
    from ..robust import collapse_radius_kl

    return float(collapse_radius_kl(pop, beta=beta))


def _collapse_w(p):
    def collapse(pop, *, beta):
        from ..robust import collapse_radius_wasserstein

        return float(collapse_radius_wasserstein(pop, beta=beta, p=p))

    return collapse


def _collapse_wdpo(pop, *, beta):
    r"""WDPO (paper form) at w -> 0: L(w) + rho beta ||w|| S(w) with S(0) = 1/2, so the
    optimum is w = 0 iff rho beta / 2 >= ||grad L(0)||: rho_c = 2 ||grad L(0)|| / beta."""
    from ..losses import objective

    g0 = objective(np.zeros(pop.d), pop, beta=beta, hessian=False).grad
    return 2.0 * float(np.linalg.norm(g0)) / beta


ESTIMATORS: dict[str, Estimator] = {
    e.name: e
    for e in (
        Estimator("dpo", _fit_dpo, None, False, "dpo", "prop1"),
        Estimator("kl", _fit_kl, "radius", False, "kl", "thm2", _collapse_kl,
                  "loglinear.robust:solve_kl"),
        Estimator("w1", _fit_w1, "radius", False, "w1", "thm1", _collapse_w(1),
                  "loglinear.robust:solve_wasserstein"),
        # W2's local prediction uses its first-order expansion (the WDPO objective).
        Estimator("w2", _fit_w2, "radius", False, "wdpo", "thm1", _collapse_w(2),
                  "loglinear.robust:solve_wasserstein"),
        Estimator("wdpo", _fit_wdpo, "rho", False, "wdpo", "thm1", _collapse_wdpo,
                  "loglinear.approx:fit_wdpo"),
        Estimator("kldpo", _fit_kldpo, "tau", True, "kldpo", "thm2", None,
                  "loglinear.approx:fit_kldpo"),
    )
}


def get_estimator(name: str) -> Estimator:
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; registered: {sorted(ESTIMATORS)}") from None


def register_estimator(est: Estimator) -> Estimator:
    """Add an estimator (a new name only)."""
    if est.name in ESTIMATORS:
        raise ValueError(f"estimator {est.name!r} is already registered")
    ESTIMATORS[est.name] = est
    return est
