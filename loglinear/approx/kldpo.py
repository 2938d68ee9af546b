r"""KLDPO: exponential reweighting, as written (normalised) and as run (capped).

Fixed points minimise the convex :math:`F_\tau = \tau\log\sum_i q_i e^{l_i/\tau}`, i.e.
KLDPO(tau) is exact KL-DRO at radius :math:`\mathrm{KL}(P^*\|q)` with dual tau.

For a well-specified Bradley-Terry population (both labels of every pair, with
probabilities :math:`\sigma(\pm r)`) stationarity per feature difference gives
:math:`e^{l/\tau} = \sigma(m)^{-1/\tau}` and hence, in closed form,
:math:`\theta_\tau = \theta^*\,\tau/(1+\tau)`; there the "refit with frozen weights, then
reweight" map has Jacobian exactly :math:`-I/\tau` (:func:`refit_contraction`), so that
iteration converges only for tau > 1 and cycles at tau = 1 (both tested).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import root
from scipy.special import logsumexp

from ..data import PreferenceData
from ..fit import FitError, SeparableDataError, fit_dpo, separating_direction
from ..losses import _check_beta, _check_theta, margins, softplus
from ..newton import newton
from ._common import (
    DPO_HESSIAN_CURVATURE,
    OFFICIAL_CAP,
    STALL_NORM,
    ApproxResult,
    _check_positive,
    _get,
    _pieces,
)


def _weights_paper(losses, weight, tau, cap):
    with np.errstate(divide="ignore"):
        logits = np.log(weight) + losses / tau
    return np.exp(logits - logsumexp(logits))


def _weights_official(losses, weight, tau, cap):
    lbar = float(weight @ losses)
    return weight * np.minimum(np.exp(np.minimum((losses - lbar) / tau, np.log(cap))), cap)


@dataclass(frozen=True)
class KLDPOForm:
    """A KLDPO weighting rule: per-pair effective weights W (the loss is sum_i W_i l_i)."""

    name: str
    weights: Callable
    normalised: bool
    doc: str


KLDPO_FORMS: dict[str, KLDPOForm] = {
    "paper": KLDPOForm("paper", _weights_paper, True,
                       "P_i = q_i e^{(l_i - lbar)/tau} / sum_j q_j e^{(l_j - lbar)/tau}"),
    "official": KLDPOForm("official", _weights_official, False,
                          "W_i = q_i min(e^{(l_i - lbar)/tau}, cap), lbar = sum q l"),
}


def kldpo_weights(losses, weight, *, tau: float, form: str = "paper",
                  cap: float = OFFICIAL_CAP) -> np.ndarray:
    r"""Effective KLDPO weights W (held constant; the step minimises :math:`\sum_i W_i l_i`).

    .. math::
        \text{paper: } W_i = \frac{q_i e^{(l_i-\bar l)/\tau}}{\sum_j q_j e^{(l_j-\bar l)/\tau}},
        \qquad
        \text{official: } W_i = q_i\min\big(e^{(l_i-\bar l)/\tau}, \text{cap}\big),

    with :math:`\bar l = \sum_i q_i l_i`. With q = 1/n the official weights are the code's
    ``clamp(exp((l - mean l)/tau), max=10) / n``: unnormalised, summing to >= 1 when no
    weight is capped (Jensen).

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
    return _get(KLDPO_FORMS, form, "KLDPO form").weights(losses, weight, tau, cap)


def _tau_log_mean_exp(l, q, tau):
    r"""tau log sum_i q_i e^{l_i / tau}, accurate also for large tau.

    As c + tau log1p(sum q expm1((l - c)/tau)) with c = sum q l: the plain log-sum-exp
    returns the O(1/tau) excess over a log of order one, so its rounding (~1e-16 tau)
    would swamp the Newton decrement once tau is large (1e-12 at tau = 1e4).
    """
    c = float(q @ l)
    z = (l - c) / tau
    if float(np.max(z)) <= 1.0:
        return c + tau * float(np.log1p(q @ np.expm1(z)))
    with np.errstate(divide="ignore"):
        return tau * float(logsumexp(np.log(q) + l / tau))


def _kldpo_terms(theta, data, beta, tau, hessian):
    r"""F = tau log sum q e^{l/tau}, grad = sum P grad l, hess = sum P H_i + Cov_P(grad l)/tau."""
    theta, m, a, c = _pieces(theta, data, beta)
    l = softplus(-m)
    with np.errstate(divide="ignore"):
        logits = np.log(data.weight) + l / tau
    P = np.exp(logits - float(logsumexp(logits)))
    value = _tau_log_mean_exp(l, data.weight, tau)
    gi = c[:, None] * data.x
    grad = gi.T @ P
    hess = None
    if hessian:
        hess = (data.x * (P * beta**2 * a * (1.0 - a))[:, None]).T @ data.x
        hess += ((gi * P[:, None]).T @ gi - np.outer(grad, grad)) / tau
    return value, grad, hess


