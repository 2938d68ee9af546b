"""Error bars from one sample (loglinear.inference, docs/theory.md §5.8).

Contracts: every kind's H and psi against finite differences of an independent value or
gradient (the robust and approx modules' own evaluators, naive duals); the plug-in
covariance against the empirical covariance of theta-hat over replicate samples of an exact
environment, within Monte Carlo error; the coverage of nominal 95% intervals within
binomial error; clear errors where no normal limit exists.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import chi2, norm

from loglinear import LogLinearEnv, fit_dpo, inference
from loglinear import _local_extra as extra
from loglinear.approx import (
    OFFICIAL_CAP,
    fit_kldpo,
    fit_wdpo,
    kldpo_objective,
    kldpo_weights,
    wdpo_objective,
)
from loglinear.estimation import LOCAL_KINDS, kl_dual_variable, local_asymptotics
from loglinear.fit import fit_margin
from loglinear.losses import dpo_grad_theta, dpo_loss, objective
from loglinear.robust import (
    collapse_radius_kl,
    collapse_radius_wasserstein,
    kl_value,
    solve_kl,
    solve_wasserstein,
    wasserstein_value,
)
from loglinear.robust._w2inner import inner_sup

BETA = 1.0
N = 2000              # pairs per replicate sample
R = 200               # replicate samples per estimator
FRACTION = 0.3        # radii at this fraction of the population collapse radius
KAPPA = 0.5           # W1 label-flip cost with a smooth population optimum (quantile regime)
FD_RTOL = 1e-6        # central differences (step 1e-6 in theta, 1e-7 along a mixture)
PLUGIN_RTOL = 0.05    # mean plug-in covariance vs the population sandwich V / n, R = 200
MC_SE = 4.0           # Monte Carlo agreement within this many standard errors
BINOMIAL_SE = 3.0     # coverage within this many binomial standard errors of the level
MAX_KINKED = 0.1      # W1 (finite kappa): share of samples whose optimum lands on a kink


@pytest.fixture(scope="module")
def env():
    return LogLinearEnv.random(np.random.default_rng(3), n_states=3, n_actions=3, dim=2,
                               beta=BETA, concentration=0.5, reward_scale=1.5)


@pytest.fixture(scope="module")
def pop(env):
    return env.population(centered=True)


@pytest.fixture(scope="module")
def estimators(pop):
    """name -> data -> result, radii at FRACTION of the population's collapse radii."""
    rho = FRACTION * collapse_radius_kl(pop, beta=BETA)
    e1 = FRACTION * collapse_radius_wasserstein(pop, beta=BETA, p=1)
    e2 = FRACTION * collapse_radius_wasserstein(pop, beta=BETA, p=2)
    return {
        "dpo": lambda d: fit_dpo(d, beta=BETA),
        "ipo": lambda d: fit_margin(d, beta=BETA, loss="ipo"),
        "kl": lambda d: solve_kl(d, beta=BETA, radius=rho),
        "w1": lambda d: solve_wasserstein(d, beta=BETA, radius=e1),
        "w1-kappa": lambda d: solve_wasserstein(d, beta=BETA, radius=e1, kappa=KAPPA),
        "w2": lambda d: solve_wasserstein(d, beta=BETA, radius=e2, p=2),
        "wdpo": lambda d: fit_wdpo(d, beta=BETA, rho=e2),
        "wdpo-official": lambda d: fit_wdpo(d, beta=BETA, rho=0.3, form="official"),
        "kldpo": lambda d: fit_kldpo(d, beta=BETA, tau=1.0),
    }


@pytest.fixture(scope="module")
def samples(env):
    """R compressed samples of N pairs, shared by every estimator (paired by seed)."""
    return [env.sample_counts(N, np.random.default_rng(seed), centered=True)
            for seed in np.random.SeedSequence(20260523).spawn(R)]


