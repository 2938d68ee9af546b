"""The approximation study end to end on a tiny config: records, resume, report, config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("loglinear.robust")

from loglinear.experiments.approx.analysis import fit_exponents  # noqa: E402
from loglinear.experiments.approx.config import ApproxStudyConfig, load_config  # noqa: E402
from loglinear.experiments.approx.run import COLUMNS, VARIANTS, main  # noqa: E402
from loglinear.report.approx import build  # noqa: E402


def _tiny(tmp_path, **kw):
    return ApproxStudyConfig(out=str(tmp_path / "approximations"), fractions=(0.05, 0.1, 0.5),
                             concentrations=(0.0,), replicates=1, n_states=3, n_actions=3,
                             dim=2, refit_taus=(0.5, 2.0), refit_max_iter=30, **kw)


def test_study_writes_records_resumes_and_reports(tmp_path):
    cfg = _tiny(tmp_path)
    out = main(cfg, progress=False)
    df = pd.read_csv(out / "records.csv")
    assert list(df.columns) == COLUMNS
    assert len(df) == 3 * sum(len(v) for v in VARIANTS.values())
    assert json.loads((out / "config.json").read_text())["fractions"] == [0.05, 0.1, 0.5]
    refit = pd.read_csv(out / "refit.csv")
    # population: the refit map's Jacobian is -I/tau (closed form), so 2 and 0.5
    np.testing.assert_allclose(refit["contraction"], 1 / refit["tau"], rtol=1e-8)
    assert list(refit["theta_err"] < 1e-6) == list(refit["contraction"] < 1)
    # KLDPO at the exact dual reproduces the exact solution (contract 1, in the runner)
    kl = df[df["variant"] == "kldpo-paper@dual"]
    assert np.all(kl["theta_err"] < 1e-6)
    # the exact solution is never beaten in its own objective
    assert np.all(df["subopt"] > -1e-9)
    before = (out / "records.csv").read_text()
    main(cfg, progress=False)                       # resume: nothing recomputed or duplicated
    assert (out / "records.csv").read_text() == before
    md = build(out)
    text = md.read_text()
    assert md.name == "approximations.md" and "## Conclusions" in text
    assert (tmp_path / "approximations" / "figures" / "w2_rel_err.png").exists()
    assert "## Changes since the previous version" in text
    # the analysis, not the view, wrote the exponents beside the records
    exps = fit_exponents(df, max_fraction=cfg.exponent_max_fraction, metric="sigma_err")
    pd.testing.assert_frame_equal(pd.read_csv(out / "exponents.csv"), exps, check_dtype=False)


def test_analysis_tables_read_back_exactly(tmp_path):
    from loglinear.experiments.approx import analysis

    out = main(_tiny(tmp_path, divergences=("w2",)), progress=False)
    analysis.write_tables(out)
    back = analysis.read_tables(out)
    records = pd.read_csv(out / "records.csv")
    exps = analysis.fit_exponents(records, max_fraction=0.2, metric="sigma_err")
    pd.testing.assert_frame_equal(back.summary, analysis.summary_table(records, exps),
                                  check_dtype=False, check_exact=True)
    pd.testing.assert_frame_equal(back.curves, analysis.curves(records), check_dtype=False,
                                  check_exact=True)
    assert back.counts["records"] == len(records) and back.refit is not None


def test_main_writes_to_out_and_takes_a_config(tmp_path):
    cfg = _tiny(tmp_path / "ignored", divergences=("w1",))
    out = main(cfg, tmp_path / "elsewhere", progress=False)
    assert out == tmp_path / "elsewhere" and (out / "records.csv").exists()
    assert json.loads((out / "config.json").read_text())["out"] == str(out)
    assert not (tmp_path / "ignored").exists()
    with pytest.raises(TypeError, match="load_config"):
        main("simulations/approx.toml")


def test_registries_cover_the_divergences():
    from loglinear.experiments.approx import DIVERGENCE_SPECS
    from loglinear.experiments.approx.config import DIVERGENCES
    from loglinear.registry import Registry

    assert isinstance(DIVERGENCE_SPECS, Registry) and isinstance(VARIANTS, Registry)
    assert set(DIVERGENCE_SPECS) == set(VARIANTS) == set(DIVERGENCES)
    with pytest.raises(ValueError, match="registered"):
        DIVERGENCE_SPECS.get("tv")
    from loglinear.experiments.approx.analysis import BY_REGIME_OMIT

    assert BY_REGIME_OMIT <= {v for variants in VARIANTS.values() for v in variants}


def test_study_is_deterministic_under_its_seed(tmp_path):
    a = main(_tiny(tmp_path / "a", divergences=("w2",)), progress=False)
    b = main(_tiny(tmp_path / "b", divergences=("w2",)), progress=False)
    cols = ["theta_err", "subopt", "radius"]
    pd.testing.assert_frame_equal(pd.read_csv(a / "records.csv")[cols],
                                  pd.read_csv(b / "records.csv")[cols])


def test_fit_exponents_recovers_a_known_power():
    r = np.array([0.01, 0.02, 0.05])
    df = pd.DataFrame({"env": "e", "divergence": "w2", "variant": "v", "fraction": r,
                       "radius": r, "theta_err": 3.0 * r**2})
    e = fit_exponents(df, max_fraction=0.2)
    assert e["exponent"].iloc[0] == pytest.approx(2.0, rel=1e-12)


def test_config_validation_and_toml(tmp_path):
    with pytest.raises(ValueError, match="fractions"):
        ApproxStudyConfig(fractions=(0.5, 1.2))
    with pytest.raises(ValueError, match="divergences"):
        ApproxStudyConfig(divergences=("tv",))
    bad = tmp_path / "bad.toml"
    bad.write_text("[study]\nbeta = 1.0\nradii = [0.1]\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(bad)
    cfg = load_config(Path(__file__).resolve().parents[1] / "simulations" / "approx.toml")
    assert cfg.divergences == ("kl", "w1", "w2")


def test_sigma_norm_errors_match_a_direct_computation(tmp_path):
    """sigma_err = ||theta_s - theta_e||_Sigma with Sigma = E_q[x x^T] of the data, and
    rel_err divides by ||theta_DPO||_Sigma: recomputed from an independent fit."""
    from loglinear.estimation import coverage
    from loglinear.experiments.approx.analysis import with_metrics
    from loglinear.experiments.approx.run import environments
    from loglinear.fit import fit_dpo
    from loglinear.robust import solve_wasserstein

    cfg = _tiny(tmp_path, divergences=("w2",))
    out = main(cfg, progress=False)
    df = with_metrics(pd.read_csv(out / "records.csv"))
    name, _, _, data = next(environments(cfg))
    sigma = coverage(data).sigma
    dpo = fit_dpo(data, beta=cfg.beta).theta
    row = df[(df.env == name) & (df.variant == "dpo") & np.isclose(df.fraction, 0.5)].iloc[0]
    exact = solve_wasserstein(data, beta=cfg.beta, radius=row.radius, p=2).theta
    diff = dpo - exact
    assert row.sigma_err == pytest.approx(np.sqrt(diff @ sigma @ diff), rel=1e-6)
    assert row.dpo_sigma_norm == pytest.approx(np.sqrt(dpo @ sigma @ dpo), rel=1e-9)
    assert row.rel_err == pytest.approx(row.sigma_err / row.dpo_sigma_norm, rel=1e-12)
    # DPO's excess loss over itself is the unit of subopt_ratio
    assert row.subopt_ratio == pytest.approx(1.0, rel=1e-12)


def test_curves_name_a_hidden_curve_and_the_band_is_the_range():
    from loglinear.experiments.approx.analysis import curves

    f = np.array([0.1, 0.5])
    rows = []
    for env, scale in (("e0", 1.0), ("e1", 3.0)):
        for var, mult in (("a", 1.0), ("b", 1.005), ("c", 10.0)):
            for fr in f:
                rows.append(dict(env=env, divergence="w2", variant=var, fraction=fr,
                                 sigma_err=scale * mult * fr, dpo_sigma_norm=1.0,
                                 subopt=mult * fr, subopt_dpo=fr))
    cur = curves(pd.DataFrame(rows))
    rel = cur[(cur.metric == "rel_err") & (cur.fraction == 0.5)].set_index("variant")
    # median over the two environments, band = min..max
    assert rel.loc["a", "median"] == pytest.approx(2.0 * 0.5)
    assert (rel.loc["a", "min"], rel.loc["a", "max"]) == pytest.approx((0.5, 1.5))
    # b lies within 2% of a at every radius: named as hidden; c is not
    assert rel.loc["a", "hidden_by"] == "b" and pd.isna(rel.loc["c", "hidden_by"])
