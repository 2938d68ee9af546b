"""fit_dpo: well-specified recovery, second-solver agreement, bound, separability."""

import numpy as np
import pytest
from conftest import NEWTON_THETA_TOL
from hypothesis import given
from scipy.optimize import minimize
from strategies import betas, environments, preference_data

from loglinear import LogLinearEnv, PreferenceData, SeparableDataError, fit_dpo
from loglinear.fit import fit_margin, separating_direction
from loglinear.losses import objective


@given(environments())
def test_population_fit_recovers_theta_star(env):
    fit = fit_dpo(env.population(), beta=env.beta)
    assert fit.status == "converged" and fit.grad_norm <= 1e-9
    covered = env.coverage().lambda_min > 1e-9
    assert fit.unique == covered
    if covered:
        np.testing.assert_allclose(fit.theta, env.theta_star(), atol=NEWTON_THETA_TOL)
    else:
        # not identifiable: theta* is still a minimiser, with the same objective
        star = objective(env.theta_star(), env.population(), beta=env.beta, hessian=False)
        assert star.value == pytest.approx(fit.objective, rel=1e-10)


@pytest.mark.parametrize("ref_scale", [0.0, 1.0])
def test_population_fit_larger_environment(ref_scale):
    env = LogLinearEnv.random(np.random.default_rng(9), n_states=20, n_actions=8, dim=8,
                              beta=0.5, concentration=2.0, ref_scale=ref_scale)
    fit = fit_dpo(env.population(), beta=env.beta)
    np.testing.assert_allclose(fit.theta, env.theta_star(), atol=NEWTON_THETA_TOL)
    centered = fit_dpo(env.population(centered=True), beta=env.beta)
    np.testing.assert_allclose(centered.theta, env.theta_star() - env.theta_ref,
                               atol=NEWTON_THETA_TOL)


@given(preference_data(with_offset=True), betas)
def test_newton_agrees_with_bfgs(data, beta):
    fit = fit_dpo(data, beta=beta)
    res = minimize(lambda t: objective(t, data, beta=beta, hessian=False).value,
                   np.zeros(data.d), jac=lambda t: objective(t, data, beta=beta).grad,
                   method="BFGS", options={"gtol": 1e-11, "maxiter": 10_000})
    assert fit.objective <= res.fun + 1e-12
    np.testing.assert_allclose(fit.theta, res.x, atol=1e-5)


@given(preference_data(with_offset=True), betas)
def test_ipo_fit_equals_weighted_least_squares(data, beta):
    # IPO is quadratic: (s beta (theta.x - o) - 1/2)^2 / beta^2, i.e. least squares of
    # theta.x on o + s/(2 beta) with weights q (a closed form, independent of Newton).
    fit = fit_margin(data, beta=beta, loss="ipo")
    target = data.offset + data.sign / (2 * beta)
    sw = np.sqrt(data.weight)
    ls = np.linalg.lstsq(data.x * sw[:, None], target * sw, rcond=None)[0]
    if fit.min_hessian_eig > 1e-8:
        np.testing.assert_allclose(fit.theta, ls, atol=1e-7)


def test_duplicated_rows_equal_doubled_weights():
    rng = np.random.default_rng(0)
    env = LogLinearEnv.random(rng, dim=3)
    data = env.sample(300, rng)
    dup = PreferenceData.concat([data, data.subset(np.arange(50))])
    w = data.weight.copy()
    w[:50] *= 2
    a = fit_dpo(dup, beta=1.0)
    b = fit_dpo(data.with_weight(w, normalize=True), beta=1.0)
    np.testing.assert_allclose(a.theta, b.theta, atol=NEWTON_THETA_TOL)


def test_separable_data_is_reported_not_returned_as_huge_theta():
    x = np.array([[1.0, 0.2], [0.5, -0.3], [-0.7, 0.1]])
    y = np.array([1.0, 1.0, 0.0])  # z = (2y-1)x all have positive first coordinate
    data = PreferenceData(x, y)
    with pytest.raises(SeparableDataError, match="separable") as info:
        fit_dpo(data, beta=1.0)
    v = info.value.direction
    assert np.all(data.z @ v >= -1e-9) and data.weight @ (data.z @ v) > 0
    # with a bound the constrained problem has a solution on the sphere
    fit = fit_dpo(data, beta=1.0, bound=3.0)
    assert np.linalg.norm(fit.theta) == pytest.approx(3.0, rel=1e-10)
    assert fit.bound_multiplier > 0 and fit.grad_norm < 1e-8


def test_quasi_separable_data_detected():
    # one direction separates (e1), the other is genuinely noisy (e2 with both labels)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, -1.0]])
    y = np.array([1.0, 1.0, 0.0, 1.0])
    with pytest.raises(SeparableDataError):
        fit_dpo(PreferenceData(x, y), beta=1.0)
    assert separating_direction(PreferenceData(x, y)) is not None


def test_bound_matches_cvxpy():
    import cvxpy as cp

    rng = np.random.default_rng(3)
    env = LogLinearEnv.random(rng, dim=3, reward_scale=4.0)
    data = env.sample(400, rng)
    bound = 1.0
    fit = fit_dpo(data, beta=1.0, bound=bound)
    th = cp.Variable(3)
    m = cp.multiply(data.sign, data.x @ th - data.offset)
    prob = cp.Problem(cp.Minimize(data.weight @ cp.logistic(-m)), [cp.norm(th) <= bound])
    prob.solve(solver="CLARABEL")
    assert fit.objective == pytest.approx(prob.value, rel=1e-7)
    np.testing.assert_allclose(fit.theta, th.value, atol=1e-5)
    inactive = fit_dpo(data, beta=1.0, bound=100.0)
    np.testing.assert_allclose(inactive.theta, fit_dpo(data, beta=1.0).theta, atol=1e-12)
    assert inactive.bound_multiplier == 0.0


def test_bad_bound_rejected():
    data = PreferenceData(np.eye(2), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="bound"):
        fit_dpo(data, beta=1.0, bound=-1.0)


def test_a_fit_on_the_ball_is_converged_only_with_its_kkt_certificate():
    """Separable data on the ball: the KKT residual ||grad L + mu theta|| is the
    certificate; asking for a tolerance below float resolution must fail loudly, not report
    "converged" (reference: the residual recomputed from the returned theta)."""
    from loglinear.fit import FitError
    from loglinear.losses import objective

    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 3))
    y = (x @ np.array([1.0, -2.0, 0.5]) > 0).astype(float)
    data = PreferenceData(x, y)
    res = fit_dpo(data, beta=1.0, bound=2.0)
    g = objective(res.theta, data, beta=1.0, hessian=False).grad
    assert res.status == "converged"
    assert np.linalg.norm(g + res.bound_multiplier * res.theta) <= 1e-10
    assert res.grad_norm <= 1e-10 and abs(np.linalg.norm(res.theta) - 2.0) < 1e-12
    with pytest.raises(FitError, match="KKT residual"):
        fit_dpo(data, beta=1.0, bound=2.0, gtol=1e-30)
