r"""The training objectives of the 3D study, one registry (:data:`OBJECTIVES`).

Each maps (w, setting, *hyperparameters by name*) to an :class:`Evaluation`: the value, the
gradient in w and, where the objective depends on w only through the pairs'
log-probabilities, the per-pair partials dL/d log pi(a^+) and dL/d log pi(a^-)
(docs/theory.md §6.1). Margin losses (DPO, IPO; docs/theory.md §2.2) go through the margin
path; the remedies of Yan et al. (Flex-DPO, DPO + SFT; docs/theory.md §6.3) through the
log-probability path, with grad_w log pi_w(a|s) = psi(s, a) - E_{pi_w(.|s)} psi(s, .);
the surrogates and the exact robust values come from :mod:`loglinear.approx`
(docs/theory.md §4.1, §4.2) and :mod:`loglinear.robust` (§3).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from ...approx import kldpo_objective, kldpo_weights, wdpo_objective
from ...losses import PairTerms, get_loss, objective
from ...registry import Registry
from ...robust import kl_value, wasserstein_value
from .setting import PairSetting


class Evaluation(NamedTuple):
    """An objective at one w.

    ``d_chosen`` / ``d_rejected`` (n,) are dL/d log pi(a^+_i|s_i) and dL/d log pi(a^-_i|s_i),
    data weights included, when L depends on w only through the pairs' log-probabilities
    (DPO, IPO, Flex-DPO, SFT, the reweighted KL objectives); None otherwise (the
    Wasserstein penalties depend on w directly).
    """

    value: float
    grad: np.ndarray
    d_chosen: np.ndarray | None = None
    d_rejected: np.ndarray | None = None


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered training objective: ``evaluate(w, setting, **params) -> Evaluation``,
    with ``params`` the names of its keyword-only hyperparameters."""

    name: str
    evaluate: Callable[..., Evaluation]
    params: tuple[str, ...]
    doc: str = ""
    potential: bool = True  # False: the step direction is not the gradient of ``value``


