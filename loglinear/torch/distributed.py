r"""KLDPO weights over the GLOBAL batch: across ranks and, on request, micro-steps.

KLDPO's weights (docs/theory.md §4.2), P_i ∝ exp(l_i/tau) (paper) or
W_i = min(exp((l_i - l̄)/tau), 10) / N (official, N pairs), depend on every pair of the
optimiser step. With R data-parallel ranks and k gradient-accumulation micro-steps,
computing them on the local micro-batch (Dr. DPO, DRO-REBEL) or on one micro-step (the
official code) changes the estimator. Here:

1. each rank computes its detached per-pair losses (one no-grad pre-pass over its k
   micro-batches when ``across_microsteps``; otherwise the current micro-batch),
2. :func:`all_gather_losses` gathers them (variable sizes allowed, rank order),
3. :func:`kldpo_coefficients` turns the global weights into per-pair coefficients c_i
   for this rank's pairs, such that

.. math::  \text{local objective} = R \sum_{i\in\text{local}} c_i\, l_i ,
   \qquad c_i = W_i,

the weights of :func:`loglinear.torch.losses.kldpo_weights` over the global batch (q = 1/N).
DDP averages gradients over the R ranks, so the applied gradient is exactly
sum_{i in global} c_i grad l_i: the single-process gradient of the whole batch (tested with
2 gloo processes). Without ``across_microsteps``, each micro-step is a separate global batch
and its objective is additionally divided by k.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .losses import kldpo_weights

__all__ = ["world", "all_gather_losses", "kldpo_coefficients", "kldpo_microstep_coefficients"]


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_losses(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate every rank's detached 1-D losses in rank order.

    Returns (global losses (N,), offset of this rank's first pair). Ranks may hold
    different numbers of pairs. Without an initialised process group this is the identity.
    """
    local = local.detach().reshape(-1)
    rank, size = world()
    if size == 1:
        return local, 0
    n = torch.tensor([local.numel()], device=local.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = torch.zeros(max(sizes), dtype=local.dtype, device=local.device)
    padded[: local.numel()] = local
    parts = [torch.zeros_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    full = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    return full, sum(sizes[:rank])


def kldpo_coefficients(local_losses: torch.Tensor, *, tau: float, form: str = "paper",
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    r"""Coefficients c_i (local pairs) of the global KLDPO objective R sum_local c_i l_i.

    The returned tensor already includes the factor R (world size), so the local loss to
    backpropagate is ``(c * losses).sum()`` and DDP's gradient averaging yields the global
    gradient. Detached. ``weight`` are optional per-pair weights w of the local pairs
    (finite, > 0); they are gathered too and enter as base weights q = w / N.
    """
    full, offset = all_gather_losses(local_losses)
    q = None
    if weight is not None:
        w_local = torch.as_tensor(weight, dtype=full.dtype, device=full.device)
        if w_local.shape != local_losses.shape:
            raise ValueError("weight must have the shape of local_losses")
        w_full, _ = all_gather_losses(w_local)
        q = w_full / w_full.numel()
    w = kldpo_weights(full, tau=tau, form=form, weight=q)
    _, size = world()
    return size * w[offset: offset + local_losses.numel()]


def kldpo_microstep_coefficients(micro_losses: list[torch.Tensor], *, tau: float,
                                 form: str = "paper") -> list[torch.Tensor]:
    """Coefficients over all ranks AND all k micro-steps of one optimiser step.

    ``micro_losses`` are this rank's detached per-pair losses of each micro-batch (from a
    no-grad pre-pass). Returns one coefficient tensor per micro-batch; backpropagate
    ``(c_j * losses_j).sum()`` for micro-batch j WITHOUT dividing by k.
    """
    if not micro_losses:
        raise ValueError("need at least one micro-batch of losses")
    sizes = [m.numel() for m in micro_losses]
    coef = kldpo_coefficients(torch.cat([m.detach().reshape(-1) for m in micro_losses]),
                              tau=tau, form=form)
    return list(torch.split(coef, sizes))