@pytest.fixture(scope="module")
def replicates(samples, estimators):
    """name -> (thetas (k, d), plug-in covariances (k, d, d), samples kinked), computed
    once per estimator."""
    cache = {}

    def run(name):
        if name not in cache:
            fit, thetas, covs, kinked = estimators[name], [], [], 0
            for sample in samples:
                res = fit(sample)
                try:
                    covs.append(inference.covariance(res, sample, beta=BETA))
                except ValueError:
                    kinked += 1
                    continue
                thetas.append(res.theta)
            cache[name] = np.array(thetas), np.array(covs), kinked
        return cache[name]

    return run


# ------------------------------------------------------------- (a) Monte Carlo
@pytest.mark.parametrize("name", ["dpo", "ipo", "kl", "w1", "w1-kappa", "w2", "wdpo",
                                  "wdpo-official", "kldpo"])
def test_plug_in_covariance_matches_replicates(name, pop, estimators, replicates):
    target_fit = estimators[name](pop)
    target = target_fit.theta
    v_pop = inference.plug_in(target_fit, pop, beta=BETA).covariance / N
    thetas, covs, kinked = replicates(name)
    assert kinked <= (MAX_KINKED * R if name == "w1-kappa" else 0)
    k = len(thetas)
    mean_cov = covs.mean(axis=0)
    # the plug-in is consistent: its mean is the population sandwich
    np.testing.assert_allclose(mean_cov, v_pop, atol=PLUGIN_RTOL * np.trace(v_pop))
    # ... and it is the covariance of theta-hat: normal-theory SEs of the sample covariance
    emp = np.cov(thetas.T)
    se_trace = np.sqrt(2.0 * np.trace(mean_cov @ mean_cov) / (k - 1))
    assert abs(np.trace(emp) - np.trace(mean_cov)) <= MC_SE * se_trace
    assert abs(emp[0, 0] - mean_cov[0, 0]) <= MC_SE * np.sqrt(2.0 / (k - 1)) * mean_cov[0, 0]
    # theta-hat centres on the estimator's own target theta(rho)
    gap = thetas.mean(axis=0) - target
    assert k * gap @ np.linalg.solve(mean_cov, gap) <= chi2.ppf(0.999, pop.d)


# ------------------------------------------------------------------ (c) coverage
@pytest.mark.parametrize("name", ["dpo", "kl", "w2"])
def test_nominal_95_intervals_cover_within_binomial_error(name, pop, estimators, replicates):
    target = estimators[name](pop).theta
    thetas, covs, _ = replicates(name)
    se = np.sqrt(np.diagonal(covs, axis1=1, axis2=2))
    z = norm.ppf(0.975)
    covered = np.abs(thetas - target) <= z * se
    half = BINOMIAL_SE * np.sqrt(0.95 * 0.05 / len(thetas))
    for coord in range(pop.d):
        assert abs(covered[:, coord].mean() - 0.95) <= half
    inside = [(t - target) @ np.linalg.solve(c, t - target) <= chi2.ppf(0.95, pop.d)
              for t, c in zip(thetas, covs)]
    assert abs(np.mean(inside) - 0.95) <= half


@pytest.mark.parametrize("name", ["dpo", "w1"])
def test_objective_interval_covers_the_population_value(name, pop, estimators, samples):
    fit = estimators[name]
    truth = fit(pop).objective
    hits = []
    for sample in samples:
        iv = inference.objective_interval(fit(sample), sample, beta=BETA)
        hits.append(iv.lo <= truth <= iv.hi)
    assert abs(np.mean(hits) - 0.95) <= BINOMIAL_SE * np.sqrt(0.95 * 0.05 / R)


# ------------------------------------------- (b) joint Hessians, finite differences
def _kl_dual(pop, w, lam, radius):
    """G(w, lambda) = lambda rho + lambda log sum_i q_i e^{l_i/lambda}, written naively."""
    l = np.log1p(np.exp(-(2 * pop.y - 1) * BETA * (pop.x @ w)))
    return lam * radius + lam * np.log(np.sum(pop.weight * np.exp(l / lam)))


