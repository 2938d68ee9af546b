"""The 3D-properties study: toy construction, config, onset detection, report, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import FLOAT64_TOL

from loglinear.cli import main as cli_main
from loglinear.experiments.config import load_config
from loglinear.experiments.three_d import analysis
from loglinear.experiments.three_d.analysis import load_records, property_onsets
from loglinear.experiments.three_d.config import (
    SCENARIOS,
    LMConfig,
    Method,
    ThreeDConfig,
    Thresholds,
    Variant,
)
from loglinear.experiments.three_d.dynamics import train
from loglinear.experiments.three_d.run import toy_setting

CONFIG = Path(__file__).resolve().parents[1] / "simulations" / "three_d.toml"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_toy_scenarios_put_pairs_where_they_say(scenario):
    setting = toy_setting(np.random.default_rng(0), scenario=scenario, sharing=0.5,
                          ref_gap=3.0, n_on_policy=4)
    env = setting.env
    pi_ref = env.policy(env.theta_ref)
    on = np.exp(3.0) / (4 * np.exp(3.0) + 6)  # reference probability of an on-policy response
    off = 1.0 / (4 * np.exp(3.0) + 6)
    want = {"on": on, "off": off}
    c_role, r_role = scenario.split("-")
    np.testing.assert_allclose(pi_ref[setting.states, setting.chosen], want[c_role],
                               rtol=1e-12)
    np.testing.assert_allclose(pi_ref[setting.states, setting.rejected], want[r_role],
                               rtol=1e-12)
    # 2 pairs per prompt, 4 distinct seen responses, rewards +1/-1 on them
    assert setting.seen.sum(axis=1).tolist() == [4] * env.n_states
    assert np.all(env.reward[setting.states, setting.chosen] == 1.0)
    assert np.all(env.reward[setting.states, setting.rejected] == -1.0)
    # the data's offsets are the reference log-ratios (the core's default convention)
    x = setting.data.x
    np.testing.assert_allclose(setting.data.offset, x @ env.theta_ref, atol=FLOAT64_TOL)


def test_toy_rejects_impossible_scenarios():
    with pytest.raises(ValueError, match="needs 4 on-policy"):
        toy_setting(np.random.default_rng(0), scenario="on-on", n_on_policy=3)
    with pytest.raises(ValueError, match="scenario"):
        toy_setting(np.random.default_rng(0), scenario="on-maybe")
    with pytest.raises(ValueError, match="sharing"):
        toy_setting(np.random.default_rng(0), scenario="on-on", sharing=1.0)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_tabular_dpo_never_degrades_the_chosen_mass(scenario):
    """Gradient-flow theorem (report): with one-hot features the chosen mass per prompt
    is nondecreasing; a small learning rate follows the flow."""
    setting = toy_setting(np.random.default_rng(1), scenario=scenario, sharing=0.0)
    frame = train(setting, "dpo", params={"beta": 0.5}, lr=0.5, steps=600).frame()
    assert np.all(np.diff(frame["p_chosen"]) >= -1e-12)
    assert frame["p_rejected"].iloc[-1] < 0.1 * frame["p_rejected"].iloc[0]


def test_shared_features_reproduce_degradation_and_dispersion():
    """The paper's observation in the shared-parameter toy (eta = 0.8, on-on), with the
    draw the study uses (SeedSequence(0).spawn(4)[0]); it depends on how responses overlap
    across prompts, so other draws may show only the drop and dispersion."""
    seed = np.random.SeedSequence(0).spawn(4)[0]
    setting = toy_setting(np.random.default_rng(seed), scenario="on-on", sharing=0.8)
    frame = train(setting, "dpo", params={"beta": 0.5}, lr=1.0, steps=1500,
                  record_every=10, tags={"sharing": 0.8, "scenario": "on-on",
                                         "method": "DPO"}).frame()
    on = property_onsets(frame, Thresholds())[0]
    assert on["drop_step"] is not None
    assert on["degrade_step"] is not None
    assert on["disperse_step"] is not None


def test_property_onsets_on_hand_built_records():
    steps = [0, 10, 20, 30]
    rows = [{"sharing": 0.0, "scenario": "on-on", "method": "M", "step": s, "p_chosen": pc,
             "p_rejected": pr, "unseen_mass": u, "reward": 0.0, "kl": 0.0,
             "identity_rel_err": 0.0}
            for s, pc, pr, u in zip(steps, [0.2, 0.5, 0.46, 0.44], [0.3, 0.1, 0.03, 0.01],
                                    [0.1, 0.12, 0.16, 0.2])]
    on = property_onsets(rows, Thresholds(drop_ratio=0.1, degrade_ratio=0.9,
                                          disperse_delta=0.05, disperse_share=0.1))[0]
    assert on["drop_step"] == 20          # 0.03 <= 0.1 * 0.3
    assert on["degrade_step"] == 30       # 0.44 < 0.9 * 0.5 (0.46 is not)
    assert on["disperse_step"] == 30      # (0.2 - 0.1) / 0.9 >= 0.1 ((0.16 - 0.1) / 0.9 not)
    assert on["disperse_abs_step"] == 20  # 0.16 >= 0.1 + 0.05
    assert on["p_chosen_peak"] == 0.5


def _onset(method, sharing, scenario, drop, degrade, disperse, reward_end=0.0, kl_end=0.0):
    return {"method": method, "sharing": sharing, "scenario": scenario, "drop_step": drop,
            "degrade_step": degrade, "disperse_step": disperse, "reward_end": reward_end,
            "reward_best": reward_end, "kl_end": kl_end}


def test_delays_and_costs_against_dpo_by_hand():
    onsets = [_onset("DPO", 0.0, "on-on", 10, None, 30, reward_end=0.5, kl_end=1.0),
              _onset("DPO", 0.5, "on-on", 20, 40, None, reward_end=0.2, kl_end=2.0),
              _onset("M", 0.0, "on-on", 20, 50, None, reward_end=0.7, kl_end=0.5),
              _onset("M", 0.5, "on-on", 20, None, 60, reward_end=0.1, kl_end=1.0),
              _onset("N", 0.8, "off-off", 5, None, None)]
    assert analysis.delay_counts(onsets, "M", "drop_step") == dict(
        earlier=0, later=1, same=1, new=0, removed=0)
    assert analysis.delay_counts(onsets, "M", "degrade_step") == dict(
        earlier=0, later=0, same=0, new=1, removed=1)
    assert analysis.delay_counts(onsets, "M", "disperse_step") == dict(
        earlier=0, later=0, same=0, new=1, removed=1)
    table = analysis.delay_table(onsets, ["DPO", "M"])
    assert [r["method"] for r in table] == ["M"] and set(table[0]) == {"method", *analysis.KEYS}
    assert analysis.count_onsets(onsets, "DPO", "degrade_step") == (1, 2)
    assert analysis.settings_with(onsets, "DPO", "degrade_step") == [(0.5, "on-on")]
    cost = {(c["method"], c["sharing"]): c["delta_reward"] for c in analysis.reward_cost(onsets)}
    assert cost[("M", 0.0)] == pytest.approx(0.2) and cost[("M", 0.5)] == pytest.approx(-0.1)
    assert np.isnan(cost[("N", 0.8)])  # no DPO run in that setting
    assert sorted(analysis.versus_dpo(onsets, "M", "kl_end")) == [-1.0, -0.5]


def test_config_file_parses_and_validates():
    cfg = load_config(ThreeDConfig, CONFIG)
    assert cfg.methods[0].objective == "dpo"
    assert {m.objective for m in cfg.methods} >= {"dpo", "flex-dpo", "dpo-sft"}
    with pytest.raises(ValueError, match="takes"):
        Method("x", "dpo", {"tau": 1.0})
    with pytest.raises(ValueError, match="unknown config sections"):
        ThreeDConfig.from_dict({"nope": {}})
    with pytest.raises(ValueError, match="at least one"):
        ThreeDConfig.from_dict({})
    assert cfg.variants and set(cfg.variants[0].methods) <= {m.label for m in cfg.methods}
    with pytest.raises(ValueError, match="variant"):
        replace(cfg, variants=(Variant("adam", 0.1, ("nope",)),))
    with pytest.warns(DeprecationWarning, match="load_config"):
        assert ThreeDConfig.from_toml(CONFIG) == cfg


def test_study_writes_records_and_report_regenerates_from_them(tmp_path):
    import pandas as pd

    cfg = load_config(ThreeDConfig, CONFIG)
    lm_study = tmp_path / "shift"
    for seed in (0, 1):
        (lm_study / "runs" / "dpo" / f"seed{seed}").mkdir(parents=True)
        pd.DataFrame({"step": [0, 1], "chosen_logratio": [0.0, -1.0 - seed],
                      "rejected_logratio": [0.0, -3.0], "loss": [0.69, 0.4]}).to_csv(
            lm_study / "runs" / "dpo" / f"seed{seed}" / "train_log.csv", index=False)
    keep = ("DPO", "Flex-DPO (b-=0.1)", "DPO+SFT (c=0.2)", "KLDPO paper (tau=1)")
    cfg = replace(cfg, training=replace(cfg.training, steps=30, record_every=10),
                  toy=replace(cfg.toy, sharing=(0.0,), scenarios=("off-on",), extra=()),
                  methods=tuple(m for m in cfg.methods if m.label in keep),
                  variants=(Variant("adam", 0.05, ("DPO",)),
                            Variant(label_flip=0.2, methods=("DPO", "KLDPO paper (tau=1)"))),
                  lm=LMConfig(str(lm_study)))
    from loglinear.experiments.three_d.run import main
    from loglinear.report.three_d import build

    rec = tmp_path / "three_d"
    assert main(cfg, rec) == rec
    report = build(rec)
    assert report == tmp_path / "three_d.md"
    assert not (rec / "records.jsonl").exists()
    frame = load_records(rec, variants=True)
    # 4 methods + 1 Adam variant + 2 label-noise runs, steps {0, 10, 20, 30}
    assert len(frame) == (4 + 1 + 2) * 4
    assert sorted(set(frame["run"])) == ["adam lr=0.05", "label flip 0.2", "main"]
    assert set(frame.loc[frame["run"] == "label flip 0.2", "label_flip"]) == {0.2}
    assert len(pd.read_csv(rec / "lm_traces.csv")) == 4
    assert set(load_records(rec)["run"]) == {"main"}
    assert frame["step"].iloc[0] == 0 and frame["kl"].iloc[0] == 0.0
    assert json.loads((rec / "config.json").read_text())["training"]["steps"] == 30
    text = report.read_text()
    assert "When each property appears" in text and "Flex-DPO" in text
    assert "### adam lr=0.05" in text and "### label flip" not in text
    assert text.startswith("# The 3D") and "**Changes since the previous version.**" in text
    assert "Label noise" in text and "Why the KL-type methods equal DPO" in text
    assert "- dpo (2 seeds, step 1)" in text and "nan" not in text
    assert (rec / "figures" / "lm_traces.png").stat().st_size > 0
    assert (rec / "figures" / "trajectories_eta0.png").stat().st_size > 0
    report.unlink()
    assert cli_main(["report", "three-d", str(rec)]) == 0
    assert report.read_text() == text
    # a second run into the same directory replaces the records
    main(replace(cfg, training=replace(cfg.training, steps=10), variants=(), lm=LMConfig()),
         rec)
    again = load_records(rec, variants=True)
    assert again["step"].max() == 10 and set(again["run"]) == {"main"}
    assert not (rec / "variants.parquet").exists() and not (rec / "lm_traces.csv").exists()


def test_trajectories_subset_for_notebooks():
    from loglinear.experiments.three_d.run import trajectories
    from loglinear.report.three_d import plot_gradient_ratio, plot_trajectories

    cfg = load_config(ThreeDConfig, CONFIG)
    df = trajectories(cfg, methods=["DPO", "DPO+SFT (c=0.2)"], sharing=[0.5],
                      scenarios=["on-off", "off-off, low unseen"], steps=40)
    assert set(df["method"]) == {"DPO", "DPO+SFT (c=0.2)"}
    assert df["step"].max() == 40 and set(df["sharing"]) == {0.5}
    assert set(df["scenario"]) == {"on-off", "off-off, low unseen"}
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_trajectories(df)
    assert len(fig.axes) == 3 * 2            # three panels per setting
    assert len(plot_gradient_ratio(df).axes[0].lines) == 2   # one line per DPO setting
    with pytest.raises(ValueError, match="unknown method labels"):
        trajectories(cfg, methods=["nope"])
