"""The 3D study's label noise, relative dispersion, hyperparameter sweeps and summaries:
frequencies against the preference model's probabilities, hand-computed trajectories, and
the eta = 0 equivalence of KLDPO with DPO (and its breaking under label noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit

from loglinear.experiments.three_d import analysis, summary
from loglinear.experiments.three_d.config import (
    Method,
    ThreeDConfig,
    Thresholds,
    ToyConfig,
    Variant,
    expand_sweep,
)
from loglinear.experiments.three_d.dynamics import train
from loglinear.experiments.three_d.run import draw_labels, label_scale, toy_setting

pd = pytest.importorskip("pandas")
# a frequency more than this many binomial standard deviations from its probability fails
BINOMIAL_SDS = 4.5


def _pair_frequencies(setting):
    """Per designed pair (state, a1, a2): the share of its labels that prefer a1."""
    d = setting.data
    frame = pd.DataFrame({"s": d.state, "a1": d.a1, "a2": d.a2, "y": d.y, "w": d.weight})
    up = frame.assign(w1=frame.w * frame.y).groupby(["s", "a1", "a2"])[["w1", "w"]].sum()
    return (up.w1 / up.w).to_numpy()


def test_label_scale_is_the_flip_probability_in_closed_form():
    for flip in (0.01, 0.1, 0.25, 0.4):
        assert expit(-label_scale(flip) * 2.0) == pytest.approx(flip, rel=1e-12)
        assert label_scale(flip, reward_gap=1.0) == pytest.approx(math.log((1 - flip) / flip))
    with pytest.raises(ValueError, match="label_flip"):
        label_scale(0.5)


def test_draw_labels_frequencies_match_probabilities():
    prob = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    m = 20000
    k = draw_labels(np.random.default_rng(3), prob, m)
    sd = np.sqrt(prob * (1 - prob) / m)
    assert np.all(np.abs(k / m - prob) <= BINOMIAL_SDS * sd + 1e-12)
    assert k[0] == 0 and k[-1] == m
    with pytest.raises(ValueError, match="probabilities"):
        draw_labels(np.random.default_rng(0), [1.2], 5)


@pytest.mark.parametrize("flip", [0.1, 0.25])
def test_toy_labels_follow_the_preference_model(flip):
    m, n_states = 40, 150
    setting = toy_setting(np.random.default_rng(11), scenario="on-off", n_states=n_states,
                          label_flip=flip, labels_per_pair=m)
    freq = _pair_frequencies(setting)
    n_pairs = n_states * 2
    assert freq.size == n_pairs
    p = 1.0 - flip   # sigma(kappa (r+ - r-)) with the reward gap 2
    # the mean frequency over all n_pairs * m labels, and the spread of the per-pair counts
    assert abs(freq.mean() - p) <= BINOMIAL_SDS * math.sqrt(p * (1 - p) / (n_pairs * m))
    var_k = np.var(freq * m, ddof=1)
    want = m * p * (1 - p)
    assert abs(var_k - want) <= BINOMIAL_SDS * want * math.sqrt(2 / (n_pairs - 1)) + 1.0
    # the environment and the pairs are those of the deterministic draw; only labels differ
    clean = toy_setting(np.random.default_rng(11), scenario="on-off", n_states=n_states,
                        labels_per_pair=m)
    np.testing.assert_array_equal(clean.env.reward, setting.env.reward)
    assert np.all(clean.data.y == 1) and np.allclose(clean.data.weight, 1 / n_pairs)
    assert set(zip(setting.data.a1, setting.data.state)) == set(zip(clean.data.a1,
                                                                  clean.data.state))


def test_diagnostics_follow_the_designed_pair_under_noise():
    setting = toy_setting(np.random.default_rng(2), scenario="on-on", label_flip=0.25)
    assert np.any(setting.data.y == 0)   # some rows prefer the designed rejected response
    np.testing.assert_array_equal(setting.favoured, setting.data.a1)
    frame = train(setting, "dpo", params={"beta": 0.5}, lr=1.0, steps=0).frame()
    pi = setting.env.policy(setting.env.theta_ref)
    q = setting.data.weight
    assert frame["p_chosen"].iloc[0] == pytest.approx(q @ pi[setting.states, setting.data.a1])
    assert frame["p_rejected"].iloc[0] == pytest.approx(q @ pi[setting.states,
                                                              setting.data.a2])


def test_relative_dispersion_on_a_hand_computed_trajectory():
    u = [0.8, 0.86, 0.9, 0.78]
    # (U - 0.8) / 0.2
    np.testing.assert_allclose(analysis.relative_dispersion(u), [0.0, 0.3, 0.5, -0.1],
                               atol=1e-12)
    rows = [{"sharing": 0.0, "scenario": "off-off", "method": "M", "step": s,
             "p_chosen": 0.2, "p_rejected": 0.3, "unseen_mass": v, "reward": 0.0, "kl": 0.0,
             "identity_rel_err": 0.0} for s, v in zip([0, 10, 20, 30], u)]
    on = analysis.property_onsets(rows, Thresholds(disperse_share=0.4,
                                                   disperse_delta=0.05))[0]
    assert on["disperse_step"] == 20         # D = 0.5 >= 0.4 (0.3 is not)
    assert on["disperse_abs_step"] == 10     # 0.86 >= 0.8 + 0.05
    assert on["dispersion_peak"] == pytest.approx(0.5)
    # near the ceiling the absolute rule cannot fire, the relative one can
    high = analysis.relative_dispersion([0.96, 0.97, 0.98])
    assert high[-1] == pytest.approx(0.5) and 0.98 < 0.96 + 0.05
    with pytest.raises(ValueError, match="starts in"):
        analysis.relative_dispersion([1.0, 1.0])


def test_kl_methods_equal_dpo_at_eta0_only_without_label_noise():
    def gap(flip):
        setting = toy_setting(np.random.default_rng(5), scenario="off-on", sharing=0.0,
                              label_flip=flip)
        rows = []
        for name, params in (("dpo", {"beta": 0.5}), ("kldpo-paper", {"beta": 0.5,
                                                                      "tau": 1.0})):
            rows += train(setting, name, params=params, lr=1.0, steps=200, record_every=20,
                          tags={"sharing": 0.0, "scenario": "off-on",
                                "method": "DPO" if name == "dpo" else "K"}).records
        return summary.trajectory_gap(pd.DataFrame(rows), "K")

    assert gap(0.0) < 1e-9     # interchangeable pairs: equal losses, uniform weights
    assert gap(0.25) > 1e-3    # unequal label counts: unequal losses, KLDPO departs


def test_sweep_expansion_and_variant_validation():
    methods = expand_sweep({"label": "KLDPO (tau={tau:g})", "objective": "kldpo-paper",
                            "params": {"beta": 0.5}, "sweep": {"tau": [0.1, 1.0]}})
    assert [m.label for m in methods] == ["KLDPO (tau=0.1)", "KLDPO (tau=1)"]
    assert methods[1] == Method("KLDPO (tau=1)", "kldpo-paper", {"beta": 0.5, "tau": 1.0})
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        expand_sweep({"label": "x {rho}", "objective": "dpo", "sweep": {"beta": [1.0]}})
    with pytest.raises(ValueError, match="one hyperparameter"):
        expand_sweep({"label": "x", "objective": "dpo-sft",
                      "sweep": {"beta": [1.0], "sft_weight": [1.0]}})
    assert Variant(label_flip=0.1, methods=("DPO",)).name == "label flip 0.1"
    assert Variant("adam", 0.02, ("DPO",)).name == "adam lr=0.02"
    with pytest.raises(ValueError, match="changes"):
        Variant(methods=("DPO",))
    with pytest.raises(ValueError, match="label_flip"):
        Variant(label_flip=0.5, methods=("DPO",))
    with pytest.raises(ValueError, match="toy.extra"):
        ToyConfig(extra=({"name": "x", "scenario": "off-off", "nope": 1},))
    with pytest.raises(ValueError, match="differ from"):
        ToyConfig(extra=({"name": "on-on", "scenario": "off-off"},))
    cfg = ThreeDConfig.from_dict({"methods": [{"label": "DPO", "objective": "dpo",
                                               "params": {"beta": 0.5}}],
                                  "toy": {"extra": [{"name": "wide", "scenario": "off-off",
                                                     "n_on_policy": 1}]}})
    assert cfg.toy.settings()[-1] == ("wide", "off-off", {"n_on_policy": 1})


def test_extra_setting_starts_with_little_unseen_mass():
    setting = toy_setting(np.random.default_rng(0), scenario="off-off", n_on_policy=1,
                          ref_gap=1.0, pairs_per_state=4)
    pi = setting.env.policy(setting.env.theta_ref)
    u0 = setting.unseen_mass(pi)
    # one on-policy (e / (e + 9)) and one off-policy (1 / (e + 9)) response are unseen
    np.testing.assert_allclose(u0, (math.e + 1) / (math.e + 9), rtol=1e-12)


def test_summaries_by_hand():
    onsets = [
        {"method": "DPO", "sharing": 0.0, "scenario": "on-on", "drop_step": 10,
         "degrade_step": None, "disperse_step": None, "disperse_abs_step": 20,
         "reward_end": 0.5, "kl_end": 1.0, "log10_p_rejected_end": -4.0, "p_rejected_0": 0.2,
         "p_rejected_end": 0.002, "unseen_0": 0.5, "unseen_peak": 0.6,
         "dispersion_peak": 0.2},
        {"method": "M", "sharing": 0.0, "scenario": "on-on", "drop_step": None,
         "degrade_step": None, "disperse_step": 30, "disperse_abs_step": None,
         "reward_end": 0.7, "kl_end": 0.5, "log10_p_rejected_end": -1.0, "p_rejected_0": 0.2,
         "p_rejected_end": 0.1, "unseen_0": 0.5, "unseen_peak": 0.5,
         "dispersion_peak": 0.0}]
    rows = summary.method_summary(onsets, [Method("DPO", "dpo", {"beta": 0.5}),
                                           Method("M", "ipo", {"beta": 0.5})])
    assert rows[1]["drop_step"] == 0 and rows[1]["disperse_step"] == 1 and rows[1]["n"] == 1
    assert rows[1]["d_reward"] == pytest.approx(0.2) and rows[1]["d_kl"] == pytest.approx(-0.5)
    assert math.isnan(rows[0]["d_reward"])
    noise = summary.noise_summary({0.1: onsets})
    assert noise[0]["p_rejected_ratio"] == pytest.approx(0.01)
    disp = summary.dispersion_by_scenario(onsets)
    assert disp == [{"scenario": "on-on", "n": 1, "unseen_0_min": 0.5, "unseen_0_max": 0.5,
                     "rise_max": pytest.approx(0.1), "dispersion_peak": 0.2,
                     "n_relative": 0, "n_absolute": 1}]


def test_lm_traces_are_gathered_per_method_and_seed(tmp_path):
    for method, seed, end in (("dpo", 0, -3.0), ("dpo", 1, -5.0), ("wdpo-paper_10", 0, 1.0)):
        d = tmp_path / "runs" / method / f"seed{seed}"
        d.mkdir(parents=True)
        pd.DataFrame({"step": [0, 1, 2], "chosen_logratio": [0.0, 2.0, end],
                      "rejected_logratio": [0.0, -1.0, 2 * end - 4],
                      "loss": [0.69, 0.5, 0.1]}).to_csv(d / "train_log.csv", index=False)
    traces = summary.gather_lm_traces(tmp_path)
    assert set(traces["method"]) == {"dpo", "wdpo-paper:10"} and len(traces) == 9
    rows = {r["method"]: r for r in summary.lm_summary(traces)}
    assert rows["dpo"]["n_seeds"] == 2 and rows["dpo"]["chosen_logratio_mean"] == -4.0
    assert (rows["dpo"]["chosen_logratio_min"], rows["dpo"]["chosen_logratio_max"]) == (-5, -3)
    assert rows["dpo"]["chosen_peak"] == 2.0
    with pytest.raises(FileNotFoundError, match="llm-shift"):
        summary.gather_lm_traces(tmp_path / "nothing")
