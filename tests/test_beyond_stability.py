"""ESS and gradient-variance statistics on known inputs, brute-force minibatch variance,
the reweighting path, and the temperature rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from loglinear import LogLinearEnv, fit_dpo
from loglinear.approx import fit_kldpo
from loglinear.approx.calibrate import kldpo_ess, loss_spread, suggest_tau, tau_for_ess
from loglinear.estimation import kl_regularised_optimum
from loglinear.experiments.beyond.reweighting import reweighting_path
from loglinear.stats import (
    effective_sample_size,
    empirical_variance,
    ess_count,
    gradient_covariance_trace,
    minibatch_gradient_variance,
)

EXACT = 1e-12
LOGNORMAL_ESS_TOL = 0.01   # Monte Carlo, 2e5 draws
ROOT_TOL = 1e-5            # ESS of the rule's tau vs its target


# ------------------------------------------------------------------------ ESS
def test_ess_hand_computed():
    assert effective_sample_size(np.ones(7)) == pytest.approx(1.0, abs=EXACT)
    assert effective_sample_size([0, 0, 3.0, 0]) == pytest.approx(0.25, abs=EXACT)
    # (1 + 1 + 2)^2 / (1 + 1 + 4) = 16/6 effective pairs out of 3
    assert ess_count([1.0, 1.0, 2.0]) == pytest.approx(16 / 6, abs=EXACT)
    assert effective_sample_size([1.0, 1.0, 2.0]) == pytest.approx(16 / 18, abs=EXACT)


def test_ess_base_weights_equal_expanded_sample():
    rng = np.random.default_rng(0)
    counts = np.array([3, 1, 5, 2])
    w_atom = rng.random(4)
    q = counts / counts.sum()
    compressed = effective_sample_size(w_atom * q, q)  # per-atom mass W_k = count * w/n
    expanded = effective_sample_size(np.repeat(w_atom, counts))
    assert compressed == pytest.approx(expanded, abs=EXACT)
    assert effective_sample_size(q, q) == pytest.approx(1.0, abs=EXACT)


def test_ess_lognormal_limit():
    rng = np.random.default_rng(1)
    sigma = 0.8
    w = np.exp(sigma * rng.standard_normal(200_000))
    assert effective_sample_size(w) == pytest.approx(np.exp(-sigma**2), abs=LOGNORMAL_ESS_TOL)


@pytest.mark.parametrize("bad", [[], [1.0, -1.0], [0.0, 0.0], [np.nan, 1.0]])
def test_ess_rejects_bad_weights(bad):
    with pytest.raises(ValueError):
        effective_sample_size(bad)


def test_ess_rejects_mass_outside_base():
    with pytest.raises(ValueError, match="P << q"):
        effective_sample_size([1.0, 1.0], [1.0, 0.0])


# ---------------------------------------------------------- gradient variance
def test_covariance_trace_hand_computed():
    g = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    assert gradient_covariance_trace(g) == pytest.approx((1 + 1 + 4 + 4) / 4, abs=EXACT)
    q = np.array([0.5, 0.5, 0.0, 0.0])
    assert gradient_covariance_trace(g, q) == pytest.approx(1.0, abs=EXACT)


def test_minibatch_variance_without_replacement_brute_force():
    rng = np.random.default_rng(2)
    g = rng.standard_normal((6, 3))
    b = 3
    means = np.array([g[list(c)].mean(0) for c in itertools.combinations(range(6), b)])
    brute = float(np.mean(np.sum((means - g.mean(0)) ** 2, axis=1)))
    assert minibatch_gradient_variance(g, batch_size=b, replace=False) == pytest.approx(
        brute, rel=1e-12)


def test_minibatch_variance_with_replacement_brute_force():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((4, 2))
    q = rng.dirichlet(np.ones(4))
    b = 3
    gbar = q @ g
    total = 0.0
    for idx in itertools.product(range(4), repeat=b):
        prob = np.prod(q[list(idx)])
        total += prob * float(np.sum((g[list(idx)].mean(0) - gbar) ** 2))
    assert minibatch_gradient_variance(g, batch_size=b, base=q) == pytest.approx(total,
                                                                                 rel=1e-12)


def test_empirical_variance_unbiased_hand_computed():
    s = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]])
    mean = s.mean(0)
    assert empirical_variance(s) == pytest.approx(np.sum((s - mean) ** 2) / 2, abs=EXACT)
    with pytest.raises(ValueError):
        empirical_variance(s[:1])


def test_empirical_variance_estimates_minibatch_variance():
    rng = np.random.default_rng(4)
    g = rng.standard_normal((50, 3)) * [1.0, 2.0, 0.5]
    b, K = 5, 20_000
    idx = rng.integers(0, 50, size=(K, b))
    est = empirical_variance(g[idx].mean(1))
    assert est == pytest.approx(minibatch_gradient_variance(g, batch_size=b), rel=0.05)


# ------------------------------------------------------------- environment bits
@pytest.fixture(scope="module")
def env():
    return LogLinearEnv.random(np.random.default_rng(11), n_states=5, n_actions=4, dim=3,
                               beta=1.0, reward_scale=3.0, concentration=0.5)


def test_kl_regularised_optimum_is_an_upper_bound_attained(env):
    # the log-linear class contains pi* for a linear reward: theta* attains V*
    vstar = kl_regularised_optimum(env)
    assert env.value(env.theta_star()).objective == pytest.approx(vstar, abs=1e-10)
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert env.value(rng.standard_normal(3)).objective <= vstar + 1e-12


def test_kldpo_ess_matches_direct_weights(env):
    data = env.sample_counts(400, np.random.default_rng(5))
    theta = fit_dpo(data, beta=1.0).theta
    m = data.sign * (data.x @ theta - data.offset)
    losses = np.log1p(np.exp(-m))
    p = data.weight * np.exp(losses / 0.3)
    direct = p.sum() ** 2 / np.sum(p**2 / data.weight)
    assert kldpo_ess(theta, data, beta=1.0, tau=0.3) == pytest.approx(direct, rel=1e-10)
    sd = np.sqrt(data.weight @ (losses - data.weight @ losses) ** 2)
    assert loss_spread(theta, data, beta=1.0) == pytest.approx(sd, rel=1e-10)


def test_reweighting_path_converges_to_kldpo_and_stalls_for_small_tau(env):
    data = env.sample_counts(400, np.random.default_rng(6))
    theta_dpo = fit_dpo(data, beta=1.0).theta
    step = 4.0 / np.max(np.sum(data.x**2, 1))
    tau = 1.0
    path = reweighting_path(data, beta=1.0, tau=tau, step=step, theta0=theta_dpo,
                            max_iter=5000, gtol=1e-9)
    assert path.status == "converged"
    ref = fit_kldpo(data, beta=1.0, tau=tau).theta
    np.testing.assert_allclose(path.theta, ref, atol=1e-7)
    # the smallest ESS on the path is met at the start (losses are most spread there)
    assert path.min_ess == pytest.approx(kldpo_ess(theta_dpo, data, beta=1.0, tau=tau),
                                         rel=1e-12)
    small = reweighting_path(data, beta=1.0, tau=0.005, step=step, theta0=theta_dpo,
                             max_iter=300)
    assert small.status in {"oscillating", "stalled"}
    assert small.min_ess < 0.05


def test_tau_rule_hits_its_target_and_first_order_is_consistent(env):
    data = env.sample_counts(600, np.random.default_rng(7))
    rule = suggest_tau(data, beta=1.0, min_ess=0.5)
    assert kldpo_ess(rule.theta_dpo, data, beta=1.0, tau=rule.tau) == pytest.approx(
        0.5, abs=ROOT_TOL)
    assert rule.ess_solution >= 0.5       # training equalises the losses
    assert rule.implied_radius > 0
    # in the small-spread limit (min_ess -> 1) the first-order rule becomes exact
    t_exact = tau_for_ess(rule.theta_dpo, data, beta=1.0, min_ess=0.995)
    t_first = rule.loss_sd / np.sqrt(-np.log(0.995))
    assert t_first == pytest.approx(t_exact, rel=0.05)
    with pytest.raises(ValueError, match="min_ess"):
        suggest_tau(data, beta=1.0, min_ess=1.0)
