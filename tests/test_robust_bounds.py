"""The local-curvature bound for the robust estimators at a fixed radius (docs/theory.md §9.5):
its computable quantities against hand computations and finite differences, its curvature
against the self-concordance of the logistic loss, the paper's Theorems 1-2 on one sample,
and its validity over replicates on a small exact environment (KL, W1, KLDPO)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FD_RTOL, FLOAT64_TOL

from loglinear import LogLinearEnv, PreferenceData, inference
from loglinear._local_extra import kl_joint
from loglinear._robust_bounds import (
    INFLUENCE,
    curvature_radius,
    deviation,
    kl_profiled_hessian,
    paper_robust_bound,
    robust_local_bound,
    sphere_curvature,
)
from loglinear.approx import fit_kldpo, fit_wdpo, tau_for_radius_kl
from loglinear.bounds import bound_tightness
from loglinear.estimation import (
    _wdpo_grad,
    coverage,
    kl_dual_variable,
    local_asymptotics,
    theorem1_bound,
    theorem2_bound,
)
from loglinear.fit import fit_dpo
from loglinear.losses import dpo_loss, dpo_margin_terms, margins, objective
from loglinear.robust import (
    collapse_radius_kl,
    collapse_radius_wasserstein,
    solve_kl,
    solve_wasserstein,
)

DELTA = 0.05
BETA = 1.0
STEP = 1e-6


@pytest.fixture(scope="module")
def data():
    """Four feature differences in d = 2, each with both labels (not separable), under
    unequal weights that favour y = 1: a sample to differentiate on."""
    rng = np.random.default_rng(11)
    x = np.tile(rng.normal(size=(4, 2)), (2, 1))
    y = np.repeat([1.0, 0.0], 4)
    weight = rng.dirichlet(np.ones(8) * 3) * np.repeat([3.0, 1.0], 4)
    return PreferenceData(x, y, weight=weight / weight.sum())


# ------------------------------------------------------------ hand computations
def test_deviation_on_a_two_point_law_by_hand():
    """xi = +-1 in one dimension with weights 1/2: tau-hat = sigma^2 = M = 1."""
    n, t = 400.0, np.log(2 / DELTA)
    half = np.sqrt(t / (2 * n))
    tau_ucb = (half + np.sqrt(half**2 + 1.0)) ** 2       # Maurer: sqrt(tau) <= ...
    root = np.sqrt(tau_ucb / n)
    want = root + np.sqrt(2 * t * (tau_ucb + 2 * root) / n) + t / (3 * n)
    got = deviation(np.array([[1.0], [-1.0]]), np.array([0.5, 0.5]), n=n, t=t)
    assert got.trace == pytest.approx(1.0, abs=FLOAT64_TOL)
    assert got.score_max == pytest.approx(1.0, abs=FLOAT64_TOL)
    assert got.trace_ucb == pytest.approx(tau_ucb, rel=FLOAT64_TOL)
    assert got.top == pytest.approx(tau_ucb, rel=FLOAT64_TOL)          # sigma^2 scaled alike
    assert got.value == pytest.approx(want, rel=FLOAT64_TOL)
    # a zero-weight atom counts neither in the trace nor in M
    padded = deviation(np.array([[1.0], [-1.0], [50.0]]), np.array([0.5, 0.5, 0.0]), n=n, t=t)
    assert padded.value == pytest.approx(want, rel=FLOAT64_TOL)


def test_curvature_radius_by_hand():
    """mu = 1 up to y, 1/2 beyond: on the grid y/2 * 1.25^j the lower Riemann sum reaches
    y * 0.9765625 at r = 0.9765625 y (mu = 1), then grows at rate 1/2: r* = 1.0234375 y.
    A curvature that vanishes before F reaches y gives no bound."""
    y = 0.2
    r, mu = curvature_radius(lambda r: 1.0 if r <= y else 0.5, y)
    assert mu == 0.5 and r == pytest.approx(1.0234375 * y, rel=FLOAT64_TOL)
    r, mu = curvature_radius(lambda r: 1.0, y)          # no decay: r* = y exactly
    assert mu == 1.0 and r == pytest.approx(y, rel=FLOAT64_TOL)
    r, mu = curvature_radius(lambda r: 1.0 if r <= 0.55 * y else 0.0, y)
    assert np.isinf(r) and mu == 0.0
    # a sampled profile that rises again is held at its running minimum: 1/2 from the
    # second grid point (0.625 y) on, so F(r) = y/2 + (r - y/2)/2 and r* = 3y/2
    r, mu = curvature_radius(lambda r: 0.5 if 0.6 * y < r < 0.7 * y else 1.0, y)
    assert mu == 0.5 and r == pytest.approx(1.5 * y, rel=FLOAT64_TOL)


# ------------------------------------------------- influence rows by differences
def _kl_grad(pop, w, radius):
    lam = kl_dual_variable(dpo_loss(w, pop, beta=BETA), pop.weight, radius)
    return kl_joint(pop, w, lam, beta=BETA, radius=radius)[1][:-1]


GRADIENTS = {   # kind -> (hyper, gradient of the sample objective at w on weights q)
    "dpo": ({}, lambda pop, w: objective(w, pop, beta=BETA, hessian=False).grad),
    "w1": ({"radius": 0.05}, lambda pop, w: objective(w, pop, beta=BETA, hessian=False)
           .grad + 0.05 * BETA * w / np.linalg.norm(w)),
    "kl": ({"radius": 0.02}, lambda pop, w: _kl_grad(pop, w, 0.02)),
    "kldpo": ({"tau": 0.7}, lambda pop, w: kl_joint(pop, w, 0.7, beta=BETA, radius=0.0)[1][:-1]),
    "wdpo": ({"rho": 0.05}, lambda pop, w: _wdpo_grad(pop, w, BETA, 0.05, pop.weight)),
}


@pytest.mark.parametrize("kind", sorted(GRADIENTS))
def test_influence_rows_are_the_derivative_of_the_gradient_along_each_atom(data, kind):
    """psi_j = d/de grad V(w; q + e (delta_j - q)) at e = 0, by central differences."""
    hyper, grad = GRADIENTS[kind]
    w = np.array([0.4, -0.3])
    rows = INFLUENCE[kind](data, w, beta=BETA, **hyper)
    q = data.weight
    for j in range(data.n):
        move = np.eye(data.n)[j] - q
        fd = (grad(data.with_weight(q + STEP * move), w)
              - grad(data.with_weight(q - STEP * move), w)) / (2 * STEP)
        np.testing.assert_allclose(rows[j], fd, rtol=FD_RTOL, atol=FD_RTOL)


def _results(data):
    return {"dpo": fit_dpo(data, beta=BETA),
            "kl": solve_kl(data, beta=BETA, radius=0.02),
            "w1": solve_wasserstein(data, beta=BETA, radius=0.05, p=1),
            "w2": solve_wasserstein(data, beta=BETA, radius=0.05, p=2),
            "wdpo": fit_wdpo(data, beta=BETA, rho=0.05),
            "kldpo": fit_kldpo(data, beta=BETA, tau=0.7)}


@pytest.mark.parametrize("name", ["dpo", "kl", "w1", "w2", "wdpo", "kldpo"])
def test_rows_rebuild_the_plug_in_sandwich(data, name):
    """H^{-1} (sum_j q_j psi_j psi_j^T) H^{-T} is the covariance of loglinear.inference."""
    res = _results(data)[name]
    la = inference.plug_in(res, data, beta=BETA)
    plan = inference._plan(res, data, BETA)
    rows = INFLUENCE[plan.kind](data, plan.theta, beta=BETA, **plan.hyper)
    hinv = np.linalg.inv(la.hessian)
    v = hinv @ ((rows * data.weight[:, None]).T @ rows) @ hinv.T
    np.testing.assert_allclose(v, la.covariance, rtol=1e-9, atol=1e-12)


def test_kl_profiled_hessian_from_the_joint_dual_matches_the_sandwich_kind(data):
    """The Schur complement of the joint (theta, lambda) Hessian at lambda*(theta), found
    by Newton from a distant start, is the Hessian of docs/theory.md §5.6's KL row."""
    w = np.array([0.4, -0.3])
    want = local_asymptotics("kl", data, w, beta=BETA, radius=0.02).hessian
    for start in (0.05, 1.0, 20.0):
        got = kl_profiled_hessian(data, w, beta=BETA, radius=0.02, lam=start)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # beyond -log q(argmax l) the worst case sits on the maximal loss: lambda* = 0
    edge = -np.log(data.weight[np.argmax(dpo_loss(w, data, beta=BETA))]) + 0.5
    assert kl_dual_variable(dpo_loss(w, data, beta=BETA), data.weight, edge) == 0.0
    with pytest.raises(ValueError, match="lambda"):
        kl_profiled_hessian(data, w, beta=BETA, radius=edge, lam=1.0)


