"""KLDPO over the global batch: 2 gloo processes give exactly the 1-process gradient."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from loglinear.torch import losses as tl
from loglinear.torch.distributed import (
    all_gather_losses,
    kldpo_coefficients,
    kldpo_microstep_coefficients,
)
from loglinear.torch.models import byte_tokenizer, tiny_model
from loglinear.torch.objectives import pair_losses
from loglinear.torch.sequence import tokenize_pairs

GRAD_TOL = 1e-12  # float64; the same sums in a different order

PROMPTS = ["ab", "c", "def", "g", "hij", "k", "lm"]
CHOSEN = [" x", " yy", " z", " ww", " v", " u", " tt"]
REJECTED = [" q", " r", " sss", " p", " o", " nn", " m"]
# rank 0 gets micro-batches [0,1] and [2,3]; rank 1 gets [4] and [5,6] (unequal sizes)
SHARDS = {0: [[0, 1], [2, 3]], 1: [[4], [5, 6]]}


def _setup():
    tok = byte_tokenizer()
    model = tiny_model("gpt2", tokenizer=tok, dtype=torch.float64, seed=11)
    ref = tiny_model("gpt2", tokenizer=tok, dtype=torch.float64, seed=12)
    batch = tokenize_pairs(tok, PROMPTS, CHOSEN, REJECTED)
    return model, ref, batch


def _flat_grad(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()


def _reference_grad(form, tau, across):
    """One process: the KLDPO objective of the whole global batch (or of each micro-step)."""
    model, ref, batch = _setup()
    micro_steps = [SHARDS[0][j] + SHARDS[1][j] for j in range(2)]
    if across:
        groups = [sum(micro_steps, [])]
    else:
        groups = micro_steps
    for g in groups:
        losses = pair_losses(model, batch.select(g), ref_model=ref, beta=0.7)[0]
        obj = tl.kldpo_objective(losses, tau=tau, form=form)
        (obj / len(groups)).backward()
    return _flat_grad(model)


CASES = [("paper", 0.3, True), ("official", 0.3, True), ("paper", 0.5, False)]


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for k, case in enumerate(CASES):
            _rank_case(rank, world, os.path.join(out, f"{k}-{rank}.pt"), *case)
        # Neither rank tears gloo down while the other may still talk to it: a rank that
        # exits early has aborted its peer ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _rank_case(rank, world, path, form, tau, across):
    model, ref, batch = _setup()
    micro = [batch.select(ix) for ix in SHARDS[rank]]
    if across:
        with torch.no_grad():
            pre = [pair_losses(model, b, ref_model=ref, beta=0.7)[0] for b in micro]
        coefs = kldpo_microstep_coefficients(pre, tau=tau, form=form)
    for j, b in enumerate(micro):
        losses = pair_losses(model, b, ref_model=ref, beta=0.7)[0]
        if across:
            loss = (coefs[j] * losses).sum()
        else:
            loss = (kldpo_coefficients(losses, tau=tau, form=form) * losses).sum() / 2
        loss.backward()
    g = _flat_grad(model)
    dist.all_reduce(g)  # what DDP does: average over ranks
    g /= world
    full, offset = all_gather_losses(torch.arange(len(SHARDS[rank][0]), dtype=torch.float64)
                                     + 10 * rank)
    torch.save({"grad": g, "gathered": full, "offset": offset}, path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("k", range(len(CASES)))
def test_two_gloo_ranks_equal_one_process(two_rank_results, k):
    form, tau, across = CASES[k]
    want = _reference_grad(form, tau, across)
    r0, r1 = (torch.load(two_rank_results / f"{k}-{r}.pt") for r in (0, 1))
    assert float(want.norm()) > 0
    np.testing.assert_allclose(r0["grad"].numpy(), want.numpy(), rtol=1e-9, atol=GRAD_TOL)
    np.testing.assert_allclose(r1["grad"].numpy(), want.numpy(), rtol=1e-9, atol=GRAD_TOL)
    # variable-size gather in rank order
    assert r0["gathered"].tolist() == [0.0, 1.0, 10.0] and (r0["offset"], r1["offset"]) == (0, 2)


def test_single_process_coefficients_are_the_weights():
    l = torch.tensor([0.1, 0.9, 0.4], dtype=torch.float64)
    np.testing.assert_allclose(kldpo_coefficients(l, tau=0.2).numpy(),
                               tl.kldpo_weights(l, tau=0.2).numpy(), rtol=0)
    np.testing.assert_allclose(kldpo_coefficients(l, tau=0.2, form="official").numpy(),
                               tl.kldpo_weights(l, tau=0.2, form="official").numpy(), rtol=0)
    parts = kldpo_microstep_coefficients([l[:1], l[1:]], tau=0.2)
    np.testing.assert_allclose(torch.cat(parts).numpy(), tl.kldpo_weights(l, tau=0.2).numpy())
