"""Parity of the torch losses with the numpy core on the same margins."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loglinear import PreferenceData
from loglinear import losses as nplosses
from loglinear.torch import losses as tl

F64_TOL = 1e-12
F32_TOL = 1e-6


def _data(rng, n=40, d=3):
    x = rng.normal(size=(n, d))
    y = rng.integers(0, 2, size=n)
    o = rng.normal(scale=0.3, size=n)
    q = rng.uniform(0.2, 1.0, size=n)
    return PreferenceData(x, y, offset=o, weight=q, normalize=True)


def _logratios(theta, data, dtype):
    """c = (2y-1)(theta.x - o), r = 0: the log-linear policy's labelled log-ratios."""
    h = data.sign * (data.x @ theta - data.offset)
    return torch.tensor(h, dtype=dtype), torch.zeros(data.n, dtype=dtype)


@pytest.mark.parametrize("name", ["dpo", "ipo"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, F64_TOL), (torch.float32, F32_TOL)])
def test_base_losses_match_numpy(name, dtype, tol, rng):
    data = _data(rng)
    theta = rng.normal(size=data.d)
    beta = 0.7
    ref = getattr(nplosses, f"{name}_loss")(theta, data, beta=beta)
    c, r = _logratios(theta, data, dtype)
    got = getattr(tl, f"{name}_loss")(c, r, beta=beta)
    assert got.shape == (data.n,) and got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=tol, atol=tol)
    m = torch.tensor(nplosses.margins(theta, data, beta=beta), dtype=dtype)
    np.testing.assert_allclose(tl.margin_loss(name, m, beta=beta).double().numpy(), ref,
                               rtol=tol, atol=tol)


def test_dpo_swap_and_extremes():
    c = torch.tensor([500.0, -500.0, 0.0], dtype=torch.float64)
    r = torch.zeros(3, dtype=torch.float64)
    l = tl.dpo_loss(c, r, beta=1.0)
    assert torch.isfinite(l).all()
    np.testing.assert_allclose(l.numpy(), [0.0, 500.0, np.log(2)], atol=F64_TOL)
    # swapping chosen and rejected gives softplus(+beta h)
    np.testing.assert_allclose(tl.dpo_loss(r, c, beta=1.0).numpy(), [500.0, 0.0, np.log(2)],
                               atol=F64_TOL)


def _np_grad_sq(theta, data, beta):
    return np.sum(nplosses.dpo_grad_x(theta, data, beta=beta) ** 2, axis=1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, F64_TOL), (torch.float32, F32_TOL)])
def test_wdpo_objective_closed_forms(dtype, tol, rng):
    data = _data(rng)
    theta, beta, rho = rng.normal(size=data.d), 0.5, 0.3
    l = nplosses.dpo_loss(theta, data, beta=beta)
    g = _np_grad_sq(theta, data, beta)
    q = data.weight
    paper = q @ l + rho * np.sqrt(q @ g)
    official = q @ (l + rho * g)
    T = lambda a: torch.tensor(a, dtype=dtype)
    got_p = tl.wdpo_objective(T(l), T(g), rho=rho, form="paper", weight=T(q))
    got_o = tl.wdpo_objective(T(l), T(g), rho=rho, form="official", weight=T(q))
    np.testing.assert_allclose(float(got_p), paper, rtol=tol)
    np.testing.assert_allclose(float(got_o), official, rtol=tol)
    # uniform default weights are the plain mean
    np.testing.assert_allclose(float(tl.wdpo_objective(T(l), T(g), rho=rho, form="official")),
                               np.mean(l + rho * g), rtol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, F64_TOL), (torch.float32, F32_TOL)])
@pytest.mark.parametrize("tau", [0.05, 0.5, 3.0])
def test_kldpo_weights_closed_forms(dtype, tol, tau, rng):
    l = rng.exponential(size=30)
    q = rng.uniform(0.1, 1.0, size=30)
    q /= q.sum()
    # the same inputs on both sides: round to the tested dtype first (exp(l/tau) amplifies
    # input rounding by l/tau, which is not the function's error)
    l = torch.tensor(l, dtype=dtype).double().numpy()
    q = torch.tensor(q, dtype=dtype).double().numpy()
    # paper: P ∝ q exp(l/tau), evaluated with a max shift in float64
    e = q * np.exp((l - l.max()) / tau)
    paper = e / e.sum()
    # official: q_i min(exp((l_i - mean l)/tau), 10), here with q = 1/n
    official = np.minimum(np.exp((l - l.mean()) / tau), 10.0) / l.size
    T = lambda a: torch.tensor(a, dtype=dtype, requires_grad=True)
    wp = tl.kldpo_weights(T(l), tau=tau, form="paper", weight=torch.tensor(q, dtype=dtype))
    wo = tl.kldpo_weights(T(l), tau=tau, form="official")
    assert not wp.requires_grad and not wo.requires_grad
    np.testing.assert_allclose(wp.double().numpy(), paper, rtol=tol, atol=tol)
    np.testing.assert_allclose(float(wp.sum()), 1.0, atol=tol)
    np.testing.assert_allclose(wo.double().numpy(), official, rtol=tol, atol=tol)


def test_kldpo_paper_gradient_is_danskin_gradient(rng):
    """grad of sum_i P_i l_i (P detached) = grad of tau log sum_i q_i exp(l_i/tau)."""
    data = _data(rng)
    beta, tau = 0.8, 0.4
    theta = torch.tensor(rng.normal(size=data.d), requires_grad=True)
    x = torch.tensor(data.x)
    s = torch.tensor(data.sign)
    o = torch.tensor(data.offset)
    q = torch.tensor(data.weight)

    def losses():
        return tl.dpo_loss(s * (x @ theta - o), torch.zeros(data.n, dtype=x.dtype), beta=beta)

    (g1,) = torch.autograd.grad(tl.kldpo_objective(losses(), tau=tau, weight=q), theta)
    dual = tau * torch.logsumexp(torch.log(q) + losses() / tau, dim=0)
    (g2,) = torch.autograd.grad(dual, theta)
    np.testing.assert_allclose(g1.numpy(), g2.numpy(), rtol=1e-10, atol=F64_TOL)


def test_kldpo_official_objective_is_local_mean(rng):
    l = torch.tensor(rng.exponential(size=8))
    w = np.minimum(np.exp((l.numpy() - l.numpy().mean()) / 0.5), 10.0)  # the code's clamp
    np.testing.assert_allclose(float(tl.kldpo_objective(l, tau=0.5, form="official")),
                               float((w * l.numpy()).mean()), rtol=F64_TOL)


def test_bad_inputs():
    c = torch.zeros(3)
    with pytest.raises(ValueError, match="beta"):
        tl.dpo_loss(c, c, beta=0.0)
    with pytest.raises(ValueError, match="same shape"):
        tl.dpo_loss(c, torch.zeros(4), beta=1.0)
    with pytest.raises(ValueError, match="form"):
        tl.kldpo_weights(c, tau=1.0, form="bogus")
    with pytest.raises(ValueError, match="tau"):
        tl.kldpo_weights(c, tau=-1.0)
    with pytest.raises(ValueError, match="rho"):
        tl.wdpo_penalty(c, rho=-1.0)
    with pytest.raises(ValueError, match="unknown loss"):
        tl.get_loss("nope")
    with pytest.raises(ValueError, match="NaN"):
        tl.kldpo_weights(torch.tensor([0.0, float("nan")]), tau=1.0)
