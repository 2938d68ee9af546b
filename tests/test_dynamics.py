"""Contracts of the exact training dynamics (loglinear.experiments.three_d.dynamics) and of
the pair losses in loglinear.losses."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FD_RTOL, FLOAT64_TOL
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import environments, seeds

from loglinear import LogLinearEnv, PreferenceData
from loglinear.experiments.three_d.dynamics import (
    OBJECTIVES,
    PairSetting,
    dpo_probability_partials_fd,
    evaluate_objective,
    train,
)
from loglinear.experiments.three_d.objectives import _reweighted_margin
from loglinear.experiments.three_d.run import SCENARIOS, toy_setting
from loglinear.losses import dpo_sft_terms, dpo_terms, flex_dpo_terms, probability_partials

FD_STEP = 1e-6
# FD of a value of size O(1) with step 1e-6: truncation ~1e-12, rounding ~1e-10 / 1e-6.
FD_ATOL = 1e-8

# Hyperparameters for every registered objective (radius/rho/tau moderate, beta = 0.7).
PARAMS = {
    "dpo": {"beta": 0.7},
    "ipo": {"beta": 0.7},
    "flex-dpo": {"beta_plus": 0.9, "beta_minus": 0.3},
    "dpo-sft": {"beta": 0.7, "sft_weight": 0.2},
    "wdpo-paper": {"beta": 0.7, "rho": 0.3},
    "wdpo-official": {"beta": 0.7, "rho": 0.3},
    "kldpo-paper": {"beta": 0.7, "tau": 0.8},
    "kldpo-official": {"beta": 0.7, "tau": 0.8},
    "kl-exact": {"beta": 0.7, "radius": 0.1},
    "wasserstein-exact": {"beta": 0.7, "radius": 0.1, "p": 1},
}


def _random_setting(seed: int, *, n: int = 40) -> PairSetting:
    rng = np.random.default_rng(seed)
    env = LogLinearEnv.random(rng, n_states=3, n_actions=5, dim=4, beta=0.7,
                              concentration=1.0, ref_scale=0.8)
    return PairSetting(env, env.sample(n, rng))


def test_every_registered_objective_has_test_parameters():
    assert set(OBJECTIVES) <= set(PARAMS), sorted(set(OBJECTIVES) - set(PARAMS))


# ------------------------------------------------------------------ the identity
@settings(deadline=None)
@given(st.floats(1e-12, 0.999), st.floats(1e-12, 0.999), st.floats(0.01, 0.9),
       st.floats(0.01, 0.9), st.sampled_from([0.1, 0.5, 2.0]))
def test_gradient_ratio_identity_by_finite_differences(pc, pr, rc, rr, beta):
    """(dl/dpi-)/(dl/dpi+) = -pi+/pi-, with the partials taken numerically in pi."""
    dpc, dpr = dpo_probability_partials_fd(np.array([pc]), np.array([pr]), rc, rr, beta=beta)
    if dpc[0] == 0.0:  # saturated loss: both partials underflow; nothing to compare
        assert dpr[0] == 0.0
        return
    np.testing.assert_allclose(dpr / dpc, -pc / pr, rtol=1e-6)


def test_analytic_probability_partials_match_finite_differences():
    rng = np.random.default_rng(0)
    pc, pr = rng.uniform(1e-4, 0.5, 20), rng.uniform(1e-4, 0.5, 20)
    rc, rr = rng.uniform(0.05, 0.5, 20), rng.uniform(0.05, 0.5, 20)
    beta = 0.6
    terms = dpo_terms(np.log(pc / rc), np.log(pr / rr), beta=beta)
    ac, ar = probability_partials(terms, pc, pr)
    fc, fr = dpo_probability_partials_fd(pc, pr, rc, rr, beta=beta)
    np.testing.assert_allclose(ac, fc, rtol=FD_RTOL)
    np.testing.assert_allclose(ar, fr, rtol=FD_RTOL)
    np.testing.assert_allclose(ar / ac, -pc / pr, rtol=FLOAT64_TOL)


def test_identity_holds_along_a_dpo_trajectory():
    setting = toy_setting(np.random.default_rng(3), scenario="off-on", sharing=0.5)
    frame = train(setting, "dpo", params={"beta": 0.5}, lr=1.0, steps=300,
                  record_every=50).frame()
    assert frame["identity_rel_err"].max() < 1e-6
    # the push on pi- relative to pi+ grows as pi- collapses
    assert frame["log10_grad_ratio"].iloc[-1] > frame["log10_grad_ratio"].iloc[0] + 1


# -------------------------------------------------------------------- mass bookkeeping
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("sharing", [0.0, 0.6])
def test_unseen_plus_seen_mass_is_one_per_state(scenario, sharing):
    setting = toy_setting(np.random.default_rng(1), scenario=scenario, sharing=sharing)
    w = np.random.default_rng(2).normal(size=setting.dim)
    policy = np.exp(setting.log_policy(w))
    total = setting.unseen_mass(policy) + setting.seen_mass(policy)
    np.testing.assert_allclose(total, 1.0, atol=FLOAT64_TOL)
    # brute force: enumerate actions of each state by hand
    for s in range(setting.env.n_states):
        acts = {int(a) for i, a in enumerate(setting.data.a1) if setting.states[i] == s}
        acts |= {int(a) for i, a in enumerate(setting.data.a2) if setting.states[i] == s}
        unseen = sum(policy[s, a] for a in range(policy.shape[1]) if a not in acts)
        assert abs(unseen - setting.unseen_mass(policy)[s]) < FLOAT64_TOL


def test_unseen_mass_is_zero_when_every_action_appears():
    setting = _random_setting(4, n=400)
    policy = np.exp(setting.log_policy(np.zeros(setting.dim)))
    assert setting.seen.all()
    assert np.all(setting.unseen_mass(policy) == 0.0)


# --------------------------------------------------------------------- lr = 0
@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("optimizer", ["gd", "adam"])
def test_zero_learning_rate_stays_at_reference(name, optimizer):
    setting = toy_setting(np.random.default_rng(5), scenario="off-on", sharing=0.5)
    evaluate_objective(name, np.zeros(setting.dim), setting, **PARAMS[name])
    traj = train(setting, name, params=PARAMS[name], lr=0.0, steps=5, optimizer=optimizer,
                 dpo_beta=0.5)
    assert np.all(traj.w == 0.0)
    pi_ref = setting.env.policy(setting.env.theta_ref)
    first, last = traj.records[0], traj.records[-1]
    assert last["kl"] == 0.0
    for key in ("p_chosen", "p_rejected", "unseen_mass", "reward"):
        assert last[key] == first[key]
    expected = setting.data.weight @ pi_ref[setting.states, setting.chosen]
    assert abs(first["p_chosen"] - expected) < FLOAT64_TOL


# ------------------------------------------------------------- remedy equivalences
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flex_dpo_with_equal_betas_equals_dpo(seed):
    """The log-probability path (Flex) against the margin path (core DPO)."""
    setting = _random_setting(seed)
    w = np.random.default_rng(seed + 10).normal(size=setting.dim)
    dpo = evaluate_objective("dpo", w, setting, beta=0.7)
    flex = evaluate_objective("flex-dpo", w, setting, beta_plus=0.7, beta_minus=0.7)
    assert abs(dpo.value - flex.value) < FLOAT64_TOL
    np.testing.assert_allclose(flex.grad, dpo.grad, atol=FLOAT64_TOL)
    np.testing.assert_allclose(flex.d_chosen, dpo.d_chosen, atol=FLOAT64_TOL)
    np.testing.assert_allclose(flex.d_rejected, dpo.d_rejected, atol=FLOAT64_TOL)


def test_flex_dpo_trajectory_with_equal_betas_equals_dpo_trajectory():
    setting = toy_setting(np.random.default_rng(6), scenario="on-off", sharing=0.3)
    a = train(setting, "dpo", params={"beta": 0.5}, lr=1.0, steps=100)
    b = train(setting, "flex-dpo", params={"beta_plus": 0.5, "beta_minus": 0.5}, lr=1.0,
              steps=100)
    np.testing.assert_allclose(a.w, b.w, atol=1e-10)


def test_sft_with_zero_weight_equals_dpo_and_adds_chosen_nll_otherwise():
    setting = _random_setting(7)
    w = np.random.default_rng(8).normal(size=setting.dim)
    dpo = evaluate_objective("dpo", w, setting, beta=0.7)
    sft0 = evaluate_objective("dpo-sft", w, setting, beta=0.7, sft_weight=0.0)
    assert abs(dpo.value - sft0.value) < FLOAT64_TOL
    np.testing.assert_allclose(sft0.grad, dpo.grad, atol=FLOAT64_TOL)
    c = 0.4
    sft = evaluate_objective("dpo-sft", w, setting, beta=0.7, sft_weight=c)
    logp = setting.log_policy(w)
    nll = -sum(q * logp[s, a] for q, s, a in
               zip(setting.data.weight, setting.states, setting.chosen))
    assert abs(sft.value - (dpo.value + c * nll)) < 1e-12


def test_pair_loss_partials_match_finite_differences():
    rng = np.random.default_rng(9)
    c, r, lp = rng.normal(size=8), rng.normal(size=8), -rng.uniform(0.1, 3, 8)
    cases = [
        (flex_dpo_terms, {"beta_plus": 0.8, "beta_minus": 0.2}),
        (dpo_sft_terms, {"beta": 0.5, "sft_weight": 0.3}),
    ]
    for fn, kw in cases:
        t = fn(c, r, lp, **kw)
        # d/dc moves log pi+ as well (the SFT term): perturb c and lp together
        fc = (fn(c + FD_STEP, r, lp + FD_STEP, **kw).value
              - fn(c - FD_STEP, r, lp - FD_STEP, **kw).value) / (2 * FD_STEP)
        fr = (fn(c, r + FD_STEP, lp, **kw).value - fn(c, r - FD_STEP, lp, **kw).value) / (
            2 * FD_STEP)
        np.testing.assert_allclose(t.d_chosen, fc, rtol=FD_RTOL, atol=FD_ATOL)
        np.testing.assert_allclose(t.d_rejected, fr, rtol=FD_RTOL, atol=FD_ATOL)


# ------------------------------------------------------- gradients vs finite differences
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_objective_gradient_matches_finite_differences(name):
    setting = _random_setting(11)
    w = 0.5 * np.random.default_rng(12).normal(size=setting.dim)
    ev = evaluate_objective(name, w, setting, **PARAMS[name])
    if not OBJECTIVES[name].potential:
        pytest.skip(f"{name}: the step is not the gradient of any objective (by design)")
    fd = np.zeros(setting.dim)
    for j in range(setting.dim):
        e = np.zeros(setting.dim)
        e[j] = FD_STEP
        fd[j] = (evaluate_objective(name, w + e, setting, **PARAMS[name]).value
                 - evaluate_objective(name, w - e, setting, **PARAMS[name]).value) / (2 * FD_STEP)
    np.testing.assert_allclose(ev.grad, fd, rtol=FD_RTOL, atol=FD_ATOL)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_log_probability_components_reproduce_the_gradient(name):
    """grad L = sum_i d_i^+ grad log pi+_i + d_i^- grad log pi-_i when the split exists."""
    setting = _random_setting(13)
    w = 0.5 * np.random.default_rng(14).normal(size=setting.dim)
    ev = evaluate_objective(name, w, setting, **PARAMS[name])
    if ev.d_chosen is None:
        pytest.skip(f"{name} is not a function of the pairs' log-probabilities alone")
    # grad log pi by finite differences of the log-policy table (independent of the code)
    def gl(actions):
        g = np.zeros((setting.data.n, setting.dim))
        for j in range(setting.dim):
            e = np.zeros(setting.dim)
            e[j] = FD_STEP
            up, dn = setting.log_policy(w + e), setting.log_policy(w - e)
            g[:, j] = (up[setting.states, actions] - dn[setting.states, actions]) / (2 * FD_STEP)
        return g

    rebuilt = gl(setting.chosen).T @ ev.d_chosen + gl(setting.rejected).T @ ev.d_rejected
    np.testing.assert_allclose(rebuilt, ev.grad, rtol=FD_RTOL, atol=FD_ATOL)


# --------------------------------------------------------------------- optimizers etc.
def test_first_adam_step_is_a_signed_learning_rate_step():
    setting = _random_setting(15)
    g = evaluate_objective("dpo", np.zeros(setting.dim), setting, beta=0.7).grad
    traj = train(setting, "dpo", params={"beta": 0.7}, lr=0.01, steps=1, optimizer="adam")
    np.testing.assert_allclose(traj.w, -0.01 * g / (np.abs(g) + 1e-8), atol=1e-15)


def test_gd_step_and_determinism():
    setting = _random_setting(16)
    g = evaluate_objective("ipo", np.zeros(setting.dim), setting, beta=0.7).grad
    traj = train(setting, "ipo", params={"beta": 0.7}, lr=0.05, steps=1)
    np.testing.assert_allclose(traj.w, -0.05 * g, atol=FLOAT64_TOL)
    a = train(setting, "dpo", params={"beta": 0.7}, lr=0.3, steps=20).records
    b = train(setting, "dpo", params={"beta": 0.7}, lr=0.3, steps=20).records
    assert a == b


def test_dpo_decreases_its_loss_and_records_are_complete():
    setting = toy_setting(np.random.default_rng(17), scenario="on-off")
    frame = train(setting, "dpo", params={"beta": 0.5}, lr=1.0, steps=50, record_every=7,
                  tags={"scenario": "on-off"}).frame()
    assert list(frame["step"]) == [0, 7, 14, 21, 28, 35, 42, 49, 50]
    assert np.all(np.diff(frame["dpo_loss"]) < 0)
    assert frame["kl"].iloc[0] == 0.0 and frame["kl"].iloc[-1] > 0
    assert (frame["scenario"] == "on-off").all()
    assert np.isnan(frame["d_logp_chosen"]).sum() == 0


def test_bad_inputs_raise_clear_errors():
    setting = _random_setting(18)
    bare = PreferenceData(setting.data.x, setting.data.y)
    with pytest.raises(ValueError, match="state, a1 and a2"):
        PairSetting(setting.env, bare)
    wrong = PreferenceData(setting.data.x + 0.1, setting.data.y, state=setting.data.state,
                           a1=setting.data.a1, a2=setting.data.a2)
    with pytest.raises(ValueError, match="does not equal"):
        PairSetting(setting.env, wrong)
    with pytest.raises(ValueError, match="unknown objective"):
        train(setting, "nope", params={}, lr=0.1, steps=1)
    with pytest.raises(ValueError, match="takes hyperparameters"):
        train(setting, "dpo", params={"beta": 1.0, "tau": 1.0}, lr=0.1, steps=1)
    with pytest.raises(ValueError, match="optimizer"):
        train(setting, "dpo", params={"beta": 1.0}, lr=0.1, steps=1, optimizer="sgd")
    with pytest.raises(ValueError, match="lr"):
        train(setting, "dpo", params={"beta": 1.0}, lr=-1.0, steps=1)
    with pytest.raises(ValueError, match="beta_plus"):
        evaluate_objective("flex-dpo", np.zeros(setting.dim), setting, beta_plus=0.0,
                           beta_minus=1.0)


def test_kldpo_official_step_is_the_capped_reweighted_dpo_gradient():
    """Brute force: W_i = q_i min(exp((l_i - sum q l)/tau), 10), step = sum W grad l."""
    setting = _random_setting(19)
    w = np.random.default_rng(20).normal(size=setting.dim)
    ev = evaluate_objective("kldpo-official", w, setting, beta=0.7, tau=0.3)
    data = setting.centered
    m = data.sign * 0.7 * (data.x @ w)
    loss = np.logaddexp(0, -m)
    W = data.weight * np.minimum(np.exp((loss - data.weight @ loss) / 0.3), 10.0)
    grad = data.x.T @ (W * -(1 / (1 + np.exp(m))) * data.sign * 0.7)
    np.testing.assert_allclose(ev.grad, grad, atol=1e-12)
    assert abs(ev.value - W @ loss) < 1e-12
    assert _reweighted_margin(w, setting, "dpo", 0.7, W).value == ev.value


@settings(deadline=None)
@given(environments(), st.integers(1, 12), seeds)
def test_unseen_mass_on_random_environments(env, n, seed):
    rng = np.random.default_rng(seed)
    setting = PairSetting(env, env.sample(n, rng))
    policy = np.exp(setting.log_policy(rng.normal(size=env.dim)))
    unseen, seen = setting.unseen_mass(policy), setting.seen_mass(policy)
    np.testing.assert_allclose(unseen + seen, 1.0, atol=FLOAT64_TOL)
    pairs = set(zip(setting.data.state.tolist(), setting.data.a1.tolist())) | set(
        zip(setting.data.state.tolist(), setting.data.a2.tolist()))
    brute = [sum(policy[s, a] for a in range(env.n_actions) if (s, a) not in pairs)
             for s in range(env.n_states)]
    np.testing.assert_allclose(unseen, brute, atol=FLOAT64_TOL)
