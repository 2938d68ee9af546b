"""Neural policies: depth 0 is the log-linear core (objectives, gradients and fits to
1e-6), the WDPO input gradients against finite differences, the exact KL worst case,
policy divergences by hand, and the runner's determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from loglinear import LogLinearEnv, fit_dpo
from loglinear.approx import fit_kldpo, fit_wdpo, kldpo_objective, wdpo_objective
from loglinear.losses import objective as dpo_objective
from loglinear.robust import kl_value
from loglinear.torch import neural as nn

DEPTH0_FIT_TOL = 1e-6      # the requirement: depth 0 equals log-linear fits
PARITY_TOL = 1e-10         # same formula, float64
FD_TOL = 1e-6              # central differences, step 1e-6


@pytest.fixture(scope="module")
def setup():
    env = LogLinearEnv.random(np.random.default_rng(3), n_states=5, n_actions=4, dim=3,
                              beta=0.7, reward_scale=2.0, ref_scale=0.5, concentration=0.5)
    data = env.sample_counts(800, np.random.default_rng(4))
    return env, data, nn.PairTensors.from_data(data, env.features)


def _grad(name, pol, theta, pairs, beta, **hyperparameters):
    p = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    v = nn.objective(name, pol, p, pairs, beta=beta, **hyperparameters)
    (g,) = torch.autograd.grad(v, p)
    return float(v.detach()), g.numpy()


def test_depth0_objectives_equal_core(setup):
    env, data, pairs = setup
    pol = nn.NeuralPolicy(3, depth=0)
    theta = np.random.default_rng(0).standard_normal(3)
    v, g = _grad("dpo", pol, theta, pairs, env.beta)
    ref = dpo_objective(theta, data, beta=env.beta, hessian=False)
    assert v == pytest.approx(ref.value, abs=PARITY_TOL)
    np.testing.assert_allclose(g, ref.grad, atol=PARITY_TOL)
    v, g = _grad("wdpo", pol, theta, pairs, env.beta, rho=0.3)
    rv, rg = wdpo_objective(theta, data, beta=env.beta, rho=0.3, form="paper")
    assert v == pytest.approx(rv, abs=PARITY_TOL)
    np.testing.assert_allclose(g, rg, atol=PARITY_TOL)
    v, g = _grad("kldpo", pol, theta, pairs, env.beta, tau=0.5)
    rv, rg = kldpo_objective(theta, data, beta=env.beta, tau=0.5)
    assert v == pytest.approx(rv, abs=PARITY_TOL)
    np.testing.assert_allclose(g, rg, atol=PARITY_TOL)


@pytest.mark.parametrize("name,hyper", [("dpo", 0.0), ("wdpo", 0.2), ("kldpo", 0.5)])
def test_depth0_fits_equal_loglinear_fits(setup, name, hyper):
    env, data, pairs = setup
    pol = nn.NeuralPolicy(3, depth=0)
    theta_dpo = fit_dpo(data, beta=env.beta).theta
    if name == "dpo":
        ref = theta_dpo
    elif name == "wdpo":
        ref = fit_wdpo(data, beta=env.beta, rho=hyper, form="paper").theta
    else:
        ref = fit_kldpo(data, beta=env.beta, tau=hyper).theta
    start = np.zeros(3) if name != "wdpo" else theta_dpo  # the paper WDPO is not convex
    got = nn.fit(pol, pairs, beta=env.beta, params0=start, name=name,
                 **nn.OBJECTIVES[name].kwargs(hyper), gtol=1e-10)
    np.testing.assert_allclose(got.params, ref, atol=DEPTH0_FIT_TOL)
    # the policy table too
    np.testing.assert_allclose(pol.policy(got.params, env.features), env.policy(ref),
                               atol=DEPTH0_FIT_TOL)


def test_depth0_hessian_equals_dpo_hessian(setup):
    env, data, pairs = setup
    pol = nn.NeuralPolicy(3, depth=0)
    theta = fit_dpo(data, beta=env.beta).theta
    eigs = nn.hessian_eigs(pol, theta, pairs, beta=env.beta)
    ref = np.linalg.eigvalsh(dpo_objective(theta, data, beta=env.beta).hess)
    np.testing.assert_allclose(eigs, ref, atol=PARITY_TOL)


def test_mlp_input_gradients_match_finite_differences(setup):
    env, data, pairs = setup
    pol = nn.NeuralPolicy(3, depth=2, width=5)
    params = torch.tensor(pol.init(np.random.default_rng(1)))
    _, g = nn.pair_losses(pol, params, pairs, beta=env.beta, input_grads=True)
    i = 3
    psi1, psi2 = pairs.psi1[i].clone(), pairs.psi2[i].clone()

    def loss(delta):  # x moves by delta: psi1 + delta/2, psi2 - delta/2
        h = (pol.scores(params, psi1 + delta / 2) - pol.scores(params, psi2 - delta / 2)
             - pairs.offset[i])
        return float(torch.nn.functional.softplus(-pairs.sign[i] * env.beta * h))

    eps = 1e-6
    fd = np.array([(loss(eps * e) - loss(-eps * e)) / (2 * eps)
                   for e in torch.eye(3, dtype=torch.float64)])
    assert float(g[i]) == pytest.approx(float(fd @ fd), rel=FD_TOL)


def test_kl_worst_case_equals_core_on_depth0(setup):
    env, data, pairs = setup
    pol = nn.NeuralPolicy(3, depth=0)
    theta = fit_dpo(data, beta=env.beta).theta
    got = nn.kl_worst_case(pol, theta, pairs, beta=env.beta, radius=0.05)
    ref = kl_value(theta, data, beta=env.beta, radius=0.05)
    assert got.value == pytest.approx(ref.value, abs=PARITY_TOL)
    np.testing.assert_allclose(got.weights, ref.weights, atol=PARITY_TOL)


def test_policy_divergence_hand_computed():
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    r = np.array([[0.25, 0.75], [0.5, 0.5]])
    kl, tv = nn.policy_divergence(p, r, np.array([0.5, 0.5]))
    want = 0.5 * (0.5 * np.log(2) + 0.5 * np.log(0.5 / 0.75)) + 0.5 * np.log(2)
    assert kl == pytest.approx(want, abs=1e-14)
    assert tv == pytest.approx(0.5 * 0.25 + 0.5 * 0.5, abs=1e-14)


def test_bad_inputs():
    with pytest.raises(ValueError):
        nn.NeuralPolicy(3, depth=-1)
    with pytest.raises(ValueError, match="activation"):
        nn.NeuralPolicy(3, depth=1, activation="relu6")
    pol = nn.NeuralPolicy(3, depth=1, width=4)
    with pytest.raises(ValueError, match="params"):
        pol.scores(torch.zeros(3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))


def test_hyperparameters_by_name(setup):
    """Each objective takes its own hyperparameter by name, and only that one; the old
    generic ``hyper=`` still works for one release, with a DeprecationWarning."""
    env, data, pairs = setup
    pol = nn.NeuralPolicy(3, depth=0)
    theta = np.random.default_rng(1).standard_normal(3)
    with pytest.raises(ValueError, match="takes no hyperparameter"):
        _grad("dpo", pol, theta, pairs, env.beta, rho=0.1)
    with pytest.raises(ValueError, match="takes tau"):
        _grad("kldpo", pol, theta, pairs, env.beta, rho=0.1)
    with pytest.raises(ValueError, match="kldpo needs tau > 0"):
        _grad("kldpo", pol, theta, pairs, env.beta)
    with pytest.raises(ValueError, match="wdpo needs rho >= 0"):
        _grad("wdpo", pol, theta, pairs, env.beta, rho=-1.0)
    with pytest.raises(ValueError, match="unknown objective"):
        _grad("nope", pol, theta, pairs, env.beta)
    assert _grad("wdpo", pol, theta, pairs, env.beta)[0] == _grad(
        "dpo", pol, theta, pairs, env.beta)[0]                      # rho defaults to 0
    with pytest.warns(DeprecationWarning, match="tau"):
        old = _grad("kldpo", pol, theta, pairs, env.beta, hyper=0.5)
    assert old[0] == _grad("kldpo", pol, theta, pairs, env.beta, tau=0.5)[0]
    assert nn.OBJECTIVES["wdpo"].kwargs(0.2) == {"rho": 0.2}
    assert nn.OBJECTIVES["dpo"].kwargs(0.2) == {}


def test_neural_runner_deterministic(tmp_path):
    from loglinear.experiments.beyond import neural as bn
    from loglinear.experiments.beyond.common import EnvSpec

    cfg = bn.NeuralConfig(name="t", seed=5, settings=(EnvSpec("u", n_states=3, n_actions=3,
                                                              dim=2),),
                          archs=(bn.Arch(0), bn.Arch(1, 3)), n=(200, 2000), seeds=2,
                          restarts=2, max_iter=100)
    drop = ["seconds"]
    a = pd.read_csv(bn.main(cfg, tmp_path / "a") / "records.csv").drop(columns=drop)
    b = pd.read_csv(bn.main(cfg, tmp_path / "b") / "records.csv").drop(columns=drop)
    pd.testing.assert_frame_equal(a, b)
    ta = pd.read_csv(tmp_path / "a" / "targets.csv").drop(columns=drop)
    tb = pd.read_csv(tmp_path / "b" / "targets.csv").drop(columns=drop)
    pd.testing.assert_frame_equal(ta, tb)
    assert len(a) == 2 * 2 * 2
    # depth 0: the population optimum is the log-linear theta*
    assert ta[ta.arch == "loglinear"].tv_best_to_loglinear.max() < 1e-6