def _fd_hessian(f, z, h=1e-4):
    k = len(z)
    E = np.eye(k) * h
    return np.array([[(f(z + E[i] + E[j]) - f(z + E[i] - E[j]) - f(z - E[i] + E[j])
                       + f(z - E[i] - E[j])) / (4 * h * h) for j in range(k)]
                     for i in range(k)])


def test_kl_joint_hessian_matches_finite_differences_of_the_dual(pop):
    radius = FRACTION * collapse_radius_kl(pop, beta=BETA)
    w = solve_kl(pop, beta=BETA, radius=radius).theta
    lam = kl_dual_variable(dpo_loss(w, pop, beta=BETA), pop.weight, radius)
    for point, at in ((w, lam), (w + np.array([0.1, -0.2]), 0.7 * lam)):
        value, grad, H = extra.kl_joint(pop, point, at, beta=BETA, radius=radius)
        f = lambda z: _kl_dual(pop, z[:-1], z[-1], radius)
        z = np.append(point, at)
        assert value == pytest.approx(f(z), rel=1e-12)
        fd_grad = [(f(z + e) - f(z - e)) / 2e-6 for e in np.eye(3) * 1e-6]
        np.testing.assert_allclose(grad, fd_grad, rtol=FD_RTOL, atol=FD_RTOL)
        np.testing.assert_allclose(H, _fd_hessian(f, z), rtol=2e-4, atol=2e-5)
    # at lambda* the lambda-gradient vanishes and the Schur complement is the kl kind's H
    _, grad, H = extra.kl_joint(pop, w, lam, beta=BETA, radius=radius)
    assert abs(grad[-1]) < 1e-10
    schur = H[:2, :2] - np.outer(H[:2, 2], H[:2, 2]) / H[2, 2]
    np.testing.assert_allclose(schur, local_asymptotics("kl", pop, w, beta=BETA,
                                                        radius=radius).hessian, rtol=1e-10)


def test_w2_maximisers_match_the_robust_inner_supremum(rng):
    u = rng.normal(0.0, 3.0, 400)
    for b, eta in ((1.5, 0.9), (3.0, 0.2), (4.0, 0.05), (0.5, 2.0)):   # 2 eta vs b^2/4
        t, gap = extra.w2_maximisers(u, b, eta)
        phi, t_ref, alt_phi, _ = inner_sup(u, b, eta)
        f = np.logaddexp(0.0, u + b * t) - eta * t * t
        np.testing.assert_allclose(f, phi, rtol=1e-13, atol=1e-13)
        clear = np.abs(phi - alt_phi) > 1e-8
        np.testing.assert_allclose(t[clear], t_ref[clear], rtol=1e-9, atol=1e-12)
        assert np.all(np.isinf(gap) == np.isinf(alt_phi))


def test_w2_joint_hessian_matches_finite_differences(pop):
    radius = 0.5 * collapse_radius_wasserstein(pop, beta=BETA, p=2)
    w = np.array([-0.4, -0.5])
    eta = 0.8

    def phi(z):
        u = -(2 * pop.y - 1) * BETA * (pop.x @ z[:-1])
        return z[-1] * radius**2 + pop.weight @ inner_sup(u, BETA * np.linalg.norm(z[:-1]),
                                                          z[-1])[0]

    t, _ = extra.w2_maximisers(-(2 * pop.y - 1) * BETA * (pop.x @ w), BETA * np.linalg.norm(w),
                               eta)
    grads, H = extra.w2_joint(pop, w, eta, t, beta=BETA, radius=radius)
    z = np.append(w, eta)
    fd_grad = [(phi(z + e) - phi(z - e)) / 2e-6 for e in np.eye(3) * 1e-6]
    np.testing.assert_allclose(pop.weight @ grads, fd_grad, rtol=FD_RTOL, atol=FD_RTOL)
    np.testing.assert_allclose(H, _fd_hessian(phi, z), rtol=2e-4, atol=2e-5)


def _mixture_fd(pop, fn, step=1e-7):
    """Rows j: d/dt fn(pop reweighted to q + t (delta_j - q)) by central differences."""
    q, rows = pop.weight, []
    for j in range(pop.n):
        dq = -q.copy()
        dq[j] += 1.0
        rows.append((np.asarray(fn(pop.with_weight(q + step * dq)))
                     - np.asarray(fn(pop.with_weight(q - step * dq)))) / (2 * step))
    return np.array(rows)


