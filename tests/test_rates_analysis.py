"""The rates analysis on synthetic records with known answers: the two-level bootstrap, the
R^2 rule, per-estimator elasticities, bound tightness only where the theorem applies, and
the report built from the tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from loglinear.estimation import theorem1_bound
from loglinear.experiments.rates import analysis as ra
from loglinear.experiments.rates import analysis_boot as boot
from loglinear.stats import fit_power_law, rmse

B = 2.0
CFG = {"bound": B, "delta": 0.05, "schedules": [dict(name="fixed", exponent=0.0,
                                                     collapse_fraction=0.3)],
       "settings": [dict(name=s, beta=1.0, dim=3, spectrum=None) for s in ("a", "b", "c")]}


def _records(errors: dict, *, lam=None, estimator="w1", schedule="fixed", norm=1.0):
    """Tidy rows from errors[(setting, draw)] = (N, R) array on the n grid N_GRID."""
    rows = []
    for (s, d), e in errors.items():
        for k, n in enumerate(N_GRID):
            for r in range(e.shape[1]):
                rows.append(dict(setting=s, draw=d, estimator=estimator, schedule=schedule,
                                 n=int(n), seed=r, hyperparameter=0.1, error=e[k, r],
                                 error_star=e[k, r], error_sigma=e[k, r], norm_hat=norm,
                                 at_zero=0, status="ok", on_boundary=0,
                                 lambda_min=(lam or {}).get((s, d), 0.1),
                                 lambda_min_sample=0.1, tr_hinv=10.0, tr_sandwich=10.0,
                                 policy_kl=0.5 * e[k, r] ** 2))
    return pd.DataFrame(rows)


N_GRID = np.array([1e3, 1e4, 1e5, 1e6])


def _normalised(rec, cfg=CFG):
    tgt = pd.DataFrame(columns=["setting", "draw", "estimator", "hyperparameter", "status",
                                "dual", "error_star"])
    return ra._normalise(rec, tgt, cfg)


# ------------------------------------------------------------ the two-level bootstrap
def test_replicates_match_a_naive_two_level_resampling():
    """Vectorised replicates equal the loops: draws resampled, then seeds within draws."""
    rng = np.random.default_rng(3)
    e = rng.random((3, 4, 5))
    got = boot.replicates(e, rng=np.random.default_rng(11), n_boot=25)
    r = np.random.default_rng(11)
    draws = r.integers(0, 4, size=(25, 4))
    seeds = r.integers(0, 5, size=(25, 4, 5))
    for b in range(25):
        for k in range(3):
            vals = [e[k, draws[b, j], seeds[b, j, i]] for j in range(4) for i in range(5)]
            assert got[b, k] == pytest.approx(np.sqrt(np.mean(np.square(vals))), rel=1e-13)


def test_two_level_interval_covers_a_known_exponent():
    """Errors c_d n^-1/2 |z| with a draw-level scale c_d: the pooled RMSE has exponent
    exactly -1/2, and the 95% interval covers it in most of 40 synthetic studies."""
    hits = 0
    for rep in range(40):
        rng = np.random.default_rng(rep)
        c = np.exp(rng.normal(0, 0.5, 5))
        e = c[None, :, None] * N_GRID[:, None, None] ** -0.5 * np.abs(
            rng.standard_normal((4, 5, 20)))
        f = boot.exponent(N_GRID, e, rng=rep, n_boot=400)
        assert f.lo <= f.estimate <= f.hi
        hits += f.lo <= -0.5 <= f.hi
    assert hits >= 34, hits   # nominal 38 of 40; binomial 1% tail at 34


def test_one_draw_reduces_to_the_seed_bootstrap_point_and_a_slope_of_rmse():
    rng = np.random.default_rng(0)
    e = N_GRID[:, None, None] ** -0.25 * np.abs(rng.standard_normal((4, 1, 30)))
    f = boot.exponent(N_GRID, e, rng=0, n_boot=200)
    ref = fit_power_law(N_GRID, rmse(e[:, 0, :]))
    assert f.estimate == pytest.approx(ref.slope, rel=1e-12)
    assert f.intercept == pytest.approx(ref.intercept, rel=1e-12)
    np.testing.assert_allclose(f.curve, rmse(e[:, 0, :]), rtol=1e-13)


def test_bootstrap_refuses_too_few_seeds_and_undefined_statistics():
    with pytest.raises(ValueError, match="2 seeds"):
        boot.exponent(N_GRID, np.ones((4, 3, 1)), rng=0)
    with pytest.raises(ValueError, match="finite positive"):
        boot.exponent(N_GRID, np.zeros((4, 2, 5)), rng=0)


# ------------------------------------------------------------------ the R^2 rule
def test_a_power_law_is_claimed_only_where_it_fits():
    rng = np.random.default_rng(5)
    good = {("a", d): N_GRID[:, None] ** -0.5 * np.abs(rng.standard_normal((4, 30)))
            for d in range(3)}
    # no trend in n: the RMSE wanders around a constant
    flat = {("b", d): np.abs(rng.standard_normal((4, 30))) for d in range(3)}
    rec, _ = _normalised(_records({**good, **flat}))
    ex = ra.exponents(rec).set_index("setting")
    assert ex.loc["a", "power_law"] and ex.loc["a", "r2_asym"] >= ra.R2_MIN
    assert not ex.loc["b", "power_law"] and ex.loc["b", "r2_asym"] < ra.R2_MIN
    from loglinear.experiments.rates.analysis_summary import claims

    c = claims(ex.reset_index())
    assert c["groups"] == 2 and c["power_law"] == 1
    assert [g["group"] for g in c["no_power_law"]] == ["w1/fixed/b"]
    from loglinear.report.rates import _exp

    assert _exp(next(ex.reset_index().iloc[[1]].itertuples())).startswith("no power law")


def test_rows_left_out_are_counted_by_reason():
    rng = np.random.default_rng(2)
    rec = _records({("a", 0): N_GRID[:, None] ** -0.5 * np.abs(rng.standard_normal((4, 6)))})
    rec.loc[0, "on_boundary"] = 1
    rec.loc[1, "status"] = "separable: the data are separable along [1, 0]"
    rec.loc[2, "status"] = "failed: RobustSolverError: inaccurate"
    rec.loc[3, "norm_hat"] = 10 * B          # an 'ok' fit outside Theta (a former defect)
    n, _ = _normalised(rec)
    assert list(n.reason[:5]) == ["on_boundary", "separable", "failed", "outside", "used"]
    ex = ra.exponents(n)
    assert (ex.excluded.item(), ex.rows_on_boundary.item(), ex.rows_outside.item()) == (4, 1, 1)
    # the statistics use the other rows only
    used = n[n.usable & (n.n == N_GRID[0])].error
    assert ex.rmse_first.item() == pytest.approx(rmse(used), rel=1e-12)


# ---------------------------------------------------------------- elasticities
def test_elasticity_per_estimator_recovers_known_slopes():
    """Estimator 'kl' errors scale like (1/lambda)^(1/2), 'w1' not at all; lambda varies
    across settings and draws; the feature-rescaled setting 'c' is left out."""
    rng = np.random.default_rng(7)
    lam = {(s, d): float(np.exp(rng.uniform(-6, -1))) for s in "abc" for d in range(4)}
    parts = []
    for est, power in (("kl", 0.5), ("w1", 0.0)):
        errs = {k: (1 / v) ** power * N_GRID[:, None] ** -0.5
                * np.abs(rng.standard_normal((4, 40))) for k, v in lam.items()}
        parts.append(_records(errs, lam=lam, estimator=est))
    cfg = dict(CFG, settings=[dict(name="a", spectrum=None), dict(name="b", spectrum=[1, 1, 1]),
                              dict(name="c", spectrum=[1.0, 1.0, 0.01])])
    rec, _ = _normalised(pd.concat(parts, ignore_index=True), cfg)
    assert ra.sampling_settings(cfg) == ["a", "b"]
    el = ra.elasticities(rec, cfg).set_index("estimator")
    assert set(el.index) == {"kl", "w1"} and (el.settings == 2).all()
    for est, power in (("kl", 0.5), ("w1", 0.0)):
        r = el.loc[est]
        assert r.vs_inv_lambda_lo <= power <= r.vs_inv_lambda_hi, (est, r.vs_inv_lambda)
        assert r.vs_inv_lambda_hi - r.vs_inv_lambda_lo < 0.3
    assert el.loc["w1", "vs_inv_lambda_hi"] < 0.5 < el.loc["kl", "vs_inv_lambda_hi"]
    # policy space: KL^(1/2) = error / sqrt(2) here, the same elasticity
    assert el.loc["kl", "policy_vs_inv_lambda"] == pytest.approx(
        el.loc["kl", "vs_inv_lambda"], abs=1e-9)


# ------------------------------------------------------------------ bound tightness
def test_bound_tightness_only_where_the_theorem_applies():
    rng = np.random.default_rng(4)
    errs = {("a", d): N_GRID[:, None] ** -0.5 * np.abs(rng.standard_normal((4, 20)))
            for d in range(3)}
    rec = _records(errs)
    bad_outside = (rec.draw == 1) & (rec.n == 1e4) & (rec.seed == 0)
    rec.loc[bad_outside, "norm_hat"] = 3 * B         # estimate outside Theta
    bad_ball = (rec.draw == 2) & (rec.n == 1e5) & (rec.seed == 3)
    rec.loc[bad_ball, "on_boundary"] = 1
    n, tgt = _normalised(rec)
    th = ra.theory(n, tgt, CFG).set_index(["draw", "n"])
    assert th.loc[(1, 10000), "reason"] == "estimates outside Theta"
    assert th.loc[(2, 100000), "reason"] == "estimates on the boundary of Theta"
    for key in [(1, 10000), (2, 100000)]:
        assert not th.loc[key, "applies"] and np.isnan(th.loc[key, "bound_factor"])
    ok = th.loc[(0, 1000)]
    assert ok.applies and ok.reason == "applies"
    g = n[(n.draw == 0) & (n.n == 1000)].error
    bound = float(theorem1_bound(1000, beta=1.0, bound=B, lam=0.1, delta=0.05))
    assert ok.bound_factor == pytest.approx(bound / np.quantile(g, 0.95), rel=1e-12)
    assert th.applies.sum() == len(th) - 2
    s = ra.theory_summary(th.reset_index())
    assert s.applies.item() == len(th) - 2 and s.bound_holds.item() == "yes"


# ------------------------------------------------------------------ the report
def test_report_states_the_numbers_of_the_tables(tmp_path):
    rng = np.random.default_rng(9)
    lam = {(s, d): float(np.exp(rng.uniform(-5, -1))) for s in "ab" for d in range(3)}
    errs = {k: N_GRID[:, None] ** -0.5 * np.abs(rng.standard_normal((4, 8))) for k in lam}
    rec = pd.concat([_records(errs, lam=lam, estimator=e, schedule=sch)
                     for e, sch in (("dpo", "none"), ("w1", "fixed"), ("kl", "fixed"))],
                    ignore_index=True)
    rec.loc[rec.estimator == "dpo", "hyperparameter"] = np.nan
    rec.to_csv(tmp_path / "records.csv", index=False)
    pd.DataFrame([dict(setting=s, draw=d, estimator=e, hyperparameter=h, status="ok",
                       dual=1.0, error_star=0.0, norm=1.0, tr_hinv=10.0, tr_sandwich=10.0,
                       collapse_radius=np.nan) for (s, d) in lam
                  for e, h in (("dpo", ""), ("w1", "0.1"), ("kl", "0.1"))]).to_csv(
        tmp_path / "targets.csv", index=False)
    cfg = dict(CFG, name="synthetic", n=[int(v) for v in N_GRID], seed=1, seeds=8,
               estimators=["dpo", "w1", "kl"],
               settings=[dict(name=s, beta=1.0, dim=3, spectrum=None) for s in "ab"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    from loglinear.report import build

    text = build("rates", tmp_path, tmp_path / "out").read_text()
    s = json.loads((tmp_path / "summary.json").read_text())
    f = s["fixed"]
    assert (f"**Fixed radius, own target (Theorem 1)**: {f['power_law']} of {f['groups']} "
            "groups fit a power law") in text
    assert "No previous version of this study is on record" in text
    assert "## Fitted exponents at a fixed radius" in text
    # with the previous version's figures on record, the changes quote both
    prev = dict(settings=["u", "t"], seeds=50, failed_rows=0, outside_rows=69, bound=B,
                outside_estimators=["kldpo"], outside_max_norm=2483.0, boundary_rows=12,
                in_band=81, groups=95, ci_half=59, ci_quarter=1, low_r2=9,
                min_r2=dict(group="w1/x/t", r2=0.03), min_factor=44.4,
                min_factor_at="kldpo/x/t at n = 100", min_factor_inside=255.0,
                elasticity_median=0.06, elasticity_by_estimator={"dpo": 0.44},
                rescaled_settings=["t"])
    (tmp_path / "out" / "rates" / "previous.json").write_text(json.dumps(prev))
    text = build("rates", tmp_path, tmp_path / "out").read_text()
    assert "yet 69 rows marked `ok` lay outside" in text and "81 of 95 groups" in text
    assert (f"Now, at a fixed radius: {f['power_law']} of {f['groups']} groups fit a power "
            f"law and their CIs contain -1/2 in {f['ci_half']}") in text
    for name in ("rates_fixed.png", "exponents.png", "coverage.png", "bounds.png"):
        assert (tmp_path / "out" / "rates" / name).exists(), name


# ------------------------------------------------------- the previous version, the palette
def test_previous_headline_counts_rows_outside_and_on_the_ball(tmp_path):
    """The previous version's figures, from its tables and records: 'ok' rows outside
    Theta and on its boundary, and the bound factor where every fit lay inside."""
    from loglinear.experiments.rates.analysis_changes import previous_headline

    rows = [dict(setting="s", estimator=e, schedule=sch, n=n, seed=r, status="ok",
                 norm_hat=norm) for e, sch, n, r, norm in [
        ("dpo", "none", 100, 0, B), ("dpo", "none", 100, 1, 1.0),      # one on the ball
        ("kldpo", "fixed", 100, 0, 2483.0), ("kldpo", "fixed", 100, 1, 1.0),  # outside
        ("dpo", "none", 1000, 0, 1.0), ("dpo", "none", 1000, 1, 1.2)]]
    pd.DataFrame(rows).to_csv(tmp_path / "records.csv", index=False)
    (tmp_path / "config.json").write_text(json.dumps(dict(
        bound=B, seeds=2, settings=[dict(name="s", spectrum=[1.0, 0.1])])))
    (tmp_path / "summary.json").write_text(json.dumps(dict(
        failed_rows=0, own=[dict(ci_half=1, ci_quarter=0), dict(ci_half=0, ci_quarter=1)],
        bounds=dict(min_factor=44.0), local=dict(median=0.99),
        coverage=dict(lam_median=0.06))))
    pd.DataFrame([dict(setting="s", estimator="dpo", schedule="none", slope_asym=-0.5,
                       r2_all=0.99, rmse_first=2.0),
                  dict(setting="s", estimator="kldpo", schedule="fixed", slope_asym=-0.45,
                       r2_all=0.5, rmse_first=457.0)]).to_csv(tmp_path / "exponents.csv",
                                                              index=False)
    pd.DataFrame([dict(estimator="dpo", schedule="none", vs_inv_lambda=0.44)]).to_csv(
        tmp_path / "elasticities.csv", index=False)
    pd.DataFrame([dict(setting="s", estimator=e, schedule=sch, n=n, bound_factor=f)
                  for e, sch, n, f in [("dpo", "none", 100, 50.0), ("kldpo", "fixed", 100, 44.0),
                                       ("dpo", "none", 1000, 300.0)]]).to_csv(
        tmp_path / "theory.csv", index=False)
    p = previous_headline(tmp_path)
    assert (p["outside_rows"], p["outside_estimators"], p["outside_max_norm"]) == (
        1, ["kldpo"], 2483.0)
    assert p["boundary_rows"] == 1 and p["boundary_by_estimator"] == {"dpo": 1}
    assert (p["in_band"], p["groups"], p["ci_half"], p["ci_quarter"]) == (2, 2, 1, 1)
    assert p["low_r2"] == 1 and p["min_r2"]["group"] == "kldpo/fixed/s"
    assert p["min_factor_at"] == "kldpo/fixed/s at n = 100"
    assert p["min_factor_inside"] == 300.0     # the n = 100 cells held a fit on/over the ball
    assert p["rescaled_settings"] == ["s"] and p["largest_first_rmse"]["rmse"] == 457.0


def test_one_colour_per_estimator_colour_blind_safe():
    from loglinear.experiments.estimators import ESTIMATORS
    from loglinear.plots import (
        ESTIMATOR_COLORS,
        OKABE_ITO,
        estimator_color,
        sane_limits,
    )

    assert set(ESTIMATORS) <= set(ESTIMATOR_COLORS)
    colours = [ESTIMATOR_COLORS[e] for e in ESTIMATORS]
    assert len(set(colours)) == len(colours) and set(colours) <= set(OKABE_ITO.values())
    assert estimator_color("kldpo-paper@dual") == ESTIMATOR_COLORS["kldpo"]
    assert estimator_color("wdpo-official@fit-cal") == ESTIMATOR_COLORS["wdpo"]
    # one outlier (457 among values near 1) does not set the y-range; it is counted
    lo, hi, clipped = sane_limits(np.r_[np.linspace(0.5, 2.0, 50), 457.0])
    assert hi < 100 and clipped == 1 and lo < 0.5