def kldpo_objective(theta, data: PreferenceData, *, beta: float, tau: float
                    ) -> tuple[float, np.ndarray]:
    r"""The convex KLDPO objective and its gradient (the reweighted gradient).

    .. math::
        F_\tau(\theta) = \tau\log\sum_i q_i e^{l_i(\theta)/\tau}, \qquad
        \nabla F_\tau = \sum_i P_i\,\nabla_\theta l_i,\quad P_i\propto q_i e^{l_i/\tau}.

    The exact KL-DRO value at radius rho is :math:`\min_{\lambda>0}\lambda\rho + F_\lambda`
    (paper.md section 3), so :math:`\tau\rho + F_\tau \ge` the exact value.
    """
    beta = _check_beta(beta)
    tau = _check_positive("tau", tau)
    v, g, _ = _kldpo_terms(theta, data, beta, tau, False)
    return v, g


def _official_residual(theta, data, beta, tau, cap, jac):
    """F(theta) = sum_i W_i(theta) grad l_i(theta) for the official weights, and dF/dtheta."""
    theta, m, a, c = _pieces(theta, data, beta)
    l = softplus(-m)
    q = data.weight
    W = _weights_official(l, q, tau, cap)
    gi = c[:, None] * data.x
    F = gi.T @ W
    if not jac:
        return F, None
    gbar = gi.T @ q
    free = (l - float(q @ l)) / tau < np.log(cap)   # uncapped pairs move with theta
    dW = (W * free)[:, None] * (gi - gbar) / tau      # rows: grad W_i
    J = (data.x * (W * beta**2 * a * (1.0 - a))[:, None]).T @ data.x + gi.T @ dW
    return F, J


def _lipschitz_bound(data, beta, tau):
    r"""A global smoothness constant of F_tau: beta^2 max||x||^2 (1/4 + 1/tau)."""
    X2 = float(np.max(np.sum(data.x**2, axis=1)))
    return beta**2 * X2 * (DPO_HESSIAN_CURVATURE + 1.0 / tau)


def _kldpo_line(data, beta, tau):
    def line(theta, step):
        base = data.sign * beta * (data.x @ theta - data.offset)
        dm = data.sign * beta * (data.x @ step)
        return lambda t: _tau_log_mean_exp(softplus(-(base + t * dm)), data.weight, tau)
    return line


def _kldpo_newton_paper(data, beta, tau, theta0, gtol, max_iter):
    fun = lambda th, h: _kldpo_terms(th, data, beta, tau, h)
    rep = newton(fun, theta0, gtol=gtol, max_iter=max_iter, line=_kldpo_line(data, beta, tau))
    if not rep.converged:
        direction = separating_direction(data)
        if direction is not None:
            raise SeparableDataError(
                direction, "the data are separable: tau log sum q e^{l/tau} decreases without "
                f"bound along {np.round(direction, 4).tolist()}; KLDPO has no finite minimiser")
        raise FitError(f"KLDPO Newton did not converge ({rep.status}, grad norm "
                       f"{rep.grad_norm:.3g} after {rep.iterations} iterations)")
    eig = float(np.linalg.eigvalsh(fun(rep.x, True)[2])[0])
    return rep.x, rep.value, rep.grad_norm, rep.iterations, "converged", eig, ()


def _official_objective(theta, data, beta, tau, cap):
    _, m, _, _ = _pieces(theta, data, beta)
    l = softplus(-m)
    return float(_weights_official(l, data.weight, tau, cap) @ l)


def _kldpo_newton_official(data, beta, tau, cap, theta0, gtol, max_iter):
    """Root of sum_i W_i(theta) grad l_i(theta) = 0 (no potential exists once a cap binds):
    Powell's hybrid method from the paper-form solution, then Newton polishing."""
    start = _kldpo_newton_paper(data, beta, tau, theta0, gtol, max_iter)[0]
    sol = root(lambda th: _official_residual(th, data, beta, tau, cap, True), start,
               jac=True, method="hybr", options={"xtol": 1e-13})
    theta, iters = sol.x, int(sol.nfev)
    for _ in range(20):
        F, J = _official_residual(theta, data, beta, tau, cap, True)
        if np.linalg.norm(F) <= gtol:
            break
        theta = theta - np.linalg.lstsq(J, F, rcond=None)[0]
        iters += 1
    F, _ = _official_residual(theta, data, beta, tau, cap, False)
    gnorm = float(np.linalg.norm(F))
    status = "converged" if gnorm <= max(gtol, 1e-9) else "max_iter"
    return (theta, _official_objective(theta, data, beta, tau, cap), gnorm, iters, status,
            float("nan"), ())