def _check_kind(pop, pieces, w, grad, value=None, h=1e-6):
    """H against central differences of ``grad(w, data)``; psi (and the objective's
    influence) against central differences along each mixture direction."""
    d = pop.d
    fd_h = np.array([(grad(w + e, pop) - grad(w - e, pop)) / (2 * h) for e in np.eye(d) * h]).T
    np.testing.assert_allclose(pieces.hessian, fd_h, rtol=FD_RTOL, atol=FD_RTOL)
    np.testing.assert_allclose(pieces.influence, _mixture_fd(pop, lambda p: grad(w, p)),
                               rtol=FD_RTOL, atol=10 * FD_RTOL)
    if value is not None:
        np.testing.assert_allclose(pieces.value_influence,
                                   _mixture_fd(pop, lambda p: value(w, p)),
                                   rtol=FD_RTOL, atol=10 * FD_RTOL)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_w2_kind_matches_the_exact_w2_value(pop, fraction):
    radius = fraction * collapse_radius_wasserstein(pop, beta=BETA, p=2)
    res = solve_wasserstein(pop, beta=BETA, radius=radius, p=2)
    eta, _ = extra.w2_multiplier(pop, res.theta, beta=BETA, radius=radius)
    assert eta == pytest.approx(res.dual, rel=1e-10)
    ev = lambda w, p: wasserstein_value(w, p, beta=BETA, radius=radius, p=2)
    _check_kind(pop, extra.w2_pieces(pop, res.theta, beta=BETA, radius=radius), res.theta,
                lambda w, p: ev(w, p).grad, lambda w, p: ev(w, p).value)
    la = local_asymptotics("w2", pop, res.theta, beta=BETA, radius=radius)
    assert la.tr_sandwich == pytest.approx(inference.plug_in(res, pop).tr_sandwich, rel=1e-12)


@pytest.mark.parametrize("kappa,fraction,offset", [(0.5, 0.3, 0.0), (1.0, 0.3, 0.0),
                                                   (0.2, 0.3, 0.05), (1.5, 0.6, 0.0)])
def test_w1_finite_kappa_kind_matches_the_exact_w1_value(pop, kappa, fraction, offset):
    """Both regimes (lambda* on the quantile, lambda* = beta ||w||), at optima and off them."""
    radius = fraction * collapse_radius_wasserstein(pop, beta=BETA, p=1)
    w = solve_wasserstein(pop, beta=BETA, radius=radius, kappa=kappa).theta
    w = w + offset * np.array([1.0, -2.0]) + (np.array([0.3, -0.4]) if not w.any() else 0.0)
    ev = lambda v, p: wasserstein_value(v, p, beta=BETA, radius=radius, kappa=kappa)
    _check_kind(pop, extra.w1flip_pieces(pop, w, beta=BETA, radius=radius, kappa=kappa), w,
                lambda v, p: ev(v, p).grad, lambda v, p: ev(v, p).value)


def test_official_surrogates_and_ipo_match_finite_differences(pop):
    w = np.array([-0.5, -0.3])
    for rho in (0.05, 0.5):
        _check_kind(pop, extra.wdpo_official_pieces(pop, w, beta=BETA, rho=rho), w,
                    lambda v, p, r=rho: wdpo_objective(v, p, beta=BETA, rho=r, form="official")[1],
                    lambda v, p, r=rho: wdpo_objective(v, p, beta=BETA, rho=r, form="official")[0])
    for tau, cap in ((0.5, OFFICIAL_CAP), (0.05, 1.5)):      # the second caps some weights
        def grad(v, p, tau=tau, cap=cap):
            W = kldpo_weights(dpo_loss(v, p, beta=BETA), p.weight, tau=tau, form="official",
                              cap=cap)
            return W @ dpo_grad_theta(v, p, beta=BETA)
        _check_kind(pop, extra.kldpo_official_pieces(pop, w, beta=BETA, tau=tau, cap=cap), w,
                    grad)
    assert extra.OFFICIAL_CAP == OFFICIAL_CAP
    _check_kind(pop, extra.margin_pieces("ipo")(pop, w, beta=BETA), w,
                lambda v, p: objective(v, p, beta=BETA, loss="ipo").grad,
                lambda v, p: objective(v, p, beta=BETA, loss="ipo").value)


