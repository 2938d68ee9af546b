"""LogLinearEnv: exact population, Bradley-Terry sampling, coverage, value, determinism."""

import itertools

import numpy as np
import pytest
from conftest import FLOAT64_TOL
from hypothesis import given
from strategies import environments

from loglinear import LogLinearEnv, mix_rewards


def _brute_population(env):
    """Enumerate (s, a1, a2, y) with explicit loops: an independent reference."""
    out = {}
    r = env.reward
    for s, a1, a2 in itertools.product(range(env.n_states), range(env.n_actions),
                                       range(env.n_actions)):
        base = env.state_dist[s] * env.sampling_policy[s, a1] * env.sampling_policy[s, a2]
        p = 1.0 / (1.0 + np.exp(-(r[s, a1] - r[s, a2])))
        out[(s, a1, a2, 1)] = base * p
        out[(s, a1, a2, 0)] = base * (1 - p)
    return out


@given(environments())
def test_population_matches_brute_force_enumeration(env):
    pop = env.population()
    ref = _brute_population(env)
    assert pop.weight.sum() == pytest.approx(1.0, abs=1e-12)
    for s, a1, a2, y, w, x, o in zip(pop.state, pop.a1, pop.a2, pop.y, pop.weight, pop.x,
                                     pop.offset):
        assert w == pytest.approx(ref[(s, a1, a2, int(y))], rel=1e-12)
        np.testing.assert_allclose(x, env.features[s, a1] - env.features[s, a2])
        lp = env.log_policy(env.theta_ref)
        assert o == pytest.approx(lp[s, a1] - lp[s, a2], abs=1e-12)
    assert pop.n == sum(v > 0 for v in ref.values())


@given(environments())
def test_policy_rows_are_distributions_and_log_linear(env):
    theta = np.random.default_rng(0).normal(size=env.dim)
    p = env.policy(theta)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=FLOAT64_TOL)
    logits = env.features @ theta
    ratio = np.log(p[:, 0]) - np.log(p[:, 1])
    np.testing.assert_allclose(ratio, logits[:, 0] - logits[:, 1], atol=1e-10)


def test_bradley_terry_sampling_frequencies_match_probabilities():
    # Fixed seed; n = 400k draws. Each cell's frequency is compared with its exact
    # probability at 5 binomial standard deviations (plus a chi-square over all cells).
    env = LogLinearEnv.random(np.random.default_rng(3), n_states=2, n_actions=3, dim=2,
                              concentration=1.0)
    n = 400_000
    data = env.sample(n, np.random.default_rng(4))
    pop = env.population()
    key = lambda s, a1, a2, y: ((s * 3 + a1) * 3 + a2) * 2 + int(y)
    counts = np.bincount([key(*t) for t in zip(data.state, data.a1, data.a2, data.y)],
                         minlength=36)
    probs = np.zeros(36)
    for s, a1, a2, y, w in zip(pop.state, pop.a1, pop.a2, pop.y, pop.weight):
        probs[key(s, a1, a2, y)] = w
    sd = np.sqrt(n * probs * (1 - probs))
    assert np.all(np.abs(counts - n * probs) <= 5 * sd + 1e-9)
    mask = probs > 0
    chi2 = np.sum((counts[mask] - n * probs[mask]) ** 2 / (n * probs[mask]))
    # 99.9% quantile of chi-square with 35 degrees of freedom is about 66.6
    assert chi2 < 66.6


def test_same_seed_same_data_and_different_seed_differs():
    env = LogLinearEnv.random(np.random.default_rng(0))
    a = env.sample(500, np.random.default_rng(11))
    b = env.sample(500, np.random.default_rng(11))
    c = env.sample(500, np.random.default_rng(12))
    for name in ("x", "y", "offset", "state", "a1", "a2"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.y, c.y) or not np.array_equal(a.a1, c.a1)
    e1 = LogLinearEnv.random(np.random.default_rng(5))
    e2 = LogLinearEnv.random(np.random.default_rng(5))
    np.testing.assert_array_equal(e1.features, e2.features)


