r"""Per-pair preference losses in torch, the same formulas as the numpy core.

Every DPO-type loss here is a function of the policy/reference log-ratios of the chosen
and rejected responses,

.. math::  c_i = \log\frac{\pi_\theta(a^+_i|s_i)}{\pi_{ref}(a^+_i|s_i)}, \qquad
           r_i = \log\frac{\pi_\theta(a^-_i|s_i)}{\pi_{ref}(a^-_i|s_i)}, \qquad
           h_i = c_i - r_i,

so that the signed margin of the numpy core (``loglinear.losses.margins``) is
m_i = beta h_i. For a log-linear policy, pass ``c = (2y-1)(theta.x - o)`` and ``r = 0``.
The functions return per-pair tensors of shape (n,); reductions and robust reweighting are
separate functions (:func:`wdpo_objective`, :func:`kldpo_weights`, :func:`kldpo_objective`)
so that callers (the training loop, TRL, the distributed gather) choose where to reduce.

The robust pieces (docs/theory.md §4.1, §4.2), looked up by form in :data:`WDPO_FORMS` and
:data:`KLDPO_FORMS`:

* WDPO, paper (Algorithm 1): L + rho * sqrt(sum_i q_i ||grad_z l_i||^2).
* WDPO, official code: sum_i q_i (l_i + rho ||grad_z l_i||^2) (squared norm, no root).
* KLDPO, paper (Algorithm 2): P_i ∝ q_i exp(l_i / tau), detached; loss sum_i P_i l_i.
* KLDPO, official code: W_i = q_i min(exp((l_i - mean l) / tau), 10), detached, not
  normalised; loss sum_i W_i l_i (mean_i w_i l_i for q = 1/n).

:func:`kldpo_weights` returns the same quantity as the numpy core's
:func:`loglinear.approx.kldpo_weights` (tested for parity), with the same cap
:data:`OFFICIAL_CAP`.

The squared gradient norms g_i = ||grad_z l_i||^2 come from :mod:`loglinear.torch.penalty`
(language models) or :mod:`loglinear.torch.loglinear_policy` (log-linear policies).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from ..approx._common import OFFICIAL_CAP
from ..losses import _nonnegative as _check_nonneg
from ..losses import _positive as _check_positive
from ..registry import Registry

__all__ = [
    "LOSSES", "WDPO_FORMS", "KLDPO_FORMS", "OFFICIAL_CAP",
    "dpo_loss", "ipo_loss", "margin_loss", "get_loss",
    "weighted_mean", "wdpo_penalty", "wdpo_objective",
    "kldpo_weights", "kldpo_objective",
]


def _check_pair(chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    if not (torch.is_tensor(chosen) and torch.is_tensor(rejected)):
        raise ValueError("chosen and rejected log-ratios must be torch tensors")
    if chosen.shape != rejected.shape or chosen.ndim != 1:
        raise ValueError(
            "chosen and rejected log-ratios must be 1-D tensors of the same shape (n,), got "
            f"{tuple(chosen.shape)} and {tuple(rejected.shape)}")
    for name, t in (("chosen", chosen), ("rejected", rejected)):
        _check_finite(f"{name} log-ratios", t)


def _check_finite(name: str, t: torch.Tensor) -> None:
    """Raise on NaN/inf (one device sync): a NaN loss would otherwise train silently."""
    if not bool(torch.isfinite(t.detach()).all()):
        bad = int((~torch.isfinite(t.detach())).sum())
        raise ValueError(f"{name} contain {bad} NaN or infinite values; all must be finite "
                         "(check the model's dtype and the reference log-probs)")


def dpo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, *,
             beta: float) -> torch.Tensor:
    r"""Per-pair DPO loss (docs/theory.md §2.2), shape (n,).

    .. math::  l_i = -\log\sigma(\beta(c_i - r_i)) = \mathrm{softplus}(-\beta(c_i - r_i)).

    Computed as a stable softplus; equals ``loglinear.losses.dpo_loss`` on the same margins.
    """
    _check_pair(chosen_logratios, rejected_logratios)
    beta = _check_positive("beta", beta)
    return F.softplus(-beta * (chosen_logratios - rejected_logratios))


def ipo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, *,
             beta: float) -> torch.Tensor:
    r"""Per-pair IPO loss (Azar et al. 2024), shape (n,).

    .. math::  l_i = \left(c_i - r_i - \frac{1}{2\beta}\right)^2,

    the numpy core's ``((m - 1/2)/beta)^2`` with m = beta (c - r). Sequence log-ratios are
    used as given (TRL's ``ipo`` averages them per token first; we do not).
    """
    _check_pair(chosen_logratios, rejected_logratios)
    beta = _check_positive("beta", beta)
    return (chosen_logratios - rejected_logratios - 0.5 / beta) ** 2


LOSSES: Registry[Callable[..., torch.Tensor]] = Registry("loss", {"dpo": dpo_loss,
                                                                  "ipo": ipo_loss})


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    """Look a per-pair base loss up by name in :data:`LOSSES`."""
    return LOSSES.get(name)


def margin_loss(name: str, margins: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Per-pair base loss of the signed margins m = beta h (the numpy core's convention)."""
    if not torch.is_tensor(margins) or margins.ndim != 1:
        raise ValueError("margins must be a 1-D torch tensor of shape (n,)")
    beta = _check_positive("beta", beta)
    h = margins / beta
    return get_loss(name)(h, torch.zeros_like(h), beta=beta)


def _base_weight(losses: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Base weights q (default uniform 1/n), validated; same dtype/device as the losses."""
    if not torch.is_tensor(losses) or losses.ndim != 1 or losses.numel() == 0:
        raise ValueError("losses must be a non-empty 1-D tensor of per-pair values (n,)")
    if weight is None:
        return torch.full_like(losses, 1.0 / losses.numel()).detach()
    weight = torch.as_tensor(weight, dtype=losses.dtype, device=losses.device)
    if weight.shape != losses.shape:
        raise ValueError(f"weight must have shape {tuple(losses.shape)}, got {tuple(weight.shape)}")
    if bool((weight < 0).any()) or not bool(torch.isfinite(weight).all()):
        raise ValueError("weight must be finite and nonnegative")
    if float(weight.sum()) <= 0:
        raise ValueError("weight must have positive total mass")
    return weight.detach()


def weighted_mean(losses: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i q_i l_i (q = 1/n by default); the weights are used as given, not renormalised.

    Raises ValueError on NaN or infinite losses."""
    q = _base_weight(losses, weight)
    _check_finite("losses", losses)
    return (q * losses).sum()


def _root_penalty(s: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.clamp(s, min=torch.finfo(s.dtype).tiny))


WDPO_FORMS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("WDPO form", {
    "paper": _root_penalty,          # (sum_i q_i g_i)^{1/2}
    "official": lambda s: s,         # sum_i q_i g_i
})
"""WDPO forms: the penalty per unit rho as a function of s = sum_i q_i g_i."""


def wdpo_penalty(grad_sq_norms: torch.Tensor, *, rho: float, form: str = "paper",
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    r"""The WDPO gradient penalty from per-pair squared gradient norms g_i = ||grad_z l_i||^2.

    .. math::
        \text{paper (Alg. 1):}\quad \rho\Big(\sum_i q_i g_i\Big)^{1/2}, \qquad
        \text{official:}\quad \rho \sum_i q_i g_i.

    Returns a scalar. The paper form's square root has an infinite derivative at 0; it is
    evaluated as sqrt(max(s, tiny)) so a zero penalty (theta = 0) has a zero gradient.
    """
    penalty = WDPO_FORMS.get(form)
    rho = _check_nonneg("rho", rho)
    q = _base_weight(grad_sq_norms, weight)
    _check_finite("grad_sq_norms", grad_sq_norms)
    if bool((grad_sq_norms.detach() < 0).any()):
        raise ValueError("grad_sq_norms are squared norms ||grad_z l_i||^2 and must be >= 0, "
                         f"found min {float(grad_sq_norms.detach().min()):.3g}")
    return rho * penalty((q * grad_sq_norms).sum())


def wdpo_objective(losses: torch.Tensor, grad_sq_norms: torch.Tensor, *, rho: float,
                   form: str = "paper", weight: torch.Tensor | None = None) -> torch.Tensor:
    r"""The WDPO training objective, a scalar.

    .. math::
        \text{paper:}\quad \sum_i q_i l_i + \rho\Big(\sum_i q_i g_i\Big)^{1/2}, \qquad
        \text{official:}\quad \sum_i q_i (l_i + \rho g_i).

    For gradients to flow through the penalty, ``grad_sq_norms`` must come from an
    ``autograd.grad(..., create_graph=True)`` (see :mod:`loglinear.torch.penalty`).
    """
    if grad_sq_norms.shape != losses.shape:
        raise ValueError("losses and grad_sq_norms must have the same shape (n,)")
    return weighted_mean(losses, weight) + wdpo_penalty(grad_sq_norms, rho=rho, form=form,
                                                         weight=weight)


def _kl_paper(losses, q, tau, cap):
    # a softmax: stable for any tau; pairs with q_i = 0 get weight 0
    logits = torch.where(q > 0, torch.log(q) + losses / tau, torch.full_like(losses, -math.inf))
    return torch.softmax(logits, dim=0)


def _kl_official(losses, q, tau, cap):
    mean = (q * losses).sum() / q.sum()
    return q * torch.clamp(torch.exp((losses - mean) / tau), max=cap)


KLDPO_FORMS: Registry[Callable[..., torch.Tensor]] = Registry("KLDPO form", {
    "paper": _kl_paper, "official": _kl_official})
"""KLDPO forms: ``(losses, q, tau, cap) -> W``, the pair weights of the loss sum_i W_i l_i."""


@torch.no_grad()
def kldpo_weights(losses: torch.Tensor, *, tau: float, form: str = "paper",
                  weight: torch.Tensor | None = None, cap: float = OFFICIAL_CAP
                  ) -> torch.Tensor:
    r"""Detached KLDPO pair weights W, shape (n,): the objective is :math:`\sum_i W_i l_i`.

    .. math::
        \text{paper (Alg. 2):}\quad W_i = P_i = \frac{q_i e^{(l_i - \bar l)/\tau}}
              {\sum_j q_j e^{(l_j - \bar l)/\tau}} \quad(\text{sums to } 1),\qquad
        \text{official:}\quad W_i = q_i\min\big(e^{(l_i - \bar l)/\tau},\, \text{cap}\big),

    with q the base weights (default 1/n) and l̄ the q-weighted mean loss
    (docs/theory.md §4.2). The same quantity as :func:`loglinear.approx.kldpo_weights`
    (which requires q to sum to one). For q = 1/n the official weights are the released
    code's ``clamp(exp((l - mean l)/tau), max=10)`` divided by n: unnormalised, summing to
    at least 1 when none is capped (Jensen). Pass the GLOBAL batch of losses here (see
    :mod:`loglinear.torch.distributed`); the weights never carry gradient.
    """
    kl_form = KLDPO_FORMS.get(form)
    tau = _check_positive("tau", tau)
    cap = _check_positive("cap", cap)
    out_dtype = losses.dtype
    # exp((l - mean)/tau) amplifies rounding in the exponent by |l|/tau; the weights are an
    # n-vector, so compute them in float64 and round once (bf16/fp32 training included).
    work = torch.float64 if losses.device.type != "mps" else torch.float32
    losses = losses.detach().to(work)
    q = _base_weight(losses, weight)
    if not bool(torch.isfinite(losses).all()):
        raise ValueError("losses contain NaN or infinite values")
    return kl_form(losses, q, tau, cap).to(out_dtype)


def kldpo_objective(losses: torch.Tensor, *, tau: float, form: str = "paper",
                    weight: torch.Tensor | None = None,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    r"""The KLDPO training objective, a scalar whose gradient is the reweighted gradient.

    .. math::  \sum_i W_i l_i \qquad (W\ \text{detached: }P\text{ for the paper form};
               \ q_i\min(e^{(l_i-\bar l)/\tau}, 10)\text{ for the official one}).

    ``weights`` are precomputed (e.g. global, all-gathered) detached weights W for these
    pairs; by default they are :func:`kldpo_weights` of ``losses`` itself. The paper form's
    gradient is the Danskin gradient of tau log sum_i q_i exp(l_i/tau) (docs/theory.md §4.2).
    """
    KLDPO_FORMS.get(form)
    _check_finite("losses", losses)
    if weights is None:
        weights = kldpo_weights(losses, tau=tau, form=form, weight=weight)
    elif weights.shape != losses.shape:
        raise ValueError("weights and losses must have the same shape (n,)")
    return (weights.detach() * losses).sum()


def __getattr__(name: str):
    if name == "OFFICIAL_WEIGHT_CAP":  # the old name of the cap, kept for one release
        warnings.warn("loglinear.torch.losses.OFFICIAL_WEIGHT_CAP is deprecated; use "
                      "OFFICIAL_CAP", DeprecationWarning, stacklevel=2)
        return OFFICIAL_CAP
    raise AttributeError(f"module 'loglinear.torch.losses' has no attribute {name!r}")
