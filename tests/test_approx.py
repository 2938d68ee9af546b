"""Contracts of the paper's surrogates (loglinear.approx) that need no exact solver.

References are independent of the code under test: central finite differences, naive
formulas written out here, closed forms for well-specified Bradley-Terry populations, and a
brute-force W2 dual evaluator (inner supremum on a dense grid, outer 1-D minimisation).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import FD_RTOL, NEWTON_THETA_TOL
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import expit
from strategies import betas, preference_data, seeds

from loglinear import LogLinearEnv, PreferenceData, fit_dpo
from loglinear.approx import (
    fit_kldpo,
    fit_wdpo,
    grad_x_norm,
    implied_radius_kl,
    kldpo_objective,
    kldpo_weights,
    refit_contraction,
    rho_for_w2_radius,
    tau_for_radius_kl,
    w1_rescaling,
    w2_radius,
    wdpo_objective,
    wdpo_pair_loss,
    wdpo_penalty,
)
from loglinear.approx._kldpo import _kldpo_terms, _official_residual
from loglinear.approx.wdpo import _wdpo_terms
from loglinear.losses import dpo_loss

FD_STEP = 1e-6
ITER_THETA_TOL = 1e-6      # first-order iterations stopped at gradient norm 1e-8/1e-10
FD_ATOL = 1e-8             # absolute floor for FD comparisons of O(1) quantities
W2_REF_TOL = 1e-8          # brute-force W2 dual: grid + bounded refinement accuracy


def _theta(seed, d, scale=1.0):
    return np.random.default_rng(seed).normal(0, scale, d)


def _fd_grad(f, x):
    g = np.zeros_like(x)
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = FD_STEP
        g[j] = (f(x + e) - f(x - e)) / (2 * FD_STEP)
    return g


def _close(a, b, rtol=FD_RTOL, atol=FD_ATOL):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def _bt_population(seed=0, tau_env=1.0, concentration=1.0):
    env = LogLinearEnv.random(np.random.default_rng(seed), n_states=5, n_actions=4, dim=3,
                              beta=tau_env, concentration=concentration, ref_scale=0.0)
    return env, env.population(centered=True)


# ------------------------------------------------------------------ WDPO derivatives
@given(preference_data(with_offset=True), seeds, betas, st.sampled_from(["paper", "official"]))
def test_wdpo_value_grad_hessian_match_finite_differences(data, seed, beta, form):
    theta = _theta(seed, data.d)
    rho = 0.3
    v, g = wdpo_objective(theta, data, beta=beta, rho=rho, form=form)
    # value: naive formula from the per-pair input gradients
    gx = np.linalg.norm(-(data.sign * beta * expit(-data.sign * beta *
                                                     (data.x @ theta - data.offset)))[:, None]
                        * theta[None, :], axis=1)
    L = data.weight @ dpo_loss(theta, data, beta=beta)
    pen = np.sqrt(data.weight @ gx**2) if form == "paper" else data.weight @ gx**2
    assert v == pytest.approx(L + rho * pen, rel=1e-13)
    assert wdpo_penalty(theta, data, beta=beta, rho=rho, form=form) == pytest.approx(rho * pen)
    f = lambda t: wdpo_objective(t, data, beta=beta, rho=rho, form=form)[0]
    _close(g, _fd_grad(f, theta))
    h = _wdpo_terms(theta, data, beta, rho, form, True)[2]
    hfd = np.column_stack([_fd_grad(lambda t, j=j: wdpo_objective(
        t, data, beta=beta, rho=rho, form=form)[1][j], theta) for j in range(data.d)])
    _close(h, hfd, rtol=1e-5, atol=1e-7)


@given(preference_data(with_offset=True), seeds, betas)
def test_grad_x_closed_form_matches_finite_differences_in_x(data, seed, beta):
    theta = _theta(seed, data.d)
    i = seed % data.n

    def loss_i(xi):
        x = data.x.copy()
        x[i] = xi
        return dpo_loss(theta, PreferenceData(x, data.y, data.offset, data.weight),
                        beta=beta)[i]

    fd = _fd_grad(loss_i, data.x[i].copy())
    closed = -(2 * data.y[i] - 1) * beta * expit(
        -(2 * data.y[i] - 1) * beta * (data.x[i] @ theta - data.offset[i])) * theta
    _close(fd, closed)
    assert grad_x_norm(theta, data, beta=beta)[i] == pytest.approx(np.linalg.norm(closed))
    pair = wdpo_pair_loss(theta, data, beta=beta, rho=0.7)[i]
    assert pair == pytest.approx(loss_i(data.x[i]) + 0.7 * closed @ closed, rel=1e-12)


@given(preference_data(with_offset=True), seeds, betas)
def test_paper_penalty_is_rescaled_w1_penalty(data, seed, beta):
    """paper penalty = rho beta ||theta|| R with R = RMS sigma(-m) <= 1 (so <= W1 closed form)."""
    theta = _theta(seed, data.d)
    R = w1_rescaling(theta, data, beta=beta)
    m = data.sign * beta * (data.x @ theta - data.offset)
    assert R == pytest.approx(np.sqrt(data.weight @ expit(-m) ** 2), rel=1e-13)
    assert 0 < R <= 1
    eps = 0.4
    pen = wdpo_penalty(theta, data, beta=beta, rho=eps)
    assert pen == pytest.approx(eps * beta * np.linalg.norm(theta) * R, rel=1e-12)
    assert pen <= eps * beta * np.linalg.norm(theta) * (1 + 1e-12)
    assert wdpo_penalty(theta, data, beta=beta, rho=eps / R) == pytest.approx(
        eps * beta * np.linalg.norm(theta), rel=1e-12)


# --------------------------------------------------------- W2 first-order remainder
def _w2_bruteforce(theta, data, beta, eps, grid=4001):
    """sup_{W2 <= eps} E l by the dual inf_eta eta eps^2 + sum q sup_t [phi(m - b t) - eta t^2]."""
    b = beta * np.linalg.norm(theta)
    m = data.sign * beta * (data.x @ theta - data.offset)
    if b == 0:
        return float(data.weight @ np.logaddexp(0, -m))

    def inner(eta):
        tmax = b / eta  # phi(m - bt) <= phi(m) + bt, so t > b/eta never helps
        t = np.linspace(0, tmax, grid)
        vals = np.logaddexp(0, -(m[:, None] - b * t[None, :])) - eta * t[None, :] ** 2
        k = np.argmax(vals, axis=1)
        out = np.empty(data.n)
        for i in range(data.n):
            lo, hi = t[max(k[i] - 1, 0)], t[min(k[i] + 1, grid - 1)]
            r = minimize_scalar(lambda s, mi=m[i]: -(np.logaddexp(0, -(mi - b * s)) - eta * s * s),
                                bounds=(lo, hi), method="bounded",
                                options={"xatol": 1e-13 * max(tmax, 1)})
            out[i] = max(vals[i, k[i]], -r.fun)
        return out

    dual = lambda le: np.exp(le) * eps**2 + data.weight @ inner(np.exp(le))
    res = minimize_scalar(dual, bounds=(-12, 12), method="bounded", options={"xatol": 1e-10})
    return float(res.fun)


@settings(max_examples=15)
@given(preference_data(n_max=12, with_offset=True), seeds, betas,
       st.sampled_from([0.02, 0.1, 0.3]))
def test_w2_first_order_remainder_bound(data, seed, beta, eps):
    r"""0 <= V_W2(eps) - (L + eps G) <= beta^2 ||theta||^2 eps^2 / 8.

    Derivation (phi = softplus(-.), along -s theta/||theta|| the margin drops by b t with
    b = beta||theta||): convexity of phi gives the lower bound with the feasible move
    t_i = eps a_i / R; phi'' <= 1/4 and Cauchy-Schwarz give the upper bound.
    """
    theta = _theta(seed, data.d)
    v_ref = _w2_bruteforce(theta, data, beta, eps)
    first = wdpo_objective(theta, data, beta=beta, rho=eps, form="paper")[0]
    bound = beta**2 * (theta @ theta) * eps**2 / 8
    assert v_ref - first >= -W2_REF_TOL
    assert v_ref - first <= bound + W2_REF_TOL


# ---------------------------------------------------------------- WDPO fits
@given(preference_data(), betas, st.sampled_from(["paper", "official"]))
def test_wdpo_radius_zero_is_dpo(data, beta, form):
    fit = fit_wdpo(data, beta=beta, rho=0.0, form=form)
    ref = fit_dpo(data, beta=beta)
    np.testing.assert_allclose(fit.theta, ref.theta, atol=NEWTON_THETA_TOL)
    assert fit.objective == pytest.approx(ref.objective, rel=1e-12)


@settings(max_examples=10)
@given(preference_data(), betas, st.sampled_from([0.05, 0.2]))
def test_official_fit_is_paper_fit_at_its_first_order_w2_radius(data, beta, rho):
    """A stationary point of L + rho G^2 is one of L + eps G at eps = 2 rho G(theta)."""
    off = fit_wdpo(data, beta=beta, rho=rho, form="official")
    eps = w2_radius(rho, data, beta=beta, form="official", theta=off.theta)
    g = wdpo_objective(off.theta, data, beta=beta, rho=eps, form="paper")[1]
    assert np.linalg.norm(g) <= 1e-8
    assert w2_radius(rho, data, beta=beta, form="paper") == rho
    assert rho_for_w2_radius(eps, data, beta=beta, form="official",
                             theta=off.theta) == pytest.approx(rho, rel=1e-12)


def test_wdpo_paper_collapses_exactly_past_its_kink_threshold():
    """theta = 0 is optimal iff ||grad L(0)|| <= rho beta R(0) = rho beta / 2 (centred data)."""
    _, data = _bt_population()
    g0 = np.linalg.norm(wdpo_objective(np.zeros(3), data, beta=1.0, rho=0.0)[1])
    rho_c = 2 * g0
    below = fit_wdpo(data, beta=1.0, rho=0.97 * rho_c)
    above = fit_wdpo(data, beta=1.0, rho=1.03 * rho_c)
    assert below.status == "converged" and np.linalg.norm(below.theta) > 0
    assert below.min_hessian_eig > 0
    assert above.status == "kink" and np.all(above.theta == 0)


# ---------------------------------------------------------------- KLDPO pieces
def test_kldpo_weights_hand_computed():
    l = np.array([0.2, 1.0, 3.0])
    q = np.array([0.5, 0.25, 0.25])
    tau = 0.5
    lbar = q @ l
    naive = q * np.exp((l - lbar) / tau)
    np.testing.assert_allclose(kldpo_weights(l, q, tau=tau), naive / naive.sum(), rtol=1e-14)
    off = kldpo_weights(l, q, tau=tau, form="official")
    np.testing.assert_allclose(off, q * np.minimum(np.exp((l - lbar) / tau), 10.0), rtol=1e-14)
    assert off[2] == pytest.approx(q[2] * 10.0)   # capped: exp(2.9 / 0.5) > 10
    uncapped = kldpo_weights(l, q, tau=5.0, form="official")
    assert uncapped.sum() >= 1.0                  # Jensen: E e^{(l - lbar)/tau} >= 1
    with pytest.raises(ValueError, match="tau"):
        kldpo_weights(l, q, tau=0.0)
    with pytest.raises(ValueError, match="form"):
        kldpo_weights(l, q, tau=1.0, form="nope")


@given(preference_data(with_offset=True), seeds, betas, st.sampled_from([0.1, 0.5, 2.0]))
def test_kldpo_objective_matches_finite_differences(data, seed, beta, tau):
    theta = _theta(seed, data.d)
    v, g = kldpo_objective(theta, data, beta=beta, tau=tau)
    l = dpo_loss(theta, data, beta=beta)
    assert v == pytest.approx(tau * np.log(data.weight @ np.exp(l / tau)), rel=1e-12)
    _close(g, _fd_grad(lambda t: kldpo_objective(t, data, beta=beta, tau=tau)[0], theta))
    # the reweighted gradient with frozen normalised weights is the same vector
    W = kldpo_weights(l, data.weight, tau=tau)
    gl = -(data.sign * beta * expit(-data.sign * beta * (data.x @ theta - data.offset)))
    np.testing.assert_allclose(g, (W * gl) @ data.x, rtol=1e-12, atol=1e-15)
    h = _kldpo_terms(theta, data, beta, tau, True)[2]
    hfd = np.column_stack([_fd_grad(lambda t, j=j: kldpo_objective(
        t, data, beta=beta, tau=tau)[1][j], theta) for j in range(data.d)])
    _close(h, hfd, rtol=1e-5, atol=1e-7)
    # official residual Jacobian
    F, J = _official_residual(theta, data, beta, tau, 10.0, True)
    jfd = np.column_stack([_fd_grad(lambda t, j=j: _official_residual(
        t, data, beta, tau, 10.0, False)[0][j], theta) for j in range(data.d)])
    _close(J, jfd.T, rtol=1e-5, atol=1e-7)   # jfd[:, j] = grad of F_j


# ---------------------------------------------------------------- KLDPO fits
@settings(max_examples=10)
@given(preference_data(n_max=15), st.sampled_from([0.5, 1.0, 2.0]),
       st.sampled_from([0.5, 1.0, 3.0]))
def test_kldpo_gradient_iteration_reaches_newton_solution(data, beta, tau):
    newton = fit_kldpo(data, beta=beta, tau=tau)
    # step 1/L needs about (L/mu) log(g0/gtol) iterations: keep the cases that fit the
    # default budget of 100000 (ill-conditioned samples exist, e.g. L/mu ~ 6000)
    lipschitz = beta**2 * float(np.max(np.sum(data.x**2, axis=1))) * (0.25 + 1.0 / tau)
    assume(lipschitz / newton.min_hessian_eig < 2000)
    grad = fit_kldpo(data, beta=beta, tau=tau, method="gradient", gtol=1e-10)
    assert grad.status == "converged"
    # strong convexity: ||theta - theta*|| <= ||grad F|| / mu (mu: Hessian eigenvalue bound)
    tol = 2.0 * grad.grad_norm / newton.min_hessian_eig + 1e-12
    assert np.linalg.norm(grad.theta - newton.theta) <= max(tol, 1e-12)
    hist = np.array(grad.history)
    assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1]))   # eta = 1/L: monotone


@settings(max_examples=15)
@given(preference_data(), betas, st.sampled_from([2.0, 5.0]))
def test_normalised_and_unnormalised_weights_share_stationary_points(data, beta, tau):
    """With the cap inactive the official direction is c(theta) grad F_tau, c > 0."""
    paper = fit_kldpo(data, beta=beta, tau=tau)
    official = fit_kldpo(data, beta=beta, tau=tau, form="official", cap=1e300)
    np.testing.assert_allclose(official.theta, paper.theta, atol=NEWTON_THETA_TOL)
    F, _ = _official_residual(paper.theta, data, beta, tau, 1e300, False)
    assert np.linalg.norm(F) <= 1e-9


def test_cap_changes_the_fixed_point_by_example():
    """A pair whose loss theta cannot reduce (x small, offset 3 against its label) dominates
    the normalised weights at small tau; the cap limits its pull to 10 q_i."""
    data = PreferenceData(np.array([[1.0], [1.0], [0.2]]), np.array([1.0, 0.0, 1.0]),
                          np.array([0.0, 0.0, 3.0]), np.array([0.6, 0.3, 0.1]))
    for tau, binds in ((2.0, False), (0.5, True)):
        paper = fit_kldpo(data, beta=1.0, tau=tau)
        capped = fit_kldpo(data, beta=1.0, tau=tau, form="official")
        assert capped.converged
        l = dpo_loss(capped.theta, data, beta=1.0)
        capped_pairs = (l - data.weight @ l) / tau > np.log(10.0)
        assert capped_pairs.any() == binds
        if not binds:
            np.testing.assert_allclose(capped.theta, paper.theta, atol=NEWTON_THETA_TOL)
            continue
        assert capped_pairs.tolist() == [False, False, True]
        assert paper.theta[0] > 1.2 and capped.theta[0] < 0.7   # 1.315 vs 0.612
        # the capped fixed point is not stationary for the paper objective, and vice versa
        assert abs(kldpo_objective(capped.theta, data, beta=1.0, tau=tau)[1][0]) > 1e-2
        assert np.linalg.norm(_official_residual(paper.theta, data, 1.0, tau, 10.0,
                                                 False)[0]) > 1e-2


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_kldpo_on_bt_population_shrinks_theta_star_by_tau_over_one_plus_tau(tau):
    """Closed form: per feature difference, stationarity gives beta w.x = r tau/(1+tau)."""
    env, data = _bt_population()
    fit = fit_kldpo(data, beta=env.beta, tau=tau)
    np.testing.assert_allclose(fit.theta, env.theta_star() * tau / (1 + tau),
                               atol=NEWTON_THETA_TOL)
    # ... and the refit map's Jacobian there is exactly -I/tau
    assert refit_contraction(fit.theta, data, beta=env.beta, tau=tau) == pytest.approx(
        1 / tau, rel=1e-8)


def test_refit_iteration_converges_above_and_warns_and_fails_below_contraction_one():
    env, data = _bt_population()
    good = fit_kldpo(data, beta=1.0, tau=2.0, method="refit")
    assert good.status == "converged" and good.info["contraction"] < 1
    np.testing.assert_allclose(good.theta, fit_kldpo(data, beta=1.0, tau=2.0).theta,
                               atol=ITER_THETA_TOL)
    with pytest.warns(RuntimeWarning, match="cannot converge"):
        bad = fit_kldpo(data, beta=1.0, tau=0.5, method="refit", max_iter=60)
    assert bad.status != "converged"
    assert np.linalg.norm(bad.theta - fit_kldpo(data, beta=1.0, tau=0.5).theta) > 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_kldpo(data, beta=1.0, tau=2.0, method="refit")


@given(preference_data(), betas)
def test_kldpo_large_tau_tends_to_dpo(data, beta):
    """Radius 0 is tau -> infinity: theta_tau - theta_dpo = O(1/tau), implied radius -> 0."""
    dpo = fit_dpo(data, beta=beta).theta
    e1 = np.linalg.norm(fit_kldpo(data, beta=beta, tau=1e3).theta - dpo)
    e2 = np.linalg.norm(fit_kldpo(data, beta=beta, tau=1e4).theta - dpo)
    assert e2 <= 0.2 * e1 + NEWTON_THETA_TOL
    assert implied_radius_kl(1e4, data, beta=beta) < 1e-6


@given(preference_data(), betas, st.sampled_from([0.3, 1.0, 3.0]))
def test_implied_radius_is_kl_of_worst_case_weights(data, beta, tau):
    fit = fit_kldpo(data, beta=beta, tau=tau)
    l = dpo_loss(fit.theta, data, beta=beta)
    # reference in extended precision: KL(P||q) = sum P l/tau - log sum q e^{l/tau}; both
    # terms are ~ max l/tau, so any float64 evaluation carries an absolute error of a few
    # eps * max l/tau (the tolerance below), whatever the size of KL
    big = l.astype(np.longdouble) / tau
    q = data.weight.astype(np.longdouble)
    e = q * np.exp(big - big.max())
    P = e / e.sum()
    naive = float(np.sum(P * big) - (np.log(e.sum()) + big.max()))
    floor = 16 * np.finfo(float).eps * max(1.0, float(np.abs(l).max()) / tau)
    assert fit.info["implied_radius"] == pytest.approx(naive, rel=1e-9, abs=floor)
    assert implied_radius_kl(2 * tau, data, beta=beta) <= naive + 1e-12   # decreasing


def test_tau_for_radius_inverts_implied_radius():
    _, data = _bt_population()
    for tau in (0.3, 2.0):
        rad = implied_radius_kl(tau, data, beta=1.0)
        assert tau_for_radius_kl(rad, data, beta=1.0) == pytest.approx(tau, rel=1e-8)


# ------------------------------------------------------------------- invariances
SURROGATES = {
    "wdpo-paper": lambda d, b: fit_wdpo(d, beta=b, rho=0.05),
    "wdpo-official": lambda d, b: fit_wdpo(d, beta=b, rho=0.2, form="official"),
    "kldpo-paper": lambda d, b: fit_kldpo(d, beta=b, tau=0.7),
    "kldpo-official": lambda d, b: fit_kldpo(d, beta=b, tau=0.7, form="official"),
}


@settings(max_examples=10)
@given(preference_data(with_offset=True), betas, st.sampled_from(sorted(SURROGATES)))
def test_surrogates_invariant_to_swapping_responses(data, beta, name):
    a = SURROGATES[name](data, beta)
    b = SURROGATES[name](data.flip(), beta)
    np.testing.assert_allclose(a.theta, b.theta, atol=NEWTON_THETA_TOL)
    assert a.objective == pytest.approx(b.objective, rel=1e-10)


@settings(max_examples=10)
@given(preference_data(with_offset=True), betas, st.sampled_from(sorted(SURROGATES)), seeds)
def test_surrogates_invariant_to_duplicating_rows_vs_doubling_weights(data, beta, name, seed):
    i = seed % data.n
    dup = PreferenceData(np.vstack([data.x, data.x[i:i + 1]]), np.append(data.y, data.y[i]),
                         np.append(data.offset, data.offset[i]),
                         np.append(data.weight, data.weight[i]), normalize=True)
    w = data.weight.copy()
    w[i] *= 2
    doubled = data.with_weight(w, normalize=True)
    a, b = SURROGATES[name](dup, beta), SURROGATES[name](doubled, beta)
    np.testing.assert_allclose(a.theta, b.theta, atol=NEWTON_THETA_TOL)
    assert a.objective == pytest.approx(b.objective, rel=1e-10)


def test_bad_inputs_raise_clear_errors():
    _, data = _bt_population()
    with pytest.raises(ValueError, match="rho"):
        fit_wdpo(data, beta=1.0, rho=-1.0)
    with pytest.raises(ValueError, match="form"):
        fit_wdpo(data, beta=1.0, rho=0.1, form="ridge")
    with pytest.raises(ValueError, match="tau"):
        fit_kldpo(data, beta=1.0, tau=float("nan"))
    with pytest.raises(ValueError, match="method"):
        fit_kldpo(data, beta=1.0, tau=1.0, method="adam")
    with pytest.raises(ValueError, match="beta"):
        wdpo_objective(np.zeros(3), data, beta=0.0, rho=0.1)
    with pytest.raises(ValueError, match="theta"):
        kldpo_objective(np.zeros(2), data, beta=1.0, tau=1.0)
    with pytest.raises(ValueError, match="collapse"):
        tau_for_radius_kl(50.0, data, beta=1.0)


def test_official_penalty_fit_calibration_reproduces_the_paper_fit():
    """calibrate='fit' solves 2 rho G(theta_official(rho)) = eps: the two fits coincide."""
    _, data = _bt_population()
    zero = np.zeros(3)
    limit = np.linalg.norm(wdpo_objective(zero, data, beta=1.0, rho=0.0)[1]) / w1_rescaling(
        zero, data, beta=1.0)
    for eps in (0.05 * limit, 0.8 * limit):
        rho = rho_for_w2_radius(eps, data, beta=1.0, form="official", calibrate="fit")
        off = fit_wdpo(data, beta=1.0, rho=rho, form="official")
        assert w2_radius(rho, data, beta=1.0, form="official",
                         theta=off.theta) == pytest.approx(eps, rel=1e-9)
        np.testing.assert_allclose(off.theta, fit_wdpo(data, beta=1.0, rho=eps).theta,
                                   atol=NEWTON_THETA_TOL)
    with pytest.raises(ValueError, match="collapse"):
        rho_for_w2_radius(1.01 * limit, data, beta=1.0, form="official", calibrate="fit")


def _decimal_tau_log_mean_exp(l, q, tau):
    """tau log sum q e^{l/tau} in 50-digit decimal arithmetic (q sums to one exactly)."""
    from decimal import Decimal, getcontext

    getcontext().prec = 50
    t = Decimal(float(tau))
    tot = sum(Decimal(float(qi)) * (Decimal(float(li)) / t).exp() for qi, li in zip(q, l))
    return float(t * tot.ln())


@pytest.mark.parametrize("tau", [1e-3, 0.1, 1.0, 10.0, 1e4, 1e7])
def test_tau_log_mean_exp_is_accurate_for_every_tau(tau):
    """The KLDPO objective to ~1e-16 also at large tau, where tau * logsumexp loses
    ~1e-16 tau to rounding (1e-12 at tau = 1e4: more than a late Newton decrement)."""
    from loglinear.approx._kldpo import _tau_log_mean_exp

    rng = np.random.default_rng(4)
    q = rng.multinomial(64, np.full(16, 1 / 16)) / 64.0     # sums to one exactly
    l = rng.exponential(size=16)
    ref = _decimal_tau_log_mean_exp(l, q, tau)
    assert abs(_tau_log_mean_exp(l, q, tau) - ref) <= 4e-16 * max(1.0, abs(ref))


# ------------------------------------------------ separability, the ball, certificates
def _positive_rows(n=20, d=3, seed=0):
    """n preferred rows with positive features: z_i . (1, .., 1) > 0 for every pair."""
    x = np.random.default_rng(seed).random((n, d))
    return PreferenceData(x, np.ones(n), np.zeros(n))


SURROGATE_FITS = {
    "kldpo": lambda data, **kw: fit_kldpo(data, beta=1.0, tau=0.5, **kw),
    "wdpo-paper": lambda data, **kw: fit_wdpo(data, beta=1.0, rho=0.3, **kw),
    "wdpo-official": lambda data, **kw: fit_wdpo(data, beta=1.0, rho=0.3, form="official",
                                                 **kw),
}
SURROGATE_VALUES = {
    "kldpo": lambda th, data: kldpo_objective(th, data, beta=1.0, tau=0.5),
    "wdpo-paper": lambda th, data: wdpo_objective(th, data, beta=1.0, rho=0.3),
    "wdpo-official": lambda th, data: wdpo_objective(th, data, beta=1.0, rho=0.3,
                                                     form="official"),
}


@pytest.mark.parametrize("name", sorted(SURROGATE_FITS))
def test_surrogates_refuse_separable_data_like_fit_dpo(name):
    """20 preferred rows with positive features: no finite minimiser. fit_dpo raises; so
    do the surrogates (they "converged" at ||theta|| ~ 80 before, on a vanishing
    gradient), naming the same separating direction."""
    from loglinear.fit import SeparableDataError

    data = _positive_rows()
    with pytest.raises(SeparableDataError) as dpo:
        fit_dpo(data, beta=1.0)
    with pytest.raises(SeparableDataError, match="separable.*pass bound=B") as exc:
        SURROGATE_FITS[name](data)
    assert np.all(data.z @ exc.value.direction > 0)   # it does separate every pair
    np.testing.assert_allclose(exc.value.direction, dpo.value.direction, atol=1e-9)


@pytest.mark.parametrize("bound", [0.5, 2.0])
@pytest.mark.parametrize("name", sorted(SURROGATE_FITS))
def test_surrogates_on_the_ball_satisfy_kkt_and_match_slsqp(name, bound):
    """On separable data with a bound the fit lies on the sphere with a KKT multiplier
    mu >= 0 (grad f + mu theta = 0, checked with the objective's own gradient), and no
    point of the ball that SLSQP finds from several starts does better."""
    from scipy.optimize import minimize

    data = _positive_rows()
    res = SURROGATE_FITS[name](data, bound=bound)
    value = SURROGATE_VALUES[name]
    assert res.converged and np.linalg.norm(res.theta) == pytest.approx(bound, rel=1e-12)
    g = value(res.theta, data)[1]
    mu = res.info["bound_multiplier"]
    assert mu > 0
    np.testing.assert_allclose(g + mu * res.theta, 0.0, atol=1e-9)
    ball = [{"type": "ineq", "fun": lambda t: bound**2 - t @ t}]
    for seed in range(3):
        x0 = np.random.default_rng(seed).uniform(-0.2, 0.2, data.d)
        ref = minimize(lambda t: value(t, data)[0], x0, constraints=ball, method="SLSQP",
                       options={"ftol": 1e-15, "maxiter": 500})
        assert res.objective <= ref.fun + 1e-12


def test_bound_that_does_not_bind_changes_nothing():
    data = _bt_population()[1]
    for fit in (lambda **kw: fit_kldpo(data, beta=1.0, tau=0.7, **kw),
                lambda **kw: fit_wdpo(data, beta=1.0, rho=0.05, **kw)):
        free, held = fit(), fit(bound=100.0)
        np.testing.assert_allclose(held.theta, free.theta, atol=NEWTON_THETA_TOL)
        assert held.info["bound_multiplier"] == 0.0


def test_wdpo_with_ties_has_a_minimiser_on_separable_data():
    """A tie (x = 0) keeps sigma(-m) = 1/2 along every direction, so the penalty grows like
    ||theta|| and WDPO (rho > 0) has a finite minimiser although the data are separable
    (where DPO has none): it is fitted, with a gradient that central differences confirm."""
    from loglinear.fit import SeparableDataError

    base = _positive_rows(n=12)
    data = PreferenceData(np.vstack([base.x, np.zeros((3, 3))]), np.ones(15), np.zeros(15))
    with pytest.raises(SeparableDataError):
        fit_dpo(data, beta=1.0)
    res = fit_wdpo(data, beta=1.0, rho=0.3)
    f = lambda th: wdpo_objective(th, data, beta=1.0, rho=0.3)[0]
    assert res.converged and np.isfinite(res.theta).all()
    _close(_fd_grad(f, res.theta), 0.0, atol=1e-6)
    # ... and it is a minimum along the separating direction: the value rises beyond it
    v = np.ones(3) / np.sqrt(3)
    assert f(res.theta + 5 * v) > res.objective and f(res.theta * 3) > res.objective


def test_bound_is_checked_and_only_for_the_paper_newton_kldpo():
    data = _bt_population()[1]
    for bad in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="bound must be a positive finite radius"):
            fit_kldpo(data, beta=1.0, tau=1.0, bound=bad)
        with pytest.raises(ValueError, match="bound must be a positive finite radius"):
            fit_wdpo(data, beta=1.0, rho=0.1, bound=bad)
    with pytest.raises(ValueError, match="form='paper' and method='newton'"):
        fit_kldpo(data, beta=1.0, tau=1.0, form="official", bound=2.0)
    with pytest.raises(ValueError, match="form='paper' and method='newton'"):
        fit_kldpo(data, beta=1.0, tau=1.0, method="gradient", bound=2.0)


def _mp_kldpo_grad(theta, data, beta, tau):
    r"""Naive reference: sum_i P_i grad l_i with P_i ~ q_i e^{l_i/tau}, in mpmath with
    enough digits that l_i/tau keeps the differences between the losses (about
    50 + |log10 tau| digits)."""
    import mpmath as mp

    with mp.workdps(60 + int(abs(np.log10(tau)))):
        th = [mp.mpf(float(t)) for t in theta]
        m = [mp.mpf(float(s)) * beta * mp.fsum(mp.mpf(float(a)) * t for a, t in zip(row, th))
             for s, row in zip(data.sign, data.x)]
        l = [mp.log(1 + mp.exp(-mi)) for mi in m]
        top = max(l)
        w = [mp.mpf(float(q)) * mp.exp((li - top) / tau) for q, li in zip(data.weight, l)]
        total = mp.fsum(w)
        g = [mp.mpf(0)] * data.d
        for wi, mi, s, row in zip(w, m, data.sign, data.x):
            c = -mp.mpf(float(s)) * beta / (1 + mp.exp(mi)) * wi / total
            g = [gj + c * float(a) for gj, a in zip(g, row)]
        return float(mp.sqrt(mp.fsum(gj**2 for gj in g)))


@settings(max_examples=20, deadline=None)
@given(data=preference_data(n_max=8, d_max=3),
       tau=st.sampled_from([1e-300, 1e-20, 1e-6, 0.3, 1.0, 1e3]),
       beta=st.sampled_from([0.1, 1.0, 1e3]))
def test_kldpo_never_reports_converged_above_its_tolerance(data, tau, beta):
    """Random problems with tau -> 0 and huge beta: a converged fit has a gradient at most
    gtol = 1e-10 by the naive high-precision reference (before, tau = 1e-20 "converged"
    with gradient 1.96); otherwise the fit says it failed (FitError)."""
    from loglinear.fit import FitError

    try:
        res = fit_kldpo(data, beta=beta, tau=tau)
    except FitError:
        return
    assert res.converged and res.grad_norm <= 1e-10
    assert _mp_kldpo_grad(res.theta, data, beta, tau) <= 1e-10 * (1 + 1e-6) + 1e-15


@settings(max_examples=20, deadline=None)
@given(data=preference_data(n_max=8, d_max=3), rho=st.sampled_from([0.0, 0.05, 0.5, 5.0]),
       beta=st.sampled_from([0.1, 1.0, 1e3]), form=st.sampled_from(["paper", "official"]))
def test_wdpo_never_reports_converged_above_its_tolerance(data, rho, beta, form):
    """The same for WDPO: a converged fit has a gradient (central differences of the
    objective) within gtol = 1e-9 plus the differencing error, or sits at the kink with
    its subgradient condition; a failure is a FitError, never a quiet 'converged'."""
    from loglinear.fit import FitError

    try:
        res = fit_wdpo(data, beta=beta, rho=rho, form=form)
    except FitError:
        return
    assert res.converged
    if res.status == "kink":
        g0 = wdpo_objective(np.zeros(data.d), data, beta=beta, rho=rho, form=form)[1]
        assert np.linalg.norm(g0) <= rho * beta * w1_rescaling(np.zeros(data.d), data,
                                                                 beta=beta)
        return
    assert res.grad_norm <= 1e-9
    g = wdpo_objective(res.theta, data, beta=beta, rho=rho, form=form)[1]
    assert np.linalg.norm(g) <= 1e-9
    f = lambda th: wdpo_objective(th, data, beta=beta, rho=rho, form=form)[0]
    h = 1e-6 / beta
    fd = np.array([(f(res.theta + h * e) - f(res.theta - h * e)) / (2 * h)
                   for e in np.eye(data.d)])
    assert np.linalg.norm(fd) <= 1e-9 + 1e-6 * (1 + beta * np.linalg.norm(res.theta))


def test_kldpo_small_tau_is_the_exponential_loss_limit():
    r"""As tau -> 0, theta_tau / tau -> u* = argmin log sum_i q_i e^{-m_i(u)/2} (the
    leading term of (F_tau(tau u) - log 2)/tau), an independent convex problem solved here
    by scipy's trust-region Newton; tau = 1e-20 and 1e-300 certify a gradient below 1e-10,
    which the float formula with weights from l/tau could not (tau = 1e-20 reported
    gradient 1.96)."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    data = _bt_population()[1]
    z = 0.5 * data.sign[:, None] * data.x

    def expo(u):      # value, gradient, Hessian of log sum_i q_i e^{-z_i . u}
        a = np.log(data.weight) - z @ u
        p = np.exp(a - logsumexp(a))
        g = -z.T @ p
        return logsumexp(a), g, (z * p[:, None]).T @ z - np.outer(g, g)

    u_star = minimize(lambda u: expo(u)[0], np.zeros(data.d), jac=lambda u: expo(u)[1],
                      hess=lambda u: expo(u)[2], method="trust-exact",
                      options={"gtol": 1e-13}).x
    for tau in (1e-20, 1e-300):
        res = fit_kldpo(data, beta=1.0, tau=tau)
        assert res.converged and res.grad_norm <= 1e-10
        np.testing.assert_allclose(res.theta / tau, u_star, atol=1e-6)
        assert res.min_hessian_eig > 0
    mid = fit_kldpo(data, beta=1.0, tau=1e-4)
    np.testing.assert_allclose(mid.theta / 1e-4, u_star, atol=1e-3)   # O(tau) from the limit