def test_sample_counts_is_a_multinomial_over_atoms():
    env = LogLinearEnv.random(np.random.default_rng(1), n_states=3, n_actions=3, dim=2)
    n = 10**6
    d = env.sample_counts(n, np.random.default_rng(2))
    assert np.allclose(d.weight * n, np.round(d.weight * n))
    pop = env.population()
    lookup = {(s, a, b, y): w for s, a, b, y, w in zip(pop.state, pop.a1, pop.a2, pop.y,
                                                      pop.weight)}
    for s, a, b, y, w in zip(d.state, d.a1, d.a2, d.y, d.weight):
        p = lookup[(s, a, b, y)]
        assert abs(w - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12


def test_coverage_matches_direct_expectation():
    env = LogLinearEnv.random(np.random.default_rng(2), n_states=3, n_actions=4, dim=3,
                              concentration=2.0)
    sigma = np.zeros((3, 3))
    for s in range(3):
        for a1 in range(4):
            for a2 in range(4):
                x = env.features[s, a1] - env.features[s, a2]
                sigma += (env.state_dist[s] * env.sampling_policy[s, a1]
                          * env.sampling_policy[s, a2]) * np.outer(x, x)
    cov = env.coverage()
    np.testing.assert_allclose(cov.sigma, sigma, atol=1e-14)
    assert cov.lambda_min == pytest.approx(np.linalg.eigvalsh(sigma)[0], abs=1e-14)


def test_concentration_reduces_coverage_on_average():
    lam = {c: np.mean([LogLinearEnv.random(np.random.default_rng(s), dim=4, concentration=c)
                       .coverage().lambda_min for s in range(20)]) for c in (0.0, 4.0)}
    assert lam[4.0] < lam[0.0]


def test_value_matches_direct_computation():
    env = LogLinearEnv.random(np.random.default_rng(3), ref_scale=0.7)
    theta = np.random.default_rng(4).normal(size=env.dim)
    p, pref = env.policy(theta), env.policy(env.theta_ref)
    er = sum(env.state_dist[s] * p[s] @ env.reward[s] for s in range(env.n_states))
    kl = sum(env.state_dist[s] * p[s] @ np.log(p[s] / pref[s]) for s in range(env.n_states))
    v = env.value(theta)
    assert v.reward == pytest.approx(er, rel=1e-12)
    assert v.kl == pytest.approx(kl, rel=1e-10)
    assert v.objective == pytest.approx(er - env.beta * kl, rel=1e-10)
    assert env.value(env.theta_ref).kl == pytest.approx(0.0, abs=1e-14)


def test_reward_mixtures_and_with_reward():
    env = LogLinearEnv.random(np.random.default_rng(0), n_states=2, n_actions=3, dim=2)
    r1 = np.abs(env.reward) + 0.1
    r2 = np.ones_like(r1)
    np.testing.assert_allclose(mix_rewards(r1, r2, 0.25), 0.25 * r1 + 0.75)
    np.testing.assert_allclose(mix_rewards(r1, r2, 0.5, kind="geometric"), np.sqrt(r1))
    with pytest.raises(ValueError, match="positive"):
        mix_rewards(-r1, r2, 0.5, kind="geometric")
    with pytest.raises(ValueError, match="alpha"):
        mix_rewards(r1, r2, 1.5)
    shifted = env.with_reward(mix_rewards(r1, r2, 0.3))
    assert shifted.omega is None
    np.testing.assert_allclose(shifted.reward, 0.3 * r1 + 0.7)
    linear = shifted.with_reward(np.ones(2))
    np.testing.assert_allclose(linear.reward, env.features.sum(-1))


@pytest.mark.parametrize("bad", [
    {"features": np.full((2, 3, 2), 1.0)},            # norm sqrt(2) > 1
    {"state_dist": np.array([0.5, 0.6])},
    {"sampling_policy": np.full((2, 3), 0.5)},
    {"beta": 0.0},
    {"omega": None},
])
def test_environment_validation(bad):
    base = dict(features=np.full((2, 3, 2), 0.5), state_dist=np.array([0.5, 0.5]),
                sampling_policy=np.full((2, 3), 1 / 3), theta_ref=np.zeros(2), beta=1.0,
                omega=np.ones(2))
    with pytest.raises(ValueError):
        LogLinearEnv(**(base | bad))


def test_an_integer_seed_is_accepted_wherever_a_generator_is():
    by_seed, by_rng = LogLinearEnv.random(3), LogLinearEnv.random(np.random.default_rng(3))
    np.testing.assert_array_equal(by_seed.features, by_rng.features)
    np.testing.assert_array_equal(by_seed.sampling_policy, by_rng.sampling_policy)
    a, b = by_seed.sample(50, 4), by_seed.sample(50, np.random.default_rng(4))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    c, e = by_seed.sample_counts(50, 4), by_seed.sample_counts(50, np.random.default_rng(4))
    np.testing.assert_array_equal(c.weight, e.weight)


# ------------------------------------------------- coverage through the sampling policy
def _sigma_brute(env):
    """E[x x^T] over (s, a1, a2) by explicit loops (ties included, as sampled)."""
    d = env.dim
    sigma = np.zeros((d, d))
    for s, a1, a2 in itertools.product(range(env.n_states), range(env.n_actions),
                                       range(env.n_actions)):
        x = env.features[s, a1] - env.features[s, a2]
        sigma += (env.state_dist[s] * env.sampling_policy[s, a1]
                  * env.sampling_policy[s, a2]) * np.outer(x, x)
    return sigma


def test_avoiding_a_direction_changes_the_sampling_only():
    """The knob acts through the data: features, omega, theta*, reward, state distribution
    and the policies pi_theta are identical; only pi_o changes, to the formula
    pi_o(a|s) exp(-gamma (psi . v)^2 / 2), renormalised (written out per entry here)."""
    env = LogLinearEnv.random(np.random.default_rng(5), n_states=4, n_actions=5, dim=3,
                              concentration=1.0, ref_scale=0.4)
    v = np.array([1.0, -2.0, 0.5])
    far = env.avoiding(v, gamma=50.0)
    for name in ("features", "state_dist", "theta_ref", "omega", "reward"):
        np.testing.assert_array_equal(getattr(far, name), getattr(env, name))
    np.testing.assert_array_equal(far.theta_star(), env.theta_star())
    theta = np.array([0.3, -0.1, 0.8])
    np.testing.assert_array_equal(far.policy(theta), env.policy(theta))
    u = v / np.linalg.norm(v)
    for s in range(4):
        w = [env.sampling_policy[s, a] * np.exp(-25.0 * (env.features[s, a] @ u) ** 2)
             for a in range(5)]
        np.testing.assert_allclose(far.sampling_policy[s], np.array(w) / sum(w), rtol=1e-12)
    assert not np.allclose(far.sampling_policy, env.sampling_policy)
    np.testing.assert_array_equal(env.avoiding(v, gamma=0.0).sampling_policy,
                                  env.sampling_policy)


def test_random_avoid_shares_the_draws_of_avoid_zero():
    """LogLinearEnv.random(seed, avoid=gamma) has the features, reward and theta* of
    avoid = 0 from the same seed (the direction is drawn last), and equals
    avoiding(v, gamma) for that direction."""
    kw = dict(n_states=6, n_actions=6, dim=4, concentration=0.5)
    base = LogLinearEnv.random(11, **kw)
    for gamma in (10.0, 300.0):
        env = LogLinearEnv.random(11, avoid=gamma, **kw)
        np.testing.assert_array_equal(env.features, base.features)
        np.testing.assert_array_equal(env.omega, base.omega)
        np.testing.assert_array_equal(env.theta_star(), base.theta_star())
        rng = np.random.default_rng(11)
        LogLinearEnv.random(rng, **kw)                       # consume the shared draws
        v = rng.standard_normal(4)
        np.testing.assert_allclose(env.sampling_policy,
                                   base.avoiding(v, gamma=gamma).sampling_policy, rtol=1e-12)
    given_v = LogLinearEnv.random(11, avoid=10.0, avoid_direction=[0, 0, 0, 1], **kw)
    np.testing.assert_array_equal(given_v.sampling_policy,
                                  base.avoiding([0, 0, 0, 1], gamma=10.0).sampling_policy)


@pytest.mark.parametrize("seed", range(8))
def test_avoiding_a_direction_lowers_lambda_min(seed):
    """lambda_min(Sigma) (brute-force Sigma) falls as gamma grows, and v . Sigma v falls
    with it: on the rates-study sizes it is divided by more than 4 at gamma = 100 and by
    more than 25 at gamma = 1000 (by 5-11 and 30-2000 over the seeds tried)."""
    env = LogLinearEnv.random(seed, n_states=8, n_actions=6, dim=4, reward_scale=1.5)
    v = np.random.default_rng(100 + seed).standard_normal(4)
    v /= np.linalg.norm(v)
    lam, along = [], []
    for gamma in (0.0, 30.0, 100.0, 300.0, 1000.0):
        sigma = _sigma_brute(env.avoiding(v, gamma=gamma))
        lam.append(np.linalg.eigvalsh(sigma)[0])
        along.append(v @ sigma @ v)
        assert env.avoiding(v, gamma=gamma).coverage().lambda_min == pytest.approx(
            lam[-1], abs=1e-14)
    assert np.all(np.diff(lam) < 0) and np.all(np.diff(along) < 0)
    assert lam[2] < lam[0] / 4 and lam[4] < lam[0] / 25


def test_avoiding_rejects_bad_input():
    env = LogLinearEnv.random(0, n_states=2, n_actions=3, dim=2)
    with pytest.raises(ValueError, match="nonzero"):
        env.avoiding([0.0, 0.0], gamma=1.0)
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0"):
        env.avoiding([1.0, 0.0], gamma=-1.0)
    with pytest.raises(ValueError, match=r"direction must have shape \(2,\)"):
        env.avoiding([1.0, 0.0, 0.0], gamma=1.0)
    with pytest.raises(ValueError, match=r"avoid must be a finite number >= 0"):
        LogLinearEnv.random(0, avoid=-2.0)


def test_policy_divergence_matches_direct_sums():
    env = LogLinearEnv.random(np.random.default_rng(8), n_states=3, n_actions=4, dim=3,
                              state_dist="dirichlet")
    a, b = np.array([0.5, -1.0, 0.2]), np.array([-0.3, 0.4, 1.1])
    p, q = env.policy(a), env.policy(b)
    kl = sum(env.state_dist[s] * sum(p[s, k] * np.log(p[s, k] / q[s, k]) for k in range(4))
             for s in range(3))
    tv = sum(env.state_dist[s] * 0.5 * sum(abs(p[s, k] - q[s, k]) for k in range(4))
             for s in range(3))
    div = env.divergence(a, b)
    assert div.kl == pytest.approx(kl, rel=1e-12) and div.tv == pytest.approx(tv, rel=1e-12)
    assert env.divergence(a, a) == (0.0, 0.0)
    assert env.divergence(b, a).kl != pytest.approx(kl, rel=1e-3)   # KL is not symmetric
