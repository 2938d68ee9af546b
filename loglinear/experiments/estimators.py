"""The one registry of estimators used by the study runners: name -> how to fit it.

Every entry maps (data, beta, hyperparameter, bound) to the centered parameter w = theta -
theta_ref fitted on the ball ||w|| <= bound, with its certificate (:class:`EstimatorFit`):
runners pass one bound to every estimator, and record a fit as a result only when it is
certified. Runners look estimators up in :data:`ESTIMATORS` and never branch on their
names: what differs between estimators (the fit, the exact target, the dual variable, the
collapse radius, the bound that applies) is a field of the entry.

Hyperparameters: the robust estimators take a radius (KL: rho; W1/W2: eps; WDPO: the W2
radius rho_o of its first-order expansion, docs/theory.md §4.1). KLDPO takes a temperature
tau, which acts as an *inverse* radius (KLDPO with temperature tau is KL-DRO with
lambda* = tau, docs/theory.md §4.2, and a larger ball means a smaller lambda*), so radius
schedules c n^{-a} become tau = c n^{+a} for it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from ..approx import fit_kldpo, fit_wdpo
from ..data import PreferenceData
from ..estimation import LOCAL_KINDS, kl_dual_variable, local_asymptotics
from ..fit import fit_dpo
from ..losses import dpo_loss, objective
from ..registry import Registry
from ..robust import (
    RobustSolverError,
    collapse_radius_kl,
    collapse_radius_wasserstein,
    solve_kl,
    solve_wasserstein,
)
from ..robust._base import CERT_TOL

CERTIFIED = ("converged", "collapsed", "nominal", "kink")   # statuses with a certificate


class EstimatorFit(NamedTuple):
    """What an estimator's fit returns: the estimate and whether it is certified.

    Attributes:
        theta: (d,) the centered estimate w.
        status: ``"converged"`` (or another of :data:`CERTIFIED`) when the solver's
            certificate met its tolerance; otherwise the solver's own status.
        certificate: the gradient norm or KKT residual (NaN where the solver reports none).
    """

    theta: np.ndarray
    status: str
    certificate: float

    @property
    def certified(self) -> bool:
        return self.status in CERTIFIED


@dataclass(frozen=True)
class Estimator:
    """One estimator of the rates study.

    Attributes:
        name: registry key (also the ``estimator`` column of the records).
        fit: ``fit(data, *, beta, param, bound) -> EstimatorFit`` (or the (d,) estimate w
            alone, taken as certified), fitted on the ball ||w|| <= bound (None:
            unconstrained); raises ``SeparableDataError`` where no finite minimiser
            exists and no bound is given.
        param: name of the hyperparameter (``None`` for DPO).
        inverse: True when the hyperparameter is a temperature (grows as the ball shrinks).
        local_kind: the kind passed to :func:`loglinear.estimation.local_asymptotics`
            (docs/theory.md §5.6; ``None``: no local prediction).
        theorem: which bound of docs/theory.md §5 applies (``prop1``, ``thm1``, ``thm2``),
            the key of ``experiments.rates.analysis.BOUNDS``.
        collapse: ``collapse(pop, *, beta) -> radius`` at which the population optimum
            collapses to w = 0 (docs/theory.md §3.2, §3.6), or ``None``.
        dual: ``dual(pop, w, *, beta, param) -> lambda*``, the dual variable at the
            population optimum that the Theorem 2 bound uses (docs/theory.md §5.3), or
            ``None`` (no dual variable).
        population_optimum: ``population_optimum(env) -> w``, the population optimum in
            closed form, used as the exact target instead of a fit on the population, or
            ``None``.
    """

    name: str
    fit: Callable[..., np.ndarray]
    param: str | None
    inverse: bool
    local_kind: str | None
    theorem: str
    collapse: Callable[..., float] | None = None
    dual: Callable[..., float] | None = None
    population_optimum: Callable[..., np.ndarray] | None = None

    def available(self) -> bool:
        """Deprecated: every estimator's dependencies are the core, always installed."""
        warnings.warn("Estimator.available() is deprecated: every registered estimator is "
                      "available", DeprecationWarning, stacklevel=2)
        return True

    def hyperparameter(self, *, base: float, exponent: float, n: int,
                       reference_n: float = 1.0) -> float:
        """The schedule's value at n: base (n/n0)^{-a} (base (n/n0)^{+a} for a temperature)."""
        sign = 1.0 if self.inverse else -1.0
        return float(base) * (float(n) / float(reference_n)) ** (sign * float(exponent))

    def solve(self, data: PreferenceData, *, beta: float, param, bound: float | None
              ) -> EstimatorFit:
        """``fit`` with its outcome as an :class:`EstimatorFit` (a bare array counts as
        certified, with no certificate)."""
        out = self.fit(data, beta=beta, param=param, bound=bound)
        if isinstance(out, EstimatorFit):
            return out
        return EstimatorFit(np.asarray(out, float), "converged", float("nan"))

    def target_fit(self, env, pop: PreferenceData, *, beta: float, param,
                   bound: float | None) -> EstimatorFit:
        """The exact population target at ``param`` with its certificate: the closed form
        where there is one (certificate 0), otherwise the estimator fitted to the
        enumerated population ``pop`` on the same ball as the samples."""
        if self.population_optimum is not None:
            return EstimatorFit(np.asarray(self.population_optimum(env), float),
                                "converged", 0.0)
        return self.solve(pop, beta=beta, param=param, bound=bound)

    def target(self, env, pop: PreferenceData, *, beta: float, param, bound: float
               ) -> np.ndarray:
        """The exact population target at ``param`` (see :meth:`target_fit`); raises
        ``RuntimeError`` when the fit is not certified."""
        out = self.target_fit(env, pop, beta=beta, param=param, bound=bound)
        if not out.certified:
            raise RuntimeError(f"{self.name} target not certified: {out.status} "
                               f"(certificate {out.certificate:.3g})")
        return out.theta

    def local(self, pop: PreferenceData, w, *, beta: float, param):
        """:func:`loglinear.estimation.local_asymptotics` of ``local_kind`` at the population
        optimum ``w``, the hyperparameter passed under the name that kind takes (W2 uses
        the WDPO expansion, whose radius is ``rho``); raises ``ValueError`` at a kink."""
        name = LOCAL_KINDS.get(self.local_kind).hyperparameter
        hyper = {} if name is None else {name: 0.0 if param is None else param}
        return local_asymptotics(self.local_kind, pop, w, beta=beta, **hyper)

    def population_dual(self, pop: PreferenceData, w, *, beta: float, param) -> float:
        """The dual variable at the population optimum ``w`` (NaN without one)."""
        return np.nan if self.dual is None else self.dual(pop, w, beta=beta, param=param)


