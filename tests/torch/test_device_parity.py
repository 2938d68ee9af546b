"""The torch backend's contracts on the device named by ``LOGLINEAR_TORCH_DEVICE`` (cpu).

The other torch tests build their tensors on the CPU; these build them on ``torch_device``
(tests/torch/conftest.py), so ``benchmarks/gpu_check.py`` runs the same contracts on CUDA:
loss parity with the numpy core (float64, float32 and bfloat16 tolerances), the batched
WDPO penalty equal to the per-sample loop, gradcheck of the WDPO objective in float64, and
the trainer's resume. Sizes are kept small so that the CPU run costs a few seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TORCH_BF16_TOL, TORCH_F32_TOL, TORCH_F64_TOL

from loglinear import PreferenceData
from loglinear import losses as nplosses
from loglinear.torch import losses as tl
from loglinear.torch.models import byte_tokenizer, tiny_model
from loglinear.torch.penalty import embedding_grad_sq_norms, loop_grad_sq_norms, wdpo_losses
from loglinear.torch.sequence import logratios, pair_logps, reference_logps, tokenize_pairs

DTYPES = [(torch.float64, TORCH_F64_TOL), (torch.float32, TORCH_F32_TOL),
          (torch.bfloat16, TORCH_BF16_TOL)]
MODEL_F64_TOL = 1e-10  # float64 forwards of one model through different code paths

PROMPTS = ["Q: 2+2?", "Say hi", "x"]
CHOSEN = [" 4", " hello there", " yes!"]
REJECTED = [" five", " no", " n"]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def _data(rng, n=40, d=3):
    x = rng.normal(size=(n, d))
    y = rng.integers(0, 2, size=n)
    o = rng.normal(scale=0.3, size=n)
    q = rng.uniform(0.2, 1.0, size=n)
    return PreferenceData(x, y, offset=o, weight=q, normalize=True)


def _on(a, dtype, device):
    """``a`` as a tensor of ``dtype`` on ``device``, and the rounded values back in float64:
    the numpy reference is evaluated at the same (rounded) inputs, so the tolerance measures
    the function's error, not the input rounding."""
    t = torch.tensor(np.asarray(a), dtype=dtype, device=device)
    return t, t.double().cpu().numpy()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


