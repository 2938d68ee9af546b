r"""The estimators of the Remark 3 study: one table, name -> how to fit, evaluate, judge and
calibrate (docs/theory.md §8).

Each entry returns the solver's own result (``FitResult``, ``RobustResult`` or
``ApproxResult``), so that :func:`loglinear.inference.covariance` can read the estimator off
it, and evaluates the estimator's robust objective V_n at a fixed theta on any weighted
data. The study never branches on a name: what differs is a field of the entry.

* ``calibrate(pop, *, beta, fraction)``: the hyperparameter at n0, c = ``fraction`` times
  the population collapse radius (KL: rho; W1, W2: eps; WDPO: its rho is a W2 radius to
  first order, docs/theory.md §4.1, and with zero offsets its collapse radius
  :math:`2\|\nabla L(0)\|/\beta` equals W2's, §3.6). KLDPO: the temperature whose implied KL
  radius is ``fraction`` times the KL collapse radius (docs/theory.md §4.2); 1/tau then
  plays the radius.
* ``ball``: the ball of the stated shift in certificate (ii): the estimator's own ball, the
  ball a surrogate approximates (WDPO: W2; KLDPO: KL), and KL for DPO.
* ``rate``: the name in :data:`loglinear.remark3.RATES` whose predictions apply (``None``:
  DPO, no schedule; an M-estimator of theta* at n^-1/2, docs/theory.md §8.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..._robust_bounds import paper_robust_bound, robust_local_bound
from ...approx import fit_kldpo, fit_wdpo, kldpo_objective, tau_for_radius_kl, wdpo_objective
from ...bounds import dpo_local_bound, paper_dpo_bound
from ...fit import fit_dpo
from ...losses import objective
from ...registry import Registry
from ...robust import (
    BALLS,
    collapse_radius_kl,
    collapse_radius_wasserstein,
    kl_value,
    solve_kl,
    solve_wasserstein,
    wasserstein_value,
)
from ...robust._base import CERT_TOL

BOUNDARY_RTOL = 1e-9     # ||w|| >= B (1 - this) is on the sphere; above B (1 + this): outside
ROBUST_OK = ("converged", "collapsed", "nominal")


@dataclass(frozen=True)
class Remark3Fit:
    """One estimator of the study.

    Attributes:
        name: the ``estimator`` column.
        hyperparameter: the name the solver takes (``radius``, ``rho``, ``tau``; ``None``).
        inverse: True for a temperature (tau_n = tau_0 (n/n0)^+a; 1/tau is the radius).
        rate: the name in :data:`loglinear.remark3.RATES`, or ``None`` (no schedule).
        ball: the name in :data:`loglinear.robust.BALLS` of the shift of certificate (ii).
        calibrate: ``calibrate(pop, *, beta, fraction) -> hyperparameter at n0``, or
            ``None`` for an estimator without a hyperparameter.
        solve: ``solve(data, *, beta, hyper, bound) -> result`` on Theta = {||w|| <= bound}.
        value: ``value(theta, data, *, beta, hyper) -> V(theta)``, the robust objective.
        judge: ``judge(result) -> (status, failure)``: ``("ok", "")`` when certified.
        bounds: ``bounds(result, data, *, beta, n, bound, delta, a=None) -> dict`` of
            the finite-sample bounds on the error to the estimator's own target that
            apply, ``local_bound`` and ``paper_bound`` (DPO, target theta*: §9.2's local
            bound and the paper's Proposition 1; the robust estimators at a fixed radius,
            target theta(rho): §9.5's local bound and the paper's Theorem 1 or 2; an empty
            dict where none is computed: a shrinking schedule, a != 0), or ``None``.
    """

    name: str
    hyperparameter: str | None
    inverse: bool
    rate: str | None
    ball: str
    calibrate: Callable[..., float] | None
    solve: Callable
    value: Callable[..., float]
    judge: Callable
    bounds: Callable[..., dict] | None = None

    def at(self, base: float | None, *, a: float, n: int, reference_n: float) -> float | None:
        """The schedule's hyperparameter at n: base (n/n0)^-a (base (n/n0)^+a for a
        temperature); ``None`` without a hyperparameter."""
        if base is None:
            return None
        sign = 1.0 if self.inverse else -1.0
        return float(base) * (float(n) / float(reference_n)) ** (sign * float(a))

    def shrinking(self, hyper: float | None) -> float:
        """The parameter that shrinks like n^-a: the radius, or 1/tau (NaN: none)."""
        if hyper is None:
            return np.nan
        return 1.0 / hyper if self.inverse else float(hyper)


# ------------------------------------------------------------------- judges
def _judge_fit(res) -> tuple[str, str]:
    """fit_dpo certifies ||grad + mu theta|| to its own tolerance; the study holds every
    estimator to CERT_TOL, the robust solvers' KKT threshold."""
    if res.status == "converged" and res.grad_norm <= CERT_TOL:
        return "ok", ""
    reason = f"uncertified: {res.status} (gradient {res.grad_norm:.3g})"
    return f"failed: {reason}", reason