# ----------------------------------------------------------------------- fits
# Every fit takes the same ``bound``: the runners pass one Theta to all estimators.
def _fit_dpo(data: PreferenceData, *, beta, param, bound):
    """fit_dpo certifies ||grad + mu theta|| to its own tolerance only off the ball; the
    study holds every estimator to CERT_TOL, the robust solvers' KKT threshold."""
    res = fit_dpo(data, beta=beta, bound=bound)
    ok = res.status == "converged" and res.grad_norm <= CERT_TOL
    return EstimatorFit(np.asarray(res.theta, float), "converged" if ok else
                        f"uncertified ({res.status})", float(res.grad_norm))


def _accurate_theta(res) -> np.ndarray:
    """The solution of a robust solve, or an error if it is flagged inaccurate (a study
    records the failure with its reason instead of an unreliable estimate)."""
    if res.status == "inaccurate":
        raise RobustSolverError(f"{res.solver} solve is inaccurate (KKT residual "
                                f"{res.certificate:.3g}): {dict(res.info)}")
    return np.asarray(res.theta, float)


def _robust_fit(res) -> EstimatorFit:
    theta = _accurate_theta(res)
    return EstimatorFit(theta, res.status, float(res.certificate))


def _fit_kl(data, *, beta, param, bound):
    return _robust_fit(solve_kl(data, beta=beta, radius=param, bound=bound))


