"""The local-curvature bound (docs/theory.md §9): its computable quantities against hand
computations on two-atom examples, the deterministic localisation lemma and the
concentration step checked separately on replicates, and the bound's validity and
tightness on a small exact environment (printed beside the paper's Proposition 1)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import chi2

from loglinear import LogLinearEnv, PreferenceData
from loglinear.bounds import (
    bound_tightness,
    chi2_chernoff_quantile,
    dpo_local_bound,
    dpo_population_bound,
    localisation,
    simulate_dpo,
)
from loglinear.fit import fit_dpo
from loglinear.losses import dpo_margin_terms, margins

DELTA = 0.05
REPLICATES = 300


def sigsig(m):
    return expit(m) * expit(-m)


# ------------------------------------------------------------ hand computations
@pytest.mark.parametrize("d", [1, 2, 4, 10])
def test_chernoff_quantile(d):
    s = chi2_chernoff_quantile(d, DELTA)
    assert 0.5 * d * np.log(s / d) - 0.5 * (s - d) == pytest.approx(np.log(DELTA), abs=1e-10)
    # a valid tail bound lies above the exact chi-square quantile, and below Laurent-Massart
    t = np.log(1 / DELTA)
    assert chi2.ppf(1 - DELTA, d) < s < d + 2 * np.sqrt(d * t) + 2 * t


def test_one_dimensional_two_atom_bound_by_hand():
    """x = 1 with y = 1 (weight 0.7) and y = 0 (weight 0.3): theta-hat = logit(0.7) / beta,
    every quantity a scalar."""
    beta, n = 2.0, 5000
    data = PreferenceData(np.ones((2, 1)), np.array([1.0, 0.0]), weight=np.array([0.7, 0.3]))
    fit = fit_dpo(data, beta=beta)
    assert fit.theta[0] == pytest.approx(logit(0.7) / beta, abs=1e-9)
    m = abs(beta * fit.theta[0])
    H = sigsig(m) * beta**2                          # 0.21 beta^2
    c = np.sqrt(beta**2 / 4 / H)
    k = beta / np.sqrt(H)
    y = c * np.sqrt(chi2_chernoff_quantile(1, DELTA) / n)
    # both atoms have |m| and k alike: s Psi(s) = (sigma(|m| + s k) - sigma(|m|)) / (k ss)
    s = (logit(expit(m) + y * k * sigsig(m)) - m) / k
    got = dpo_local_bound(fit, data, beta=beta, delta=DELTA, n=n)
    assert got.ratio == pytest.approx(c, rel=1e-12)
    assert got.kappa == pytest.approx(k, rel=1e-12)
    assert got.lambda_min == pytest.approx(H, rel=1e-12)
    assert got.gradient == pytest.approx(y, rel=1e-6)          # the fit's gradient ~ 1e-10
    assert got.saturation == pytest.approx(1 / (k * expit(m)), rel=1e-12)
    assert got.norm_h == pytest.approx(s, rel=1e-6)
    assert got.value == pytest.approx(s / np.sqrt(H), rel=1e-6)
    assert got.n_min == pytest.approx(c**2 * chi2_chernoff_quantile(1, DELTA)
                                      * (k * expit(m))**2, rel=1e-12)


def test_two_dimensional_two_atom_quantities_by_hand():
    """x1 = (1, 0) with y = 1 and x2 = (0, 2) with y = 0, at theta = (0.3, -0.2): diagonal
    H and G; the data are separable, so the gradient at theta exceeds what the curvature
    can absorb and the bound is (rightly) infinite."""
    beta, n = 1.0, 400
    data = PreferenceData(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([1.0, 0.0]))
    theta = np.array([0.3, -0.2])
    m = np.array([0.3, 0.4])                              # (2y - 1) beta x . theta
    H = np.diag([0.5 * sigsig(0.3), 0.5 * sigsig(0.4) * 4])
    G = np.diag([0.5 / 4, 0.5 / 4 * 4])
    k = np.array([1 / np.sqrt(H[0, 0]), 2 / np.sqrt(H[1, 1])])
    grad = np.array([-0.5 * expit(-0.3), 0.5 * expit(-0.4) * 2])
    resid = np.sqrt(grad[0]**2 / H[0, 0] + grad[1]**2 / H[1, 1])
    c = np.sqrt(max(G[0, 0] / H[0, 0], G[1, 1] / H[1, 1]))
    y = c * np.sqrt(chi2_chernoff_quantile(2, DELTA) / n) + resid
    sat = min(1 / (k * expit(m)))         # each atom holds leverage 1: one atom fills it
    got = dpo_local_bound(theta, data, beta=beta, delta=DELTA, n=n)
    assert got.ratio == pytest.approx(c, rel=1e-12)
    assert got.kappa == pytest.approx(k.max(), rel=1e-12)
    assert got.gradient == pytest.approx(y, rel=1e-12)
    assert got.saturation == pytest.approx(sat, rel=1e-12)
    assert got.lambda_min == pytest.approx(H.diagonal().min(), rel=1e-12)
    assert y > sat and got.value == np.inf


def test_localisation_is_the_cheapest_knapsack_fill():
    """Two atoms of leverage 1/2 and 1 at margins 0 and 1: the unit mass fills the
    cheaper atom first; the root agrees with a brute-force scan of the mass split."""
    k, am = np.array([1.0, 3.0]), np.array([0.0, 1.0])
    pi = np.array([0.5, 1.0]) / k**2
    y = 0.2
    s, _ = localisation(k, pi, am, y)

    def cost(s, j):
        return (expit(am[j] + s * k[j]) - expit(am[j])) / (k[j] * sigsig(am[j]))

    splits = np.linspace(0.0, 0.5, 5001)        # mass on atom 0 (capacity 1/2), rest on 1
    def brute(s):
        return np.min(splits * cost(s, 0) + (1 - splits) * cost(s, 1))
    assert brute(s) == pytest.approx(y, rel=1e-6)


# ---------------------------------------------------- replicates on an environment
@pytest.fixture(scope="module")
def env():
    return LogLinearEnv.random(np.random.default_rng(3), n_states=3, n_actions=3, dim=2,
                               reward_scale=1.0)


def _replicates(env, n, seed):
    """(w-hat, w*, data) per replicate."""
    w_star = env.theta_star() - env.theta_ref
    for ss in np.random.SeedSequence(seed).spawn(REPLICATES):
        data = env.sample_counts(n, np.random.default_rng(ss), centered=True)
        yield fit_dpo(data, beta=env.beta).theta, w_star, data


def _pieces(theta, data, beta):
    m = margins(theta, data, beta=beta)
    _, d1, d2 = dpo_margin_terms(m)
    bx = beta * data.x
    H = (bx * (data.weight * d2)[:, None]).T @ bx
    G = (bx * (data.weight / 4)[:, None]).T @ bx
    g = bx.T @ (data.weight * d1 * data.sign)
    return m, d2, bx, H, G, g


@pytest.mark.parametrize("n", [1000, 10000])
def test_localisation_lemma_and_concentration_step(env, n):
    """The two halves of the proof, each on its own. Deterministic: with the realised
    gradient at w*, ||w-hat - w*||_H <= Phi^{-1}(||g||_{H^-1} + residual) on every
    replicate. Probabilistic: ||g||^2_{G^-1} <= s_delta / n fails at most delta of the time
    (plus 3 binomial standard errors)."""
    beta, s_delta = env.beta, chi2_chernoff_quantile(env.dim, DELTA)
    misses = 0
    for w_hat, w_star, data in _replicates(env, n, seed=11):
        m, d2, bx, H, G, _ = _pieces(w_hat, data, beta)
        g = _pieces(w_star, data, beta)[-1]
        resid = _pieces(w_hat, data, beta)[-1]
        Hinv = np.linalg.inv(H)
        k = np.sqrt(np.einsum("ij,jk,ik->i", bx, Hinv, bx))
        y = np.sqrt(g @ Hinv @ g) + np.sqrt(resid @ Hinv @ resid)
        s, _ = localisation(k, data.weight * d2, m, y)
        delta_w = w_hat - w_star
        assert np.sqrt(delta_w @ H @ delta_w) <= s * (1 + 1e-9)
        misses += g @ np.linalg.solve(G, g) > s_delta / n
    assert misses / REPLICATES <= DELTA + 3 * np.sqrt(DELTA * (1 - DELTA) / REPLICATES)


@pytest.mark.parametrize("n", [1000, 10000])
def test_bound_is_valid_and_reports_its_tightness(env, n):
    rep = simulate_dpo(env, n, replicates=REPLICATES, seed=5, delta=DELTA, bound=2.0)
    t = bound_tightness(rep.errors, rep.bounds, delta=DELTA, paper_bounds=rep.paper_bounds)
    print(f"\n[local bound] n={n}: empirical 95% error quantile {t.quantile:.4f}, median "
          f"bound {t.bound:.4f}, tightness ratio {t.ratio:.2f} (paper Prop. 1: "
          f"{t.paper_ratio:.0f}x), violations {t.violations:.3f} of {t.replicates}, "
          f"vacuous {t.vacuous:.3f}")
    assert t.violations <= DELTA + 3 * t.violation_se
    assert t.vacuous == 0.0
    assert t.ratio < t.paper_ratio


def test_population_bound_constants_and_validity(env):
    """The theorem form: hand values on a one-dimensional population, then validity at
    n = 10^4 on the environment (finite there), from the same replicates' errors."""
    beta, p = 1.5, 0.8
    pop = PreferenceData(np.ones((2, 1)), np.array([1.0, 0.0]), weight=np.array([p, 1 - p]))
    w = np.array([logit(p) / beta])
    H, G = p * (1 - p) * beta**2, beta**2 / 4
    pb = dpo_population_bound(1e9, pop, w, beta=beta, delta=DELTA)
    assert pb.b == pytest.approx(beta / np.sqrt(H), rel=1e-12)
    assert pb.c_pop == pytest.approx(np.sqrt(G / H), rel=1e-12)
    assert pb.ell == pytest.approx(1.0, rel=1e-12)            # sigma sigma' beta^2 / H
    assert pb.big_l == pytest.approx(1.0, rel=1e-12)          # (beta^2 / 4) / G
    x = pb.b * pb.c_pop * np.sqrt(1.5) / 0.5 * np.sqrt(chi2_chernoff_quantile(1, DELTA / 3)
                                                         / 1e9)
    assert pb.x == pytest.approx(x, rel=1e-12)
    assert pb.norm_h == pytest.approx(-np.log1p(-x) / pb.b, rel=1e-12)
    assert pb.norm_h <= pb.constant * np.sqrt((1 + np.log(3 / DELTA)) / 1e9)

    w_star = env.theta_star() - env.theta_ref
    pop_env = env.population(centered=True)
    pb = dpo_population_bound(10000, pop_env, w_star, beta=env.beta, delta=DELTA)
    assert np.isfinite(pb.value)
    errors = [np.linalg.norm(w_hat - w_star) for w_hat, _, _ in _replicates(env, 10000, 7)]
    t = bound_tightness(errors, float(pb.value), delta=DELTA)
    print(f"\n[population bound] n=10000: tightness ratio {t.ratio:.2f}, n0 = {pb.n0:.0f}")
    assert t.violations <= DELTA + 3 * t.violation_se


def test_bad_input_is_refused(env):
    data = env.sample_counts(500, 0, centered=True)
    fit = fit_dpo(data, beta=env.beta)
    with pytest.raises(ValueError, match="delta"):
        dpo_local_bound(fit, data, beta=env.beta, delta=1.5, n=500)
    with pytest.raises(ValueError, match="not counts"):
        dpo_local_bound(fit, data, beta=env.beta, n=333)
    bounded = fit_dpo(data, beta=env.beta, bound=0.1)
    with pytest.raises(ValueError, match="boundary"):
        dpo_local_bound(bounded, data, beta=env.beta, n=500)
    with pytest.raises(ValueError, match="not the population DPO optimum"):
        dpo_population_bound(1000, env.population(centered=True), np.zeros(env.dim),
                             beta=env.beta)
