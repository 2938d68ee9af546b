r"""The paper's Algorithm 2 (KLDPO reweighting) run with a fixed step, with its weight
diagnostics: the stability study's measurement of weight collapse and divergence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from ...approx import kldpo_weights
from ...data import PreferenceData
from ...losses import margins, softplus
from ...stats import effective_sample_size


# ----------------------------------------------------- the reweighting iteration
@dataclass(frozen=True)
class ReweightingPath:
    """Algorithm 2 run with a fixed step, with its weight diagnostics.

    Attributes:
        status: ``"converged"`` (gradient norm <= gtol), ``"oscillating"`` (no convergence
            and the weighted loss rose on more than 10% of the last half of the steps),
            ``"stalled"`` (no convergence, monotone) or ``"diverged"`` (non-finite or
            ||theta|| > 1e6).
        iterations: steps taken.
        grad_norm: final ||sum_i W_i grad l_i||.
        min_ess: smallest ESS fraction of the weights met along the path.
        final_ess: ESS fraction of the final weights.
        max_weight_ratio: largest W_i / q_i met along the path.
        theta: (d,) the last iterate.
    """

    status: str
    iterations: int
    grad_norm: float
    min_ess: float
    final_ess: float
    max_weight_ratio: float
    theta: np.ndarray


def reweighting_path(data: PreferenceData, *, beta: float, tau: float, step: float,
                     theta0, form: str = "paper", max_iter: int = 2000,
                     gtol: float = 1e-6) -> ReweightingPath:
    r"""Algorithm 2 of the paper with a fixed step eta, tracking weight collapse
    (docs/theory.md §4.2).

    .. math:: \theta_{k+1} = \theta_k - \eta\sum_i W_i(\theta_k)\,\nabla l_i(\theta_k),

    W the KLDPO weights (:func:`loglinear.approx.kldpo_weights`, ``form`` paper or
    official). The paper form is gradient descent on the convex
    :math:`\tau\log\sum_i q_i e^{l_i/\tau}`, whose smoothness grows like
    :math:`\beta^2\max\|x\|^2/\tau`, so a step tuned for DPO (eta = 4/(beta^2 max||x||^2))
    stops converging once tau is small enough: that is the divergence this measures.
    """
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"step must be positive and finite, got {step}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    theta = np.array(theta0, dtype=float)
    if theta.shape != (data.d,):
        raise ValueError(f"theta0 must have shape ({data.d},), got {theta.shape}")
    q = data.weight
    pos = q > 0
    min_ess, max_ratio, values = 1.0, 0.0, []
    status, k, gn, ess = "stalled", 0, np.inf, 1.0
    for k in range(int(max_iter) + 1):
        m = margins(theta, data, beta=beta)
        losses = softplus(-m)
        W = kldpo_weights(losses, q, tau=tau, form=form)
        ess = effective_sample_size(W, q)
        min_ess = min(min_ess, ess)
        max_ratio = max(max_ratio, float(np.max(W[pos] / q[pos])))
        values.append(float(W @ losses))
        c = -data.sign * beta * expit(-m)  # grad l_i = c_i x_i
        g = data.x.T @ (W * c)
        gn = float(np.linalg.norm(g))
        if not np.isfinite(gn) or not np.all(np.isfinite(theta)) or np.linalg.norm(theta) > 1e6:
            status = "diverged"
            break
        if gn <= gtol:
            status = "converged"
            break
        if k == int(max_iter):
            break
        theta = theta - step * g
    if status == "stalled":
        tail = np.diff(values[len(values) // 2:])
        if tail.size and np.mean(tail > 1e-12 * max(1.0, abs(values[-1]))) > 0.1:
            status = "oscillating"
    return ReweightingPath(status, k, gn, float(min_ess), float(ess), float(max_ratio), theta)
