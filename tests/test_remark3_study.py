"""The Remark 3 phase-diagram study: end to end on the quick config, resume, determinism,
the certificate against closed forms on an enumerable environment, and the analysis'
exponent on rows with a known slope."""

from __future__ import annotations

import itertools
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FLOAT64_TOL
from scipy.special import expit, logit
from scipy.stats import binom, multinomial

from loglinear import LogLinearEnv, cli
from loglinear.experiments.config import load_config
from loglinear.experiments.remark3 import FITS, Remark3Config, analysis, certificate, main
from loglinear.experiments.remark3.common import wilson
from loglinear.remark3 import predicted_exponent

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "simulations" / "remark3_quick.toml"
FULL = ROOT / "simulations" / "remark3.toml"
QUICK_BUDGET_S = 30.0
KEY = ["setting", "estimator", "a", "n", "seed"]


def _rows(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / "records.csv", keep_default_na=False, dtype=str)
    return df.drop(columns="seconds").sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    config = load_config(Remark3Config, QUICK)
    out = tmp_path_factory.mktemp("remark3") / "records"
    t0 = time.perf_counter()
    main(config, out, jobs=1, progress=False)
    return config, out, time.perf_counter() - t0


# ------------------------------------------------------------------ end to end
def test_quick_config_runs_end_to_end_and_reports(quick, tmp_path):
    config, out, seconds = quick
    rows = _rows(out)
    assert len(rows) == config.planned_rows() == 3 * 3 * (1 + 5 * 3) * 1
    assert (rows.status == "ok").mean() >= 0.95
    assert seconds < QUICK_BUDGET_S
    from loglinear.report import remark3

    md = remark3.build(out, tmp_path).read_text()
    assert "## Conclusions" in md and "docs/theory.md §8" in md
    assert {p.name for p in (tmp_path / "remark3").glob("*.png")} == {
        "phase.png", "certificate.png", "rmse.png"}
    ex = analysis.read_tables(out).exponents
    kl = ex[(ex.estimator == "kl") & (ex.a == 0.5) & (ex.against == "theta_star")]
    assert (kl.predicted == predicted_exponent("kl", 0.5, against="theta_star")).all()


