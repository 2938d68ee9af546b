"""Theory used by the rates study: the constants and bounds of docs/theory.md §5.1-5.4, and
the local asymptotic (sandwich) covariances of §5.6, checked against finite differences of
naive objectives."""

from __future__ import annotations

import numpy as np
import pytest

from loglinear import LogLinearEnv, fit_dpo
from loglinear.estimation import (
    kl_dual_variable,
    local_asymptotics,
    proposition1_bound,
    theorem1_bound,
    theorem2_bound,
    theory_constants,
)

HESS_FD_RTOL = 2e-4   # second differences of the objective value, step 1e-4
COV_FD_RTOL = 1e-4    # mixture-direction derivatives by central differences, step 1e-6
MC_RMSE_RTOL = 0.15   # 300 Monte Carlo replicates: RMSE known to about 4%/sqrt(2)... x3


def test_constants_closed_form():
    c = theory_constants(beta=0.5, bound=2.0)
    t = 4 * 0.5 * 2.0
    assert c.gamma == pytest.approx(0.25 * np.exp(t) / (1 + np.exp(t)) ** 2, rel=1e-13)
    assert c.K == pytest.approx(np.log1p(np.exp(t)), rel=1e-13)
    big = theory_constants(beta=1.0, bound=50.0)  # e^{200}: no overflow
    assert np.isfinite(big.K) and big.gamma > 0


def test_bounds_formulas_and_rates():
    c = theory_constants(beta=1.0, bound=1.0)
    b = theorem1_bound(100, beta=1.0, bound=1.0, lam=0.1, delta=0.05)
    assert b == pytest.approx(np.sqrt(4 * c.K / (c.gamma * 0.1)
                                      * np.sqrt(np.log(40) / 200)), rel=1e-13)
    # O(n^{-1/4}) for the theorems, O(n^{-1/2}) for Proposition 1
    assert theorem1_bound(1600, beta=1.0, bound=1.0, lam=0.1) / b == pytest.approx(0.5)
    t2 = theorem2_bound([100, 1600], beta=1.0, bound=1.0, lam=0.1, dual_lo=0.5, dual_hi=0.5)
    assert t2[1] / t2[0] == pytest.approx(0.5)
    assert t2[0] / b == pytest.approx(np.sqrt(0.5 * np.exp(c.K / 0.5) / c.K))
    p = proposition1_bound([100, 400], beta=1.0, bound=1.0, dim=3)
    assert p[1] / p[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="delta"):
        theorem1_bound(10, beta=1.0, bound=1.0, lam=0.1, delta=1.5)
    with pytest.raises(ValueError, match="lambda"):
        theorem1_bound(10, beta=1.0, bound=1.0, lam=0.0)


# ---------------------------------------------------------------- naive objectives
def _losses(pop, w, beta):
    return np.array([np.logaddexp(0.0, -(2 * y - 1) * beta * (x @ w))
                     for x, y in zip(pop.x, pop.y)])


def _F(kind, pop, q, w, beta, param):
    l = _losses(pop, w, beta)
    if kind == "dpo":
        return q @ l
    if kind == "w1":
        return q @ l + param * beta * np.linalg.norm(w)
    if kind == "kldpo":
        return param * np.log(q @ np.exp(l / param))
    if kind == "kl":
        lam = kl_dual_variable(l, q, param)
        return lam * param + lam * np.log(q @ np.exp(l / lam))
    if kind == "wdpo":
        a = 1 / (1 + np.exp([(2 * y - 1) * beta * (x @ w) for x, y in zip(pop.x, pop.y)]))
        return q @ l + param * beta * np.linalg.norm(w) * np.sqrt(q @ a**2)
    raise AssertionError(kind)


def _grad(kind, pop, q, w, beta, param, h=1e-5):
    e = np.eye(len(w)) * h
    return np.array([(_F(kind, pop, q, w + e[k], beta, param)
                      - _F(kind, pop, q, w - e[k], beta, param)) / (2 * h)
                     for k in range(len(w))])


@pytest.fixture(scope="module")
def pop():
    env = LogLinearEnv.random(np.random.default_rng(3), n_states=2, n_actions=3, dim=2,
                              beta=1.0, concentration=0.7, reward_scale=1.2)
    return env.population(centered=True)


@pytest.mark.parametrize("kind,name,param", [("dpo", None, 0.0), ("w1", "radius", 0.05),
                                             ("kl", "radius", 0.05), ("kldpo", "tau", 0.8),
                                             ("wdpo", "rho", 0.1)])
