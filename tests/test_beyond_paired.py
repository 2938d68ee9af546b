"""Seed-paired intervals and the stability/temperature comparisons against hand
computations and a brute-force enumeration of every bootstrap resample."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from loglinear.experiments.beyond import analysis_stability as st
from loglinear.experiments.beyond import analysis_tau as at
from loglinear.experiments.beyond import changes

BOOT_TOL = 0.05   # percentile of 2e5 resamples vs the exact resampling distribution


def _exact_quantiles(v, level=0.95):
    """Every one of the k^k equally likely resamples, their means, and the percentiles
    of that discrete distribution (numpy's default linear interpolation of a sample is
    replaced by the inverse CDF, which the large bootstrap approaches)."""
    means = np.sort([np.mean(c) for c in itertools.product(v, repeat=len(v))])
    cdf = np.arange(1, len(means) + 1) / len(means)
    q = lambda p: means[np.searchsorted(cdf, p)]  # noqa: E731
    return q((1 - level) / 2), q((1 + level) / 2)


def test_paired_interval_mean_by_hand_and_interval_by_enumeration():
    v = [0.0, 1.0, 2.0, 10.0]
    ci = st.paired_interval(v, rng=0, n_boot=200_000)
    assert ci["mean"] == pytest.approx(13 / 4, abs=1e-15) and ci["n"] == 4
    lo, hi = _exact_quantiles(v)
    assert ci["lo"] == pytest.approx(lo, abs=BOOT_TOL)
    assert ci["hi"] == pytest.approx(hi, abs=BOOT_TOL)


def test_paired_interval_extremes_by_hand():
    # three seeds: the smallest and largest resample means (all 1, all 4) each have
    # probability 1/27 > 2.5%, so they are the interval's ends
    ci = st.paired_interval([1.0, 2.0, 4.0], rng=1, n_boot=100_000)
    assert (ci["lo"], ci["hi"]) == (1.0, 4.0)
    assert st.paired_interval([0.5], rng=0) == dict(mean=0.5, lo=0.5, hi=0.5, n=1)


def test_paired_ratio_is_the_geometric_mean_of_per_seed_ratios():
    r = st.paired_ratio([2.0, 8.0], [1.0, 1.0], rng=0, n_boot=1000)
    assert r["ratio"] == pytest.approx(4.0, rel=1e-12)
    assert (r["lo"], r["hi"]) == (pytest.approx(2.0), pytest.approx(8.0))


@pytest.mark.parametrize("bad", [[], [1.0, np.nan]])
def test_paired_interval_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="finite"):
        st.paired_interval(bad, rng=0)


def _runs():
    """Two seeds; DPO, WDPO at two strengths (one collapsed on seed 1)."""
    rows = []
    for seed in (0, 1):
        for method, hyper, var, kl, loss in (("dpo", 0.0, 1.0, 0.10, 0.5),
                                             ("wdpo", 0.01, 2.0 * (1 + seed), 0.11, 0.55),
                                             ("wdpo", 0.2, 0.5, 0.01,
                                              math.log(2) - 0.001 if seed else 0.69)):
            for step in (0, 100, 200):
                rows.append(dict(alpha=1.0, arch="ll", method=method, hyper=hyper,
                                 seed=seed, step=step, grad_var=var, kl_ref=kl,
                                 loss=loss, clean_loss=loss))
    return pd.DataFrame(rows)


def test_stability_collapse_match_and_paired_ratio_by_hand():
    runs = st.run_table(_runs(), burn_in=100, collapse_tol=0.01)
    col = runs[runs.collapsed]
    # 0.69 is 0.0031 from log 2 and log 2 - 0.001 is 0.001 from it: both collapse
    assert sorted(zip(col.hyper, col.seed)) == [(0.2, 0), (0.2, 1)]
    front = st.frontier(runs, n_boot=500)
    weak = next(r for r in front if r["hyper"] == 0.01)
    assert weak["var_ratio"] == pytest.approx(math.sqrt(2.0 * 4.0))   # geometric mean
    assert weak["kl_ratio"] == pytest.approx(1.1)
    strong = next(r for r in front if r["hyper"] == 0.2)
    assert strong["collapsed"] == 2 and strong["n_seeds"] == 0
    (m,) = st.matched(front, match_rtol=0.25)
    assert m["hyper"] == 0.01 and m["matched"]
    assert st.matched(front, match_rtol=0.05)[0]["matched"] is False


def _tau_records():
    rows = []
    for seed, (d50, r50, d100, r100) in enumerate([(0.10, 0.05, 0.01, 0.02),
                                                   (0.12, 0.06, 0.01, 0.02),
                                                   (0.11, 0.07, 0.01, 0.02)]):
        for method, tau, a50, a100 in (("dpo", math.inf, d50, d100),
                                       ("rule", 1.0, r50, r100)):
            rows.append(dict(setting="s", n=100, seed=seed, method=method, tau=tau,
                             regret_a100=a100, regret_a50=a50, regret_a50_s0=a50,
                             regret_a50_s1=a50 + (0.1 if method == "rule" else 0.0)))
    return pd.DataFrame(rows)


def test_selector_cells_wins_losses_and_adoption_by_hand():
    cells = at.cells(_tau_records(), n_boot=2000)
    by = {(c["alpha"], c["shift"]): c for c in cells}
    assert set(by) == {(1.0, -1), (0.5, 0), (0.5, 1)}
    # direction 0: the rule is better on every seed by 0.05 on average
    assert by[(0.5, 0)]["diff"] == pytest.approx(-0.05) and by[(0.5, 0)]["wins"]
    # direction 1: worse by 0.05 on average, on every seed
    assert by[(0.5, 1)]["diff"] == pytest.approx(0.05) and by[(0.5, 1)]["loses"]
    v = at.verdicts(cells)["rule"]
    assert (v["wins"], v["losses"], v["cells"]) == (1, 1, 2)
    assert v["in_dist_ratio"] == pytest.approx(2.0) and v["adopt"] is False
    assert v["where"] == {("s", 100): [0.5]}


def test_changes_paragraph_from_headlines():
    prev = {"tau": dict(shifts=1, rule_worse50=6, cells50=6,
                        verdicts={"rule": dict(wins=9, losses=12, cells=24)})}
    new = {"tau": dict(shifts=4, rule_worse50=2, cells50=6,
                       verdicts={"rule": dict(wins=30, losses=40, cells=96),
                                 "noise": dict(wins=1, losses=0, cells=96)})}
    text = changes.changes_paragraph(prev, new)
    assert "1 shift direction(s) before, 4 now" in text
    assert "6 of 6 (setting, n) cells before and is in 2 of 6 now" in text
    assert "rule: 40 losses / 30 wins to DPO in 96 shifted cells (before: 12 / 9 in 24)" \
        in text
    assert "noise: 0 losses / 1 wins to DPO in 96 shifted cells (new)" in text
    assert "No previous version" in changes.changes_paragraph(None, new)
