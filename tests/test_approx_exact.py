"""Contracts between the paper's surrogates and the exact robust solvers (loglinear.robust).

1. KLDPO(tau) is exact KL-DRO at radius implied_radius_kl(tau), with dual lambda* = tau.
2. W1 (kappa = inf) exact value = L + eps beta ||theta|| >= the paper's WDPO value.
3. W2 exact value = L + eps G + r with 0 <= r <= beta^2 ||theta||^2 eps^2 / 8 (derived from
   the convexity of softplus and its curvature bound 1/4; see test_approx.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import NEWTON_THETA_TOL
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import betas, preference_data, seeds

robust = pytest.importorskip("loglinear.robust")

from loglinear.approx import (  # noqa: E402
    fit_kldpo,
    fit_wdpo,
    implied_radius_kl,
    kldpo_objective,
    w1_rescaling,
    wdpo_objective,
)
from loglinear.losses import dpo_loss  # noqa: E402

KL_THETA_TOL = 1e-6        # the contract: theta to 1e-6
KL_DUAL_RTOL = 1e-6
VALUE_RTOL = 1e-9          # two exact evaluations of the same closed-form quantity
W2_VALUE_TOL = 1e-9        # exact W2 evaluator (1-D roots) against the derived bounds


@settings(max_examples=20)
@given(preference_data(), betas, st.sampled_from([0.3, 1.0, 3.0]))
def test_kldpo_is_exact_kl_dro_at_implied_radius(data, beta, tau):
    fit = fit_kldpo(data, beta=beta, tau=tau)
    rho = implied_radius_kl(tau, data, beta=beta)
    assert rho == pytest.approx(fit.info["implied_radius"], rel=1e-9)
    exact = robust.solve_kl(data, beta=beta, radius=rho)
    np.testing.assert_allclose(fit.theta, exact.theta, atol=KL_THETA_TOL)
    assert exact.dual == pytest.approx(tau, rel=KL_DUAL_RTOL)
    # and the exact value is the KLDPO dual value tau rho + F_tau at the solution
    assert exact.objective == pytest.approx(
        tau * rho + kldpo_objective(fit.theta, data, beta=beta, tau=tau)[0], rel=1e-9)


@settings(max_examples=20)
@given(preference_data(with_offset=True), betas, st.sampled_from([0.3, 1.0]), seeds)
def test_kldpo_value_upper_bounds_exact_kl_value(data, beta, tau, seed):
    """tau rho + F_tau(theta) >= V_KL(theta; rho) for every theta (weak duality)."""
    theta = np.random.default_rng(seed).normal(size=data.d)
    rho = 0.05
    exact = robust.kl_value(theta, data, beta=beta, radius=rho)
    assert tau * rho + kldpo_objective(theta, data, beta=beta, tau=tau)[0] >= (
        exact.value - 1e-12)


@given(preference_data(with_offset=True), betas, seeds, st.sampled_from([0.01, 0.1, 1.0]))
def test_w1_exact_value_is_closed_form_and_dominates_paper_penalty(data, beta, seed, eps):
    theta = np.random.default_rng(seed).normal(size=data.d)
    L = float(data.weight @ dpo_loss(theta, data, beta=beta))
    closed = L + eps * beta * np.linalg.norm(theta)
    v = robust.wasserstein_value(theta, data, beta=beta, radius=eps, p=1).value
    assert v == pytest.approx(closed, rel=VALUE_RTOL)
    paper = wdpo_objective(theta, data, beta=beta, rho=eps, form="paper")[0]
    assert paper <= v + 1e-12
    R = w1_rescaling(theta, data, beta=beta)
    assert wdpo_objective(theta, data, beta=beta, rho=eps / R)[0] == pytest.approx(v, rel=1e-12)


@settings(max_examples=30)
@given(preference_data(with_offset=True), betas, seeds,
       st.sampled_from([0.01, 0.05, 0.2, 0.5]))
def test_w2_exact_value_within_derived_first_order_remainder(data, beta, seed, eps):
    theta = np.random.default_rng(seed).normal(size=data.d)
    v = robust.wasserstein_value(theta, data, beta=beta, radius=eps, p=2).value
    first = wdpo_objective(theta, data, beta=beta, rho=eps, form="paper")[0]
    bound = beta**2 * float(theta @ theta) * eps**2 / 8
    assert v - first >= -W2_VALUE_TOL
    assert v - first <= bound + W2_VALUE_TOL


def test_w2_remainder_bound_is_attained_in_order():
    """The eps^2 rate is real: the remainder over eps^2 tends to a positive constant."""
    rng = np.random.default_rng(3)
    from loglinear import PreferenceData

    x = rng.uniform(-1, 1, (40, 3))
    y = (rng.random(40) < 0.5).astype(float)
    d = PreferenceData(x, y)
    theta = np.array([1.0, -0.5, 0.3])
    ratios = []
    for eps in (0.1, 0.05, 0.025):
        v = robust.wasserstein_value(theta, d, beta=1.0, radius=eps, p=2).value
        first = wdpo_objective(theta, d, beta=1.0, rho=eps)[0]
        ratios.append((v - first) / eps**2)
    assert all(0 < r <= (theta @ theta) / 8 for r in ratios)
    assert ratios[-1] == pytest.approx(ratios[-2], rel=0.1)


def test_wdpo_paper_collapses_at_the_exact_w2_collapse_radius():
    """Both kinks at theta = 0 have slope eps beta R(0): the collapse radii coincide."""
    from loglinear import LogLinearEnv

    env = LogLinearEnv.random(np.random.default_rng(0), n_states=5, n_actions=4, dim=3,
                              beta=1.0, concentration=1.0)
    data = env.population(centered=True)
    eps0 = robust.collapse_radius_wasserstein(data, beta=1.0, p=2)
    assert np.linalg.norm(fit_wdpo(data, beta=1.0, rho=0.98 * eps0).theta) > 0
    assert fit_wdpo(data, beta=1.0, rho=1.02 * eps0).status == "kink"
    exact = robust.solve_wasserstein(data, beta=1.0, radius=1.02 * eps0, p=2)
    np.testing.assert_allclose(exact.theta, 0.0, atol=NEWTON_THETA_TOL)
