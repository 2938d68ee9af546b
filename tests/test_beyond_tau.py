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
    assert len(a) == 2 * (3 + 2)  # per seed: dpo + 3 taus + rule
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
