"""The gradient-stability runner: minibatch-gradient variance against the closed form on
known per-pair gradients (depth 0), and determinism under a seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from loglinear import LogLinearEnv
from loglinear.experiments.beyond import sgd
from loglinear.experiments.beyond import stability as bs
from loglinear.experiments.beyond.common import EnvSpec
from loglinear.experiments.beyond.neural import Arch
from loglinear.losses import get_loss
from loglinear.stats import minibatch_gradient_variance
from loglinear.torch import neural as nn

MC_RTOL = 0.08  # Monte Carlo: 3000 minibatches, relative sd of a variance ~ sqrt(2/K) ~ 3%


def test_minibatch_gradient_variance_matches_closed_form_depth0():
    env = LogLinearEnv.random(np.random.default_rng(2), n_states=4, n_actions=3, dim=3,
                              beta=1.0, reward_scale=2.0)
    data = env.sample(300, np.random.default_rng(3))
    pairs = nn.PairTensors.from_data(data, env.features)
    pol = nn.NeuralPolicy(3, depth=0)
    theta = np.array([0.3, -0.5, 0.8])
    per_pair = get_loss("dpo").grad_theta(theta, data, beta=1.0)  # (n, d), the core's
    exact = minibatch_gradient_variance(per_pair, batch_size=8)
    mb = sgd.minibatch_gradients("dpo", pol, torch.tensor(theta), pairs, beta=1.0, hyper=0.0,
                                 batch_size=8, n_batches=3000, rng=np.random.default_rng(4))
    est = float(np.sum((mb - mb.mean(0)) ** 2) / (len(mb) - 1))
    assert est == pytest.approx(exact, rel=MC_RTOL)
    # the mean minibatch gradient is unbiased for the full gradient
    full = per_pair.mean(0)
    assert np.linalg.norm(mb.mean(0) - full) < 4 * np.sqrt(exact / 3000)


def test_stability_runner_deterministic(tmp_path):
    cfg = bs.StabilityConfig(name="t", seed=9, settings=(EnvSpec("u", n_states=3, n_actions=3,
                                                                 dim=2),),
                             archs=(Arch(0), Arch(1, 3)), alphas=(1.0, 0.5), rho=(0.1,),
                             tau=(0.5,), n=100, batch_size=8, steps=6, every=3, n_batches=3,
                             seeds=1)
    a = pd.read_csv(bs.main(cfg, tmp_path / "a") / "records.csv").drop(columns="seconds")
    b = pd.read_csv(bs.main(cfg, tmp_path / "b") / "records.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 2 * 2 * 3 * 3  # alphas x archs x (dpo, wdpo, kldpo) x 3 checkpoints
    assert (a[a.method == "dpo"].penalty == 0).all()
    assert (a[a.method == "kldpo"].penalty >= -1e-12).all()   # robust premium >= 0
    with pytest.raises(ValueError, match="methods"):
        bs.StabilityConfig(settings=cfg.settings, methods=("sgd",))