def test_full_config_parses_with_the_planned_design():
    config = load_config(Remark3Config, FULL)
    assert config.exponents == (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
    assert min(config.n) == 100 and max(config.n) == 10**6 and config.seeds >= 50
    assert config.planned_rows() == len(config.settings) * len(config.n) * config.seeds * 31


def test_resume_adds_no_rows(quick):
    config, out, _ = quick
    before = (out / "records.csv").read_bytes()
    main(config, out, jobs=1, progress=False)
    assert (out / "records.csv").read_bytes() == before
    runs = pd.read_csv(out / "runs.csv")
    assert int(runs.rows_added.iloc[-1]) == 0


def test_an_interrupted_run_resumes_to_the_same_records(quick, tmp_path):
    config, out, _ = quick
    cut = tmp_path / "records"
    shutil.copytree(out, cut)
    lines = (out / "records.csv").read_text().splitlines(keepends=True)
    half = len(lines) // 2
    (cut / "records.csv").write_text("".join(lines[:half]) + lines[half][:17])  # torn line
    main(config, cut, jobs=1, progress=False)
    pd.testing.assert_frame_equal(_rows(cut), _rows(out))


def test_same_config_and_seed_give_identical_records_with_two_workers(quick, tmp_path):
    config, out, _ = quick
    main(config, tmp_path / "again", jobs=2, progress=False)
    pd.testing.assert_frame_equal(_rows(tmp_path / "again"), _rows(out))
    for name in ("targets.csv", "environments.csv"):
        a = pd.read_csv(out / name, dtype=str, keep_default_na=False)
        b = pd.read_csv(tmp_path / "again" / name, dtype=str, keep_default_na=False)
        cols = [c for c in a.columns if c != "seconds"]
        key = cols[:3]
        pd.testing.assert_frame_equal(a[cols].sort_values(key).reset_index(drop=True),
                                      b[cols].sort_values(key).reset_index(drop=True))


def test_a_different_design_in_the_same_directory_is_refused(quick):
    config, out, _ = quick
    other = load_config(Remark3Config, QUICK, shift_fraction=0.2)
    with pytest.raises(ValueError, match="different design.*shift_fraction"):
        main(other, out, jobs=1, progress=False)


def test_cli_runs_and_refuses_bad_input_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(QUICK.read_text().replace("shift_fraction = 0.1", "shift_fraction = 1.5"))
    assert cli.main(["remark3", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shift_fraction must lie in (0, 1)" in err[0]
    assert cli.main(["remark3", "--config", str(QUICK), "--jobs", "0"]) == 2


# ------------------------------------------------- the certificate in closed form
BETA, OMEGA, BOUND, N = 1.0, 0.8, 3.0, 9


def _two_action_env():
    """One state, two actions, d = 1: the pairs are x = +-1 (ties left out), and a sample is
    summarised by the fraction p-hat of pairs that agree with theta* (margin +beta theta)."""
    env = LogLinearEnv(np.array([[[0.5], [-0.5]]]), np.array([1.0]), np.array([[0.5, 0.5]]),
                       np.zeros(1), BETA, omega=np.array([OMEGA]))
    return env.population(exclude_ties=True, centered=True)


def _enumerate(pop):
    """Every multinomial count vector of N pairs over the 4 atoms, with its probability."""
    for counts in itertools.product(range(N + 1), repeat=pop.n):
        if sum(counts) == N:
            c = np.array(counts)
            yield (float(multinomial.pmf(c, N, pop.weight)), c,
                   pop.subset(c > 0).with_weight(c[c > 0] / N))


def _agree(pop, counts) -> int:
    """Pairs whose margin is +beta theta: s x = +1."""
    return int(counts[pop.sign * pop.x[:, 0] > 0].sum())


def test_certificate_at_radius_zero_matches_the_binomial_closed_form():
    r"""At radius 0, V_n = L_n and L_n(t) - L_P(t) = -(p-hat - p) beta t, while theta-hat =
    clip(logit(p-hat) / beta, -B, B) has the sign of p-hat - 1/2: certificate (i) holds iff
    p-hat lies between 1/2 and p, so its probability is a binomial sum (N odd: p-hat != 1/2)."""
    pop = _two_action_env()
    p = float(expit(BETA * OMEGA))
    exact = sum(binom.pmf(k, N, p) for k in range(N + 1) if (k / N - p) * (k / N - 0.5) <= 0)
    assert 0.2 < exact < 0.8
    for name in ("dpo", "kl", "w1", "w2"):
        fit, hyper = FITS[name], None if name == "dpo" else 0.0
        total = prob_sum = 0.0
        for prob, counts, data in _enumerate(pop):
            theta = fit.solve(data, beta=BETA, hyper=hyper, bound=BOUND).theta
            k = _agree(pop, counts)
            expected = float(np.clip(logit(k / N) / BETA if 0 < k < N else np.sign(k - 0.5)
                                     * BOUND, -BOUND, BOUND))
            assert theta[0] == pytest.approx(expected, abs=1e-7)
            cert = certificate(fit, theta, data, pop, beta=BETA, hyper=hyper, ball_radius=0.01)
            total += prob * cert["cert_true"]
            prob_sum += prob
        assert prob_sum == pytest.approx(1.0, abs=FLOAT64_TOL)
        assert total == pytest.approx(exact, abs=FLOAT64_TOL), name


def test_w1_certificates_match_the_soft_threshold_closed_form():
    r"""W1 with kappa = inf is exactly L + eps beta ||theta||: theta-hat soft-thresholds,
    sigma(beta theta-hat) = p-hat -+ r, and with s the stated shift,
    (i) holds iff -(p-hat - p) t + r |t| >= 0 and (ii) iff -(p-hat - p) t >= (s - r) |t|.
    r is chosen so that theta-hat is never 0 (|p-hat - 1/2| >= 1/(2N) > r)."""
    pop = _two_action_env()
    p, r, s = float(expit(BETA * OMEGA)), 0.03, 0.06
    fit = FITS["w1"]
    got = np.zeros(2)
    want = np.zeros(2)
    for prob, counts, data in _enumerate(pop):
        ph = _agree(pop, counts) / N
        t = float(np.clip(logit(ph - np.sign(ph - 0.5) * r) / BETA, -BOUND, BOUND))
        want += prob * np.array([-(ph - p) * t + r * abs(t) >= 0,
                                 -(ph - p) * t >= (s - r) * abs(t)])
        theta = fit.solve(data, beta=BETA, hyper=r, bound=BOUND).theta
        assert theta[0] == pytest.approx(t, abs=1e-7)
        cert = certificate(fit, theta, data, pop, beta=BETA, hyper=r, ball_radius=s)
        got += prob * np.array([cert["cert_true"], cert["cert_shift"]])
    assert 0.05 < want[1] < want[0] < 1.0
    np.testing.assert_allclose(got, want, atol=FLOAT64_TOL)


# ------------------------------------------------------------------ the analysis
def _synthetic(slope_star, slope_target, *, seeds=40, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    per_seed = np.exp(noise * rng.standard_normal(seeds))
    rows = []
    for n in (100, 1000, 10**4, 10**5, 10**6):
        for s, c in enumerate(per_seed):
            wobble = np.exp(0.1 * rng.standard_normal())
            rows.append(dict(n=n, seed=s, status="ok", error_star=2.0 * c * n**slope_star * wobble,
                             error_target=0.7 * c * n**slope_target))
    return pd.DataFrame(rows)


def test_measured_exponent_recovers_a_known_slope():
    rows = _synthetic(-0.3, -0.5)
    star = analysis.measured_exponent(rows, against="theta_star", key=("synthetic",))
    assert star["lo"] <= -0.3 <= star["hi"] and abs(star["estimate"] + 0.3) < 0.03
    # a per-seed constant times n^-1/2: RMSE(n) is exactly proportional to n^-1/2
    own = analysis.measured_exponent(rows, against="target", key=("synthetic",))
    assert own["estimate"] == pytest.approx(-0.5, abs=1e-12)
    assert own["hi"] - own["lo"] < 1e-9
    tail = analysis.measured_exponent(rows, against="target", min_n=10**4)
    assert tail["sizes"] == 3 and tail["estimate"] == pytest.approx(-0.5, abs=1e-12)


def test_measured_exponent_ignores_failed_rows_and_reports_what_it_cannot_fit():
    rows = _synthetic(-0.25, -0.5)
    rows.loc[rows.index[:5], "status"] = "failed: uncertified"
    rows.loc[rows.index[:5], "error_star"] = 1e9          # never read: the rows failed
    out = analysis.measured_exponent(rows, against="theta_star")
    assert abs(out["estimate"] + 0.25) < 0.03
    one_n = analysis.measured_exponent(rows[rows.n == 100], against="theta_star")
    assert np.isnan(one_n["estimate"]) and "two distinct n" in one_n["reason"]


def test_wilson_interval_against_hand_values():
    z = 1.959963984540054
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx((z * z / 20 + z * z / 20) / (1 + z * z / 10))
    for k, m in ((3, 10), (50, 100), (149, 150)):
        lo, hi = wilson(k, m)
        lo2, hi2 = wilson(m - k, m)
        assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
        assert lo < k / m < hi
    assert all(math.isnan(v) for v in wilson(0, 0))
    with pytest.raises(ValueError, match="0 <= k <= m"):
        wilson(5, 3)


# ------------------------------------------------------------------ bound tightness
def test_bounds_table_measures_each_estimator_against_its_own_target():
    """DPO's bound is judged against the error to theta*, a robust one's against the error
    to theta(rho); only fixed-radius rows count; the quantile and counts by hand."""
    errors = np.arange(1.0, 21.0)                                  # 20 seeds
    rows = []
    for est, a in (("dpo", np.nan), ("kl", 0.0), ("kl", 0.5)):
        for s, e in enumerate(errors):
            rows.append(dict(setting="u", estimator=est, a=a, n=1000, seed=s, status="ok",
                             error_star=100.0 + e if est == "kl" else e,
                             error_target=e if est == "kl" else 100.0 + e,
                             local_bound=15.5, paper_bound=1e3))
    table = analysis.bounds_table(pd.DataFrame(rows), delta=0.05).set_index("estimator")
    assert set(table.index) == {"dpo", "kl"}                      # a = 0.5 left out
    assert table.loc["dpo", "against"] == "theta_star" and table.loc["kl", "against"] == "target"
    q95 = np.quantile(errors, 0.95)
    for est in ("dpo", "kl"):
        assert table.loc[est, "quantile"] == pytest.approx(q95)
        assert table.loc[est, "ratio"] == pytest.approx(15.5 / q95)
        assert table.loc[est, "violation_count"] == 5                   # errors 16..20
        assert table.loc[est, "paper_ratio"] == pytest.approx(1e3 / q95)


def test_quick_study_records_a_bound_for_every_estimator_at_a_fixed_radius(quick):
    _, out, _ = quick
    df = analysis.load_records(out)
    fixed = df[(df.status == "ok") & (df.a.isna() | (df.a == 0.0)) & (df.n >= 1000)]
    assert fixed.local_bound.notna().all() and fixed.paper_bound.notna().all()
    assert (fixed.local_bound > 0).all() and (fixed.paper_bound > fixed.local_bound).all()
    analysis.write_tables(out)
    bt = analysis.read_tables(out).bounds
    assert set(bt.estimator) == {"dpo", "kl", "w1", "w2", "wdpo", "kldpo"}
    assert set(bt.against[bt.estimator != "dpo"]) == {"target"}