def test_hessian_and_sandwich_match_finite_differences(pop, kind, name, param):
    beta = 1.0
    w = np.array([0.4, -0.7])  # any point: the formulas do not assume optimality
    la = local_asymptotics(kind, pop, w, beta=beta, **({name: param} if name else {}))
    h = 1e-4
    d = len(w)
    H = np.empty((d, d))
    for i in range(d):
        for j in range(d):
            ei, ej = np.eye(d)[i] * h, np.eye(d)[j] * h
            H[i, j] = (_F(kind, pop, pop.weight, w + ei + ej, beta, param)
                       - _F(kind, pop, pop.weight, w + ei - ej, beta, param)
                       - _F(kind, pop, pop.weight, w - ei + ej, beta, param)
                       + _F(kind, pop, pop.weight, w - ei - ej, beta, param)) / (4 * h * h)
    np.testing.assert_allclose(la.hessian, H, rtol=HESS_FD_RTOL, atol=HESS_FD_RTOL)
    # psi_j: derivative of the population gradient along the mixture delta_j - q
    q = pop.weight
    t = 1e-4
    psi = []
    for j in range(pop.n):
        dq = -q.copy()
        dq[j] += 1.0
        psi.append((_grad(kind, pop, q + t * dq, w, beta, param)
                    - _grad(kind, pop, q - t * dq, w, beta, param)) / (2 * t))
    psi = np.array(psi)
    Hinv = np.linalg.inv(la.hessian)
    V = Hinv @ ((psi * q[:, None]).T @ psi) @ Hinv
    np.testing.assert_allclose(la.covariance, V, rtol=COV_FD_RTOL, atol=1e-6 * np.abs(V).max())
    assert la.tr_hinv == pytest.approx(np.trace(Hinv))


def test_kl_dual_variable_beats_grid(pop):
    l = _losses(pop, np.array([0.4, -0.7]), 1.0)
    q = pop.weight
    G = lambda lam: lam * 0.05 + lam * np.log(q @ np.exp(l / lam))
    lam = kl_dual_variable(l, q, 0.05)
    assert G(lam) <= min(G(v) for v in np.exp(np.linspace(-3, 5, 2001))) + 1e-12
    assert kl_dual_variable(np.ones(3), np.ones(3) / 3, 0.1) == np.inf  # constant losses


@pytest.mark.parametrize("radius", [1e-6, 1e-4, 1e-2, 0.3])
def test_kl_dual_variable_small_radius_against_grid(radius):
    """Small radii need large lambda*; the root must not be lost to cancellation."""
    l = np.array([0.7, 1.7, 2.2, 3.1])
    q = np.array([0.2, 0.3, 0.4, 0.1])
    G = lambda lam: lam * radius + lam * np.log(q @ np.exp((l - l.max()) / lam)) + l.max()
    lam = kl_dual_variable(l, q, radius)
    grid = np.exp(np.linspace(np.log(lam) - 3, np.log(lam) + 3, 4001))
    assert 0 < lam < np.inf
    assert G(lam) <= min(G(v) for v in grid) + 1e-12
    # edge case: rho >= -log q(argmax) puts all mass on the max loss, lambda* = 0
    assert kl_dual_variable(l, q, -np.log(0.1) + 1e-3) == 0.0


def test_kinks_are_reported(pop):
    with pytest.raises(ValueError, match="kink"):
        local_asymptotics("w1", pop, np.zeros(2), beta=1.0, radius=0.1)
    with pytest.raises(ValueError, match="unknown kind"):
        local_asymptotics("nope", pop, np.ones(2), beta=1.0)


def test_dpo_prediction_matches_monte_carlo():
    """RMSE of DPO at n = 3000 against sqrt(tr H^{-1} / n) (well specified: V = H^{-1})."""
    env = LogLinearEnv.random(np.random.default_rng(5), n_states=4, n_actions=3, dim=2,
                              beta=1.0, reward_scale=1.0)
    pop = env.population(centered=True)
    w_star = env.theta_star() - env.theta_ref
    la = local_asymptotics("dpo", pop, w_star, beta=1.0)
    assert la.tr_sandwich == pytest.approx(la.tr_hinv, rel=1e-8)
    rng = np.random.default_rng(6)
    n = 3000
    err = [np.linalg.norm(fit_dpo(env.sample_counts(n, rng, centered=True), beta=1.0).theta
                          - w_star) for _ in range(300)]
    assert np.sqrt(np.mean(np.square(err))) == pytest.approx(np.sqrt(la.tr_hinv / n),
                                                             rel=MC_RMSE_RTOL)