def _judge_robust(res) -> tuple[str, str]:
    if res.status in ROBUST_OK:
        return "ok", ""
    reason = f"uncertified: {res.status} (certificate {res.certificate:.3g})"
    return f"failed: {reason}", reason


def _judge_approx(res) -> tuple[str, str]:
    if res.converged:
        return "ok", ""
    reason = f"uncertified: {res.status} (gradient {res.grad_norm:.3g})"
    return f"failed: {reason}", reason


# ------------------------------------------------------------------- pieces
def _dpo_bounds(res, data, *, beta, n, bound, delta, a=None) -> dict:
    """docs/theory.md §9.2's local bound and the paper's Proposition 1 (§5.4), both on
    ||w-hat - w*||; a singular Hessian at w-hat gives no finite local bound (inf)."""
    try:
        local = dpo_local_bound(np.asarray(res.theta, float), data, beta=beta, delta=delta,
                                n=n).value
    except ValueError:
        local = np.inf
    return dict(local_bound=float(local),
                paper_bound=paper_dpo_bound(data, n, beta=beta, bound=bound, delta=delta))


def _robust_bounds(res, data, *, beta, n, bound, delta, a=None) -> dict:
    """At a fixed radius (a = 0; ``None``: not told), docs/theory.md §9.5's local bound
    and the paper's Theorem 1 or 2 (§5.3), both on ||w-hat - w(rho)||; where the estimator
    has no normal limit (collapsed, on the sphere, a kink) there is no finite local bound
    (inf). Under a shrinking schedule nothing is computed (the columns stay empty)."""
    if a is not None and float(a) != 0.0:
        return {}
    try:
        local = robust_local_bound(res, data, beta=beta, delta=delta, n=n).value
    except ValueError:
        local = np.inf
    return dict(local_bound=float(local),
                paper_bound=paper_robust_bound(res, data, n, beta=beta, bound=bound,
                                               delta=delta))


def _dpo_value(theta, data, *, beta, hyper):
    return objective(theta, data, beta=beta, hessian=False).value


def _kl_calibrate(pop, *, beta, fraction):
    return fraction * float(collapse_radius_kl(pop, beta=beta))


def _wasserstein_calibrate(p):
    def calibrate(pop, *, beta, fraction):
        return fraction * float(collapse_radius_wasserstein(pop, beta=beta, p=p))
    return calibrate


def _kldpo_calibrate(pop, *, beta, fraction):
    return float(tau_for_radius_kl(_kl_calibrate(pop, beta=beta, fraction=fraction), pop,
                                   beta=beta))


def _wasserstein_solve(p):
    def solve(data, *, beta, hyper, bound):
        return solve_wasserstein(data, beta=beta, radius=hyper, p=p, bound=bound)
    return solve


def _wasserstein_v(p):
    def value(theta, data, *, beta, hyper):
        return wasserstein_value(theta, data, beta=beta, radius=hyper, p=p).value
    return value


