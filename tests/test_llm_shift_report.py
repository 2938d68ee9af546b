"""The preference-shift report's statistics, against hand computations.

Paired-by-seed differences and their Student-t intervals, the text-only degeneracy
statistics, the throughput spread; and the report rebuilt from the stored records."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from loglinear.experiments.llm_shift import analysis  # noqa: E402

# t_{0.975, 2}: Student's t with 2 degrees of freedom has the closed-form quantile
# t_p = (2p - 1) / sqrt(2 p (1 - p))
T_975_DF2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)
RECORDS = Path(__file__).resolve().parents[1] / "reports" / "llm_shift"


def _evals(rows):
    return pd.DataFrame(rows, columns=["method", "seed", "kind", "alpha", "reward"])


def test_paired_difference_matches_hand_computation():
    # per-seed differences at alpha 0.5: 0.1, 0.2, 0.4 -> mean 7/30, sd sqrt(0.07/3)
    dpo = [0.5, 0.1, 0.9]
    wdpo = [0.6, 0.3, 1.3]
    rows = [("dpo", s, "convex", 0.5, r) for s, r in enumerate(dpo)]
    rows += [("wdpo", s, "convex", 0.5, r) for s, r in enumerate(wdpo)]
    rows += [("wdpo", 0, "geometric", 0.5, 9.0), ("dpo", 0, "geometric", 0.5, 0.0)]
    out = analysis.paired_differences(_evals(rows), kind="convex")
    assert len(out) == 1
    r = out.iloc[0]
    mean = (0.1 + 0.2 + 0.4) / 3
    sd = math.sqrt(((0.1 - mean) ** 2 + (0.2 - mean) ** 2 + (0.4 - mean) ** 2) / 2)
    half = T_975_DF2 * sd / math.sqrt(3)
    assert r["diff"] == pytest.approx(mean, rel=1e-12)
    assert r["sd"] == pytest.approx(sd, rel=1e-12)
    assert (r["lo"], r["hi"]) == pytest.approx((mean - half, mean + half), rel=1e-9)
    assert r["n_seeds"] == 3 and not r["excludes_zero"]  # 0.233 - 0.379 < 0
    assert analysis.t_factor(3) == pytest.approx(T_975_DF2 / math.sqrt(3), rel=1e-9)


def test_pairing_removes_the_seed_effect():
    # the seeds move both methods alike: unpaired intervals overlap widely, but the
    # per-seed difference is always +0.05, so the paired interval is a point away from 0
    level = [0.1, 0.5, 0.9]
    rows = [("dpo", s, "convex", 1.0, v) for s, v in enumerate(level)]
    rows += [("kldpo", s, "convex", 1.0, v + 0.05) for s, v in enumerate(level)]
    r = analysis.paired_differences(_evals(rows), kind="convex").iloc[0]
    assert r["diff"] == pytest.approx(0.05) and r["half"] == pytest.approx(0.0, abs=1e-12)
    assert r["excludes_zero"]


def test_paired_difference_uses_shared_seeds_only_and_refuses_no_baseline():
    rows = [("dpo", 0, "convex", 0.0, 1.0), ("dpo", 1, "convex", 0.0, 2.0),
            ("ipo", 1, "convex", 0.0, 2.5), ("ipo", 2, "convex", 0.0, 9.0)]
    r = analysis.paired_differences(_evals(rows), kind="convex").iloc[0]
    assert r["n_seeds"] == 1 and r["diff"] == pytest.approx(0.5) and math.isnan(r["lo"])
    with pytest.raises(ValueError, match="no 'dpo' rows"):
        analysis.paired_differences(_evals(rows[2:]), kind="convex")


def test_paired_runs_kl():
    runs = pd.DataFrame({"method": ["dpo", "wdpo"] * 3, "seed": [0, 0, 1, 1, 2, 2],
                         "kl": [40.0, 30.0, 42.0, 36.0, 44.0, 30.0]})
    r = analysis.paired_runs(runs, "kl").iloc[0]
    d = np.array([-10.0, -6.0, -14.0])
    half = T_975_DF2 * d.std(ddof=1) / math.sqrt(3)
    assert r["diff"] == pytest.approx(-10.0)
    assert (r["lo"], r["hi"]) == pytest.approx((-10 - half, -10 + half), rel=1e-9)


def test_frontier_joins_kl_and_rewards():
    evals = _evals([("dpo", 0, "convex", 0.1, 0.4), ("dpo", 0, "convex", 1.0, 0.05),
                    ("dpo", 0, "geometric", 1.0, 9.0)])
    runs = pd.DataFrame({"method": ["dpo"], "seed": [0], "kl": [43.0], "kl_se": [1.0]})
    f = analysis.frontier(evals, runs, kind="convex", alphas=[0.1, 1.0])
    assert f.loc[0, "reward@0.1"] == 0.4 and f.loc[0, "reward@1"] == 0.05
    with pytest.raises(ValueError, match="alpha 0.5"):
        analysis.frontier(evals, runs, kind="convex", alphas=[0.5])


def test_text_degeneracy_by_hand():
    s = analysis.text_degeneracy("a b a b c")
    # bigrams (a b) (b a) (a b) (b c): the third repeats the first
    assert s == {"words": 5, "distinct": 3 / 5, "repeated_bigrams": 1 / 4, "malformed": 0.0}
    s = analysis.text_degeneracy("the cheerfulIt sky <<<ATT fell.")
    assert s["malformed"] == pytest.approx(2 / 5)
    assert math.isnan(analysis.text_degeneracy("   ")["distinct"])
    table = analysis.degeneracy_table({("dpo", 0): ["a b a b c", "fooBar x"],
                                       ("dpo", 1): ["plain words here"]})
    row = table.iloc[0]
    assert row["n_samples"] == 3 and row["any_malformed"] == pytest.approx(1 / 3)
    assert row["malformed"] == pytest.approx((0 + 0.5 + 0) / 3)


def test_throughput_spread_flags_noise():
    runs = pd.DataFrame({
        "method": ["reference", "dpo", "wdpo", "kldpo"] * 2, "seed": [0] * 4 + [1] * 4,
        "train_seconds": [0, 100, 200, 80, 0, 150, 310, 160],
        "pairs_per_s": [np.nan, 3.0, 1.5, 3.6, np.nan, 2.0, 1.0, 1.9]})
    spread = {r["method"]: r for r in analysis.throughput_spread(runs)}
    assert spread["wdpo"]["ratio_min"] == pytest.approx(0.5) and not spread["wdpo"]["noise"]
    assert (spread["kldpo"]["ratio_min"], spread["kldpo"]["ratio_max"]) == \
        pytest.approx((0.95, 1.2)) and spread["kldpo"]["noise"]
    assert spread["dpo"]["dpo_cv"] == pytest.approx(np.std([100, 150], ddof=1) / 125)


@pytest.mark.skipif(not (RECORDS / "cpu" / "eval.csv").exists(),
                    reason="the stored tiny-model study records are absent")
def test_report_rebuilds_from_records(tmp_path):
    pytest.importorskip("matplotlib")
    from loglinear.report import llm_shift as view

    study = tmp_path / "llm_shift" / "cpu"
    shutil.copytree(RECORDS / "cpu", study, ignore=shutil.ignore_patterns("cache", "*.png"))
    path = view.build(tmp_path / "llm_shift", tmp_path)
    text = path.read_text()
    assert text.splitlines()[2].startswith("**Changes since the previous version.**")
    assert "Paired differences to DPO" in text and "reward_kl.png" in text
    assert "Degeneracy of the samples" in text and "nan" not in text
    for name in ("alpha_sweep.png", "reward_kl.png", "training_logps.png"):
        assert (tmp_path / "llm_shift" / "cpu" / name).exists()


def test_fluency_table_by_hand():
    rows = [("reference", 0, -3.0), ("reference", 0, -2.0), ("reference", 1, -4.0),
            ("reference", 1, -3.0), ("dpo", 0, -6.0), ("dpo", 0, -5.0), ("dpo", 1, -9.0),
            ("dpo", 1, -7.0)]
    fl = pd.DataFrame(rows, columns=["method", "seed", "logp_per_token"])
    table, threshold = analysis.fluency_table(fl, quantile=0.5)
    assert threshold == pytest.approx(-3.0)   # median of the reference's samples
    dpo = table.set_index("method").loc["dpo"]
    # per-seed means: dpo -5.5, -8; reference -2.5, -3.5 -> differences -3, -4.5
    assert dpo["logp"] == pytest.approx(-6.75) and dpo["diff"] == pytest.approx(-3.75)
    assert dpo["below"] == 1.0
    # two seeds: t_{0.975, 1} = tan(pi (0.975 - 1/2)), half-width t * sd / sqrt(2)
    t1 = math.tan(math.pi * 0.475)
    sd = np.std([-3.0, -4.5], ddof=1)
    assert dpo["diff_hi"] - dpo["diff"] == pytest.approx(t1 * sd / math.sqrt(2), rel=1e-9)
    with pytest.raises(ValueError, match="reference"):
        analysis.fluency_table(fl[fl.method == "dpo"])


def test_matched_kl_against_a_hand_interpolation():
    from loglinear.experiments.llm_shift.analysis import matched_kl

    # per seed, DPO at two temperatures: (KL 1, reward 0.1) and (KL 4, reward 0.3); a method
    # at KL 2 sits halfway in log KL, where DPO's reward is 0.2
    front = pd.DataFrame({
        "method": ["dpo", "dpo:1", "wdpo"] * 3 + ["kldpo"] * 3,
        "seed": [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2],
        "kl": [4.0, 1.0, 2.0] * 3 + [8.0, 8.0, 2.0],
        "reward@1": [0.3, 0.1, 0.25, 0.3, 0.1, 0.21, 0.3, 0.1, 0.26, 0.5, 0.5, 0.2]})
    m = matched_kl(front, alphas=[1.0]).set_index("method")
    diffs = np.array([0.05, 0.01, 0.06])
    half = 4.302652729911275 * diffs.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2}
    assert m.loc["wdpo", "diff"] == pytest.approx(diffs.mean())
    assert m.loc["wdpo", "hi"] - m.loc["wdpo", "diff"] == pytest.approx(half)
    # KL 8 lies outside every seed's frontier: two seeds dropped, one kept (difference 0)
    assert m.loc["kldpo", "dropped"] == 2 and m.loc["kldpo", "n"] == 1
    assert m.loc["kldpo", "diff"] == pytest.approx(0.0, abs=1e-12)
    # one DPO temperature only: no frontier, no comparison
    assert matched_kl(front[front.method != "dpo:1"], alphas=[1.0]).empty