OBJECTIVES: Registry[ObjectiveSpec] = Registry("objective")


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add an objective to :data:`OBJECTIVES` (a name may be registered once)."""
    return OBJECTIVES.register(spec.name, spec)


def get_objective(name: str) -> ObjectiveSpec:
    """Look an objective up by name in :data:`OBJECTIVES`."""
    return OBJECTIVES.get(name)


def evaluate_objective(name: str, w, setting: PairSetting, **params) -> Evaluation:
    """Evaluate a registered objective; ``params`` must be exactly its hyperparameters."""
    spec = get_objective(name)
    if set(params) != set(spec.params):
        raise ValueError(f"objective {name!r} takes hyperparameters {list(spec.params)}, "
                         f"got {sorted(params)}")
    w = np.asarray(w, dtype=float)
    if w.shape != (setting.dim,) or not np.all(np.isfinite(w)):
        raise ValueError(f"w must be a finite vector of shape ({setting.dim},)")
    ev = spec.evaluate(w, setting, **params)
    return Evaluation(float(ev.value), np.asarray(ev.grad, dtype=float), ev.d_chosen,
                      ev.d_rejected)


# ----------------------------------------------------------------- the margin path
def _reweighted_margin(w, setting: PairSetting, loss: str, beta: float,
                       weight: np.ndarray) -> Evaluation:
    """sum_i W_i phi(m_i) with W held fixed: the per-pair chain rule of a margin loss."""
    data = setting.centered
    spec = get_loss(loss, margin=True)
    obj = objective(w, data, beta=beta, loss=loss, hessian=False, weight=weight)
    dc = weight * spec.dphi(obj.margins, beta) * beta  # m = beta (c - r)
    return Evaluation(obj.value, obj.grad, dc, -dc)


def _margin_objective(loss: str) -> Callable[..., Evaluation]:
    def evaluate(w, setting, *, beta):
        return _reweighted_margin(w, setting, loss, beta, setting.centered.weight)

    return evaluate


# --------------------------------------------------------- the log-probability path
def _pair_path(w, setting: PairSetting, terms: Callable[..., PairTerms]) -> Evaluation:
    """sum_i q_i l_i for a loss of (c, r, log pi+), with ``terms(c, r, log pi+)``."""
    logp = setting.log_policy(w)
    logp_ref = setting.log_policy(np.zeros(setting.dim))
    s, ap, am = setting.states, setting.chosen, setting.rejected
    c = logp[s, ap] - logp_ref[s, ap]
    r = logp[s, am] - logp_ref[s, am]
    t = terms(c, r, logp[s, ap])
    q = setting.data.weight
    dc, dr = q * t.d_chosen, q * t.d_rejected
    policy = np.exp(logp)
    grad = (setting.grad_log_prob(policy, ap).T @ dc
            + setting.grad_log_prob(policy, am).T @ dr)
    return Evaluation(float(q @ t.value), grad, dc, dr)


def _flex_dpo(w, setting, *, beta_plus, beta_minus):
    return _pair_path(w, setting, functools.partial(
        get_loss("flex-dpo").terms, beta_plus=beta_plus, beta_minus=beta_minus))


def _dpo_sft(w, setting, *, beta, sft_weight):
    return _pair_path(w, setting, functools.partial(
        get_loss("dpo-sft").terms, beta=beta, sft_weight=sft_weight))


# ------------------------------------------------------- surrogates and exact values
def _wdpo(form: str) -> Callable[..., Evaluation]:
    def evaluate(w, setting, *, beta, rho):
        value, grad = wdpo_objective(w, setting.centered, beta=beta, rho=rho, form=form)
        return Evaluation(value, grad)

    return evaluate


def _kldpo_step(w, setting, beta, tau, form) -> Evaluation:
    """KLDPO as the algorithms run it: weights from the current losses, held constant."""
    data = setting.centered
    losses = get_loss("dpo").value(w, data, beta=beta)
    weight = np.asarray(kldpo_weights(losses, data.weight, tau=tau, form=form), dtype=float)
    return _reweighted_margin(w, setting, "dpo", beta, weight)


def _kldpo_paper(w, setting, *, beta, tau):
    # The normalised step is the gradient of F = tau log sum q e^{l/tau}; report F.
    ev = _kldpo_step(w, setting, beta, tau, "paper")
    value, _ = kldpo_objective(w, setting.centered, beta=beta, tau=tau)
    return ev._replace(value=value)


def _kldpo_official(w, setting, *, beta, tau):
    # No potential: the step is sum W grad l with W capped and unnormalised; the value is
    # the loss the official code reports, sum W l.
    return _kldpo_step(w, setting, beta, tau, "official")


def _kl_exact(w, setting, *, beta, radius):
    res = kl_value(w, setting.centered, beta=beta, radius=radius)
    ev = _reweighted_margin(w, setting, "dpo", beta, np.asarray(res.weights, dtype=float))
    return ev._replace(value=res.value, grad=res.grad)


def _wasserstein_exact(w, setting, *, beta, radius, p):
    res = wasserstein_value(w, setting.centered, beta=beta, radius=radius, p=int(p))
    return Evaluation(res.value, res.grad)


for _spec in (
    ObjectiveSpec("dpo", _margin_objective("dpo"), ("beta",), "DPO (margin path)"),
    ObjectiveSpec("ipo", _margin_objective("ipo"), ("beta",), "IPO (margin path)"),
    ObjectiveSpec("flex-dpo", _flex_dpo, ("beta_plus", "beta_minus"),
                  "Flex-DPO: separate beta+ and beta- (log-probability path)"),
    ObjectiveSpec("dpo-sft", _dpo_sft, ("beta", "sft_weight"),
                  "DPO - sft_weight log pi(chosen) (log-probability path)"),
    ObjectiveSpec("wdpo-paper", _wdpo("paper"), ("beta", "rho"),
                  "WDPO, Algorithm 1: L + rho (sum q ||grad_x l||^2)^(1/2)"),
    ObjectiveSpec("wdpo-official", _wdpo("official"), ("beta", "rho"),
                  "WDPO as the official code runs it: sum q (l + rho ||grad_x l||^2)"),
    ObjectiveSpec("kldpo-paper", _kldpo_paper, ("beta", "tau"),
                  "KLDPO, Algorithm 2: normalised detached weights q exp(l / tau)"),
    ObjectiveSpec("kldpo-official", _kldpo_official, ("beta", "tau"),
                  "KLDPO as the official code runs it: min(exp((l - mean l)/tau), 10)",
                  potential=False),
    ObjectiveSpec("kl-exact", _kl_exact, ("beta", "radius"), "exact KL-DRO value"),
    ObjectiveSpec("wasserstein-exact", _wasserstein_exact, ("beta", "radius", "p"),
                  "exact Wasserstein-DRO value (kappa = inf)"),
):
    register_objective(_spec)
