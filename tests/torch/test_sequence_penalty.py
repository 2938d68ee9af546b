"""Sequence log-probs (padding, masking) and the batched WDPO embedding penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loglinear.torch import losses as tl
from loglinear.torch.models import byte_tokenizer, tiny_model
from loglinear.torch.penalty import (
    check_double_backward,
    embedding_grad_sq_norms,
    loop_grad_sq_norms,
    wdpo_losses,
)
from loglinear.torch.sequence import (
    logratios,
    pair_logps,
    reference_logps,
    sequence_logps,
    tokenize_pairs,
)

F64_TOL = 1e-10  # float64 forwards of the same model through different code paths

PROMPTS = ["Q: 2+2?", "Say hi", "x"]
CHOSEN = [" 4", " hello there", " yes!"]
REJECTED = [" five", " no", " n"]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def _naive_logp(model, ids, n_prompt):
    """Unpadded single-sequence log-prob of tokens n_prompt.. given the prefix."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = logits.log_softmax(-1)
    return sum(float(lp[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))


# transformers' eager Llama attention gives NaN at fully masked (left-pad) query rows in
# float64, so Llama is checked in float32 (the NaN rows are never scored).
@pytest.mark.parametrize("arch,dtype,tol", [("gpt2", torch.float64, F64_TOL),
                                            ("llama", torch.float32, 1e-5)])
@pytest.mark.parametrize("side", ["left", "right"])
def test_sequence_logps_match_unpadded_loop(tok, arch, dtype, tol, side):
    model = tiny_model(arch, tokenizer=tok, dtype=dtype, seed=1)
    batch = tokenize_pairs(tok, PROMPTS, CHOSEN, REJECTED, padding_side=side)
    got = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.response_mask)
    want = []
    for responses in (CHOSEN, REJECTED):
        for p, a in zip(PROMPTS, responses):
            pid = [tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"]
            aid = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            want.append(_naive_logp(model, pid + aid, len(pid)))
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=tol, atol=tol)


def test_average_and_reference(tok):
    model = tiny_model("gpt2", tokenizer=tok, dtype=torch.float64)
    batch = tokenize_pairs(tok, PROMPTS, CHOSEN, REJECTED)
    total = reference_logps(model, batch)
    mean = reference_logps(model, batch, average=True)
    counts = batch.response_mask[:, 1:].sum(-1).double()
    np.testing.assert_allclose(mean.numpy(), (total / counts).numpy(), rtol=F64_TOL)
    # precomputed reference log-probs are used as given
    assert torch.equal(reference_logps(None, batch.with_ref(total)), total)
    c, r = logratios(total, total)
    assert c.shape == (3,) and float(c.abs().max()) == 0.0


def test_batch_validation(tok):
    with pytest.raises(ValueError, match="prompt"):
        tokenize_pairs(tok, [""], ["a"], ["b"], add_bos=False)
    with pytest.raises(ValueError, match="padding_side"):
        tokenize_pairs(tok, ["a"], ["a"], ["b"], padding_side="middle")
    b = tokenize_pairs(tok, ["abc"], ["defgh"], ["ij"], max_length=5)
    assert b.input_ids.shape == (2, 5) and int(b.response_mask.sum()) == 2  # bos+abc leaves 1 each


def _penalty_setup(tok, side="right", arch="gpt2", dtype=torch.float64, seed=2):
    policy = tiny_model(arch, tokenizer=tok, dtype=dtype, seed=seed)
    ref = tiny_model(arch, tokenizer=tok, dtype=dtype, seed=seed + 100)
    batch = tokenize_pairs(tok, PROMPTS, CHOSEN, REJECTED, padding_side=side)
    return policy, ref, batch.with_ref(reference_logps(ref, batch))


@pytest.mark.parametrize("arch,side,dtype,rtol", [
    ("gpt2", "left", torch.float64, F64_TOL), ("gpt2", "right", torch.float64, F64_TOL),
    # Llama's RMSNorm computes in float32 even for float64 models: float32-level tolerances
    ("llama", "right", torch.float64, 1e-6), ("llama", "left", torch.float32, 1e-4)])
