r"""The WDPO gradient penalty with respect to a language model's input embeddings.

For pair i with loss l_i, the adversary of docs/theory.md §4.1 moves z_i, the token embeddings of
the pair. We take z_i to be the embeddings of BOTH rows of the pair (chosen and rejected,
each prompt + response; the prompt therefore appears twice, as in the official code) and
never the padding positions:

.. math::
    g_i = \|\nabla_{z_i} l_i\|^2
        = \sum_{t:\,\mathrm{mask}^+_{i,t}=1} \|\partial l_i/\partial E^+_{i,t}\|^2
        + \sum_{t:\,\mathrm{mask}^-_{i,t}=1} \|\partial l_i/\partial E^-_{i,t}\|^2 .

Since l_i depends only on rows i and i+B, ONE batched ``autograd.grad`` of sum_i l_i with
respect to the (2B, T, H) embedding tensor gives every pair's gradient: no per-sample
loop. With ``create_graph=True`` the penalty is differentiable, and its gradient is a
double backward through the network. Feed g to ``losses.wdpo_objective``.

Requirements checked by :func:`check_double_backward`:
* gradient checkpointing must be non-reentrant (``use_reentrant=False``); reentrant
  checkpointing cannot run ``autograd.grad`` (pytorch#65537) and raises here;
* SDPA attention on CPU lacks a double backward; the model is switched to eager attention.
"""

from __future__ import annotations

import warnings

import torch

from .losses import get_loss, wdpo_objective
from .sequence import PairBatch, _at_least_float32, logratios, pair_logps, reference_logps

__all__ = ["check_double_backward", "embedding_grad_sq_norms", "wdpo_losses",
           "WDPOTerms", "loop_grad_sq_norms"]


def _reentrant_checkpointing(model) -> bool:
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            func = getattr(module, "_gradient_checkpointing_func", None)
            kw = getattr(func, "keywords", {}) or {}
            # torch's checkpoint defaults to reentrant when use_reentrant is not given
            if kw.get("use_reentrant", True):
                return True
    return False


def check_double_backward(model) -> None:
    """Make ``model`` able to double-backward, or raise a clear error.

    Raises ValueError for reentrant gradient checkpointing. On CPU, switches SDPA/flash
    attention to eager (with a warning), since their CPU kernels have no double backward.
    """
    if model.training and _reentrant_checkpointing(model):
        raise ValueError(
            "the WDPO penalty needs torch.autograd.grad(create_graph=True), which reentrant "
            "gradient checkpointing does not support; enable checkpointing with "
            "gradient_checkpointing_kwargs={'use_reentrant': False}")
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    device = next(model.parameters()).device
    if device.type == "cpu" and attn not in (None, "eager"):
        warnings.warn(f"switching attention from {attn!r} to 'eager': its CPU kernel has no "
                      "double backward, which the WDPO penalty needs", stacklevel=2)
        model.set_attn_implementation("eager")


def embedding_grad_sq_norms(losses: torch.Tensor, embeddings: torch.Tensor,
                            attention_mask: torch.Tensor, *, create_graph: bool = True
                            ) -> torch.Tensor:
    """Per-pair g_i = ||grad_{z_i} l_i||^2 from ONE batched ``autograd.grad``, shape (B,).

    ``losses`` (B,) are per-pair losses of the [chosen; rejected] rows of ``embeddings``
    (2B, T, H); padding positions (``attention_mask == 0``) are excluded.
    """
    n_rows = embeddings.shape[0]
    if losses.ndim != 1 or 2 * losses.shape[0] != n_rows:
        raise ValueError(f"losses must be (B,) with 2B = {n_rows} embedding rows")
    if not embeddings.requires_grad:
        raise ValueError("embeddings do not require grad; use pair_logps(embeddings_grad=True)")
    (grad,) = torch.autograd.grad(losses.sum(), embeddings, create_graph=create_graph)
    grad = grad * attention_mask.to(grad.dtype).unsqueeze(-1)
    per_row = _at_least_float32(grad).pow(2).sum(dim=(1, 2))
    b = losses.shape[0]
    return per_row[:b] + per_row[b:]


def loop_grad_sq_norms(losses: torch.Tensor, embeddings: torch.Tensor,
                       attention_mask: torch.Tensor, *, create_graph: bool = True
                       ) -> torch.Tensor:
    """The same g_i with one ``autograd.grad`` per pair (reference and benchmark only)."""
    b = losses.shape[0]
    out = []
    for i in range(b):
        (grad,) = torch.autograd.grad(losses[i], embeddings, retain_graph=True,
                                      create_graph=create_graph)
        mask = attention_mask.to(grad.dtype).unsqueeze(-1)
        g = _at_least_float32(grad * mask).pow(2)
        out.append(g[i].sum() + g[i + b].sum())
    return torch.stack(out)


class WDPOTerms:
    """Per-pair losses and squared embedding-gradient norms of one batch, plus the objective."""

    def __init__(self, losses, grad_sq_norms, logps):
        self.losses = losses
        self.grad_sq_norms = grad_sq_norms
        self.logps = logps

    def objective(self, *, rho: float, form: str = "paper", weight=None) -> torch.Tensor:
        return wdpo_objective(self.losses, self.grad_sq_norms, rho=rho, form=form,
                              weight=weight)


def wdpo_losses(model, batch: PairBatch, *, beta: float, ref_model=None, loss: str = "dpo",
                create_graph: bool = True, check: bool = True) -> WDPOTerms:
    """Forward, per-pair base losses and their embedding-gradient norms, for WDPO.

    The reference log-probs come from ``batch.ref_logps`` or ``ref_model``.
    """
    if check:
        check_double_backward(model)
    if batch.ref_logps is None and ref_model is None:
        raise ValueError("need batch.ref_logps or a ref_model")
    ref = reference_logps(ref_model, batch)
    out = pair_logps(model, batch, embeddings_grad=True)
    c, r = logratios(out.logps, ref)
    losses = get_loss(loss)(c, r, beta=beta)
    g = embedding_grad_sq_norms(losses, out.embeddings, batch.attention_mask,
                                create_graph=create_graph)
    return WDPOTerms(losses, g, out.logps)