# ---------------------------------------------------------------- the DPO case
def test_dpo_bound_pieces_and_self_concordance(data):
    """For DPO, y is the deviation of W (g_j - E g) with W = H^{-1/2}, the bound is
    y / (mu-bar sqrt(lambda_min)), and the sampled curvature at H-distance r is at least
    e^{-k r}, k = max_i ||beta x_i||_{H^{-1}} (docs/theory.md §9.1 (a))."""
    n = 2000
    fit = fit_dpo(data, beta=BETA)
    got = robust_local_bound(fit, data, beta=BETA, delta=DELTA, n=n)
    m = margins(fit.theta, data, beta=BETA)
    _, d1, d2 = dpo_margin_terms(m)
    sbx = (data.sign * BETA)[:, None] * data.x
    g = d1[:, None] * sbx
    H = (sbx * (data.weight * d2)[:, None]).T @ sbx
    lam, vec = np.linalg.eigh(H)
    W = (vec / np.sqrt(lam)) @ vec.T
    dev = deviation((g - data.weight @ g) @ W, data.weight, n=n, t=np.log(2 / DELTA))
    assert got.deviation.value == pytest.approx(dev.value, rel=1e-10)
    assert got.lambda_min == pytest.approx(lam[0], rel=1e-10)
    assert got.value == pytest.approx(got.norm_h / np.sqrt(lam[0]), rel=1e-12)
    assert dev.value <= got.norm_h <= dev.value / got.curvature
    k = np.max(np.linalg.norm(sbx @ W, axis=1))
    for r in (0.05, 0.2, 0.5):
        mu = sphere_curvature("dpo", data, fit.theta, beta=BETA, hyper={},
                              steps=r * (vec / np.sqrt(lam)).T, whiten=W)
        assert np.exp(-k * r) - 1e-12 <= mu <= 1.0 + 1e-12


