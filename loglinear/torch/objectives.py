"""Batch objectives for causal LMs: one registry shared by the loop, TRL and the benchmark.

An objective maps (policy, batch of pairs, reference log-probs) to a scalar to minimise:

* ``"dpo"``/``"ipo"``: the mean per-pair base loss;
* ``"wdpo"``: the base loss plus the embedding-gradient penalty (paper or official form,
  docs/theory.md §4.1), :mod:`loglinear.torch.penalty`;
* ``"kldpo"``: the KL-reweighted loss with detached weights (paper or official form,
  docs/theory.md §4.2). The weights default to the local batch; pass ``kl_coef`` (from
  :mod:`loglinear.torch.distributed`) to use weights over the global batch.

Runners look objectives up by name in :data:`OBJECTIVES`; none branches on the name. Each
entry names the hyperparameters it takes, and :func:`batch_objective` passes it those only.

Every objective takes optional per-pair weights w (B,), finite and positive, used as the
base weights q_i = w_i / B of the losses' formulas (so w = 1 is the unweighted objective,
and a minibatch estimate of sum_i w_i l_i / N is unbiased; weights averaging 1 over the
data set give the normalised weighted objective).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..registry import Registry
from .losses import (
    get_loss,
    kldpo_objective,
    kldpo_weights,
    wdpo_objective,
    wdpo_penalty,
    weighted_mean,
)
from .penalty import check_double_backward, embedding_grad_sq_norms
from .sequence import PairBatch, logratios, pair_logps, reference_logps

__all__ = ["ObjectiveOutput", "BatchObjective", "OBJECTIVES", "get_objective",
           "batch_objective", "pair_losses", "pair_base_weight"]


@dataclass(frozen=True)
class ObjectiveOutput:
    """loss: scalar to backpropagate; losses: per-pair base losses (B,);
    grad_sq_norms: WDPO g_i (B,) or None; weights: KLDPO coefficients (B,) or None;
    logps: policy sequence log-probs (2B,); margins: beta (c - r) per pair (B,);
    penalty: the WDPO penalty term of ``loss`` (detached scalar) or None;
    mean_logits: (2B,) mean logit per row over vocabulary and response tokens, or None."""

    loss: torch.Tensor
    losses: torch.Tensor
    logps: torch.Tensor
    margins: torch.Tensor
    grad_sq_norms: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    penalty: torch.Tensor | None = None
    mean_logits: torch.Tensor | None = None

    def metrics(self) -> dict[str, float]:
        """Detached scalar summaries for logging."""
        out = {"loss": float(self.loss.detach()),
               "base_loss": float(self.losses.detach().mean()),
               "margin": float(self.margins.detach().mean()),
               "accuracy": float((self.margins.detach() > 0).float().mean())}
        if self.grad_sq_norms is not None:
            out["grad_sq_norm"] = float(self.grad_sq_norms.detach().mean())
        if self.penalty is not None:
            out["penalty"] = float(self.penalty)
        if self.weights is not None:
            out["weight_max"] = float(self.weights.detach().max())
        return out


def pair_losses(model, batch: PairBatch, *, ref_model=None, base_loss: str = "dpo",
                beta: float, embeddings_grad: bool = False):
    """Per-pair base losses (B,), margins (B,) and the forward output of ``model``."""
    if batch.ref_logps is None and ref_model is None:
        raise ValueError("need batch.ref_logps (precomputed) or a ref_model")
    ref = reference_logps(ref_model, batch)
    out = pair_logps(model, batch, embeddings_grad=embeddings_grad)
    c, r = logratios(out.logps, ref)
    return get_loss(base_loss)(c, r, beta=beta), beta * (c - r).detach(), out


def pair_base_weight(weight, n: int, *, like: torch.Tensor) -> torch.Tensor | None:
    """Base weights q = w / n from per-pair weights w (n,), finite and > 0; None for None."""
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=like.dtype, device=like.device).detach()
    if w.shape != (n,):
        raise ValueError(f"weight must have one entry per pair, shape ({n},), got "
                         f"{tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
        raise ValueError("pair weights must be finite and > 0 (drop pairs of weight 0 from "
                         "the data)")
    return w / n


def _plain(model, batch, *, ref_model, base_loss, beta, weight=None):
    losses, margins, out = pair_losses(model, batch, ref_model=ref_model, base_loss=base_loss,
                                       beta=beta)
    q = pair_base_weight(weight, losses.shape[0], like=losses)
    return ObjectiveOutput(weighted_mean(losses, q), losses, out.logps, margins,
                           mean_logits=out.mean_logits)


def _wdpo(model, batch, *, ref_model, base_loss, beta, rho, form, weight=None):
    check_double_backward(model)
    losses, margins, out = pair_losses(model, batch, ref_model=ref_model, base_loss=base_loss,
                                       beta=beta, embeddings_grad=True)
    g = embedding_grad_sq_norms(losses, out.embeddings, batch.attention_mask,
                                create_graph=torch.is_grad_enabled())
    q = pair_base_weight(weight, losses.shape[0], like=losses)
    loss = wdpo_objective(losses, g, rho=rho, form=form, weight=q)
    penalty = wdpo_penalty(g.detach(), rho=rho, form=form, weight=q)
    return ObjectiveOutput(loss, losses, out.logps, margins, grad_sq_norms=g,
                           penalty=penalty, mean_logits=out.mean_logits)


def _kldpo(model, batch, *, ref_model, base_loss, beta, tau, form, kl_coef=None,
           weight=None):
    losses, margins, out = pair_losses(model, batch, ref_model=ref_model, base_loss=base_loss,
                                       beta=beta)
    if kl_coef is None:
        q = pair_base_weight(weight, losses.shape[0], like=losses)
        coef = kldpo_weights(losses, tau=tau, form=form, weight=q)
    else:
        # global coefficients c_i (distributed.kldpo_coefficients, which takes the pair
        # weights itself), given or computed from this batch's detached losses by a
        # callable; the objective is sum_i c_i l_i
        coef = kl_coef(losses.detach()) if callable(kl_coef) else kl_coef
    loss = kldpo_objective(losses, tau=tau, form=form, weights=coef.detach())
    return ObjectiveOutput(loss, losses, out.logps, margins, weights=coef.detach(),
                           mean_logits=out.mean_logits)


@dataclass(frozen=True)
class BatchObjective:
    """A registered batch objective.

    Attributes:
        fn: ``fn(model, batch, *, ref_model, base_loss, beta, weight, **{p: ... for p in
            params})``.
        params: the hyperparameters it takes besides ``beta`` (``rho``, ``tau``, ``form``,
            ``kl_coef``).
        base_loss: the default per-pair base loss.
        input_grads: needs input gradients, also in evaluation (the WDPO penalty).
        global_weights: takes coefficients over the global batch (``kl_coef``).
    """

    name: str
    fn: Callable[..., ObjectiveOutput]
    params: tuple[str, ...] = ()
    base_loss: str = "dpo"
    input_grads: bool = False
    global_weights: bool = False

    def __call__(self, model, batch, **kwargs) -> ObjectiveOutput:
        return self.fn(model, batch, **kwargs)


OBJECTIVES: Registry[BatchObjective] = Registry("objective", {
    "dpo": BatchObjective("dpo", _plain),
    "ipo": BatchObjective("ipo", _plain, base_loss="ipo"),
    "wdpo": BatchObjective("wdpo", _wdpo, ("rho", "form"), input_grads=True),
    "kldpo": BatchObjective("kldpo", _kldpo, ("tau", "form", "kl_coef"),
                            global_weights=True),
})


def get_objective(name: str) -> BatchObjective:
    """Look an objective up by name in :data:`OBJECTIVES`."""
    return OBJECTIVES.get(name)


def batch_objective(model, batch: PairBatch, *, objective: str = "dpo", beta: float,
                    ref_model=None, base_loss: str | None = None, rho: float = 0.0,
                    tau: float = 1.0, form: str = "paper",
                    kl_coef: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
                    weight: torch.Tensor | None = None) -> ObjectiveOutput:
    """Evaluate the named objective on one batch. ``base_loss`` defaults to "dpo" (to
    "ipo" for the "ipo" objective); ``rho`` is used by WDPO, ``tau`` by KLDPO, ``form``
    selects the paper or the official variant of either. ``kl_coef`` (KLDPO only) is a
    tensor of coefficients or a callable mapping the detached losses to them, e.g.
    ``functools.partial(distributed.kldpo_coefficients, tau=tau, form=form)``.
    ``weight`` (B,) are optional per-pair weights (finite, > 0; base weights q = w / B);
    with ``kl_coef`` they must already be inside the coefficients."""
    spec = get_objective(objective)
    given = {"rho": rho, "tau": tau, "form": form, "kl_coef": kl_coef}
    return spec.fn(model, batch, ref_model=ref_model, base_loss=base_loss or spec.base_loss,
                   beta=beta, weight=weight, **{p: given[p] for p in spec.params})


def __getattr__(name: str):
    if name == "DEFAULT_BASE":  # replaced by BatchObjective.base_loss; kept for one release
        import warnings

        warnings.warn("loglinear.torch.objectives.DEFAULT_BASE is deprecated; use "
                      "OBJECTIVES[name].base_loss", DeprecationWarning, stacklevel=2)
        return {k: v.base_loss for k, v in OBJECTIVES.items() if v.base_loss != "dpo"}
    raise AttributeError(f"module 'loglinear.torch.objectives' has no attribute {name!r}")
