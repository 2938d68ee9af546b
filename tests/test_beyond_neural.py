"""The neural study's random-init fits: they start away from pi* and, in a well-specified
convex case, reach the same optimum as the local fit from pi*."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from loglinear.experiments.beyond import analysis_neural  # noqa: E402
from loglinear.experiments.beyond import neural as bn  # noqa: E402
from loglinear.experiments.beyond.common import EnvSpec, environment  # noqa: E402

SPEC = EnvSpec("u", n_states=4, n_actions=3, dim=2, reward_scale=2.0)
SAME_POLICY_TV = 1e-5      # L-BFGS at gtol 1e-9 on a strictly convex objective
SAME_ERROR = 1e-4


def small(**kw) -> bn.NeuralConfig:
    base = dict(name="t", seed=5, settings=(SPEC,), archs=(bn.Arch(0), bn.Arch(1, 3)),
                n=(200, 800), seeds=2, restarts=2, sample_restarts=3, max_iter=300,
                gtol=1e-9)
    return bn.NeuralConfig(**{**base, **kw})


def test_random_init_starts_away_from_the_optimum_and_reaches_it_loglinear():
    cfg = small()
    arch = bn.Arch(0)
    _, params_star = bn.population_targets(cfg, SPEC, arch)
    row = bn.sample_row(cfg, SPEC, arch, 800, 0, params_star)
    # the initial policies differ from pi* (the optimum of the same architecture)
    assert row["init_tv"] > 0.01
    # depth 0 is the convex log-linear DPO: every restart reaches the local fit's optimum
    assert row["restarts_reached"] == cfg.sample_restarts == row["sample_restarts"]
    assert row["tv_random_to_local"] < SAME_POLICY_TV
    assert row["error_random"] == pytest.approx(row["error"], abs=SAME_ERROR)
    assert row["objective_random"] == pytest.approx(row["objective"], abs=1e-9)


def test_init_policy_tv_is_the_distance_of_the_first_restart_init():
    """init_tv against an independent computation of the initial policies."""
    from loglinear.experiments.beyond.common import row_rng

    cfg = small(sample_restarts=2)
    arch = bn.Arch(1, 3)
    _, params_star = bn.population_targets(cfg, SPEC, arch)
    row = bn.sample_row(cfg, SPEC, arch, 200, 1, params_star)
    env = environment(SPEC, cfg.seed)
    pol = bn._policy(arch, env.dim)
    pi_star = pol.policy(params_star, env.features)
    tvs = []
    for r in range(2):
        p0 = pol.init(row_rng(cfg.seed, SPEC.name, arch.name, 200, 1, "sample-init", r),
                      scale=cfg.init_scale)
        pi0 = pol.policy(p0, env.features)
        tvs.append(float(env.state_dist @ (0.5 * np.abs(pi_star - pi0).sum(1))))
    assert row["init_tv"] == pytest.approx(min(tvs), rel=1e-12)
    assert row["init_tv"] > 0
    assert 0 <= row["restarts_reached"] <= 2


def test_reach_table_by_hand():
    import pandas as pd

    df = pd.DataFrame(dict(
        setting="s", arch="a", error_random=[0.1, 0.2, 0.3],
        restarts_reached=[4, 0, 2], sample_restarts=4,
        tv_random_to_local=[1e-6, 0.2, 1e-5], objective=[1.0, 1.0, 1.0],
        objective_random=[1.0, 1.0 - 1e-9, 1.0], init_tv=[0.3, 0.4, 0.5]))
    (r,) = analysis_neural.reach_table(df, reach_tv=1e-3, reach_gap=1e-6)
    assert (r["reached"], r["restarts"], r["samples_none"], r["samples_flat"]) == (6, 12, 1, 1)
    assert r["share"] == pytest.approx(0.5) and r["init_tv_min"] == pytest.approx(0.3)


@pytest.mark.parametrize("bad", [dict(sample_restarts=-1), dict(reach_tv=0.0),
                                 dict(reach_gap=-1.0)])
def test_config_validation(bad):
    with pytest.raises(ValueError, match="sample_restarts|reach"):
        small(**bad)