FITS: Registry[Remark3Fit] = Registry("remark3 estimator")
for _f in (
    Remark3Fit("dpo", None, False, None, "kl", None,
               lambda data, *, beta, hyper, bound: fit_dpo(data, beta=beta, bound=bound),
               _dpo_value, _judge_fit, _dpo_bounds),
    Remark3Fit("kl", "radius", False, "kl", "kl", _kl_calibrate,
               lambda data, *, beta, hyper, bound: solve_kl(data, beta=beta, radius=hyper,
                                                            bound=bound),
               lambda theta, data, *, beta, hyper: kl_value(theta, data, beta=beta,
                                                            radius=hyper).value,
               _judge_robust, _robust_bounds),
    Remark3Fit("w1", "radius", False, "w1", "w1", _wasserstein_calibrate(1),
               _wasserstein_solve(1), _wasserstein_v(1), _judge_robust, _robust_bounds),
    Remark3Fit("w2", "radius", False, "w2", "w2", _wasserstein_calibrate(2),
               _wasserstein_solve(2), _wasserstein_v(2), _judge_robust, _robust_bounds),
    Remark3Fit("wdpo", "rho", False, "wdpo", "w2", _wasserstein_calibrate(2),
               lambda data, *, beta, hyper, bound: fit_wdpo(data, beta=beta, rho=hyper,
                                                            form="paper", bound=bound),
               lambda theta, data, *, beta, hyper: wdpo_objective(theta, data, beta=beta,
                                                                  rho=hyper)[0],
               _judge_approx, _robust_bounds),
    Remark3Fit("kldpo", "tau", True, "kldpo", "kl", _kldpo_calibrate,
               lambda data, *, beta, hyper, bound: fit_kldpo(data, beta=beta, tau=hyper,
                                                             form="paper", bound=bound),
               lambda theta, data, *, beta, hyper: kldpo_objective(theta, data, beta=beta,
                                                                   tau=hyper)[0],
               _judge_approx, _robust_bounds),
):
    FITS.register(_f.name, _f)
del _f


def get_fit(name: str) -> Remark3Fit:
    """The registered estimator ``name`` (a ``ValueError`` lists the registered names)."""
    return FITS.get(name)


def shift_radius(ball: str, pop, *, beta: float, fraction: float) -> float:
    """The stated shift of certificate (ii) for ``ball``: ``fraction`` times the ball's
    population collapse radius."""
    return fraction * float(BALLS.get(ball).collapse_radius(pop, beta=beta))


def worst_case_risk(ball: str, theta, pop, *, beta: float, radius: float) -> float:
    """sup over populations Q in the ``ball`` of ``radius`` around P of E_Q l(theta): the
    exact worst-case value at a fixed theta (``BALLS[ball].value``, docs/theory.md §3)."""
    return float(BALLS.get(ball).value(theta, pop, beta=beta, radius=radius).value)


def certificate(fit: Remark3Fit, theta, data, pop, *, beta: float, hyper, ball_radius: float
                ) -> dict:
    r"""The certificate of docs/theory.md §8.4 at one estimate theta-hat:

    .. math::  \text{(i)}\ V_n(\hat\theta)\ge L_P(\hat\theta),\qquad
               \text{(ii)}\ V_n(\hat\theta)\ge\sup_{Q\in\mathcal B(P)}E_Q\,l(\hat\theta),

    with V_n the estimator's robust objective on the sample ``data``, L_P the DPO risk on
    the exact population ``pop`` and :math:`\mathcal B(P)` the ball ``fit.ball`` of radius
    ``ball_radius`` around P.

    Returns:
        dict with ``value_sample`` (V_n), ``risk_pop`` (L_P), ``worst_shift`` (the sup) and
        the booleans ``cert_true`` (i) and ``cert_shift`` (ii).
    """
    v = float(fit.value(theta, data, beta=beta, hyper=hyper))
    risk = float(objective(theta, pop, beta=beta, hessian=False).value)
    worst = worst_case_risk(fit.ball, theta, pop, beta=beta, radius=ball_radius)
    return dict(value_sample=v, risk_pop=risk, worst_shift=worst, cert_true=bool(v >= risk),
                cert_shift=bool(v >= worst))
