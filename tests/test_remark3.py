"""Remark 3 predictions (docs/theory.md §8): hand values of the predicted exponents, and the
bias slopes and bias orders against the exact robust solvers on a population."""

from __future__ import annotations

import numpy as np
import pytest

from loglinear import LogLinearEnv
from loglinear.approx import fit_kldpo, fit_wdpo
from loglinear.fit import fit_dpo
from loglinear.remark3 import (
    RATES,
    bias_order,
    bias_slope,
    certificate_exponent,
    certificate_limit,
    predicted_exponent,
)
from loglinear.robust import solve_kl, solve_wasserstein


# ------------------------------------------------------------------ hand values
@pytest.mark.parametrize("ball, a, against, expected", [
    ("kl", 0.0, "theta_star", 0.0),       # fixed radius: the bias does not shrink
    ("kl", 0.5, "theta_star", -0.25),     # rho ~ n^-1/2: bias sqrt(rho) ~ n^-1/4
    ("kl", 1.0, "theta_star", -0.5),      # rho ~ 1/n: bias and noise both n^-1/2
    ("kl", 1.5, "theta_star", -0.5),
    ("w1", 0.25, "theta_star", -0.25),
    ("w1", 0.5, "theta_star", -0.5),
    ("w2", 0.75, "theta_star", -0.5),
    ("w1flip", 0.3, "theta_star", -0.3),
    ("wdpo", 0.0, "theta_star", 0.0),
    ("kldpo", 0.25, "theta_star", -0.25),  # 1/tau ~ n^-1/4
    ("kl", 0.0, "target", -0.5),
    ("w2", 1.5, "target", -0.5),
])
def test_predicted_exponent_hand_values(ball, a, against, expected):
    assert predicted_exponent(ball, a, against=against) == pytest.approx(expected, abs=1e-15)


def test_orders_and_certificate_exponents():
    assert bias_order("kl") == 0.5
    assert [bias_order(b) for b in ("w1", "w1flip", "w2", "wdpo", "kldpo")] == [1.0] * 5
    assert certificate_exponent("kl") == 1.0
    assert certificate_exponent("w1") == certificate_exponent("w2") == 0.5
    # n^-1/2 against theta* is reached exactly at the certificate's critical schedule
    for name in RATES:
        a_c = certificate_exponent(name)
        assert predicted_exponent(name, a_c, against="theta_star") == -0.5
        assert predicted_exponent(name, 0.5 * a_c, against="theta_star") > -0.5
    assert certificate_limit("kl", 0.5) == 1.0
    assert certificate_limit("kl", 1.5) == 0.5
    assert np.isnan(certificate_limit("w1", 0.5))


@pytest.mark.parametrize("call, match", [
    (lambda: predicted_exponent("chi2", 0.5, against="target"), "chi2"),
    (lambda: predicted_exponent("kl", -0.5, against="target"), ">= 0"),
    (lambda: predicted_exponent("kl", float("nan"), against="target"), ">= 0"),
    (lambda: predicted_exponent("kl", 0.5, against="theta"), "theta_star"),
])
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------- bias slopes: exact solvers
@pytest.fixture(scope="module")
def population():
    env = LogLinearEnv.random(np.random.default_rng(7), n_states=5, n_actions=4, dim=3,
                              beta=1.0, concentration=0.5, ref_scale=0.3)
    pop = env.population(centered=True)
    return pop, fit_dpo(pop, beta=1.0).theta


SOLVERS = {   # name -> (theta at a small value r of the shrinking parameter, r, kappa)
    "kl": (lambda pop, r: solve_kl(pop, beta=1.0, radius=r).theta, 1e-8, np.inf),
    "w1": (lambda pop, r: solve_wasserstein(pop, beta=1.0, radius=r).theta, 1e-5, np.inf),
    "w2": (lambda pop, r: solve_wasserstein(pop, beta=1.0, radius=r, p=2).theta, 1e-5,
           np.inf),
    "wdpo": (lambda pop, r: fit_wdpo(pop, beta=1.0, rho=r).theta, 1e-5, np.inf),
    "kldpo": (lambda pop, r: fit_kldpo(pop, beta=1.0, tau=1.0 / r).theta, 1e-4, np.inf),
    "w1flip": (lambda pop, r: solve_wasserstein(pop, beta=1.0, radius=r, kappa=0.5).theta,
               1e-6, 0.5),
}


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_bias_slope_matches_the_exact_solver(population, name):
    """(theta(r) - theta*) / r^gamma from the exact solver tends to B; the remainder is
    O(r^gamma) relative, so at these r it is below 1e-3 (it is 1e-2 at 100x larger r)."""
    pop, w = population
    solve, r, kappa = SOLVERS[name]
    B = bias_slope(name, pop, w, beta=1.0, kappa=kappa)
    est = (solve(pop, r) - w) / r ** bias_order(name)
    assert np.linalg.norm(est - B) <= 1e-3 * np.linalg.norm(B)


def test_finite_kappa_slope_differs_from_the_norm_branch(population):
    """With a small flip cost the largest margin, not the norm, carries the penalty."""
    pop, w = population
    flip = bias_slope("w1flip", pop, w, beta=1.0, kappa=0.5)
    norm = bias_slope("w1", pop, w, beta=1.0)
    assert np.linalg.norm(flip - norm) > 0.1 * np.linalg.norm(norm)
    assert np.allclose(bias_slope("w1flip", pop, w, beta=1.0, kappa=1e3), norm, rtol=1e-12)


@pytest.mark.parametrize("name, a", [("kl", 0.5), ("kl", 0.25), ("w1", 0.25), ("w2", 0.4)])
def test_bias_exponent_of_exact_targets(population, name, a):
    """The exact population targets theta(c n^-a) approach theta* with slope -gamma a in
    log n: the bias part of predicted_exponent (gamma a < 1/2 here)."""
    pop, w = population
    solve = SOLVERS[name][0]
    ns = np.array([1e6, 1e10])
    err = [np.linalg.norm(solve(pop, 0.01 * n ** -a) - w) for n in ns]
    slope = np.diff(np.log(err))[0] / np.diff(np.log(ns))[0]
    assert slope == pytest.approx(predicted_exponent(name, a, against="theta_star"), abs=5e-3)


def test_bias_slope_refuses_kinks_and_non_optima(population):
    pop, w = population
    with pytest.raises(ValueError, match="kink"):
        bias_slope("w1", pop, np.zeros(pop.d), beta=1.0)
    with pytest.raises(ValueError, match="not the population DPO optimum"):
        bias_slope("kl", pop, 0.5 * w, beta=1.0)
    with pytest.raises(ValueError, match="w1flip only"):
        bias_slope("kl", pop, w, beta=1.0, kappa=1.0)
