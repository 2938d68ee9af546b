r"""The KLDPO terms (docs/theory.md §4.2), private to :mod:`loglinear.approx.kldpo`.

The two weighting rules and their derivatives in theta, the convex potential
:math:`F_\tau = \tau\log\sum_i q_i e^{l_i/\tau}` of the paper form with its derivatives,
the official form's stationarity residual, and the Newton solvers of both forms;
:mod:`loglinear.approx.kldpo` assembles them into :data:`~loglinear.approx.KLDPO_FORMS`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import root
from scipy.special import logsumexp

from ..fit import FitError, SeparableDataError, separating_direction
from ..losses import dpo_margin_terms, margin_line
from ..newton import newton
from ._common import DPO_HESSIAN_CURVATURE, DPOPieces, _pieces


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
    P = _weights_paper(p.loss, data.weight, tau, None)
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


def _newton_paper(data, beta, tau, cap, theta0, gtol, max_iter):
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


def _newton_official(data, beta, tau, cap, theta0, gtol, max_iter):
    """Root of sum_i W_i(theta) grad l_i(theta) = 0 (no potential exists once a cap binds):
    Powell's hybrid method from the paper-form solution, then Newton polishing."""
    start = _newton_paper(data, beta, tau, cap, theta0, gtol, max_iter)[0]
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
    value = _official_value_grad(theta, data, beta, tau, cap)[0]
    return theta, value, gnorm, iters, status, float("nan"), ()