@pytest.mark.parametrize("name", ["dpo", "ipo"])
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_losses_match_numpy(name, dtype, tol, torch_device, rng):
    data = _data(rng)
    theta, beta = rng.normal(size=data.d), 0.7
    m, m64 = _on(nplosses.margins(theta, data, beta=beta), dtype, torch_device)
    want = nplosses.get_loss(name).phi(m64, beta)
    got = tl.margin_loss(name, m, beta=beta)
    assert got.shape == (data.n,) and got.dtype == dtype and got.device == m.device
    np.testing.assert_allclose(_np(got), want, rtol=tol, atol=tol)
    h = m / beta  # the same loss from log-ratios c = h, r = 0
    np.testing.assert_allclose(_np(tl.get_loss(name)(h, torch.zeros_like(h), beta=beta)), want,
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_wdpo_objective_matches_closed_forms(dtype, tol, torch_device, rng):
    data = _data(rng)
    theta, beta, rho = rng.normal(size=data.d), 0.5, 0.3
    l, l64 = _on(nplosses.dpo_loss(theta, data, beta=beta), dtype, torch_device)
    g, g64 = _on(np.sum(nplosses.dpo_grad_x(theta, data, beta=beta) ** 2, axis=1), dtype,
                 torch_device)
    q, q64 = _on(data.weight, dtype, torch_device)
    for form, want in [("paper", q64 @ l64 + rho * np.sqrt(q64 @ g64)),
                       ("official", q64 @ (l64 + rho * g64))]:
        got = tl.wdpo_objective(l, g, rho=rho, form=form, weight=q)
        np.testing.assert_allclose(float(got), want, rtol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("tau", [0.05, 3.0])
def test_kldpo_weights_match_closed_forms(dtype, tol, tau, torch_device, rng):
    l, l64 = _on(rng.exponential(size=30), dtype, torch_device)
    q, q64 = _on(rng.uniform(0.1, 1.0, size=30), dtype, torch_device)
    q, q64 = q / q.sum(), q64 / q64.sum()
    e = q64 * np.exp((l64 - l64.max()) / tau)
    wp = tl.kldpo_weights(l, tau=tau, form="paper", weight=q)
    wo = tl.kldpo_weights(l, tau=tau, form="official")
    assert wp.device == l.device and wp.dtype == dtype
    # q is renormalised in dtype above; its rounding enters P as a relative error
    np.testing.assert_allclose(_np(wp), e / e.sum(), rtol=2 * tol, atol=tol)
    # official form: q min(e^{(l - mean l)/tau}, cap), q uniform (docs/theory.md §4.2)
    np.testing.assert_allclose(_np(wo), np.minimum(np.exp((l64 - l64.mean()) / tau), 10.0)
                               / l64.size, rtol=tol, atol=tol)


def _penalty_setup(tok, device, arch, side, dtype, seed=2):
    policy = tiny_model(arch, tokenizer=tok, dtype=dtype, seed=seed).to(device)
    ref = tiny_model(arch, tokenizer=tok, dtype=dtype, seed=seed + 100).to(device)
    batch = tokenize_pairs(tok, PROMPTS, CHOSEN, REJECTED, padding_side=side).to(device)
    return policy, batch.with_ref(reference_logps(ref, batch))


@pytest.mark.parametrize("arch,side,dtype,rtol", [
    ("gpt2", "left", torch.float64, MODEL_F64_TOL),
    # Llama's RMSNorm computes in float32 even for float64 models (test_sequence_penalty.py)
    ("llama", "right", torch.float32, 1e-4)])
def test_batched_penalty_equals_per_sample_loop(tok, torch_device, arch, side, dtype, rtol):
    policy, batch = _penalty_setup(tok, torch_device, arch, side, dtype)
    out = pair_logps(policy, batch, embeddings_grad=True)
    losses = tl.dpo_loss(*logratios(out.logps, batch.ref_logps), beta=0.5)
    g_batch = embedding_grad_sq_norms(losses, out.embeddings, batch.attention_mask)
    g_loop = loop_grad_sq_norms(losses, out.embeddings, batch.attention_mask)
    np.testing.assert_allclose(_np(g_batch), _np(g_loop), rtol=rtol)
    # the penalty's parameter gradient (a double backward) matches too
    params = list(policy.parameters())
    ga = torch.autograd.grad(g_batch.sum(), params, retain_graph=True, allow_unused=True)
    gb = torch.autograd.grad(g_loop.sum(), params, allow_unused=True)
    atol = 1e-12 if dtype == torch.float64 else 1e-6
    for a, b in zip(ga, gb):
        if a is not None:
            np.testing.assert_allclose(_np(a), _np(b), rtol=max(rtol, 1e-8), atol=atol)


class _Bound(torch.nn.Module):
    """``policy`` evaluated with some of its parameters replaced (for gradcheck)."""

    def __init__(self, policy, params):
        super().__init__()
        self.policy, self.params, self.config = policy, params, policy.config

    def get_input_embeddings(self):
        return self.policy.get_input_embeddings()

    def forward(self, **kw):
        return torch.func.functional_call(self.policy, self.params, (), kw)


def test_penalty_gradcheck_float64(tok, torch_device):
    """gradcheck (finite differences) of the paper-form WDPO objective in two parameters."""
    policy = tiny_model("gpt2", tokenizer=tok, dtype=torch.float64, hidden_size=8,
                        num_heads=2, num_layers=1, seed=3).to(torch_device)
    batch = tokenize_pairs(tok, ["a", "bc"], [" d", " e"], [" f", " gh"]).to(torch_device)
    batch = batch.with_ref(torch.zeros(4, dtype=torch.float64, device=torch_device))
    names = ["transformer.h.0.attn.c_attn.bias", "transformer.ln_f.weight"]
    base = dict(policy.named_parameters())

    def objective(*tensors):
        bound = _Bound(policy, {**base, **dict(zip(names, tensors))})
        return wdpo_losses(bound, batch, beta=1.0, check=False).objective(rho=0.7, form="paper")

    inputs = tuple(base[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(objective, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_fused_attention_penalty_matches_eager_or_is_unsupported(tok, torch_device):
    """On an accelerator, the WDPO penalty under SDPA either equals the eager one or raises
    (no double backward in the fused kernel); on CPU, SDPA is switched to eager instead
    (test_sequence_penalty.py)."""
    if torch_device.type == "cpu":
        pytest.skip("CPU SDPA is switched to eager (test_sdpa_on_cpu_switches_to_eager)")
    policy, batch = _penalty_setup(tok, torch_device, "llama", "right", torch.float32)
    eager = wdpo_losses(policy, batch, beta=0.5).grad_sq_norms
    policy.set_attn_implementation("sdpa")
    try:
        terms = wdpo_losses(policy, batch, beta=0.5)
        torch.autograd.grad(terms.objective(rho=1.0), list(policy.parameters()))
    except (RuntimeError, NotImplementedError) as exc:  # junit records the xfail reason
        pytest.xfail(f"SDPA double backward unsupported: {str(exc).splitlines()[0]}")
    np.testing.assert_allclose(_np(terms.grad_sq_norms), _np(eager), rtol=1e-4)


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_trainer_resumes_to_same_next_steps(tmp_path, torch_device):
    from loglinear.torch.loop import TrainConfig, train

    common = dict(model="tiny-llama", objective="wdpo", rho=0.5, form="official",
                  data="toy:12", batch_size=4, lr=3e-3, save_every=2, max_steps=4,
                  device=str(torch_device))
    full = _metrics(train(TrainConfig(out_dir=str(tmp_path / "a"), **common)))
    b = tmp_path / "b"
    train(TrainConfig(out_dir=str(b), **common), stop_after=2)
    resumed = _metrics(train(TrainConfig(out_dir=str(b), **common)))
    assert [r["step"] for r in resumed] == list(range(4))
    # kernels with atomics (embedding backward on CUDA) need not be bitwise reproducible
    rtol = 1e-6 if torch_device.type == "cpu" else 1e-4
    for ra, rb in zip(full, resumed):
        for key in ("loss", "base_loss", "grad_sq_norm", "lr"):
            np.testing.assert_allclose(rb[key], ra[key], rtol=rtol, err_msg=f"{key} {ra['step']}")