def test_paper_bound_is_theorem_1_or_2_on_the_sample(data):
    n, lam = 2000, coverage(data).lambda_min
    res = _results(data)
    assert paper_robust_bound(res["w1"], data, n, bound=3.0) == pytest.approx(
        theorem1_bound(n, beta=BETA, bound=3.0, lam=lam, delta=DELTA), rel=FLOAT64_TOL)
    kl = res["kl"]
    assert paper_robust_bound(kl, data, n, bound=3.0) == pytest.approx(theorem2_bound(
        n, beta=BETA, bound=3.0, lam=lam, dual_lo=kl.dual, dual_hi=kl.dual), rel=FLOAT64_TOL)
    assert paper_robust_bound(res["kldpo"], data, n, beta=BETA, bound=3.0) == pytest.approx(
        theorem2_bound(n, beta=BETA, bound=3.0, lam=lam, dual_lo=0.7, dual_hi=0.7),
        rel=FLOAT64_TOL)
    with pytest.raises(ValueError, match="robust estimators"):
        paper_robust_bound(res["dpo"], data, n, beta=BETA, bound=3.0)


def test_bad_input_is_refused(data):
    res = _results(data)
    with pytest.raises(ValueError, match="delta"):
        robust_local_bound(res["kl"], data, delta=0.0, n=100)
    with pytest.raises(ValueError, match="without an objective"):
        robust_local_bound(fit_kldpo(data, beta=BETA, tau=0.7, form="official"), data,
                           beta=BETA, n=100)
    far = collapse_radius_wasserstein(data, beta=BETA, p=1) * 1.5
    with pytest.raises(ValueError, match="no normal limit"):
        robust_local_bound(solve_wasserstein(data, beta=BETA, radius=far, p=1), data, n=100)


# ------------------------------------------------ validity over replicates
REPLICATES = 80
N = 4000


@pytest.fixture(scope="module")
def env():
    return LogLinearEnv.random(np.random.default_rng(3), n_states=3, n_actions=3, dim=2,
                               reward_scale=1.0)


def _solver(name, pop, beta):
    if name == "kl":
        rho = 0.3 * collapse_radius_kl(pop, beta=beta)
        return lambda d: solve_kl(d, beta=beta, radius=rho)
    if name == "w1":
        eps = 0.3 * collapse_radius_wasserstein(pop, beta=beta, p=1)
        return lambda d: solve_wasserstein(d, beta=beta, radius=eps, p=1)
    tau = tau_for_radius_kl(0.3 * collapse_radius_kl(pop, beta=beta), pop, beta=beta)
    return lambda d: fit_kldpo(d, beta=beta, tau=tau)


@pytest.mark.parametrize("name", ["kl", "w1", "kldpo"])
def test_bound_holds_over_replicates(env, name):
    """At 0.3 times the collapse radius, the bound on ||w-hat - w(rho)|| is violated in at
    most delta plus three binomial standard errors of the replicates, and it is finite on
    all but a few samples (those whose 95% region reaches where the curvature collapses)."""
    pop = env.population(centered=True)
    solve = _solver(name, pop, env.beta)
    target = solve(pop).theta
    errors, bounds = [], []
    for ss in np.random.SeedSequence(17).spawn(REPLICATES):
        sample = env.sample_counts(N, np.random.default_rng(ss), centered=True)
        res = solve(sample)
        errors.append(np.linalg.norm(res.theta - target))
        bounds.append(robust_local_bound(res, sample, beta=env.beta, delta=DELTA, n=N).value)
    t = bound_tightness(errors, bounds, delta=DELTA)
    print(f"\n[robust bound, {name}] n={N}: ratio {t.ratio:.2f}, violations {t.violations:.3f}")
    assert t.vacuous <= 0.1
    assert t.violations <= DELTA + 3 * t.violation_se
    assert 1.0 < t.ratio < 10.0
