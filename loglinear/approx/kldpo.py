r"""KLDPO: exponential reweighting, as written (normalised) and as run (capped)
(docs/theory.md §4.2).

Fixed points minimise the convex :math:`F_\tau = \tau\log\sum_i q_i e^{l_i/\tau}`, i.e.
KLDPO(tau) is exact KL-DRO at radius :math:`\mathrm{KL}(P^*\|q)` with dual tau.

For a well-specified Bradley-Terry population (both labels of every pair, with
probabilities :math:`\sigma(\pm r)`) stationarity per feature difference gives
:math:`e^{l/\tau} = \sigma(m)^{-1/\tau}` and hence, in closed form,
:math:`\theta_\tau = \theta^*\,\tau/(1+\tau)`; there the "refit with frozen weights, then
reweight" map has Jacobian exactly :math:`-I/\tau` (:func:`refit_contraction`), so that
iteration converges only for tau > 1 and cycles at tau = 1 (both tested).

The weighting rules live in :data:`KLDPO_FORMS` and the optimisers in
:data:`KLDPO_METHODS`; nothing here branches on their names.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..data import PreferenceData
from ..fit import EAGER_LP, FitError, SeparableDataError, fit_dpo, separating_direction
from ..losses import _check_beta, _check_theta
from ..registry import Registry
from ._ball import check_bound, separable_error, suspicious
from ._common import OFFICIAL_CAP, STALL_NORM, ApproxResult, _check_positive, _pieces
from ._kldpo import (
    KLDPO_WHAT,
    Separation,
    _dweights_official,
    _dweights_paper,
    _implied_radius_at,
    _kldpo_terms,
    _lipschitz_bound,
    _newton_official,
    _newton_paper,
    _official_value_grad,
    _paper_value_grad,
    _weighted_grad,
    _weights_official,
    _weights_paper,
)

__all__ = ["KLDPOForm", "KLDPO_FORMS", "KLDPOMethod", "KLDPO_METHODS", "OFFICIAL_CAP",
           "fit_kldpo", "kldpo_objective", "kldpo_weights", "refit_contraction"]


@dataclass(frozen=True)
class KLDPOForm:
    """A KLDPO weighting rule: per-pair effective weights W (the loss is sum_i W_i l_i).

    Attributes:
        weights: ``(losses, q, tau, cap) -> W`` (n,).
        dweights: ``(W, grad_l, pieces, q, tau, cap) -> rows grad_theta W_i`` (n, d).
        value_grad: ``(theta, data, beta, tau, cap) -> (value, sum_i W_i grad l_i)``: the
            reported objective (F_tau for the paper form, sum_i W_i l_i for the official
            one) and the step direction of Algorithm 2.
        newton: the Newton-type solver of the fixed point (``method="newton"``).
        exact_kl: the fixed point solves exact KL-DRO (reported with its implied radius).
        normalised: the weights sum to one.
    """

    name: str
    weights: Callable
    dweights: Callable
    value_grad: Callable
    newton: Callable
    exact_kl: bool
    normalised: bool
    doc: str


KLDPO_FORMS: Registry[KLDPOForm] = Registry("KLDPO form", {
    "paper": KLDPOForm("paper", _weights_paper, _dweights_paper, _paper_value_grad,
                       _newton_paper, True, True,
                       "P_i = q_i e^{(l_i - lbar)/tau} / sum_j q_j e^{(l_j - lbar)/tau}"),
    "official": KLDPOForm("official", _weights_official, _dweights_official,
                          _official_value_grad, _newton_official, False, False,
                          "W_i = q_i min(e^{(l_i - lbar)/tau}, cap), lbar = sum q l"),
})


def kldpo_weights(losses, weight, *, tau: float, form: str = "paper",
                  cap: float = OFFICIAL_CAP) -> np.ndarray:
    r"""Effective KLDPO weights W (held constant; the step minimises :math:`\sum_i W_i l_i`).

    .. math::
        \text{paper: } W_i = \frac{q_i e^{(l_i-\bar l)/\tau}}{\sum_j q_j e^{(l_j-\bar l)/\tau}},
        \qquad
        \text{official: } W_i = q_i\min\big(e^{(l_i-\bar l)/\tau}, \text{cap}\big),

    with :math:`\bar l = \sum_i q_i l_i` (docs/theory.md §4.2). With q = 1/n the official
    weights are the code's ``clamp(exp((l - mean l)/tau), max=10) / n``: unnormalised,
    summing to >= 1 when no weight is capped (Jensen). The torch backend's
    :func:`loglinear.torch.losses.kldpo_weights` returns the same quantity.

    Args:
        losses: (n,) per-pair losses.
        weight: (n,) base weights q (nonnegative, summing to one).
        tau: temperature (> 0).
        form: ``"paper"`` or ``"official"``.
        cap: the official clamp (> 0; ignored by the paper form).
    """
    tau = _check_positive("tau", tau)
    cap = _check_positive("cap", cap)
    losses = np.asarray(losses, dtype=float)
    weight = np.asarray(weight, dtype=float)
    if losses.ndim != 1 or weight.shape != losses.shape:
        raise ValueError(f"losses and weight must be 1-d of equal length, got {losses.shape} "
                         f"and {weight.shape}")
    if not (np.all(np.isfinite(losses)) and np.all(np.isfinite(weight))):
        raise ValueError("losses and weight must be finite")
    if np.any(weight < 0) or abs(weight.sum() - 1.0) > 1e-9:
        raise ValueError("weight must be nonnegative and sum to one")
    return KLDPO_FORMS.get(form).weights(losses, weight, tau, cap)


def kldpo_objective(theta, data: PreferenceData, *, beta: float, tau: float
                    ) -> tuple[float, np.ndarray]:
    r"""The convex KLDPO objective and its gradient (the reweighted gradient).

    .. math::
        F_\tau(\theta) = \tau\log\sum_i q_i e^{l_i(\theta)/\tau}, \qquad
        \nabla F_\tau = \sum_i P_i\,\nabla_\theta l_i,\quad P_i\propto q_i e^{l_i/\tau}.

    The exact KL-DRO value at radius rho is :math:`\min_{\lambda>0}\lambda\rho + F_\lambda`
    (docs/theory.md §3.1), so :math:`\tau\rho + F_\tau \ge` the exact value.
    """
    beta = _check_beta(beta)
    tau = _check_positive("tau", tau)
    v, g, _ = _kldpo_terms(theta, data, beta, tau, False)
    return v, g


def refit_contraction(theta, data: PreferenceData, *, beta: float, tau: float,
                      form: str = "paper", cap: float = OFFICIAL_CAP) -> float:
    r"""Spectral radius of the "refit with frozen weights, then reweight" map at theta.

    The map :math:`T(\theta) = \arg\min_\vartheta \sum_i W_i(\theta)\,l_i(\vartheta)` has, at
    a fixed point, the Jacobian

    .. math:: J = -H_W^{-1}\sum_i \nabla l_i\,\nabla W_i^\top, \qquad
              H_W = \sum_i W_i \nabla^2 l_i,

    with :math:`\nabla P_i = P_i(\nabla l_i - \bar g)/\tau` (paper) and, for uncapped
    official weights, :math:`\nabla W_i = W_i(\nabla l_i - \nabla L)/\tau` (capped: 0).
    For DPO, :math:`\|\nabla l_i\|^2 / \nabla^2 l_i \sim e^{-m_i}`, so
    :math:`\rho(J) \approx e^{-m}/\tau`: the iteration converges (linearly, rate
    :math:`\rho(J)`) only when :math:`\rho(J) < 1`, and otherwise oscillates or diverges.
    Since the eigenvalues of J are real and negative, the failure is an oscillation.
    """
    beta = _check_beta(beta)
    tau = _check_positive("tau", tau)
    spec = KLDPO_FORMS.get(form)
    p = _pieces(theta, data, beta)
    q = data.weight
    W = spec.weights(p.loss, q, tau, cap)
    gi = p.coef[:, None] * data.x
    dW = spec.dweights(W, gi, p, q, tau, cap)
    H = (data.x * (W * beta**2 * p.curvature)[:, None]).T @ data.x
    J = np.linalg.lstsq(H, gi.T @ dW, rcond=None)[0]
    return float(np.max(np.abs(np.linalg.eigvals(J))))


# ------------------------------------------------------------------ the optimisers
def _run_newton(data, beta, tau, spec, cap, theta0, gtol, max_iter, step, info, bound,
                separation):
    return spec.newton(data, beta, tau, cap, theta0, gtol, max_iter, bound=bound,
                       separation=separation, info=info)


def _run_gradient(data, beta, tau, spec, cap, theta0, gtol, max_iter, step, info, bound,
                  separation):
    r"""Algorithm 2: theta <- theta - eta sum_i W_i(theta) grad l_i(theta), weights recomputed.

    For the paper form this is gradient descent on F_tau, which is L-smooth with
    L <= beta^2 max||x||^2 (1/4 + 1/tau); the default eta = 1/L decreases F_tau monotonically.
    The official weights scale the same direction by c = sum_i W_i >= 1 (uncapped), so the
    same eta is an effective step c eta: the iteration may overshoot where the paper's does not.
    """
    eta = 1.0 / _lipschitz_bound(data, beta, tau) if step is None else float(step)
    info["step"] = eta
    theta = np.array(theta0, dtype=float)
    hist = []
    status = "max_iter"
    for _ in range(max_iter + 1):
        v, g = spec.value_grad(theta, data, beta, tau, cap)
        hist.append(v)
        gn = float(np.linalg.norm(g))
        if not np.isfinite(gn) or np.linalg.norm(theta) > STALL_NORM:
            status = "diverged"
            break
        if gn <= gtol:
            status = "converged"
            break
        theta = theta - eta * g
    _, _, g = _weighted_grad(theta, data, beta, tau, spec.weights, cap)
    value = hist[-1] if hist else float("nan")
    return (theta, value, float(np.linalg.norm(g)), len(hist) - 1, status, float("nan"),
            tuple(hist))


def _run_refit(data, beta, tau, spec, cap, theta0, gtol, max_iter, step, info, bound,
               separation, xtol=1e-10):
    """Refit DPO with the weights frozen at the current theta, then reweight; repeat.
    Warns (``RuntimeWarning``) when :func:`refit_contraction` >= 1 at the solution."""
    fixed = fit_kldpo(data, beta=beta, tau=tau, form=spec.name, cap=cap).theta
    kappa = refit_contraction(fixed, data, beta=beta, tau=tau, form=spec.name, cap=cap)
    info["contraction"] = kappa
    if kappa >= 1.0:
        warnings.warn(
            f"the refit-then-reweight KLDPO iteration cannot converge here (tau={tau:g}): "
            f"its linearisation at the fixed point has spectral radius {kappa:.3g} >= 1, "
            "so it oscillates away from the solution; use method='newton'",
            RuntimeWarning, stacklevel=3)
    theta = np.array(theta0, dtype=float)
    hist = []
    status = "max_iter"
    for _ in range(max_iter):
        l = _pieces(theta, data, beta).loss
        W = spec.weights(l, data.weight, tau, cap)
        hist.append(float(W @ l))
        try:
            new = fit_dpo(data.with_weight(W, normalize=True), beta=beta, gtol=gtol).theta
        except (SeparableDataError, FitError):
            status = "diverged"
            break
        move = float(np.linalg.norm(new - theta))
        theta = new
        if not np.all(np.isfinite(theta)) or np.linalg.norm(theta) > STALL_NORM:
            status = "diverged"
            break
        if move <= xtol * max(1.0, float(np.linalg.norm(theta))):
            status = "converged"
            break
    _, _, g = _weighted_grad(theta, data, beta, tau, spec.weights, cap)
    value = spec.value_grad(theta, data, beta, tau, cap)[0]
    return theta, value, float(np.linalg.norm(g)), len(hist), status, float("nan"), tuple(hist)


@dataclass(frozen=True)
class KLDPOMethod:
    """An optimiser of :func:`fit_kldpo` with its default tolerance and iteration cap."""

    name: str
    run: Callable
    gtol: float
    max_iter: int


KLDPO_METHODS: Registry[KLDPOMethod] = Registry("KLDPO method", {
    "newton": KLDPOMethod("newton", _run_newton, 1e-10, 200),
    "gradient": KLDPOMethod("gradient", _run_gradient, 1e-8, 100_000),
    "refit": KLDPOMethod("refit", _run_refit, 1e-8, 200),
})


def fit_kldpo(data: PreferenceData, *, beta: float, tau: float, form: str = "paper",
              method: str = "newton", cap: float = OFFICIAL_CAP, step: float | None = None,
              gtol: float | None = None, max_iter: int | None = None, theta0=None,
              bound: float | None = None) -> ApproxResult:
    r"""Fit KLDPO: the fixed point of "reweight by :math:`e^{l/\tau}`, then step".

    Methods (:data:`KLDPO_METHODS`):

    * ``"newton"`` (default): paper form, Newton on the convex
      :math:`F_\tau = \tau\log\sum_i q_i e^{l_i/\tau}` (whose stationary points are the
      iteration's fixed points), optionally on the ball :math:`\|\theta\| \le B`; below
      tau = 1 it runs in :math:`u = \theta/\tau`, where the objective stays representable
      as tau -> 0 (it tends to an exponential loss and :math:`\theta_\tau \approx \tau u^*`).
      Official form, the root of :math:`\sum_i W_i(\theta)\nabla l_i = 0` (no potential
      exists once the cap binds).
    * ``"gradient"``: Algorithm 2 as written, gradient steps with weights recomputed every
      step; step ``eta = 1/L``, :math:`L = \beta^2\max\|x\|^2(1/4 + 1/\tau)` unless ``step``.
    * ``"refit"``: refit DPO with frozen weights, then reweight. Converges only when
      :func:`refit_contraction` < 1 at the solution; a ``RuntimeWarning`` says so otherwise.

    ``converged`` is True only when the certificate ``grad_norm`` (the norm of the
    reweighted gradient, or on the ball the KKT residual
    :math:`\|\nabla F_\tau + \mu\theta\|`) is at most ``gtol``. Separable data (no finite
    minimiser, docs/theory.md §2.2) are detected as :func:`loglinear.fit.fit_dpo` detects
    them.

    Args:
        data: weighted preference data.
        beta: DPO temperature (> 0).
        tau: KLDPO temperature (> 0); the exact KL dual variable at the solution.
        form: ``"paper"`` (normalised) or ``"official"`` (capped, unnormalised).
        method: a key of :data:`KLDPO_METHODS`.
        cap: the official clamp (default 10).
        step: gradient step size (``"gradient"`` only).
        gtol: gradient tolerance (default 1e-10 Newton, 1e-8 gradient/refit).
        max_iter: iteration cap (defaults: 200 Newton, 100000 gradient, 200 refit).
        theta0: starting point (default: the DPO fit, or 0 where DPO has no minimiser).
        bound: optional radius B of the ball :math:`\|\theta\| \le B` (paper form,
            ``method="newton"``); ``info["bound_multiplier"]`` is its multiplier.

    Returns:
        :class:`ApproxResult`; ``info`` holds ``implied_radius`` (paper form) and, for
        ``"refit"``, the ``contraction`` factor at the solution.

    Raises:
        SeparableDataError: separable data (no finite minimiser) and no bound.
        FitError: Newton did not converge.
    """
    t0 = time.perf_counter()
    beta = _check_beta(beta)
    tau = _check_positive("tau", tau)
    cap = _check_positive("cap", cap)
    spec = KLDPO_FORMS.get(form)
    how = KLDPO_METHODS.get(method)
    bound = check_bound(bound)
    if bound is not None and not (spec.exact_kl and how.name == "newton"):
        raise ValueError(f"bound needs form='paper' and method='newton', got form={form!r}, "
                         f"method={method!r}: only the paper form has a potential to "
                         "minimise on the ball")
    if step is not None:
        _check_positive("step", step)
    separation = Separation(None, False)
    if theta0 is None:
        # fit_dpo settles separability by its own rule, which is the KLDPO one: F_tau and
        # the DPO loss have no finite minimiser on the same data (docs/theory.md §2.2)
        try:
            theta0 = fit_dpo(data, beta=beta).theta
            separation = Separation(None, True)
        except SeparableDataError as exc:
            theta0, separation = np.zeros(data.d), Separation(exc.direction, True)
        except FitError:
            theta0 = np.zeros(data.d)
    if not separation.settled and data.n * data.d <= EAGER_LP:
        separation = Separation(separating_direction(data), True)
    if separation.direction is not None and bound is None:
        raise separable_error(separation.direction, KLDPO_WHAT)
    theta0 = _check_theta(theta0, data.d)
    info: dict = {}
    gtol = how.gtol if gtol is None else gtol
    max_iter = how.max_iter if max_iter is None else max_iter
    out = how.run(data, beta, tau, spec, cap, theta0, gtol, max_iter, step, info, bound,
                  separation)
    theta, value, gnorm, iters, status, eig, hist = out
    if bound is None and not separation.settled and suspicious(
            data, theta, beta=beta, converged=status == "converged"):
        direction = separating_direction(data)
        if direction is not None:
            raise separable_error(direction, KLDPO_WHAT)
    if status == "converged" and not gnorm <= gtol:
        status = "stalled"   # a step or move test stopped it, not the certificate
    if spec.exact_kl and status == "converged":
        info["implied_radius"] = _implied_radius_at(theta, data, beta, tau)
    return ApproxResult(theta, float(value), int(iters), status, status == "converged",
                        float(gnorm), time.perf_counter() - t0, "kldpo", form, method, tau,
                        eig, tuple(hist), info)
