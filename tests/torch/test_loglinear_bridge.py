"""The bridge: torch objectives on a log-linear policy reach the numpy solutions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from loglinear import LogLinearEnv, fit_dpo
from loglinear import losses as nplosses
from loglinear.fit import fit_margin
from loglinear.robust import solve_kl
from loglinear.torch.loglinear_policy import fit_torch

THETA_TOL = 1e-5  # the bridge tolerance


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2024)
    env = LogLinearEnv.random(rng, n_states=5, n_actions=4, dim=3, beta=1.0,
                              concentration=0.5, ref_scale=0.3)
    return env.sample(300, rng)


BETA = 1.0


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_dpo_and_ipo_reach_newton(data, loss):
    ref = fit_dpo(data, beta=BETA) if loss == "dpo" else fit_margin(data, beta=BETA, loss=loss)
    got = fit_torch(data, beta=BETA, objective=loss)
    np.testing.assert_allclose(got.theta, ref.theta, atol=THETA_TOL)
    np.testing.assert_allclose(got.value, ref.objective, rtol=1e-9)


def _wdpo_numpy(theta, data, rho, form):
    """Closed form: ||grad_x l_i|| = beta sigma(-m_i) ||theta||; value and gradient."""
    m = nplosses.margins(theta, data, beta=BETA)
    q, s, x = data.weight, data.sign, data.x
    l = nplosses.softplus(-m)
    sm = expit(-m)
    dl = -(q * sm * s * BETA) @ x                       # grad of sum q l
    a = q @ sm ** 2                                     # sum q sigma(-m)^2
    da = (q * -2 * sm ** 2 * expit(m) * s * BETA) @ x    # its gradient
    nt2 = theta @ theta
    if form == "paper":
        nt = np.sqrt(nt2)
        val = q @ l + rho * BETA * nt * np.sqrt(a)
        grad = dl + rho * BETA * (theta / nt * np.sqrt(a) + nt * da / (2 * np.sqrt(a)))
    else:
        val = q @ l + rho * BETA ** 2 * nt2 * a
        grad = dl + rho * BETA ** 2 * (2 * theta * a + nt2 * da)
    return val, grad


@pytest.mark.parametrize("form,rho", [("paper", 0.05), ("official", 0.2)])
def test_wdpo_reaches_numpy_closed_form(data, form, rho):
    start = fit_dpo(data, beta=BETA).theta
    ref = minimize(_wdpo_numpy, start, args=(data, rho, form), jac=True, method="BFGS",
                   options={"gtol": 1e-12, "maxiter": 10000})
    assert np.linalg.norm(ref.jac) < 1e-9
    got = fit_torch(data, beta=BETA, objective="wdpo", rho=rho, form=form)
    np.testing.assert_allclose(got.theta, ref.x, atol=THETA_TOL)
    np.testing.assert_allclose(got.value, ref.fun, rtol=1e-9)
    # the penalty shrinks theta towards 0 relative to DPO
    assert np.linalg.norm(got.theta) < np.linalg.norm(start)


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_kldpo_fixed_point_is_kl_dro_at_implied_radius(data, tau):
    """docs/theory.md §4.2: KLDPO(tau) solves KL-DRO with rho = KL(P*||q) and lambda* = tau."""
    got = fit_torch(data, beta=BETA, objective="kldpo", tau=tau, gtol=1e-11)
    l = nplosses.dpo_loss(got.theta, data, beta=BETA)
    logits = np.log(data.weight) + l / tau
    p = np.exp(logits - logits.max())
    p /= p.sum()
    radius = float(np.sum(p * np.log(p / data.weight)))
    assert radius > 1e-4
    exact = solve_kl(data, beta=BETA, radius=radius)
    np.testing.assert_allclose(got.theta, exact.theta, atol=THETA_TOL)
    np.testing.assert_allclose(exact.dual, tau, rtol=1e-4)