def _weighted_grad(theta, data, beta, tau, form, cap):
    theta, m, a, c = _pieces(theta, data, beta)
    l = softplus(-m)
    W = KLDPO_FORMS[form].weights(l, data.weight, tau, cap)
    return W, l, (c * W) @ data.x


def _kldpo_gradient(data, beta, tau, form, cap, theta0, gtol, max_iter, step):
    r"""Algorithm 2: theta <- theta - eta sum_i W_i(theta) grad l_i(theta), weights recomputed.

    For the paper form this is gradient descent on F_tau, which is L-smooth with
    L <= beta^2 max||x||^2 (1/4 + 1/tau); the default eta = 1/L decreases F_tau monotonically.
    The official weights scale the same direction by c = sum_i W_i >= 1 (uncapped), so the
    same eta is an effective step c eta: the iteration may overshoot where the paper's does not.
    """
    eta = 1.0 / _lipschitz_bound(data, beta, tau) if step is None else float(step)
    theta = np.array(theta0, dtype=float)
    hist = []
    status = "max_iter"
    for _ in range(max_iter + 1):
        if form == "paper":
            v, g, _ = _kldpo_terms(theta, data, beta, tau, False)
        else:
            W, l, g = _weighted_grad(theta, data, beta, tau, form, cap)
            v = float(W @ l)
        hist.append(v)
        gn = float(np.linalg.norm(g))
        if not np.isfinite(gn) or np.linalg.norm(theta) > STALL_NORM:
            status = "diverged"
            break
        if gn <= gtol:
            status = "converged"
            break
        theta = theta - eta * g
    it = len(hist) - 1
    W, l, g = _weighted_grad(theta, data, beta, tau, form, cap)
    value = hist[-1] if hist else float("nan")
    return theta, value, float(np.linalg.norm(g)), it, status, float("nan"), tuple(hist), eta


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
    _get(KLDPO_FORMS, form, "KLDPO form")
    theta, m, a, c = _pieces(theta, data, beta)
    l = softplus(-m)
    q = data.weight
    W = KLDPO_FORMS[form].weights(l, q, tau, cap)
    gi = c[:, None] * data.x
    if form == "paper":
        dW = W[:, None] * (gi - gi.T @ W) / tau
    else:
        free = (l - float(q @ l)) / tau < np.log(cap)
        dW = (W * free)[:, None] * (gi - gi.T @ q) / tau
    H = (data.x * (W * beta**2 * a * (1.0 - a))[:, None]).T @ data.x
    J = np.linalg.lstsq(H, gi.T @ dW, rcond=None)[0]
    return float(np.max(np.abs(np.linalg.eigvals(J))))


def _kldpo_refit(data, beta, tau, form, cap, theta0, gtol, max_iter, xtol=1e-10):
    """Refit DPO with the weights frozen at the current theta, then reweight; repeat."""
    theta = np.array(theta0, dtype=float)
    hist = []
    status = "max_iter"
    for _ in range(max_iter):
        _, m, _, _ = _pieces(theta, data, beta)
        l = softplus(-m)
        W = KLDPO_FORMS[form].weights(l, data.weight, tau, cap)
        hist.append(float(W @ l))
        try:
            new = fit_dpo(data.with_weight(W, normalize=True), beta=beta, gtol=gtol).theta
        except (SeparableDataError, FitError):
            status = "diverged"
            break
        step = float(np.linalg.norm(new - theta))
        theta = new
        if not np.all(np.isfinite(theta)) or np.linalg.norm(theta) > STALL_NORM:
            status = "diverged"
            break
        if step <= xtol * max(1.0, float(np.linalg.norm(theta))):
            status = "converged"
            break
    it = len(hist)
    _, _, g = _weighted_grad(theta, data, beta, tau, form, cap)
    value = _official_objective(theta, data, beta, tau, cap) if form == "official" else \
        _kldpo_terms(theta, data, beta, tau, False)[0]
    return theta, value, float(np.linalg.norm(g)), it, status, float("nan"), tuple(hist)


KLDPO_METHODS = ("newton", "gradient", "refit")


