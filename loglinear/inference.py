r"""Error bars from one sample: plug-in sandwich covariances of a fitted theta, confidence
intervals and ellipsoids, and delta-method intervals (docs/theory.md §5.6, §5.8).

Away from its kinks each estimator is a smooth M-estimator of its own target theta(rho):
sqrt(n)(theta-hat - theta(rho)) -> N(0, V), V = H^{-1} J H^{-T}, J = E_q[psi psi^T]. The
plug-in evaluates H and psi on the sample at theta-hat: Cov(theta-hat) ~ V-hat / n.
:func:`covariance` reads the estimator (loss, ball, order, label-flip cost, surrogate form,
hyperparameter) off the result of ``fit_dpo``, ``fit_margin`` (IPO), ``solve_kl``,
``solve_wasserstein``, ``fit_wdpo`` or ``fit_kldpo``; where no normal limit exists it
raises a ``ValueError`` that says why.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from scipy.stats import chi2, norm

from . import _local_extra
from .approx import ApproxResult
from .data import PreferenceData
from .estimation import LocalAsymptotics, kl_dual_variable, local_asymptotics
from .fit import FitResult
from .losses import dpo_loss
from .registry import Registry
from .robust import RobustResult

MAX_COUNT_PAIRS = 10**7   # weights read as counts over a common denominator up to this
MAX_UNITS = 1000          # ... a multiple of at most this many smallest weights or gaps
COUNT_RTOL = 1e-9         # a count within this (relative) of an integer is one
UNIFORM_RTOL = 1e-12      # weights this close to equal are a plain (uncompressed) sample
DELTA_STEP = 1e-6         # relative step of the central differences in interval_for


# ------------------------------------------------------------------- the kinds
def _kl_value(data, w, *, beta, radius):
    lam = kl_dual_variable(dpo_loss(w, data, beta=beta), data.weight, radius)
    return _local_extra.tilted_value(data, w, beta=beta, lam=lam)


_VALUES = {   # the objective's influence for the kinds of docs/theory.md §5.6
    "dpo": _local_extra.dpo_value,
    "w1": lambda data, w, *, beta, radius: _local_extra.dpo_value(data, w, beta=beta),
    "kl": _kl_value,
    "kldpo": lambda data, w, *, beta, tau: _local_extra.tilted_value(data, w, beta=beta,
                                                                     lam=tau),
    "wdpo": _local_extra.wdpo_value,
}


def _table_kind(name):
    def evaluate(data, w, *, beta, **hyper):
        return (local_asymptotics(name, data, w, beta=beta, **hyper),
                _VALUES[name](data, w, beta=beta, **hyper))
    return evaluate


def _pieces_kind(pieces):
    def evaluate(data, w, *, beta, **hyper):
        p = pieces(data, w, beta=beta, **hyper)
        sw = _local_extra.sandwich(p.hessian, p.influence, data.weight)
        return LocalAsymptotics(*sw), p.value_influence
    return evaluate


KINDS: Registry[Callable] = Registry("kind of plug-in asymptotics", {
    **{name: _table_kind(name) for name in _VALUES},
    **{name: _pieces_kind(p) for name, (p, _) in _local_extra.KINDS.items()},
    "w1flip": _pieces_kind(_local_extra.w1flip_pieces),
})
"""kind -> ``evaluate(data, w, *, beta, **hyper) -> (LocalAsymptotics, objective influence)``:
the kinds of docs/theory.md §5.6, §5.8, and W1 with finite kappa (``radius``, ``kappa``)."""


class _Plan(NamedTuple):
    """What a result is: its kind, hyperparameters, temperature, theta and objective."""

    kind: str
    hyper: dict
    beta: float
    theta: np.ndarray
    objective: float


# ---------------------------------------------------------------- the results
_FIT_KINDS = {"dpo": "dpo", "ipo": "ipo"}
_BALL_KINDS = {("kl", 1, False): "kl", ("wasserstein", 1, False): "w1",
               ("wasserstein", 1, True): "w1flip", ("wasserstein", 2, False): "w2"}
_SURROGATE_KINDS = {("wdpo", "paper"): ("wdpo", "rho"),
                    ("wdpo", "official"): ("wdpo-official", "rho"),
                    ("kldpo", "paper"): ("kldpo", "tau"),
                    ("kldpo", "official"): ("kldpo-official", "tau")}
BOUNDARY = ("it lies on the boundary of the ball ||theta|| <= bound (multiplier {:.3g} > 0): "
            "a constrained estimator whose limit is not normal; refit with a larger bound")


def _need_beta(result, beta):     # (a bad value is refused by losses.margins)
    if beta is None:
        raise ValueError(f"pass beta=: a {type(result).__name__} does not record the "
                         "temperature it was fitted at")
    return beta


def _plan_fit(res: FitResult, beta) -> _Plan:
    beta = _need_beta(res, beta)
    if res.status != "converged":
        raise ValueError(f"the fit did not converge (status {res.status!r})")
    if res.bound_multiplier > 0:
        raise ValueError("no normal limit: " + BOUNDARY.format(res.bound_multiplier))
    if not res.unique:
        raise ValueError("the fit's Hessian is singular (the data do not identify theta): "
                         "the covariance is infinite along its null space")
    if res.loss not in _FIT_KINDS:
        raise ValueError(f"no local asymptotics for loss {res.loss!r}; supported: "
                         f"{sorted(_FIT_KINDS)}")
    return _Plan(_FIT_KINDS[res.loss], {}, beta, res.theta, res.objective)


def _plan_robust(res: RobustResult, beta) -> _Plan:
    if beta is not None and float(beta) != res.beta:
        raise ValueError(f"beta={beta} differs from the solve's beta={res.beta}")
    status = "collapsed" if res.info.get("collapsed") else res.status
    why = {"collapsed": "the solve collapsed to theta = 0 (radius at or beyond the collapse "
                        "radius): the estimator sits on the kink, where it is not "
                        "asymptotically normal",
           "inaccurate": f"the solve is inaccurate (certificate {res.certificate:.3g}): "
                         "theta-hat is not the estimator",
           "converged": None, "nominal": None}.get(status, f"the solve's status is {status!r}")
    if why is None and res.bound_multiplier > 0:
        why = BOUNDARY.format(res.bound_multiplier)
    if why is None and res.kind == "kl" and res.status == "converged" and (
            res.dual == 0 or res.info.get("degenerate")):
        why = ("the KL dual variable is lambda* = 0: the worst case sits on the tied "
               "maximal losses, where V = max_i l_i is not smooth (docs/theory.md §3.1)")
    if why is not None:
        raise ValueError("no normal limit: " + why)
    if res.status == "nominal":
        return _Plan("dpo", {}, res.beta, res.theta, res.objective)
    kind = _BALL_KINDS[(res.kind, res.p, bool(np.isfinite(res.kappa)))]
    hyper = {"radius": res.radius, **({"kappa": res.kappa} if kind == "w1flip" else {})}
    return _Plan(kind, hyper, res.beta, res.theta, res.objective)


def _plan_approx(res: ApproxResult, beta) -> _Plan:
    beta = _need_beta(res, beta)
    if res.status == "kink":
        raise ValueError("no normal limit: the WDPO fit sits at the kink theta = 0")
    if not res.converged:
        raise ValueError(f"the fit did not converge (status {res.status!r})")
    if res.min_hessian_eig <= 0:
        raise ValueError(f"theta-hat is not a strict local minimum (smallest Hessian "
                         f"eigenvalue {res.min_hessian_eig:.3g})")
    kind, name = _SURROGATE_KINDS[(res.surrogate, res.form)]
    return _Plan(kind, {name: res.hyper}, beta, res.theta, res.objective)


_PLANS = {FitResult: _plan_fit, RobustResult: _plan_robust, ApproxResult: _plan_approx}


def _plan(result, data, beta) -> _Plan:
    make = _PLANS.get(type(result))
    if make is None:
        raise ValueError(f"no plug-in covariance for a {type(result).__name__}; results "
                         f"accepted: {sorted(t.__name__ for t in _PLANS)}")
    if not isinstance(data, PreferenceData):
        raise ValueError(f"data must be a PreferenceData, got {type(data).__name__}")
    plan = make(result, beta)
    theta = np.asarray(plan.theta, float)
    if theta.shape != (data.d,):
        raise ValueError(f"the result's theta has shape {theta.shape}, the data d = {data.d}")
    own = getattr(result, "data", None)
    if own is not None and own is not data and not (own.n == data.n and all(
            np.array_equal(getattr(own, k), getattr(data, k)) for k in ("x", "y", "weight"))):
        raise ValueError("the result was solved on other data than the data given")
    return plan._replace(theta=theta)


def _evaluate(result, data, beta):
    plan = _plan(result, data, beta)
    la, value = KINDS.get(plan.kind)(data, plan.theta, beta=plan.beta, **plan.hyper)
    return plan, la, value


# ------------------------------------------------------------------ sample size
def sample_size(data: PreferenceData, *, n: float | None = None) -> float:
    r"""The number of i.i.d. pairs behind ``data``, the n of Cov = V / n (docs/theory.md §5.8).

    ``n`` if given. Else from the weights q: equal weights are a plain sample, n = the pairs
    with positive weight; counts over a common denominator N, q_i = c_i / N (what
    :meth:`PreferenceData.compress` and :meth:`LogLinearEnv.sample_counts` return; N up to
    10^7, the smallest count or gap between counts at most 1000) are N draws, and
    sum_i q_i psi_i has covariance E_q[psi psi^T] / N exactly: n = N; any other weights are
    design weights on independent pairs, with Kish's n = 1 / sum_i q_i^2 (exact when the
    weights are unrelated to psi). Weights cannot tell N pairs with every count c from
    N / c pairs: pass ``n`` whenever it is known.
    """
    if n is not None:
        n = float(n)
        if not (np.isfinite(n) and n >= 1):
            raise ValueError(f"n (the number of pairs) must be a finite number >= 1, got {n}")
        return n
    q = data.weight[data.weight > 0]
    if q.max() - q.min() <= UNIFORM_RTOL * q.max():
        return float(q.size)
    den = _count_denominator(q)
    return 1.0 / float(q @ q) if den is None else den


def _count_denominator(q):
    """N where every weight is a count over N (to rounding), else None. N is a multiple
    k = 1..MAX_UNITS of 1/unit, unit the smallest weight or gap between weights."""
    vals = np.unique(q)
    gaps = np.diff(vals)
    gaps = gaps[gaps > 1e-9 * vals[1:]]
    unit = min(vals[0], gaps.min()) if gaps.size else vals[0]
    cands = np.round(np.arange(1, MAX_UNITS + 1) / unit)
    cands = cands[(cands >= 1) & (cands <= MAX_COUNT_PAIRS)]
    integral = lambda c: np.abs(c - np.round(c)) <= COUNT_RTOL * np.maximum(c, 1.0)
    for den in cands[np.all(integral(np.outer(cands, vals[:16])), axis=1)][:4]:
        if np.all(integral(den * vals)):
            return float(den)
    return None


# ------------------------------------------------------------------ covariances
def plug_in(result, data: PreferenceData, *, beta: float | None = None) -> LocalAsymptotics:
    r"""H-hat and V-hat = H^{-1} J H^{-T} of ``result``'s estimator evaluated on ``data`` at
    theta-hat (docs/theory.md §5.6, §5.8); arguments and errors as :func:`covariance`."""
    return _evaluate(result, data, beta)[1]


def covariance(result, data: PreferenceData, *, beta: float | None = None,
               n: float | None = None) -> np.ndarray:
    r"""The estimated covariance of theta-hat, the plug-in sandwich (docs/theory.md §5.8):

    .. math::  \widehat{\mathrm{Cov}}(\hat\theta) = \hat H^{-1}\hat J\hat H^{-\top} / n,
               \qquad \hat J = \sum_j q_j\hat\psi_j\hat\psi_j^\top,

    with H and psi of the result's estimator (docs/theory.md §5.6 table, §5.8) evaluated
    on ``data`` at theta-hat, and n from :func:`sample_size`.

    Args:
        result: what ``fit_dpo``/``fit_margin`` (DPO, IPO), ``solve_kl``,
            ``solve_wasserstein`` (W1 with any kappa, W2), ``fit_wdpo`` or ``fit_kldpo``
            (paper or official form; the official KLDPO with its default cap) returned on
            ``data``.
        data: the sample the result was fitted on.
        beta: the DPO temperature (required for FitResult and ApproxResult).
        n: the number of i.i.d. pairs behind ``data`` (default: :func:`sample_size`).

    Returns:
        (d, d) symmetric positive semi-definite covariance.

    Raises:
        ValueError: no normal limit (collapsed, at the kink 0, KL lambda* = 0, on the
            boundary of a bound ball, tied atoms at a W1/W2 kink, not converged), or
            inconsistent arguments; the message says which.
    """
    return _evaluate(result, data, beta)[1].covariance / sample_size(data, n=n)


# --------------------------------------------------------------------- regions
def _z(level) -> float:
    """z_{(1+level)/2} of the standard normal, for 0 < level < 1."""
    if not 0 < float(level) < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return float(norm.ppf(0.5 + 0.5 * float(level)))


class Intervals(NamedTuple):
    """Per-coordinate Wald intervals theta_k +- z_{(1+level)/2} se_k, each (d,)."""

    estimate: np.ndarray
    se: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    level: float

    def contains(self, theta) -> np.ndarray:
        """(d,) whether each coordinate of ``theta`` lies in its interval."""
        theta = np.asarray(theta, float)
        return (self.lo <= theta) & (theta <= self.hi)


class Interval(NamedTuple):
    """A Wald interval estimate +- z se for one derived quantity."""

    estimate: float
    se: float
    lo: float
    hi: float
    level: float


class Ellipsoid(NamedTuple):
    """{theta : (theta - center)^T shape^{-1} (theta - center) <= quantile}, the Wald
    region with quantile = chi^2_d(level) and shape the estimated covariance."""

    center: np.ndarray
    shape: np.ndarray
    quantile: float
    level: float

    def contains(self, theta) -> bool:
        delta = np.asarray(theta, float) - self.center
        return bool(delta @ np.linalg.solve(self.shape, delta) <= self.quantile)


def _estimate(result, data, beta, n, level):
    """(theta-hat, its covariance, z_{(1+level)/2}) with one plug-in evaluation."""
    z = _z(level)
    plan, la, _ = _evaluate(result, data, beta)
    return plan.theta, la.covariance / sample_size(data, n=n), z


def _interval(est, grad, cov, z, level) -> Interval:
    se = float(np.sqrt(max(float(grad @ cov @ grad), 0.0)))
    return Interval(float(est), se, est - z * se, est + z * se, level)


def intervals(result, data: PreferenceData, level: float = 0.95, *,
              beta: float | None = None, n: float | None = None) -> Intervals:
    r"""Per-coordinate intervals :math:`\hat\theta_k \pm z_{(1+\mathrm{level})/2}
    \sqrt{\widehat{\mathrm{Cov}}_{kk}}` for the result's own target theta(rho)
    (docs/theory.md §5.8); arguments as :func:`covariance`."""
    theta, cov, z = _estimate(result, data, beta, n, level)
    se = np.sqrt(np.diag(cov))
    return Intervals(theta, se, theta - z * se, theta + z * se, float(level))


def ellipsoid(result, data: PreferenceData, level: float = 0.95, *,
              beta: float | None = None, n: float | None = None) -> Ellipsoid:
    r"""The Wald confidence ellipsoid
    :math:`\{\theta: (\theta-\hat\theta)^\top\widehat{\mathrm{Cov}}^{-1}(\theta-\hat\theta)
    \le\chi^2_{d}(\mathrm{level})\}` (docs/theory.md §5.8); arguments as :func:`covariance`."""
    theta, cov, _ = _estimate(result, data, beta, n, level)
    return Ellipsoid(theta, cov, float(chi2.ppf(level, data.d)), float(level))


def interval_for(result, data: PreferenceData, fn: Callable[[np.ndarray], float],
                 level: float = 0.95, *, beta: float | None = None, n: float | None = None,
                 step: float = DELTA_STEP) -> Interval:
    r"""A delta-method interval for a smooth derived quantity f(theta):

    .. math::  f(\hat\theta) \pm z\,\sqrt{\nabla f^\top\widehat{\mathrm{Cov}}\,\nabla f},

    the gradient by central differences of ``fn`` (a (d,) parameter -> a finite float) with
    steps ``step`` max(1, |theta_k|).
    """
    theta, cov, z = _estimate(result, data, beta, n, level)

    def value(th):
        v = float(fn(th))
        if not np.isfinite(v):
            raise ValueError(f"fn returned {v} at theta = {th.tolist()}; it must be finite")
        return v

    steps = np.diag(step * np.maximum(1.0, np.abs(theta)))
    grad = np.array([(value(theta + h) - value(theta - h)) / (2.0 * h.sum()) for h in steps])
    return _interval(value(theta), grad, cov, z, float(level))


def log_ratio_interval(result, data: PreferenceData, x, level: float = 0.95, *,
                       beta: float | None = None, n: float | None = None) -> Interval:
    r"""An interval for the policy's log-ratio on a pair with feature difference x,
    :math:`x\cdot\hat\theta \pm z\sqrt{x^\top\widehat{\mathrm{Cov}}x}` (the delta method,
    exact for this linear quantity). In the data's parameterisation: with centred data
    (theta = w = theta - theta_ref) it is log pi(a1|s)/pi(a2|s) minus the reference's, the
    implicit reward difference over beta."""
    x = np.asarray(x, float)
    if x.shape != (data.d,) or not np.all(np.isfinite(x)):
        raise ValueError(f"x must be a finite feature difference of shape ({data.d},), got "
                         f"{x.shape}")
    theta, cov, z = _estimate(result, data, beta, n, level)
    return _interval(x @ theta, x, cov, z, float(level))


def objective_interval(result, data: PreferenceData, level: float = 0.95, *,
                       beta: float | None = None, n: float | None = None) -> Interval:
    r"""An interval for the estimator's population objective at its own target,
    min_theta V(theta; P), from the sample variance of the objective's influence
    (docs/theory.md §5.8):

    .. math::  \hat V \pm z\sqrt{\textstyle\sum_j q_j\,\mathrm{IF}_j^2 / n},

    IF_j the derivative of V(theta-hat; q) along delta_j - q at fixed theta (moving the
    optimum changes V only to second order): l_j - L for DPO and W1 (kappa = inf),
    lambda (p_j/q_j - 1) for KL (lambda*) and KLDPO (tau), f_j - E_q f for the per-pair
    objectives of §5.8. The official KLDPO has no objective: it raises ``ValueError``.
    """
    z = _z(level)
    plan, _, infl = _evaluate(result, data, beta)
    if not np.all(np.isfinite(infl)):
        raise ValueError(f"the {plan.kind} estimator solves an equation without an "
                         "objective: there is no value to put an interval on")
    var = float(data.weight @ infl**2) / sample_size(data, n=n)
    return _interval(plan.objective, np.ones(1), np.full((1, 1), var), z, float(level))
