r"""WDPO: the gradient-penalty surrogates of the W2 worst case (docs/theory.md §4.1).

.. math::
    G(\theta) = \Big(\sum_i q_i \|\nabla_x l_i\|^2\Big)^{1/2}
              = \beta\,\|\theta\|_2\,R(\theta), \qquad
    R(\theta) = \Big(\sum_i q_i\,\sigma(-m_i)^2\Big)^{1/2} \le 1,

paper form L + rho G (Algorithm 1), official form L + rho G^2 (the released code).

**First-order remainder (derived here, tested against the exact W2 value).** With
:math:`\kappa=\infty` the adversary moves each x_i along :math:`-s_i\theta/\|\theta\|`,
lowering the margin by :math:`b t_i` (:math:`b = \beta\|\theta\|`, cost :math:`\sum q t^2 \le
\varepsilon^2`). Convexity of :math:`\phi = \mathrm{softplus}(-\cdot)` with the feasible move
:math:`t_i = \varepsilon\sigma(-m_i)/R` gives the lower bound; :math:`\phi'' \le 1/4` and
Cauchy-Schwarz give the upper bound:

.. math:: 0 \le V_{W_2}(\theta;\varepsilon) - \big(L(\theta) + \varepsilon G(\theta)\big)
          \le \beta^2\|\theta\|^2\varepsilon^2/8 .

So the paper's penalty always under-states the W2 worst case, by O(eps^2). For W1 the
exact value is :math:`L + \varepsilon\beta\|\theta\| \ge L + \varepsilon G` (R <= 1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize_scalar

from ..data import PreferenceData
from ..fit import FitError, SeparableDataError, fit_dpo, separating_direction
from ..losses import _check_beta, _check_theta, dpo_margin_terms, margin_line
from ..newton import newton
from ..registry import Registry
from ._ball import check_bound, fit_on_sphere, separable_error, strictly_separating_direction
from ._common import KINK_TOL, ApproxResult, _check_positive, _dpo_terms, _pieces


def grad_x_norm(theta, data: PreferenceData, *, beta: float) -> np.ndarray:
    r"""Per-pair :math:`\|\nabla_x l_i\|_2 = \beta\,\sigma(-m_i)\,\|\theta\|_2`, shape (n,)."""
    beta = _check_beta(beta)
    p = _pieces(theta, data, beta)
    return beta * p.a * np.linalg.norm(p.theta)


def w1_rescaling(theta, data: PreferenceData, *, beta: float) -> float:
    r"""The factor :math:`R(\theta) = (\sum_i q_i \sigma(-m_i)^2)^{1/2} \in (0, 1]`.

    The paper's penalty is :math:`\rho\beta\|\theta\|R`; the exact W1 (kappa = inf) penalty is
    :math:`\varepsilon\beta\|\theta\|`, so ``rho = eps / R`` puts the paper's penalty on W1.
    """
    beta = _check_beta(beta)
    return float(np.sqrt(data.weight @ _pieces(theta, data, beta).a ** 2))


def _g2_terms(theta, data, beta, hessian):
    r""":math:`G^2 = \beta^2\|\theta\|^2 S`, :math:`S = \sum q\sigma(-m)^2`, with derivatives."""
    theta, _, _, a, _, _ = _pieces(theta, data, beta)
    q, x, s = data.weight, data.x, data.sign
    nn = float(theta @ theta)
    S = float(q @ a**2)
    # d(a^2)/dm = -2 a^2 (1 - a);  d2(a^2)/dm2 = 2 a^2 (1 - a)(2 - 3a); dm/dtheta = s beta x.
    dS = beta * (x.T @ (q * -2.0 * a**2 * (1.0 - a) * s))
    value = beta**2 * nn * S
    grad = beta**2 * (2.0 * S * theta + nn * dS)
    hess = None
    if hessian:
        h2 = beta**2 * (q * 2.0 * a**2 * (1.0 - a) * (2.0 - 3.0 * a))
        d2S = (x * h2[:, None]).T @ x
        hess = beta**2 * (2.0 * S * np.eye(data.d) + 2.0 * np.outer(theta, dS)
                          + 2.0 * np.outer(dS, theta) + nn * d2S)
    return value, grad, hess


def _penalty_paper(theta, data, beta, hessian):
    g2, dg2, h2 = _g2_terms(theta, data, beta, hessian)
    g = np.sqrt(g2)
    if g <= 0.0:  # theta = 0: not differentiable; callers handle the kink
        return 0.0, np.zeros(data.d), (None if not hessian else np.zeros((data.d, data.d)))
    grad = dg2 / (2.0 * g)
    hess = None if h2 is None else h2 / (2.0 * g) - np.outer(dg2, dg2) / (4.0 * g**3)
    return float(g), grad, hess


def _penalty_official(theta, data, beta, hessian):
    return _g2_terms(theta, data, beta, hessian)


@dataclass(frozen=True)
class WDPOForm:
    """A WDPO penalty Pi(theta) (the objective is L + rho Pi) with its derivatives.

    ``of_g2`` maps G^2 to Pi (used along line searches); ``kink``: Pi has a kink at
    theta = 0, where the fit also tries theta = 0 by its subgradient condition.
    """

    name: str
    penalty: Callable
    of_g2: Callable[[float], float]
    kink: bool
    doc: str


WDPO_FORMS: Registry[WDPOForm] = Registry("WDPO form", {
    "paper": WDPOForm("paper", _penalty_paper, np.sqrt, True,
                      "rho (sum_i q_i ||grad_x l_i||^2)^{1/2}"),
    "official": WDPOForm("official", _penalty_official, lambda g2: g2, False,
                         "rho sum_i q_i ||grad_x l_i||^2"),
})


def _wdpo_terms(theta, data, beta, rho, form, hessian):
    spec = WDPO_FORMS.get(form)
    v, g, h = _dpo_terms(theta, data, beta, hessian)
    pv, pg, ph = spec.penalty(theta, data, beta, hessian)
    return v + rho * pv, g + rho * pg, (None if h is None else h + rho * ph)


def wdpo_penalty(theta, data: PreferenceData, *, beta: float, rho: float,
                 form: str = "paper") -> float:
    r"""The WDPO penalty added to the weighted DPO loss.

    .. math::
        \text{paper: } \rho\Big(\sum_i q_i\|\nabla_x l_i\|^2\Big)^{1/2}, \qquad
        \text{official: } \rho\sum_i q_i\|\nabla_x l_i\|^2 .

    The official form is a mean of per-pair terms (:func:`wdpo_pair_loss` gives them);
    the paper form is a root-mean-square over the dataset, so it has no per-pair split.
    """
    beta = _check_beta(beta)
    rho = _check_positive("rho", rho, allow_zero=True)
    return float(rho * WDPO_FORMS.get(form).penalty(theta, data, beta, False)[0])


def wdpo_pair_loss(theta, data: PreferenceData, *, beta: float, rho: float) -> np.ndarray:
    r"""Per-pair official WDPO loss :math:`l_i + \rho\|\nabla_x l_i\|^2`, shape (n,)."""
    beta = _check_beta(beta)
    rho = _check_positive("rho", rho, allow_zero=True)
    p = _pieces(theta, data, beta)
    return p.loss + rho * (beta * p.a) ** 2 * float(p.theta @ p.theta)


def wdpo_objective(theta, data: PreferenceData, *, beta: float, rho: float,
                   form: str = "paper") -> tuple[float, np.ndarray]:
    r"""Value and gradient in theta of :math:`L(\theta) + \rho\,\Pi_{form}(\theta)`.

    At theta = 0 the paper form is not differentiable; the gradient returned there is the
    DPO gradient (the penalty's minimum-norm subgradient, 0).
    """
    beta = _check_beta(beta)
    rho = _check_positive("rho", rho, allow_zero=True)
    v, g, _ = _wdpo_terms(theta, data, beta, rho, form, False)
    return v, g


def _wdpo_line(data, beta, rho, form):
    """Cheap evaluator of the WDPO objective along a ray (O(n) per trial step)."""
    of_g2 = WDPO_FORMS.get(form).of_g2

    def line(theta, step):
        base, dm = margin_line(theta, step, data, beta=beta)
        a2, b2, c2 = float(theta @ theta), 2.0 * float(theta @ step), float(step @ step)
        q = data.weight

        def f(t):
            loss, d1, _ = dpo_margin_terms(base + t * dm)
            g2 = beta**2 * max(a2 + t * b2 + t * t * c2, 0.0) * float(q @ d1**2)
            return float(q @ loss) + rho * of_g2(g2)
        return f
    return line


WDPO_WHAT = "WDPO objective L + rho Pi"
KINK_CHECK = 20   # Newton iterations between checks that a start has fallen into the kink


def _newton_start(fun, x0, *, gtol, max_iter, line):
    """Newton from one start, given up once it sits in the kink theta = 0 (where the
    paper penalty is not differentiable and Newton only wanders at ||theta|| ~ 1e-15;
    the kink is a candidate of its own). Newton keeps no state but x, so running it in
    stretches of KINK_CHECK iterations changes nothing else."""
    x, done = np.asarray(x0, dtype=float), 0
    while True:
        rep = newton(fun, x, gtol=gtol, ctol=gtol, max_iter=min(KINK_CHECK, max_iter - done),
                     line=line)
        done += rep.iterations
        if rep.status != "max_iter" or done >= max_iter or np.linalg.norm(rep.x) <= KINK_TOL:
            return rep, done
        x = rep.x


def _separation(data, beta, rho):
    """(start, direction): the DPO fit as a start (or a point near 0), and a direction
    along which the WDPO objective has no finite minimiser (or None).

    fit_dpo settles whether the data are (quasi-)separable. At rho = 0 that is the
    answer. For rho > 0 the penalty grows like ||theta|| along any direction that leaves
    some weighted pair's margin unchanged (a tie, x = 0, always does), so only *strict*
    separation (every margin growing) leaves no finite minimiser.
    """
    try:
        return ("dpo", fit_dpo(data, beta=beta).theta), None
    except SeparableDataError as exc:
        direction = exc.direction if rho == 0 else strictly_separating_direction(data)
    except FitError:
        direction = (separating_direction(data) if rho == 0
                     else strictly_separating_direction(data))
    return ("zero+", np.full(data.d, 1e-3)), direction


def fit_wdpo(data: PreferenceData, *, beta: float, rho: float, form: str = "paper",
             gtol: float = 1e-9, max_iter: int = 200, theta0=None,
             bound: float | None = None) -> ApproxResult:
    r"""Minimise the WDPO surrogate :math:`L(\theta) + \rho\,\Pi_{form}(\theta)`, on the
    ball :math:`\|\theta\| \le B` when ``bound`` is given.

    The objective is smooth (except the paper form at theta = 0) but not convex in
    general, so Newton's method (exact Hessian, regularised where indefinite, Armijo
    steps) runs from the DPO fit, from ``theta0`` if given and, for the paper form, the
    kink theta = 0 is a candidate, accepted when its subgradient condition
    :math:`\|\nabla L(0)\| \le \rho\,\beta R(0)` holds. With a bound, the starts that
    end outside the ball (or diverge) are replaced by the KKT point on the sphere
    :math:`\|\theta\| = B` (``info["bound_multiplier"]`` > 0). The lowest objective wins;
    a candidate counts only with its certificate (gradient norm, KKT residual on the
    sphere) at most ``gtol``.

    No finite minimiser exists when the data are strictly separable (every margin grows
    along some direction; at rho = 0, as for DPO, when they are separable at all): then
    :class:`~loglinear.fit.SeparableDataError` unless a bound is given.

    Args:
        data: weighted preference data.
        beta: DPO temperature (> 0).
        rho: penalty weight (>= 0); rho = 0 is DPO.
        form: ``"paper"`` or ``"official"`` (see module docstring).
        gtol: gradient-norm tolerance (the certificate).
        max_iter: Newton iterations per start.
        theta0: optional extra starting point.
        bound: optional radius B of the ball.

    Returns:
        :class:`ApproxResult` (``min_hessian_eig`` certifies a strict local minimum).

    Raises:
        SeparableDataError: no finite minimiser and no bound.
        FitError: no start converged.
    """
    t0 = time.perf_counter()
    beta = _check_beta(beta)
    rho = _check_positive("rho", rho, allow_zero=True)
    bound = check_bound(bound)
    spec = WDPO_FORMS.get(form)
    first, direction = _separation(data, beta, rho)
    if direction is not None and bound is None:
        raise separable_error(direction, WDPO_WHAT)
    starts = [first]
    if theta0 is not None:
        starts.append(("theta0", _check_theta(theta0, data.d)))
    fun = lambda th, h: _wdpo_terms(th, data, beta, rho, form, h)
    line = _wdpo_line(data, beta, rho, form)
    # Near theta = 0 the paper penalty behaves like a norm, whose 1/||theta|| curvature
    # across the ray stalls Newton before it can turn; a start on the steepest ray out of
    # 0, at its 1-D minimiser, reaches minimisers close to the kink.
    g0 = _dpo_terms(np.zeros(data.d), data, beta, False)[1]
    if np.linalg.norm(g0) > 0:
        u = -g0 / np.linalg.norm(g0)
        scale = max(1.0, max(float(np.linalg.norm(x)) for _, x in starts))
        if bound is not None:
            scale = min(scale, bound / 2.0)
        ray = minimize_scalar(line(np.zeros(data.d), u), bounds=(0.0, 2.0 * scale),
                              method="bounded", options={"xatol": 1e-10 * scale})
        if ray.x > KINK_TOL:
            starts.append(("ray", ray.x * u))
    best, iters, tried = None, 0, {}
    outside = direction is not None
    for name, x0 in starts:
        rep, used = _newton_start(fun, x0, gtol=gtol, max_iter=max_iter, line=line)
        iters += used
        tried[name] = (rep.status, rep.value)
        inside = bound is None or np.linalg.norm(rep.x) <= bound
        # the sphere is a candidate when a start leaves the ball (or runs off), not when
        # it stalls inside it (next to the kink)
        outside |= not inside or rep.status in ("diverging", "non_finite")
        if rep.converged and inside and np.linalg.norm(rep.x) > KINK_TOL and (
                best is None or rep.value < best[1]):
            best = (rep.x, rep.value, rep.grad_norm, "converged", 0.0)
    if bound is not None and outside:
        ball = fit_on_sphere(fun, np.zeros(data.d), bound=bound, gtol=gtol,
                             max_iter=max_iter, line=line)
        iters += ball.iterations
        tried["sphere"] = (ball.status, ball.value)
        if ball.status == "converged" and (best is None or ball.value < best[1]):
            best = (ball.theta, ball.value, ball.residual, "converged", ball.multiplier)
    if spec.kink:
        v0, g0, _ = _dpo_terms(np.zeros(data.d), data, beta, False)
        gap = float(np.linalg.norm(g0)) - rho * beta * w1_rescaling(np.zeros(data.d), data,
                                                                    beta=beta)
        tried["kink"] = (gap <= 0, v0)
        if gap <= 0 and (best is None or v0 <= best[1]):
            best = (np.zeros(data.d), v0, max(gap, 0.0), "kink", 0.0)
    if best is None:
        raise FitError(f"WDPO ({form}, rho={rho}) did not converge from any start: {tried}")
    theta, value, gnorm, status, mult = best
    eig = float("nan")
    if status == "converged":
        eig = float(np.linalg.eigvalsh(fun(theta, True)[2])[0])
    return ApproxResult(theta, float(value), iters, status, True, float(gnorm),
                        time.perf_counter() - t0, "wdpo", form, "newton", rho, eig,
                        info={"starts": tried, "bound_multiplier": mult})