def test_objective_influence_of_the_table_kinds(pop):
    """The objective influences of the §5.6 kinds against the exact value functions."""
    w = np.array([-0.5, -0.3])
    rho = FRACTION * collapse_radius_kl(pop, beta=BETA)
    cases = {
        "dpo": ({}, lambda p: objective(w, p, beta=BETA).value),
        "w1": ({"radius": 0.02}, lambda p: wasserstein_value(w, p, beta=BETA, radius=0.02).value),
        "kl": ({"radius": rho}, lambda p: kl_value(w, p, beta=BETA, radius=rho).value),
        "kldpo": ({"tau": 0.7}, lambda p: kldpo_objective(w, p, beta=BETA, tau=0.7)[0]),
        "wdpo": ({"rho": 0.1}, lambda p: wdpo_objective(w, p, beta=BETA, rho=0.1)[0]),
    }
    for kind, (hyper, value) in cases.items():
        infl = inference.KINDS[kind](pop, w, beta=BETA, **hyper)[1]
        np.testing.assert_allclose(infl, _mixture_fd(pop, value), rtol=FD_RTOL, atol=1e-8)


def test_extra_kinds_are_registered():
    assert {"ipo", "w2", "wdpo-official", "kldpo-official"} <= set(LOCAL_KINDS)
    assert LOCAL_KINDS["w2"].hyperparameter == "radius"


# ---------------------------------------------------------- the public functions
def test_regions_and_derived_quantities_from_one_covariance(env, estimators):
    sample = env.sample_counts(N, np.random.default_rng(11), centered=True)
    res = estimators["kl"](sample)
    cov = inference.covariance(res, sample)
    se = np.sqrt(np.diag(cov))
    iv = inference.intervals(res, sample, level=0.9)
    np.testing.assert_allclose(iv.hi - res.theta, norm.ppf(0.95) * se, rtol=1e-12)
    np.testing.assert_allclose(res.theta - iv.lo, norm.ppf(0.95) * se, rtol=1e-12)
    assert iv.contains(res.theta).all() and not iv.contains(res.theta + 10 * se).any()
    ell = inference.ellipsoid(res, sample, 0.95)
    assert ell.quantile == pytest.approx(chi2.ppf(0.95, 2)) and ell.contains(res.theta)
    edge = res.theta + np.sqrt(ell.quantile * cov[0, 0]) * np.array([1.0, 0.0]) * 1.001
    assert not ell.contains(edge)
    x = np.array([0.4, -1.1])
    lr = inference.log_ratio_interval(res, sample, x)
    assert lr.se == pytest.approx(np.sqrt(x @ cov @ x), rel=1e-12)
    num = inference.interval_for(res, sample, lambda th: x @ th)
    assert (num.estimate, num.se) == pytest.approx((lr.estimate, lr.se), rel=1e-7)
    sq = inference.interval_for(res, sample, lambda th: th @ th)   # grad 2 theta
    g = 2 * res.theta
    assert sq.se == pytest.approx(np.sqrt(g @ cov @ g), rel=1e-6)
    assert sq.hi - sq.estimate == pytest.approx(norm.ppf(0.975) * sq.se, rel=1e-12)


def test_sample_size_from_the_weights(env):
    rng = np.random.default_rng(5)
    raw = env.sample(1009, rng, centered=True)
    assert inference.sample_size(raw) == 1009
    assert inference.sample_size(raw.compress()) == 1009          # counts over 1009
    assert inference.sample_size(env.sample_counts(2000, rng, centered=True)) == 2000
    assert inference.sample_size(raw, n=5000) == 5000
    odd = raw.with_weight(rng.random(raw.n), normalize=True)         # design weights: Kish
    assert inference.sample_size(odd) == pytest.approx(1.0 / np.sum(odd.weight**2))
    with pytest.raises(ValueError, match="number of pairs"):
        inference.sample_size(raw, n=0)


