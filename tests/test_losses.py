"""Losses: closed forms, stability, and gradients/Hessians against finite differences."""

import numpy as np
import pytest
from conftest import FD_RTOL, FLOAT64_TOL
from hypothesis import given
from strategies import betas, preference_data

from loglinear import PreferenceData
from loglinear.losses import (
    LOSSES,
    MarginLoss,
    dpo_grad_x,
    dpo_loss,
    get_loss,
    ipo_loss,
    margins,
    objective,
)

FD_STEP = 1e-6


def test_dpo_loss_hand_computed():
    # theta . x = 1, offset 0.5, beta 2: m = +-1 for y = 1, 0.
    d = PreferenceData(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([1.0, 0.0]),
                       offset=np.array([0.5, 0.5]))
    loss = dpo_loss(np.array([1.0, 3.0]), d, beta=2.0)
    np.testing.assert_allclose(loss, [np.log1p(np.exp(-1.0)), np.log1p(np.exp(1.0))],
                               rtol=FLOAT64_TOL)


def test_dpo_loss_is_stable_for_extreme_margins():
    d = PreferenceData(np.array([[1.0], [1.0]]), np.array([1.0, 0.0]))
    loss = dpo_loss(np.array([1000.0]), d, beta=1.0)
    assert np.all(np.isfinite(loss))
    assert loss[0] == pytest.approx(np.exp(-1000.0), abs=1e-300)
    assert loss[1] == pytest.approx(1000.0, rel=FLOAT64_TOL)


def test_ipo_hand_computed():
    d = PreferenceData(np.array([[1.0]]), np.array([1.0]))
    # h = theta . x = 2, beta = 0.5: (2 - 1/(2*0.5))^2 = 1
    assert ipo_loss(np.array([2.0]), d, beta=0.5)[0] == pytest.approx(1.0, rel=FLOAT64_TOL)


def test_unknown_loss_and_bad_inputs():
    d = PreferenceData(np.ones((2, 2)), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("nope")
    with pytest.raises(ValueError, match="beta must be"):
        dpo_loss(np.zeros(2), d, beta=-1.0)
    with pytest.raises(ValueError, match="theta must have shape"):
        dpo_loss(np.zeros(3), d, beta=1.0)
    with pytest.raises(ValueError, match="NaN"):
        dpo_loss(np.array([np.nan, 0.0]), d, beta=1.0)


def _fd_grad(f, theta):
    g = np.zeros_like(theta)
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = FD_STEP
        g[j] = (f(theta + e) - f(theta - e)) / (2 * FD_STEP)
    return g


MARGIN_LOSSES = sorted(k for k, v in LOSSES.items() if isinstance(v, MarginLoss))


@pytest.mark.parametrize("name", MARGIN_LOSSES)
@given(data=preference_data(with_offset=True), beta=betas)
def test_gradient_and_hessian_match_finite_differences(name, data, beta):
    rng = np.random.default_rng(data.n)
    theta = rng.normal(size=data.d)
    obj = objective(theta, data, beta=beta, loss=name)
    fd = _fd_grad(lambda t: objective(t, data, beta=beta, loss=name, hessian=False).value, theta)
    scale = max(1.0, np.abs(obj.grad).max())
    np.testing.assert_allclose(obj.grad, fd, atol=FD_RTOL * scale * 10)
    fd_h = np.column_stack([
        _fd_grad(lambda t, j=j: objective(t, data, beta=beta, loss=name, hessian=False).grad[j],
                 theta) for j in range(data.d)])
    hscale = max(1.0, np.abs(obj.hess).max())
    np.testing.assert_allclose(obj.hess, fd_h, atol=FD_RTOL * hscale * 10)
    # per-pair pieces sum to the weighted totals
    spec = get_loss(name)
    np.testing.assert_allclose(data.weight @ spec.grad_theta(theta, data, beta=beta), obj.grad,
                               atol=FLOAT64_TOL * scale * data.n)
    np.testing.assert_allclose(np.einsum("i,ijk->jk", data.weight,
                                         spec.hess_theta(theta, data, beta=beta)), obj.hess,
                               atol=FLOAT64_TOL * hscale * data.n)


@given(data=preference_data(with_offset=True), beta=betas)
def test_grad_x_matches_finite_differences_moving_x(data, beta):
    theta = np.random.default_rng(1).normal(size=data.d)
    gx = dpo_grad_x(theta, data, beta=beta)
    i = 0
    fd = np.zeros(data.d)
    for j in range(data.d):
        xp, xm = data.x.copy(), data.x.copy()
        xp[i, j] += FD_STEP
        xm[i, j] -= FD_STEP
        lp = dpo_loss(theta, PreferenceData(xp, data.y, data.offset, data.weight), beta=beta)[i]
        lm = dpo_loss(theta, PreferenceData(xm, data.y, data.offset, data.weight), beta=beta)[i]
        fd[j] = (lp - lm) / (2 * FD_STEP)
    np.testing.assert_allclose(gx[i], fd, atol=FD_RTOL * max(1.0, np.abs(fd).max()) * 10)
    # closed form of docs/theory.md §2.2: -(2y-1) beta sigma(-m) theta
    m = margins(theta, data, beta=beta)
    expected = -(data.sign * beta / (1 + np.exp(m)))[:, None] * theta
    np.testing.assert_allclose(gx, expected, rtol=1e-12, atol=1e-15)


@given(data=preference_data(with_offset=True), beta=betas)
def test_swapping_responses_leaves_every_loss_unchanged(data, beta):
    theta = np.random.default_rng(2).normal(size=data.d)
    for spec in (LOSSES[name] for name in MARGIN_LOSSES):
        np.testing.assert_allclose(spec.value(theta, data, beta=beta),
                                   spec.value(theta, data.flip(), beta=beta), rtol=FLOAT64_TOL)


@given(data=preference_data(), beta=betas)
def test_margin_losses_pair_terms_agree_with_their_margin_form(data, beta):
    # terms(c, r) of a margin loss is phi(beta (c - r)) with dl/dc = -dl/dr = beta phi'
    rng = np.random.default_rng(3)
    c, r = rng.normal(size=data.n), rng.normal(size=data.n)
    for name in MARGIN_LOSSES:
        spec = LOSSES[name]
        t = spec.terms(c, r, beta=beta)
        m = beta * (c - r)
        np.testing.assert_allclose(t.value, spec.phi(m, beta), rtol=FLOAT64_TOL)
        np.testing.assert_allclose(t.d_chosen, -t.d_rejected, rtol=FLOAT64_TOL)
        h = 1e-6
        fd = (spec.phi(beta * (c + h - r), beta) - spec.phi(beta * (c - h - r), beta)) / (2 * h)
        np.testing.assert_allclose(t.d_chosen, fd, rtol=1e-5, atol=1e-8)


def test_pair_losses_are_refused_where_a_margin_loss_is_needed():
    from loglinear.fit import fit_margin
    from loglinear.losses import get_loss

    assert get_loss("flex-dpo").params == ("beta_plus", "beta_minus")
    data = PreferenceData(np.array([[1.0], [-0.5], [0.3]]), np.array([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="margin losses"):
        fit_margin(data, beta=1.0, loss="flex-dpo")
    with pytest.raises(ValueError, match="unknown loss 'nope'; registered"):
        get_loss("nope")