def _fit_wasserstein(p):
    def fit(data, *, beta, param, bound):
        return _robust_fit(solve_wasserstein(data, beta=beta, radius=param, p=p,
                                             bound=bound))

    return fit


def _approx_fit(res) -> EstimatorFit:
    status = res.status if res.converged else f"uncertified ({res.status})"
    return EstimatorFit(np.asarray(res.theta, float), status, float(res.grad_norm))


def _fit_wdpo(data, *, beta, param, bound):
    return _approx_fit(fit_wdpo(data, beta=beta, rho=param, form="paper", bound=bound))


def _fit_kldpo(data, *, beta, param, bound):
    return _approx_fit(fit_kldpo(data, beta=beta, tau=param, form="paper", bound=bound))


def _w_star(env) -> np.ndarray:
    """DPO's population optimum in closed form, w* = omega / beta (docs/theory.md §1.4)."""
    return env.theta_star() - env.theta_ref


# ------------------------------------------------------------ collapse radii
def _collapse_kl(pop, *, beta):
    return float(collapse_radius_kl(pop, beta=beta))


def _collapse_wasserstein(p):
    def collapse(pop, *, beta):
        return float(collapse_radius_wasserstein(pop, beta=beta, p=p))

    return collapse


def _collapse_wdpo(pop, *, beta):
    r"""WDPO (paper form) at w -> 0: L(w) + rho beta ||w|| S(w) with S(0) = 1/2, so the
    optimum is w = 0 iff rho beta / 2 >= ||grad L(0)||: rho_c = 2 ||grad L(0)|| / beta
    (docs/theory.md §4.1)."""
    g0 = objective(np.zeros(pop.d), pop, beta=beta, hessian=False).grad
    return 2.0 * float(np.linalg.norm(g0)) / beta


# ---------------------------------------------------------------- dual variables
def _dual_kl(pop, w, *, beta, param):
    """lambda*(rho) of the KL dual at w (docs/theory.md §3.1)."""
    return kl_dual_variable(dpo_loss(w, pop, beta=beta), pop.weight, param)


def _dual_kldpo(pop, w, *, beta, param):
    """KLDPO at temperature tau is KL-DRO with lambda* = tau (docs/theory.md §4.2)."""
    return float(param)


ESTIMATORS: Registry[Estimator] = Registry("estimator")
for _e in (
    Estimator("dpo", _fit_dpo, None, False, "dpo", "prop1", population_optimum=_w_star),
    Estimator("kl", _fit_kl, "radius", False, "kl", "thm2", _collapse_kl, _dual_kl),
    Estimator("w1", _fit_wasserstein(1), "radius", False, "w1", "thm1",
              _collapse_wasserstein(1)),
    # W2's local prediction uses its first-order expansion (the WDPO objective).
    Estimator("w2", _fit_wasserstein(2), "radius", False, "wdpo", "thm1",
              _collapse_wasserstein(2)),
    Estimator("wdpo", _fit_wdpo, "rho", False, "wdpo", "thm1", _collapse_wdpo),
    Estimator("kldpo", _fit_kldpo, "tau", True, "kldpo", "thm2", None, _dual_kldpo),
):
    ESTIMATORS.register(_e.name, _e)
del _e


def get_estimator(name: str) -> Estimator:
    """The registered estimator ``name`` (a ``ValueError`` lists the registered names)."""
    return ESTIMATORS.get(name)


def register_estimator(est: Estimator) -> Estimator:
    """Add an estimator (a new name only)."""
    return ESTIMATORS.register(est.name, est)
