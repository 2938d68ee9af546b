"""The tau calibration runner: deterministic under a seed, resumable, config validation,
and the exact identity that KLDPO(tau) minimises the sample worst case at rho(tau)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loglinear.experiments.beyond import tau as bt
from loglinear.experiments.beyond.common import EnvSpec, environment
from loglinear.experiments.config import load_config
from loglinear.robust import solve_kl

SPEC = EnvSpec("u", n_states=4, n_actions=3, dim=2, reward_scale=3.0)


def small(**kw) -> bt.TauConfig:
    base = dict(name="t", seed=3, settings=(SPEC,), n=(300,), seeds=2, n_tau=3,
                max_iter=40)
    return bt.TauConfig(**{**base, **kw})


def _read(out):
    return pd.read_csv(out / "records.csv").drop(columns="seconds")


def test_deterministic_under_seed_and_resumable(tmp_path):
    a = _read(bt.main(small(), tmp_path / "a"))
    b = _read(bt.main(small(), tmp_path / "b"))
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 2 * (3 + 4)  # per seed: dpo + 3 taus + rule, val, noise
    again = _read(bt.main(small(), tmp_path / "a"))  # resume: nothing added
    pd.testing.assert_frame_equal(a, again)
    c = _read(bt.main(small(seed=4), tmp_path / "c"))
    assert not np.allclose(a.worst_sample.to_numpy(), c.worst_sample.to_numpy())


def test_kldpo_row_is_the_exact_kl_dro_solution_at_its_implied_radius(tmp_path):
    cfg = small(seeds=1, n_tau=2)
    rows = bt.unit_rows(cfg, SPEC, 300, 0)
    env = environment(SPEC, cfg.seed)
    from loglinear.experiments.beyond.common import row_rng

    data = env.sample_counts(300, row_rng(cfg.seed, SPEC.name, 300, 0))
    row = next(r for r in rows if r["method"] == "kldpo" and r["tau"] == 10.0)
    exact = solve_kl(data, beta=env.beta, radius=row["implied_radius"])
    # the worst case at the implied radius of the KLDPO solution equals the exact optimum
    from loglinear.robust import kl_value

    tau_theta = exact.theta
    assert kl_value(tau_theta, data, beta=env.beta, radius=row["implied_radius"]).dual == \
        pytest.approx(10.0, rel=1e-5)


@pytest.mark.parametrize("bad", [dict(tau_min=0.0), dict(min_ess=1.5), dict(settings=()),
                                 dict(alphas=(1.2,)), dict(eval_radius=0.0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        small(**bad)


def test_default_toml_parses():
    cfg = load_config(bt.TauConfig, "simulations/beyond_tau.toml")
    assert cfg.taus[0] == pytest.approx(0.01) and cfg.taus[-1] == pytest.approx(10.0)
    assert {s.name for s in cfg.settings} == {"uniform", "concentrated"}
    with pytest.warns(DeprecationWarning, match="load_config"):
        assert bt.TauConfig.from_toml("simulations/beyond_tau.toml") == cfg


def test_cli_loads_the_config_and_the_old_entry_points_still_work(tmp_path):
    from loglinear.cli import main as cli_main

    path = tmp_path / "tau.toml"
    path.write_text('name = "t"\nseed = 3\nn = [300]\nseeds = 1\nn_tau = 2\nmax_iter = 20\n'
                    '[env]\nn_states = 4\nn_actions = 3\ndim = 2\nreward_scale = 3.0\n'
                    '[[setting]]\nname = "u"\n')
    assert cli_main(["beyond", "tau", "--config", str(path), "--out",
                     str(tmp_path / "cli")]) == 0
    cli = _read(tmp_path / "cli")
    assert load_config(bt.TauConfig, path) == small(seeds=1, n_tau=2, max_iter=20)
    with pytest.warns(DeprecationWarning, match="config path"):
        pd.testing.assert_frame_equal(_read(bt.main(path, tmp_path / "path")), cli)
    with pytest.warns(DeprecationWarning, match="tau.main"):
        assert bt.run(small(seeds=1, n_tau=2, max_iter=20), tmp_path / "cli") == \
            tmp_path / "cli" / "records.csv"


def test_selectors_shifts_and_validation_split():
    from scipy.stats import chi2


    cfg = small(seeds=1, n_tau=3, shifts=3)
    rows = bt.unit_rows(cfg, SPEC, 300, 0)
    by = {r["method"]: r for r in rows if r["method"] in ("dpo", "rule", "val", "noise")}
    # the noise selector's implied radius is the sampling-noise radius chi2_1(0.95) / (2n)
    assert by["noise"]["implied_radius"] == pytest.approx(chi2.ppf(0.95, 1) / 600, rel=1e-5)
    # the val selector returns one of the full-sample candidates (DPO or a grid tau)
    cands = [r for r in rows if r["method"] in ("dpo", "kldpo")]
    same = [r for r in cands if r["tau"] == by["val"]["tau"]]
    assert len(same) == 1 and same[0]["regret_a50"] == by["val"]["regret_a50"]
    assert by["val"]["val_loss"] > 0
    # regret_aXX is the mean over the shift directions, which differ
    for r in cands + list(by.values()):
        per = [r[f"regret_a50_s{k}"] for k in range(3)]
        assert r["regret_a50"] == pytest.approx(np.mean(per), abs=1e-14)
    assert np.ptp([by["dpo"][f"regret_a0_s{k}"] for k in range(3)]) > 1e-3


def test_validation_split_conserves_counts():
    env = environment(SPEC, 3)
    data = env.sample_counts(500, np.random.default_rng(1))
    counts = np.rint(data.weight * 500).astype(int)
    rng = np.random.default_rng(2)
    train, held = bt.validation_split(data, 500, 0.3, rng)
    held_counts = np.random.default_rng(2).binomial(counts, 0.3)
    n_held = held_counts.sum()
    assert held.weight == pytest.approx(held_counts[held_counts > 0] / n_held)
    train_counts = counts - held_counts
    assert train.weight == pytest.approx(train_counts[train_counts > 0] / (500 - n_held))
    with pytest.raises(ValueError, match="empty"):
        bt.validation_split(data, 500, 1e-12, np.random.default_rng(0))


def test_labelled_env_is_the_one_builder():
    from loglinear.experiments.beyond.common import labelled_env, mixture, shifted_reward

    env = environment(SPEC, 3)
    assert labelled_env(SPEC, 3) is env
    half = labelled_env(SPEC, 3, 0.5, shift=2)
    np.testing.assert_allclose(half.reward, 0.5 * env.reward
                               + 0.5 * shifted_reward(SPEC, 3, 2), atol=1e-14)
    np.testing.assert_allclose(mixture(SPEC, 3, 0.0, 1), shifted_reward(SPEC, 3, 1))
    assert not np.allclose(shifted_reward(SPEC, 3, 0), shifted_reward(SPEC, 3, 1))
