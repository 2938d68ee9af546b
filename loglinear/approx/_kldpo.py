r"""The KLDPO terms (docs/theory.md §4.2), private to :mod:`loglinear.approx.kldpo`.

The two weighting rules and their derivatives in theta, the convex potential
:math:`F_\tau = \tau\log\sum_i q_i e^{l_i/\tau}` of the paper form with its derivatives,
the official form's stationarity residual, and the Newton solvers of both forms;
:mod:`loglinear.approx.kldpo` assembles them into :data:`~loglinear.approx.KLDPO_FORMS`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import root
from scipy.special import logsumexp

from ..fit import FitError, separating_direction
from ..losses import dpo_margin_terms, margin_line
from ..newton import newton
from ._ball import fit_on_sphere, separable_error, suspicious
from ._common import DPO_HESSIAN_CURVATURE, DPOPieces, _pieces

LOG2 = float(np.log(2.0))
SMALL_TAU = 1e-3   # below this the paper Newton starts from theta = tau theta0


# ------------------------------------------------------------------ the weights
def _weights_paper(losses, weight, tau, cap):
    with np.errstate(divide="ignore"):
        logits = np.log(weight) + losses / tau
    return np.exp(logits - logsumexp(logits))


def _weights_official(losses, weight, tau, cap):
    lbar = float(weight @ losses)
    return weight * np.minimum(np.exp(np.minimum((losses - lbar) / tau, np.log(cap))), cap)


def _dweights_paper(W, gi, p: DPOPieces, q, tau, cap):
    r"""Rows :math:`\nabla_\theta P_i = P_i(\nabla l_i - \sum_j P_j\nabla l_j)/\tau`."""
    return W[:, None] * (gi - gi.T @ W) / tau


def _dweights_official(W, gi, p: DPOPieces, q, tau, cap):
    r"""Rows :math:`\nabla_\theta W_i = W_i(\nabla l_i - \nabla L)/\tau` for the pairs
    below the cap (they move with theta); 0 for the capped ones."""
    free = (p.loss - float(q @ p.loss)) / tau < np.log(cap)
    return (W * free)[:, None] * (gi - gi.T @ q) / tau


# ------------------------------------------------------------------ the paper form
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
    p = _pieces(theta, data, beta)
    # P from (l - log 2)/tau: the same softmax, but l/tau would round away the differences
    # between the losses once tau is small (l ~ log 2 near theta = 0)
    with np.errstate(divide="ignore"):
        logits = np.log(data.weight) + _loss_above_log2(p.m, p.loss) / tau
    P = np.exp(logits - logsumexp(logits))
    value = _tau_log_mean_exp(p.loss, data.weight, tau)
    gi = p.coef[:, None] * data.x
    grad = gi.T @ P
    hess = None
    if hessian:
        hess = (data.x * (P * beta**2 * p.curvature)[:, None]).T @ data.x
        hess += ((gi * P[:, None]).T @ gi - np.outer(grad, grad)) / tau
    return value, grad, hess


def _paper_value_grad(theta, data, beta, tau, cap):
    v, g, _ = _kldpo_terms(theta, data, beta, tau, False)
    return v, g


def _lipschitz_bound(data, beta, tau):
    r"""A global smoothness constant of F_tau: beta^2 max||x||^2 (1/4 + 1/tau)."""
    X2 = float(np.max(np.sum(data.x**2, axis=1)))
    return beta**2 * X2 * (DPO_HESSIAN_CURVATURE + 1.0 / tau)


def _kldpo_line(data, beta, tau):
    def line(theta, step):
        base, dm = margin_line(theta, step, data, beta=beta)
        return lambda t: _tau_log_mean_exp(dpo_margin_terms(base + t * dm)[0], data.weight, tau)
    return line


def _loss_above_log2(m, loss):
    r"""l(m) - log 2 without cancellation near m = 0: log1p(expm1(-m)/2) there, where
    l - log 2 ~ -m/2 would otherwise be lost in the rounding of log 2."""
    with np.errstate(over="ignore"):
        near = np.log1p(np.expm1(np.minimum(-m, 1.0)) / 2.0)
    return np.where(m > -1.0, near, loss - LOG2)


def _scaled_terms(u, data, beta, tau, hessian):
    r""":math:`G(u) = \log\sum_i q_i e^{(l_i(\tau u) - \log 2)/\tau}` (tau < 1).

    G(u) = (F_tau(tau u) - log 2) / tau, so grad_u G = grad_theta F_tau and
    hess_u G = tau hess_theta F_tau = tau sum P H_i + Cov_P(grad l): bounded as tau -> 0,
    where F_tau's own Hessian (Cov / tau) and its variation (tau G, below the rounding of
    log 2) are not representable. As tau -> 0, G tends to the exponential loss
    log sum_i q_i e^{-m_i(u)/2} and theta_tau = tau u* to first order.
    """
    p = _pieces(tau * np.asarray(u, dtype=float), data, beta)
    with np.errstate(divide="ignore"):
        logits = np.log(data.weight) + _loss_above_log2(p.m, p.loss) / tau
    value = float(logsumexp(logits))
    P = np.exp(logits - value)
    gi = p.coef[:, None] * data.x
    grad = gi.T @ P
    hess = None
    if hessian:
        hess = tau * (data.x * (P * beta**2 * p.curvature)[:, None]).T @ data.x
        hess += (gi * P[:, None]).T @ gi - np.outer(grad, grad)
    return value, grad, hess


def _scaled_line(data, beta, tau):
    def line(u, step):
        base, dm = margin_line(tau * u, tau * step, data, beta=beta)
        with np.errstate(divide="ignore"):
            logq = np.log(data.weight)

        def f(t):
            m = base + t * dm
            return float(logsumexp(logq + _loss_above_log2(m, dpo_margin_terms(m)[0]) / tau))
        return f
    return line


class Separation(NamedTuple):
    """What is known of the data's separability before a fit: ``direction`` (a separating
    direction, or None), ``settled`` (the LP has been run, or fit_dpo has decided)."""

    direction: np.ndarray | None
    settled: bool


UNKNOWN = Separation(None, False)   # nothing known yet: fit_dpo's lazy rule decides
KLDPO_WHAT = "KLDPO objective tau log sum_i q_i e^{l_i/tau}"


def _paper_problem(data, beta, tau):
    """(fun, line, scale): F_tau in theta = scale * u; scale = tau below 1 (see
    :func:`_scaled_terms`), else 1 and F_tau itself."""
    if tau < 1.0:
        return (lambda u, h: _scaled_terms(u, data, beta, tau, h),
                _scaled_line(data, beta, tau), tau)
    return (lambda th, h: _kldpo_terms(th, data, beta, tau, h),
            _kldpo_line(data, beta, tau), 1.0)


def _newton_paper(data, beta, tau, cap, theta0, gtol, max_iter, *, bound=None,
                  separation=UNKNOWN, info=None):
    r"""Newton on the convex F_tau, on the ball ||theta|| <= bound when that binds.

    Converged only with ||grad F_tau|| (the KKT residual on the ball) at most ``gtol``;
    otherwise ``FitError``. Separability is decided as ``fit_dpo`` decides it
    (``separation`` carries what is already known); without a bound it raises
    ``SeparableDataError``. Below tau = 1 Newton runs in u = theta / tau
    (:func:`_scaled_terms`), from u0 = theta0 / tau, or from u0 = theta0 (theta = tau
    theta0, the small-tau asymptote when theta0 is the DPO fit) where tau < 1e-3.
    """
    fun, line, s = _paper_problem(data, beta, tau)
    theta0 = np.asarray(theta0, dtype=float)
    u0 = theta0 / s if s >= SMALL_TAU else theta0
    direction, settled = separation
    mult, rep = 0.0, None
    if direction is None:
        rep = newton(fun, u0, gtol=gtol, ctol=gtol, max_iter=max_iter, line=line)
        if not settled and suspicious(data, s * rep.x, beta=beta, converged=rep.converged):
            direction = separating_direction(data)
    if direction is not None and bound is None:
        raise separable_error(direction, KLDPO_WHAT)
    if rep is not None and rep.converged and direction is None and (
            bound is None or s * np.linalg.norm(rep.x) <= bound):
        u, value, gnorm, iters = rep.x, rep.value, rep.grad_norm, rep.iterations
    elif bound is None:
        raise FitError(f"KLDPO Newton did not converge ({rep.status}, grad norm "
                       f"{rep.grad_norm:.3g} after {rep.iterations} iterations)")
    else:
        start = np.zeros_like(u0) if rep is None or not rep.converged else rep.x
        ball = fit_on_sphere(fun, start, bound=bound / s, gtol=gtol, max_iter=max_iter,
                             line=line)
        if ball.status != "converged":
            raise FitError(f"KLDPO on the ball ||theta|| <= {bound:g} did not converge: "
                           f"{ball.status}")
        u, value, gnorm, mult = ball.theta, ball.value, ball.residual, ball.multiplier / s
        iters = ball.iterations + (0 if rep is None else rep.iterations)
    if info is not None:
        info["bound_multiplier"] = mult
    eig = float(np.linalg.eigvalsh(fun(u, True)[2])[0]) / s
    if s < 1.0:
        value = LOG2 + s * value
    return s * u, value, gnorm, iters, "converged", eig, ()


def _implied_radius_at(theta, data, beta, tau) -> float:
    """KL(P*||q) of the KLDPO (paper) weights at theta; see
    :func:`loglinear.approx.calibrate.implied_radius_kl`."""
    l = _pieces(theta, data, beta).loss
    with np.errstate(divide="ignore"):
        logits = np.log(data.weight) + l / tau
    lse = float(logsumexp(logits))
    P = np.exp(logits - lse)
    return max(float(P @ (l / tau)) - lse, 0.0)


# ------------------------------------------------------------------ the official form
def _weighted_grad(theta, data, beta, tau, weights, cap):
    """The weights W of the losses at theta (rule ``weights``), the losses, sum_i W_i grad l_i."""
    p = _pieces(theta, data, beta)
    W = weights(p.loss, data.weight, tau, cap)
    return W, p.loss, (p.coef * W) @ data.x


def _official_value_grad(theta, data, beta, tau, cap):
    W, l, g = _weighted_grad(theta, data, beta, tau, _weights_official, cap)
    return float(W @ l), g


def _official_residual(theta, data, beta, tau, cap, jac):
    """F(theta) = sum_i W_i(theta) grad l_i(theta) for the official weights, and dF/dtheta."""
    p = _pieces(theta, data, beta)
    q = data.weight
    W = _weights_official(p.loss, q, tau, cap)
    gi = p.coef[:, None] * data.x
    F = gi.T @ W
    if not jac:
        return F, None
    dW = _dweights_official(W, gi, p, q, tau, cap)      # rows: grad W_i
    J = (data.x * (W * beta**2 * p.curvature)[:, None]).T @ data.x + gi.T @ dW
    return F, J


def _newton_official(data, beta, tau, cap, theta0, gtol, max_iter, *, bound=None,
                     separation=UNKNOWN, info=None):
    """Root of sum_i W_i(theta) grad l_i(theta) = 0 (no potential exists once a cap binds):
    Powell's hybrid method from the paper-form solution, then Newton polishing. There is
    no potential to minimise on a ball, so ``bound`` must be None (checked by the caller).
    Converged only with ||residual|| <= gtol."""
    start = _newton_paper(data, beta, tau, cap, theta0, gtol, max_iter,
                          separation=separation)[0]
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
    status = "converged" if gnorm <= gtol else "max_iter"
    value = _official_value_grad(theta, data, beta, tau, cap)[0]
    return theta, value, gnorm, iters, status, float("nan"), ()