def fit_kldpo(data: PreferenceData, *, beta: float, tau: float, form: str = "paper",
              method: str = "newton", cap: float = OFFICIAL_CAP, step: float | None = None,
              gtol: float | None = None, max_iter: int | None = None, theta0=None
              ) -> ApproxResult:
    r"""Fit KLDPO: the fixed point of "reweight by :math:`e^{l/\tau}`, then step".

    Methods:

    * ``"newton"`` (default): paper form, Newton on the convex
      :math:`F_\tau = \tau\log\sum_i q_i e^{l_i/\tau}` (whose stationary points are the
      iteration's fixed points); official form, the root of
      :math:`\sum_i W_i(\theta)\nabla l_i = 0` (no potential exists once the cap binds).
    * ``"gradient"``: Algorithm 2 as written, gradient steps with weights recomputed every
      step; step ``eta = 1/L``, :math:`L = \beta^2\max\|x\|^2(1/4 + 1/\tau)` unless ``step``.
    * ``"refit"``: refit DPO with frozen weights, then reweight. Converges only when
      :func:`refit_contraction` < 1 at the solution; a ``RuntimeWarning`` says so otherwise.

    Args:
        data: weighted preference data.
        beta: DPO temperature (> 0).
        tau: KLDPO temperature (> 0); the exact KL dual variable at the solution.
        form: ``"paper"`` (normalised) or ``"official"`` (capped, unnormalised).
        method: one of :data:`KLDPO_METHODS`.
        cap: the official clamp (default 10).
        step: gradient step size (``"gradient"`` only).
        gtol: gradient tolerance (default 1e-10 Newton, 1e-8 gradient/refit).
        max_iter: iteration cap (defaults: 200 Newton, 100000 gradient, 200 refit).
        theta0: starting point (default: the DPO fit, or 0 where DPO has no minimiser).

    Returns:
        :class:`ApproxResult`; ``info`` holds ``implied_radius`` (paper form) and, for
        ``"refit"``, the ``contraction`` factor at the solution.

    Raises:
        SeparableDataError: separable data (no finite minimiser).
        FitError: Newton did not converge.
    """
    t0 = time.perf_counter()
    beta = _check_beta(beta)
    tau = _check_positive("tau", tau)
    cap = _check_positive("cap", cap)
    _get(KLDPO_FORMS, form, "KLDPO form")
    if method not in KLDPO_METHODS:
        raise ValueError(f"unknown KLDPO method {method!r}; allowed: {list(KLDPO_METHODS)}")
    if step is not None:
        _check_positive("step", step)
    if theta0 is None:
        try:
            theta0 = fit_dpo(data, beta=beta).theta
        except (SeparableDataError, FitError):
            theta0 = np.zeros(data.d)
    theta0 = _check_theta(theta0, data.d)
    info: dict = {}
    if method == "newton":
        gtol = 1e-10 if gtol is None else gtol
        max_iter = 200 if max_iter is None else max_iter
        if form == "paper":
            out = _kldpo_newton_paper(data, beta, tau, theta0, gtol, max_iter)
        else:
            out = _kldpo_newton_official(data, beta, tau, cap, theta0, gtol, max_iter)
    elif method == "gradient":
        gtol = 1e-8 if gtol is None else gtol
        max_iter = 100_000 if max_iter is None else max_iter
        *out, info["step"] = _kldpo_gradient(data, beta, tau, form, cap, theta0, gtol,
                                             max_iter, step)
    else:
        gtol = 1e-8 if gtol is None else gtol
        max_iter = 200 if max_iter is None else max_iter
        fixed = fit_kldpo(data, beta=beta, tau=tau, form=form, cap=cap).theta
        kappa = refit_contraction(fixed, data, beta=beta, tau=tau, form=form, cap=cap)
        info["contraction"] = kappa
        if kappa >= 1.0:
            warnings.warn(
                f"the refit-then-reweight KLDPO iteration cannot converge here (tau={tau:g}): "
                f"its linearisation at the fixed point has spectral radius {kappa:.3g} >= 1, "
                "so it oscillates away from the solution; use method='newton'",
                RuntimeWarning, stacklevel=2)
        out = _kldpo_refit(data, beta, tau, form, cap, theta0, gtol, max_iter)
    theta, value, gnorm, iters, status, eig, hist = out
    if form == "paper" and status == "converged":
        info["implied_radius"] = _implied_radius_at(theta, data, beta, tau)
    return ApproxResult(theta, float(value), int(iters), status, status == "converged",
                        float(gnorm), time.perf_counter() - t0, "kldpo", form, method, tau,
                        eig, tuple(hist), info)


def _implied_radius_at(theta, data, beta, tau) -> float:
    """KL(P*||q) of the KLDPO (paper) weights at theta; see
    :func:`loglinear.approx.calibrate.implied_radius_kl`."""
    l = softplus(-margins(theta, data, beta=beta))
    with np.errstate(divide="ignore"):
        logits = np.log(data.weight) + l / tau
    lse = float(logsumexp(logits))
    P = np.exp(logits - lse)
    return max(float(P @ (l / tau)) - lse, 0.0)
