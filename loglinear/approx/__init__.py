r"""The paper's cheap surrogates for robust DPO (docs/theory.md §4), as written and as run.

**WDPO** (gradient penalty, docs/theory.md §4.1). With the per-pair input gradient
:math:`\nabla_x l_i = -(2y_i-1)\,\beta\,\sigma(-m_i)\,\theta`, write

.. math::
    G(\theta) = \Big(\sum_i q_i \|\nabla_x l_i\|^2\Big)^{1/2}
              = \beta\,\|\theta\|_2\,R(\theta), \qquad
    R(\theta) = \Big(\sum_i q_i\,\sigma(-m_i)^2\Big)^{1/2} \le 1.

* ``form="paper"`` (Algorithm 1): :math:`L(\theta) + \rho\,G(\theta)`, Gao et al.'s
  first-order expansion of the W2 worst case at radius rho;
* ``form="official"`` (the released code): :math:`\sum_i q_i (l_i + \rho\|\nabla_x l_i\|^2)
  = L(\theta) + \rho\,G(\theta)^2`, a ridge-like penalty.

Neither objective is convex in general (:math:`\sigma(-m)` decays along directions that
increase the margins); the paper form is also not differentiable at theta = 0. Fits use
damped Newton with the exact Hessian (regularised where indefinite) from several starts,
and report the smallest Hessian eigenvalue at the solution (a local-minimum certificate).

**KLDPO** (reweighting, docs/theory.md §4.2). Weights recomputed from the current losses and
held constant in the gradient step:

* ``form="paper"`` (Algorithm 2): :math:`P_i \propto q_i \exp((l_i - \bar l)/\tau)`, normalised;
* ``form="official"``: :math:`W_i = q_i\min(\exp((l_i-\bar l)/\tau), 10)`, not normalised,
  with :math:`\bar l = \sum_i q_i l_i` and the loss :math:`\sum_i W_i l_i`.

The paper iteration is gradient descent on the convex function
:math:`F_\tau(\theta) = \tau\log\sum_i q_i e^{l_i/\tau}`; its minimiser is the exact KL-DRO
solution at radius :math:`\rho(\tau) = \mathrm{KL}(P^*\|q)` with dual :math:`\lambda^* = \tau`
(docs/theory.md §4.2).

Calibration (:mod:`loglinear.approx.calibrate`) maps a surrogate's hyperparameter to the
radius it buys: :func:`implied_radius_kl` (exact), :func:`w2_radius` (first order), and
holds the KLDPO temperature rule :func:`suggest_tau` (docs/theory.md §4.3);
:func:`w1_rescaling` is the W1 rescaling factor ``R``.
"""

from __future__ import annotations

from ._common import ApproxResult
from .calibrate import (
    W2_CALIBRATIONS,
    TauSuggestion,
    implied_radius_kl,
    kldpo_ess,
    loss_spread,
    rho_for_w2_radius,
    suggest_tau,
    tau_for_ess,
    tau_for_radius_kl,
    w2_radius,
)
from .kldpo import (
    KLDPO_FORMS,
    KLDPO_METHODS,
    OFFICIAL_CAP,
    fit_kldpo,
    kldpo_objective,
    kldpo_weights,
    refit_contraction,
)
from .wdpo import (
    WDPO_FORMS,
    fit_wdpo,
    grad_x_norm,
    w1_rescaling,
    wdpo_objective,
    wdpo_pair_loss,
    wdpo_penalty,
)

__all__ = [
    "KLDPO_FORMS", "KLDPO_METHODS", "OFFICIAL_CAP", "W2_CALIBRATIONS", "WDPO_FORMS", "ApproxResult",
    "fit_kldpo", "fit_wdpo", "grad_x_norm", "implied_radius_kl", "kldpo_objective",
    "kldpo_weights", "refit_contraction", "rho_for_w2_radius", "tau_for_radius_kl",
    "w1_rescaling", "w2_radius", "wdpo_objective", "wdpo_pair_loss", "wdpo_penalty",
    "TauSuggestion", "kldpo_ess", "loss_spread", "suggest_tau", "tau_for_ess",
]