def test_weights_and_repeats_give_the_same_covariance(env):
    raw = env.sample(800, np.random.default_rng(8), centered=True)
    small = raw.compress()
    a = inference.covariance(fit_dpo(raw, beta=BETA), raw, beta=BETA)
    b = inference.covariance(fit_dpo(small, beta=BETA), small, beta=BETA)
    np.testing.assert_allclose(a, b, rtol=1e-7)


def test_official_kldpo_without_binding_caps_is_the_paper_form(env):
    sample = env.sample_counts(N, np.random.default_rng(9), centered=True)
    official = fit_kldpo(sample, beta=BETA, tau=1.0, form="official")
    paper = fit_kldpo(sample, beta=BETA, tau=1.0)
    np.testing.assert_allclose(inference.covariance(official, sample, beta=BETA),
                               inference.covariance(paper, sample, beta=BETA), rtol=1e-6)
    with pytest.raises(ValueError, match="without an objective"):
        inference.objective_interval(official, sample, beta=BETA)


# ---------------------------------------------------------------- (d) no normal limit
def test_errors_where_no_normal_limit_exists(env, pop):
    sample = env.sample_counts(N, np.random.default_rng(10), centered=True)
    rho0 = collapse_radius_kl(sample, beta=BETA)
    e1 = collapse_radius_wasserstein(sample, beta=BETA, p=1)
    e2 = collapse_radius_wasserstein(sample, beta=BETA, p=2)
    cases = [
        (solve_kl(sample, beta=BETA, radius=1.5 * rho0), "collapsed"),
        (solve_wasserstein(sample, beta=BETA, radius=e1), "collapsed"),
        (solve_wasserstein(sample, beta=BETA, radius=2 * e2, p=2), "collapsed"),
        (fit_wdpo(sample, beta=BETA, rho=2 * e2), "kink"),
        (fit_dpo(sample, beta=BETA, bound=0.2), "boundary of the ball"),
        (dataclasses.replace(solve_kl(sample, beta=BETA, radius=0.3 * rho0), status="inaccurate",
                             certificate=1e-3), "inaccurate"),
        (dataclasses.replace(solve_kl(sample, beta=BETA, radius=0.3 * rho0), dual=0.0),
         r"lambda\* = 0"),
        # the population W1 optimum with kappa = 0.5 at 0.6 of collapse: two atoms tie
        (solve_wasserstein(pop, beta=BETA, radius=0.6 * collapse_radius_wasserstein(
            pop, beta=BETA, p=1), kappa=KAPPA), "kink"),
    ]
    for res, message in cases:
        data = res.data if getattr(res, "data", None) is not None else sample
        with pytest.raises(ValueError, match=message):
            inference.covariance(res, data, beta=BETA)
    with pytest.raises(ValueError, match="kink"):
        local_asymptotics("w2", pop, np.zeros(2), beta=BETA, radius=0.01)


def test_errors_for_inconsistent_arguments(env, estimators):
    sample = env.sample_counts(N, np.random.default_rng(12), centered=True)
    other = env.sample_counts(N, np.random.default_rng(13), centered=True)
    with pytest.raises(ValueError, match="pass beta="):
        inference.covariance(fit_dpo(sample, beta=BETA), sample)
    res = estimators["kl"](sample)
    with pytest.raises(ValueError, match="other data"):
        inference.covariance(res, other)
    with pytest.raises(ValueError, match="differs"):
        inference.covariance(res, sample, beta=2.0)
    with pytest.raises(ValueError, match="level"):
        inference.intervals(res, sample, level=1.0)
    with pytest.raises(ValueError, match="accepted"):
        inference.covariance(object(), sample)
    with pytest.raises(ValueError, match="must be finite"):
        inference.interval_for(res, sample, lambda th: np.nan)
