r"""Per-pair losses of the chosen and rejected log-ratios (paper.md section 6).

Margin losses (``loglinear.losses``) see a pair only through h = c - r, where

.. math::  c_i = \log\frac{\pi_\theta(a^+_i|s_i)}{\pi_{ref}(a^+_i|s_i)}, \qquad
           r_i = \log\frac{\pi_\theta(a^-_i|s_i)}{\pi_{ref}(a^-_i|s_i)}.

The remedies of Yan et al. (arXiv 2406.07327) break that symmetry, so they are written
here as functions of (c, r) and of the chosen log-probability log pi(a+|s):

* DPO:       l = softplus(-beta (c - r));
* Flex-DPO:  l = softplus(-(beta_plus c - beta_minus r));
* DPO + SFT: l = softplus(-beta (c - r)) - sft_weight * log pi(a+|s).

Each function returns the per-pair value together with the partial derivatives
dl/dc (= dl/d log pi+) and dl/dr (= dl/d log pi-), shape (n,) each; the caller weights,
sums and applies the chain rule to its parameters. Probability-space partials follow from
dl/dpi = (dl/d log pi) / pi (:func:`probability_partials`), which gives the gradient-ratio
identity of section 6 for DPO: (dl/dpi-) / (dl/dpi+) = -pi+ / pi-.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
from scipy.special import expit


class PairTerms(NamedTuple):
    """Per-pair value and partials in the chosen and rejected log-probabilities."""

    value: np.ndarray
    d_chosen: np.ndarray
    d_rejected: np.ndarray


def _positive(name: str, v: float) -> float:
    v = float(v)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {v}")
    return v


def _nonnegative(name: str, v: float) -> float:
    v = float(v)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a nonnegative finite number, got {v}")
    return v


def _arrays(*arrays):
    out = [np.asarray(a, dtype=np.float64) for a in arrays]
    shape = out[0].shape
    for a in out:
        if a.shape != shape or a.ndim != 1:
            raise ValueError("pair arrays must be 1-d of equal length, got "
                             f"{[b.shape for b in out]}")
        if not np.all(np.isfinite(a)):
            raise ValueError("pair arrays contain NaN or infinite entries")
    return out


def flex_dpo_terms(chosen_logratio, rejected_logratio, chosen_logp=None, *,
                   beta_plus: float, beta_minus: float) -> PairTerms:
    r"""Flex-DPO: separate temperatures on the chosen and rejected log-ratios.

    .. math::  l = -\log\sigma(\beta^+ c - \beta^- r), \quad
               \partial_c l = -\beta^+\sigma(-u), \quad \partial_r l = \beta^-\sigma(-u),

    with u = beta_plus c - beta_minus r. A small beta_minus damps the push on the rejected
    response (Yan et al., section 5). ``chosen_logp`` is unused (uniform signature).
    """
    bp, bm = _positive("beta_plus", beta_plus), _positive("beta_minus", beta_minus)
    c, r = _arrays(chosen_logratio, rejected_logratio)
    u = bp * c - bm * r
    s = expit(-u)
    return PairTerms(np.logaddexp(0.0, -u), -bp * s, bm * s)


def dpo_terms(chosen_logratio, rejected_logratio, chosen_logp=None, *, beta: float
              ) -> PairTerms:
    r"""DPO as a function of (c, r): Flex-DPO with beta_plus = beta_minus = beta.

    .. math::  l = -\log\sigma(\beta(c - r)), \quad \partial_c l = -\partial_r l
               = -\beta\sigma(-\beta(c - r)).
    """
    return flex_dpo_terms(chosen_logratio, rejected_logratio, beta_plus=beta, beta_minus=beta)


def dpo_sft_terms(chosen_logratio, rejected_logratio, chosen_logp, *, beta: float,
                  sft_weight: float) -> PairTerms:
    r"""DPO plus an SFT term on the chosen response (Yan et al., section 5).

    .. math::  l = -\log\sigma(\beta(c - r)) - c_{sft}\log\pi_\theta(a^+|s), \quad
               \partial_c l = -\beta\sigma(-\beta(c - r)) - c_{sft}.

    (d log pi+ = d c, since the reference is fixed.)
    """
    w = _nonnegative("sft_weight", sft_weight)
    (lp,) = _arrays(chosen_logp)
    base = dpo_terms(chosen_logratio, rejected_logratio, beta=beta)
    if lp.shape != base.value.shape:
        raise ValueError("chosen_logp must match the log-ratio arrays in shape")
    return PairTerms(base.value - w * lp, base.d_chosen - w, base.d_rejected)


def probability_partials(terms: PairTerms, p_chosen, p_rejected) -> tuple[np.ndarray, np.ndarray]:
    r"""Partials in probability space: dl/dpi = (dl/d log pi) / pi, per pair.

    For DPO the ratio of the two is exactly -pi+ / pi- (paper.md section 6): the push on
    the rejected probability grows without bound as pi- -> 0.
    """
    p_c, p_r = _arrays(p_chosen, p_rejected)
    if np.any(p_c <= 0) or np.any(p_r <= 0):
        raise ValueError("probabilities must be strictly positive")
    return terms.d_chosen / p_c, terms.d_rejected / p_r


@dataclass(frozen=True)
class PairLoss:
    """A registered per-pair loss of (c, r, log pi+) with its hyperparameter names."""

    name: str
    terms: Callable[..., PairTerms]
    params: tuple[str, ...]
    doc: str = ""


PAIR_LOSSES: dict[str, PairLoss] = {
    "dpo": PairLoss("dpo", dpo_terms, ("beta",), "DPO through the log-probabilities"),
    "flex-dpo": PairLoss("flex-dpo", flex_dpo_terms, ("beta_plus", "beta_minus"),
                         "separate beta+ (chosen) and beta- (rejected)"),
    "dpo-sft": PairLoss("dpo-sft", dpo_sft_terms, ("beta", "sft_weight"),
                        "DPO - sft_weight * log pi(chosen)"),
}


def get_pair_loss(name: str) -> PairLoss:
    """Look a pair loss up by name in :data:`PAIR_LOSSES`."""
    try:
        return PAIR_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown pair loss {name!r}; registered: {sorted(PAIR_LOSSES)}") from None
