r"""Calibration: the radius a surrogate's hyperparameter buys, and the KLDPO temperature rule.

* KLDPO at temperature tau is exact KL-DRO at the implied radius
  :math:`\rho(\tau) = \mathrm{KL}(P^*\|q)` with dual :math:`\lambda^* = \tau`
  (docs/theory.md §4.2): :func:`implied_radius_kl` and its inverse :func:`tau_for_radius_kl`.
* WDPO's penalty rho is a W2 radius to first order (docs/theory.md §4.1):
  :func:`w2_radius` and its inverse :func:`rho_for_w2_radius`.
* The temperature rule (:func:`suggest_tau`, docs/theory.md §4.3): the smallest tau whose
  KLDPO weights on the DPO fit's losses keep an effective fraction ``min_ess`` of the data.
  To second order in the loss spread :math:`s = \mathrm{sd}_q(l)`,

  .. math::  \rho(\tau) \approx \frac{s^2}{2\tau^2}, \qquad
             \mathrm{ESS}(\tau) \approx e^{-s^2/\tau^2} \approx e^{-2\rho(\tau)},

  so :math:`\tau_0 = s/\sqrt{-\log \mathrm{min\_ess}}` to first order, refined to the tau
  whose weights on the DPO losses have ESS = ``min_ess`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from ..data import PreferenceData
from ..fit import fit_dpo
from ..losses import LOSSES, _check_beta
from ..stats import effective_sample_size
from ._common import _check_positive, _dpo_terms
from ._kldpo import _implied_radius_at
from .kldpo import fit_kldpo, kldpo_weights
from .wdpo import WDPO_FORMS, _g2_terms, fit_wdpo, w1_rescaling

ESS_RTOL = 1e-6        # relative tolerance of the exact tau rule's root in log tau
TAU_RANGE = (1e-4, 1e4)  # bracket of the exact tau rule


def implied_radius_kl(tau: float, data: PreferenceData, *, beta: float, theta=None) -> float:
    r"""The KL radius that temperature tau buys: :math:`\rho(\tau) = \mathrm{KL}(P^*\|q)`.

    .. math:: \rho(\tau) = \sum_i P_i^*\,l_i/\tau - \log\sum_i q_i e^{l_i/\tau},
              \quad P^*_i \propto q_i e^{l_i(\theta_\tau)/\tau},

    at the KLDPO solution :math:`\theta_\tau` (fitted unless ``theta`` is given). There
    the exact KL-DRO problem at radius :math:`\rho(\tau)` is solved by :math:`\theta_\tau`
    with dual :math:`\lambda^* = \tau` (docs/theory.md §4.2).
    """
    beta = _check_beta(beta)
    tau = _check_positive("tau", tau)
    if theta is None:
        theta = fit_kldpo(data, beta=beta, tau=tau).theta
    return _implied_radius_at(theta, data, beta, tau)


def tau_for_radius_kl(radius: float, data: PreferenceData, *, beta: float,
                      tau_min: float = 1e-4, tau_max: float = 1e6) -> float:
    """The temperature whose implied KL radius is ``radius`` (root of a decreasing map).

    Raises:
        ValueError: ``radius`` is not in the range of :func:`implied_radius_kl` over
            [tau_min, tau_max] (e.g. at or beyond the collapse radius).
    """
    beta = _check_beta(beta)
    radius = _check_positive("radius", radius)
    warm = [None]

    def gap(log_tau):
        fit = fit_kldpo(data, beta=beta, tau=float(np.exp(log_tau)), theta0=warm[0])
        warm[0] = fit.theta
        return fit.info["implied_radius"] - radius

    hi = 0.0
    while gap(hi) > 0:
        hi += 2.0
        if hi > np.log(tau_max):
            raise ValueError(f"radius {radius:g} needs tau > {tau_max:g}")
    lo = hi - 2.0
    while gap(lo) < 0:
        lo -= 1.0
        if lo < np.log(tau_min):
            raise ValueError(f"radius {radius:g} is not reached for tau >= {tau_min:g}: it is "
                             "at or beyond what KLDPO can buy (the collapse radius)")
    return float(np.exp(brentq(gap, lo, hi, xtol=1e-12, rtol=1e-12)))


def w2_radius(rho: float, data: PreferenceData, *, beta: float, form: str = "paper",
              theta=None) -> float:
    r"""The W2 radius that a WDPO penalty rho corresponds to, to first order.

    Paper form: rho itself (Gao et al.: the W2 worst case is L + rho G + O(rho^2)).
    Official form: :math:`\varepsilon = 2\rho\,G(\hat\theta)`, exact in the sense that a
    stationary point of :math:`L + \rho G^2` is one of :math:`L + \varepsilon G` (their
    gradients coincide there). ``theta`` defaults to the official fit at rho.
    """
    beta = _check_beta(beta)
    rho = _check_positive("rho", rho, allow_zero=True)
    WDPO_FORMS.get(form)
    if form == "paper":
        return rho
    if theta is None:
        theta = fit_wdpo(data, beta=beta, rho=rho, form=form).theta
    return float(2.0 * rho * np.sqrt(_g2_terms(theta, data, beta, False)[0]))


W2_CALIBRATIONS = ("dpo", "fit")


def rho_for_w2_radius(radius: float, data: PreferenceData, *, beta: float,
                      form: str = "paper", theta=None, calibrate: str = "dpo") -> float:
    r"""The penalty rho whose first-order W2 radius is ``radius``.

    Paper form: rho = radius. Official form:

    * ``calibrate="dpo"``: :math:`\rho = \varepsilon / (2G(\theta))` with theta the DPO fit
      unless given (cheap; one G evaluation);
    * ``calibrate="fit"``: the root of :math:`2\rho\,G(\hat\theta_{official}(\rho)) =
      \varepsilon`, so the official fit at rho is a stationary point of the paper form at
      epsilon. :math:`\varepsilon(\rho)` increases to the W2 collapse radius
      :math:`\|\nabla L(0)\|/(\beta R(0))` as rho -> infinity, which the official form
      never reaches (it shrinks theta like a ridge and never collapses to 0).

    Raises:
        ValueError: ``calibrate="fit"`` with a radius at or beyond that limit.
    """
    beta = _check_beta(beta)
    radius = _check_positive("radius", radius, allow_zero=True)
    WDPO_FORMS.get(form)
    if calibrate not in W2_CALIBRATIONS:
        raise ValueError(f"calibrate must be one of {W2_CALIBRATIONS}, got {calibrate!r}")
    if form == "paper" or radius == 0:
        return radius
    if calibrate == "fit":
        return _rho_fit_calibrated(radius, data, beta)
    if theta is None:
        theta = fit_dpo(data, beta=beta).theta
    g = float(np.sqrt(_g2_terms(theta, data, beta, False)[0]))
    if g <= 0:
        raise ValueError("G(theta) = 0 (theta = 0): the official penalty has no first-order "
                         "W2 radius there")
    return radius / (2.0 * g)


def _rho_fit_calibrated(radius, data, beta):
    zero = np.zeros(data.d)
    limit = float(np.linalg.norm(_dpo_terms(zero, data, beta, False)[1])) / (
        beta * w1_rescaling(zero, data, beta=beta))
    if radius >= limit:
        raise ValueError(f"radius {radius:g} is at or beyond {limit:g}, the largest W2 radius "
                         "the official penalty corresponds to (the W2 collapse radius)")
    warm = [None]

    def gap(log_rho):
        fit = fit_wdpo(data, beta=beta, rho=float(np.exp(log_rho)), form="official",
                       theta0=warm[0])
        warm[0] = fit.theta
        return w2_radius(float(np.exp(log_rho)), data, beta=beta, form="official",
                         theta=fit.theta) - radius

    hi = float(np.log(rho_for_w2_radius(radius, data, beta=beta, form="official")))
    while gap(hi) < 0:
        hi += 1.0
    lo = hi - 1.0
    while gap(lo) > 0:
        lo -= 1.0
    return float(np.exp(brentq(gap, lo, hi, xtol=1e-13, rtol=1e-13)))


# ------------------------------------------------------------------ the tau rule
def loss_spread(theta, data: PreferenceData, *, beta: float) -> float:
    r""":math:`\mathrm{sd}_q(l(\theta))` of the per-pair DPO losses."""
    losses = LOSSES["dpo"].value(theta, data, beta=beta)
    q = data.weight
    return float(np.sqrt(q @ (losses - q @ losses) ** 2))


def kldpo_ess(theta, data: PreferenceData, *, beta: float, tau: float) -> float:
    r"""ESS fraction of the KLDPO (paper) weights :math:`P\propto q e^{l(\theta)/\tau}` at theta."""
    losses = LOSSES["dpo"].value(theta, data, beta=beta)
    return effective_sample_size(kldpo_weights(losses, data.weight, tau=tau), data.weight)


@dataclass(frozen=True)
class TauSuggestion:
    """The temperature rule's answer.

    Attributes:
        tau: the exact rule: the tau at which the KLDPO weights of the DPO fit's losses
            have ESS = ``min_ess``.
        tau_first_order: :math:`s/\\sqrt{-\\log\\,min\\_ess}`, s the loss sd at the DPO fit.
        min_ess: the target ESS fraction.
        ess_solution: the ESS fraction of the weights at the KLDPO solution for ``tau``
            (at least ``ess_start`` in practice: robust training equalises the losses).
        implied_radius: the KL radius that ``tau`` buys, :math:`\\rho(\\tau)`.
        loss_sd: s, the q-sd of the DPO losses at the DPO fit.
        theta: (d,) the KLDPO solution at ``tau``.
        theta_dpo: (d,) the DPO fit the rule was computed at.
    """

    tau: float
    tau_first_order: float
    min_ess: float
    ess_solution: float
    implied_radius: float
    loss_sd: float
    theta: np.ndarray
    theta_dpo: np.ndarray


def tau_for_ess(theta, data: PreferenceData, *, beta: float, min_ess: float = 0.5) -> float:
    r"""The tau at which the KLDPO weights :math:`P\propto q e^{l(\theta)/\tau}` have ESS
    ``min_ess`` (ESS increases with tau: :math:`-\log\mathrm{ESS} = \Lambda(2/\tau) -
    2\Lambda(1/\tau)` with :math:`\Lambda` the convex log-mgf of the losses)."""
    if not 0.0 < float(min_ess) < 1.0:
        raise ValueError(f"min_ess must lie strictly between 0 and 1, got {min_ess}")
    sd = loss_spread(theta, data, beta=beta)
    if sd <= 0:
        raise ValueError("all losses are equal at theta: reweighting does nothing, any tau "
                         "keeps ESS = 1")
    gap = lambda lt: kldpo_ess(theta, data, beta=beta, tau=float(np.exp(lt))) - min_ess
    lo, hi = np.log(TAU_RANGE[0]), np.log(TAU_RANGE[1])
    if gap(lo) >= 0:
        return float(TAU_RANGE[0])
    if gap(hi) <= 0:
        raise ValueError(f"ESS stays below {min_ess} up to tau = {TAU_RANGE[1]:g}")
    return float(np.exp(brentq(gap, lo, hi, xtol=ESS_RTOL)))


def suggest_tau(data: PreferenceData, *, beta: float, min_ess: float = 0.9) -> TauSuggestion:
    r"""A default KLDPO temperature from the user's own data.

    The rule: **fit DPO, take its per-pair losses, and choose the smallest tau whose
    KLDPO weights on those losses keep an effective fraction ``min_ess`` of the data**
    (default 0.9: the variance of a weighted minibatch mean grows like 1/ESS, so at most
    about 11% extra gradient noise; in the tau study this tau is close to the best of the
    grid under strong preference shifts, beats DPO under a 50/50 shift, and costs some
    value when there is no shift):
    :math:`\mathrm{ESS}(q e^{l(\hat\theta_{DPO})/\tau}\|q) = \mathrm{min\_ess}`.
    To first order it is
    :math:`\tau_0 = \mathrm{sd}_q(l(\hat\theta_{DPO}))/\sqrt{-\log\mathrm{min\_ess}}`,
    about 3.1 loss standard deviations for ESS 0.9 (1.2 for ESS 1/2). The DPO fit is
    where the losses are most spread (robust training equalises them), so the weights met
    during KLDPO training from there keep at least that fraction (checked by the tau
    study).

    Args:
        data: the training data (weighted or raw).
        beta: DPO temperature.
        min_ess: target ESS fraction in (0, 1).

    Raises:
        ValueError: ``min_ess`` out of range, equal losses, or no tau in [1e-4, 1e4].
    """
    if not 0.0 < float(min_ess) < 1.0:
        raise ValueError(f"min_ess must lie strictly between 0 and 1, got {min_ess}")
    theta_dpo = fit_dpo(data, beta=beta).theta
    sd = loss_spread(theta_dpo, data, beta=beta)
    tau = tau_for_ess(theta_dpo, data, beta=beta, min_ess=min_ess)
    tau0 = sd / np.sqrt(-np.log(min_ess))
    theta = fit_kldpo(data, beta=beta, tau=tau, theta0=theta_dpo).theta
    return TauSuggestion(tau, float(tau0), float(min_ess),
                         kldpo_ess(theta, data, beta=beta, tau=tau),
                         implied_radius_kl(tau, data, beta=beta, theta=theta), sd, theta,
                         theta_dpo)