def test_batched_penalty_equals_per_sample_loop(tok, arch, side, dtype, rtol):
    policy, _, batch = _penalty_setup(tok, side, arch, dtype=dtype)
    out = pair_logps(policy, batch, embeddings_grad=True)
    losses = tl.dpo_loss(*logratios(out.logps, batch.ref_logps), beta=0.5)
    g_batch = embedding_grad_sq_norms(losses, out.embeddings, batch.attention_mask)
    g_loop = loop_grad_sq_norms(losses, out.embeddings, batch.attention_mask)
    np.testing.assert_allclose(g_batch.detach().numpy(), g_loop.detach().numpy(), rtol=rtol)
    # and each pair alone, unpadded, in its own forward: rows never leak into each other
    for i in range(len(PROMPTS)):
        single = tokenize_pairs(tok, PROMPTS[i:i + 1], CHOSEN[i:i + 1], REJECTED[i:i + 1])
        single = single.with_ref(batch.ref_logps[[i, i + 3]])
        gi = wdpo_losses(policy, single, beta=0.5).grad_sq_norms
        np.testing.assert_allclose(float(gi[0].detach()), float(g_batch[i].detach()),
                                   rtol=max(rtol, 1e-9))
    # the penalty's parameter gradient also matches (double backward through both paths)
    params = [p for p in policy.parameters()]
    ga = torch.autograd.grad(g_batch.sum(), params, retain_graph=True, allow_unused=True)
    gb = torch.autograd.grad(g_loop.sum(), params, allow_unused=True)
    for a, b in zip(ga, gb):
        if a is not None:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=max(rtol, 1e-8),
                                       atol=1e-12 if dtype == torch.float64 else 1e-6)


def test_penalty_gradcheck_float64(tok):
    """gradcheck (finite differences) of the paper-form WDPO objective wrt parameters."""
    policy = tiny_model("gpt2", tokenizer=tok, dtype=torch.float64, hidden_size=8,
                        num_heads=2, num_layers=1, seed=3)
    batch = tokenize_pairs(tok, ["a", "bc"], [" d", " e"], [" f", " gh"])
    batch = batch.with_ref(torch.zeros(4, dtype=torch.float64))
    names = ["transformer.h.0.attn.c_attn.bias", "transformer.ln_f.weight"]
    base = dict(policy.named_parameters())
    from torch.func import functional_call

    def objective(*tensors):
        params = {**base, **dict(zip(names, tensors))}

        class Bound(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.config = policy.config

            def get_input_embeddings(self):
                return lambda ids: functional_call(policy.get_input_embeddings(),
                                                   {"weight": params["transformer.wte.weight"]},
                                                   (ids,))

            def forward(self, **kw):
                return functional_call(policy, params, (), kw)

        terms = wdpo_losses(Bound(), batch, beta=1.0, check=False)
        return terms.objective(rho=0.7, form="paper")

    inputs = tuple(base[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(objective, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def _checkpointing(model, kwargs):
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def test_reentrant_checkpointing_is_rejected_and_nonreentrant_matches(tok):
    policy, _, batch = _penalty_setup(tok)
    policy.train()
    ref_terms = wdpo_losses(policy, batch, beta=0.5)
    ref_obj = ref_terms.objective(rho=1.0)
    ref_grads = torch.autograd.grad(ref_obj, list(policy.parameters()))

    _checkpointing(policy, {"use_reentrant": True})
    with pytest.raises(ValueError, match="reentrant"):
        wdpo_losses(policy, batch, beta=0.5)

    _checkpointing(policy, {"use_reentrant": False})
    terms = wdpo_losses(policy, batch, beta=0.5)
    grads = torch.autograd.grad(terms.objective(rho=1.0), list(policy.parameters()))
    np.testing.assert_allclose(float(terms.objective(rho=1.0).detach()),
                               float(ref_obj.detach()), rtol=1e-12)
    for a, b in zip(grads, ref_grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-8, atol=1e-13)


def test_sdpa_on_cpu_switches_to_eager(tok):
    model = tiny_model("llama", tokenizer=tok, attn_implementation="sdpa")
    with pytest.warns(UserWarning, match="eager"):
        check_double_backward(model)
    assert model.config._attn_implementation == "eager"
