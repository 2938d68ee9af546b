"""Contracts of the rates runner: exact targets, determinism, resume after a kill,
joblib and Dask agreement, count compression."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import NEWTON_THETA_TOL

from loglinear import fit_dpo
from loglinear.experiments.config import load_config
from loglinear.experiments.rates import run as rates
from loglinear.experiments.rates.config import EnvSpec, RatesConfig, Schedule
from loglinear.experiments.records import RecordStore, read_records

TIMING = ["seconds"]  # the only column allowed to differ between identical runs

CONFIG_TOML = """
name = "tiny"
seed = 11
n = [50, 400, 3000]
seeds = {seeds}
estimators = ["dpo"{extra}]
bound = 5.0

[env]
n_states = 3
n_actions = 3
dim = 2
reward_scale = 1.0

[[setting]]
name = "flat"
concentration = 0.0

[[setting]]
name = "peaked"
concentration = 2.0

[[schedule]]
name = "fixed"
scale = {{ kldpo = 2.0 }}
"""


def _config(seeds=4, extra=""):
    settings = (EnvSpec("flat", n_states=3, n_actions=3, dim=2, reward_scale=1.0),
                EnvSpec("peaked", n_states=3, n_actions=3, dim=2, reward_scale=1.0,
                        concentration=2.0))
    ests = ("dpo",) + ((extra,) if extra else ())
    return RatesConfig(name="tiny", seed=11, n=(50, 400, 3000), seeds=seeds, settings=settings,
                       estimators=ests, schedules=(Schedule("fixed", scale={"kldpo": 2.0}),),
                       bound=5.0)


def _frame(path):
    df = read_records(path).drop(columns=TIMING)
    return df.sort_values(rates.ROW_KEY).reset_index(drop=True)


def test_toml_matches_dataclass(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(CONFIG_TOML.format(seeds=4, extra=""))
    assert load_config(RatesConfig, p) == _config()
    assert RatesConfig.from_toml(p) == _config()
    assert load_config(RatesConfig, p, seeds=2) == _config(seeds=2)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(CONFIG_TOML.format(seeds=4, extra="") + "\nsedes = 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(RatesConfig, p)
    with pytest.raises(ValueError, match="unknown estimator"):
        _config(extra="nope")
    with pytest.raises(ValueError, match="n must be"):
        RatesConfig(name="x", seed=0, n=(), settings=(EnvSpec("a"),))


def test_records_complete_and_targets_exact(tmp_path):
    cfg = _config()
    rates.main(cfg, tmp_path, progress=False)
    df = read_records(tmp_path / "records.csv")
    assert len(df) == 2 * 3 * 4  # settings x n x seeds, DPO only
    assert not df.duplicated(rates.ROW_KEY).any()
    assert set(df.status) == {"ok"}
    # DPO's target is the closed form w* = omega / beta; check it against an independent
    # Newton fit on the exact population.
    for name in ("flat", "peaked"):
        env, pop, w_star, _ = rates.environment(cfg, name)
        np.testing.assert_allclose(fit_dpo(pop, beta=env.beta).theta, w_star,
                                   atol=NEWTON_THETA_TOL)
    # each row's error is recomputable from an independent draw with the documented seed
    row = df[(df.setting == "peaked") & (df.n == 400) & (df.seed == 2)].iloc[0]
    env, pop, w_star, _ = rates.environment(cfg, "peaked")
    rng = np.random.default_rng(np.random.SeedSequence([11, rates._stable("peaked"), 400, 2]))
    data = env.sample_counts(400, rng, centered=True)
    w = fit_dpo(data, beta=env.beta, bound=5.0).theta
    assert row.error == pytest.approx(np.linalg.norm(w - w_star), abs=1e-12)


def test_same_config_same_rows_and_parallel_equal(tmp_path):
    cfg = _config()
    rates.main(cfg, tmp_path / "a", progress=False)
    rates.main(cfg, tmp_path / "b", jobs=2, progress=False)
    pd.testing.assert_frame_equal(_frame(tmp_path / "a/records.csv"),
                                  _frame(tmp_path / "b/records.csv"))


def test_extending_seeds_keeps_old_rows(tmp_path):
    rates.main(_config(seeds=2), tmp_path / "x", progress=False)
    small = _frame(tmp_path / "x/records.csv")
    rates.main(_config(seeds=4), tmp_path / "x", progress=False)
    rates.main(_config(seeds=4), tmp_path / "y", progress=False)
    full = _frame(tmp_path / "x/records.csv")
    pd.testing.assert_frame_equal(full, _frame(tmp_path / "y/records.csv"))
    pd.testing.assert_frame_equal(full[full.seed < 2].reset_index(drop=True), small)


def test_changed_design_is_refused(tmp_path):
    rates.main(_config(seeds=1), tmp_path, progress=False)
    other = RatesConfig(name="tiny", seed=12, n=(50,), seeds=1,
                        settings=_config().settings)
    with pytest.raises(ValueError, match="different design"):
        rates.main(other, tmp_path, progress=False)


def test_resume_after_killed_run(tmp_path):
    """Kill a real run mid-way (SIGKILL), tear its last line, resume: no lost or duplicated
    rows, and the result equals an uninterrupted run."""
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(CONFIG_TOML.format(seeds=30, extra=""))
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "loglinear", "rates", "--config",
                             str(cfg_path), "--out", str(out), "--no-progress"], env=env)
    rec = out / "records.csv"
    deadline = time.time() + 60
    while time.time() < deadline:
        if rec.exists() and rec.read_text().count("\n") > 20:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    before = rec.read_text().count("\n") - 1
    assert 0 < before < 2 * 3 * 30, "the run must be killed mid-way for this test to bite"
    with open(rec, "a") as fh:  # simulate a kill in the middle of a write
        fh.write("flat,dpo,none,50,999,nan,0.1")
    rates.main(load_config(RatesConfig, cfg_path), out, progress=False)
    rates.main(load_config(RatesConfig, cfg_path), tmp_path / "clean", progress=False)
    resumed = _frame(rec)
    assert len(resumed) == 2 * 3 * 30
    assert not resumed.duplicated(rates.ROW_KEY).any()
    pd.testing.assert_frame_equal(resumed, _frame(tmp_path / "clean/records.csv"))


def test_retry_failed_recomputes_only_failed_rows(tmp_path):
    cfg = _config(seeds=2)
    rates.main(cfg, tmp_path / "clean", progress=False)
    rates.main(cfg, tmp_path / "x", progress=False)
    rec = tmp_path / "x" / "records.csv"
    df = pd.read_csv(rec)
    df.loc[3, ["status", "error"]] = ["failed: RobustSolverError: stand-in", np.nan]
    df.to_csv(rec, index=False)
    rates.main(cfg, tmp_path / "x", progress=False)  # a plain resume keeps the failure
    assert (pd.read_csv(rec).status != "ok").sum() == 1
    rates.main(cfg, tmp_path / "x", progress=False, retry_failed=True)
    again = _frame(rec)
    assert set(again.status) == {"ok"} and len(again) == len(df)
    pd.testing.assert_frame_equal(again, _frame(tmp_path / "clean/records.csv"))


def test_record_store_repairs_and_skips(tmp_path):
    path = tmp_path / "r.csv"
    with RecordStore(path, ["k", "v"], ["k"]) as store:
        assert store.write({"k": 1, "v": 0.5})
        assert not store.write({"k": 1, "v": 0.7})  # duplicate key refused
    path.write_text(path.read_text() + "2,0.2\n3,")  # a complete row, then a torn one
    store = RecordStore(path, ["k", "v"], ["k"]).open()
    assert store.dropped_lines == 1 and len(store) == 2
    assert store.done({"k": 2}) and not store.done({"k": 3})
    store.close()
    assert path.read_text() == "k,v\n1,0.5\n2,0.2\n"
    with pytest.raises(ValueError, match="columns"):
        RecordStore(path, ["k", "w"], ["k"]).open()
    store = RecordStore(path, ["k", "v"], ["k"]).open(drop=lambda row: row["v"] == "0.2")
    assert not store.done({"k": 2}) and store.done({"k": 1})
    store.close()
    assert path.read_text() == "k,v\n1,0.5\n"


def test_dask_matches_local(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    cfg = _config(seeds=3)
    rates.main(cfg, tmp_path / "local", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        rates.main(cfg, tmp_path / "dask", scheduler=cluster.scheduler_address,
                  progress=False)
    pd.testing.assert_frame_equal(_frame(tmp_path / "local/records.csv"),
                                  _frame(tmp_path / "dask/records.csv"))


def test_count_compression_equals_repeated_rows():
    """The compression trick: weights c_k / n on atoms equal the expanded sample."""
    cfg = _config()
    env, _, _, _ = rates.environment(cfg, "peaked")
    data = env.sample_counts(200, np.random.default_rng(0), centered=True)
    counts = np.rint(data.weight * 200).astype(int)
    assert counts.sum() == 200
    expanded = data.subset(np.repeat(np.arange(data.n), counts)).with_weight(np.full(200, 1 / 200))
    a = fit_dpo(data, beta=env.beta, bound=5.0).theta
    b = fit_dpo(expanded, beta=env.beta, bound=5.0).theta
    np.testing.assert_allclose(a, b, atol=NEWTON_THETA_TOL)


def test_cli_runs_and_reports(tmp_path):
    from loglinear.cli import main

    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(CONFIG_TOML.format(seeds=3, extra=""))
    assert main(["rates", "--config", str(cfg_path), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    assert main(["rates", "--config", str(tmp_path / "missing.toml"), "--out",
                 str(tmp_path / "o")]) == 2
    assert (Path(tmp_path) / "o" / "config.json").exists()


def test_report_from_records(tmp_path):
    """The report regenerates from the records alone, with the exponent table and figures."""
    from loglinear.experiments.rates import analysis as ra
    from loglinear.report import build

    rates.main(_config(seeds=6), tmp_path / "rec", progress=False)
    path = build("rates", tmp_path / "rec", tmp_path / "rep")
    text = path.read_text()
    assert "## Fitted exponents" in text and "## Findings" in text
    assert (tmp_path / "rep" / "rates" / "exponents.png").exists()
    rec, tgt, cfg = ra.load(tmp_path / "rec")
    ex = ra.exponents(rec)
    assert len(ex) == 2 and set(ex.estimator) == {"dpo"}
    assert np.all(ex.lo_all <= ex.slope_all) and np.all(ex.slope_all <= ex.hi_all)
    th = ra.theory(rec, tgt, cfg)
    assert len(th) == 2 * 3
    # the (1-delta) quantile is recomputable from the rows
    g = rec[(rec.setting == "flat") & (rec.n == 400)]
    row = th[(th.setting == "flat") & (th.n == 400)].iloc[0]
    assert row.q_1md == pytest.approx(np.quantile(g.error, 0.95))
    with pytest.raises(FileNotFoundError, match="records directory"):
        ra.load(tmp_path / "nothing")
    # an archived copy (records.csv.gz) reads back identically
    import gzip
    import shutil

    arch = tmp_path / "arch"
    arch.mkdir()
    for name in ("targets.csv", "config.json"):
        shutil.copy(tmp_path / "rec" / name, arch / name)
    (arch / "records.csv.gz").write_bytes(gzip.compress((tmp_path / "rec/records.csv")
                                                        .read_bytes()))
    pd.testing.assert_frame_equal(ra.load(arch)[0], rec)


def test_analysis_tables_read_back_exactly(tmp_path):
    """The view reads what the analysis wrote, bit for bit: write_tables then read_tables
    gives the tables computed in memory."""
    from loglinear.experiments.rates import analysis as ra

    rates.main(_config(seeds=4), tmp_path, progress=False)
    paths = ra.write_tables(tmp_path)
    assert {p.name for p in paths.values()} == set(ra.TABLES.values()) | {ra.SUMMARY}
    rec, tgt, cfg = ra.load(tmp_path)
    back = ra.read_tables(tmp_path)
    th = ra.theory(rec, tgt, cfg)
    pd.testing.assert_frame_equal(back.theory, th, check_dtype=False, check_exact=True)
    pd.testing.assert_frame_equal(back.exponents, ra.exponents(rec), check_dtype=False,
                                  check_exact=True)
    assert back.summary["rows"] == len(rec) and back.summary["first_setting"] == "flat"
    # DPO's bound (Proposition 1) is compared with the quantile of the Sigma_D norm
    assert np.array_equal(th.q_vs_bound, th.q_sigma)


def _exponent_table(schedules):
    """One exponent row per schedule, each a clean -1/2 rate."""
    return pd.DataFrame([dict(setting="s", estimator="kl", schedule=sch, slope_asym=-0.5,
                              lo_asym=-0.55, hi_asym=-0.45, at_zero=0.0)
                         for sch in schedules])


@pytest.mark.parametrize("fractions, clause", [
    ((0.3,), "."),
    ((0.3, 0.9), ", including radii near the collapse radius."),
    ((0.3, 1.0), ", including radii at the collapse radius."),
    ((0.3, 0.9, 1.0), ", including radii near and at the collapse radius."),
])
def test_collapse_sentence_follows_the_design(fractions, clause):
    """The sentence on radii near and at the collapse radius is stated only for the
    schedules the study ran (the quick study has none near the collapse)."""
    from loglinear.experiments.rates.analysis import _rate_summary
    from loglinear.report.rates import _rate_conclusion

    cfg = {"schedules": [dict(name=f"f{f}", exponent=0.0, collapse_fraction=f)
                         for f in fractions]}
    r = _rate_summary(_exponent_table([f"f{f}" for f in fractions]), cfg)
    assert r["all_half"] and (r["at_collapse"] is not None) == (1.0 in fractions)
    text = _rate_conclusion(r)
    assert ("study" + clause) in text


def test_main_takes_a_config_and_run_is_deprecated(tmp_path):
    with pytest.raises(TypeError, match="load_config"):
        rates.main("simulations/rates.toml", tmp_path)
    with pytest.warns(DeprecationWarning, match="main"):
        path = rates.run(_config(seeds=1), tmp_path, progress=False)
    assert path == tmp_path / "records.csv" and path.exists()


def test_estimators_are_one_registry():
    from loglinear.experiments.estimators import ESTIMATORS, get_estimator
    from loglinear.experiments.rates.analysis import BOUNDS
    from loglinear.registry import Registry

    assert isinstance(ESTIMATORS, Registry)
    with pytest.raises(ValueError, match="registered: .*'dpo'"):
        get_estimator("nope")
    for est in ESTIMATORS.values():  # every estimator's bound is looked up, never branched on
        assert est.theorem in BOUNDS


def test_inaccurate_robust_solve_is_a_recorded_failure():
    """An estimate the solver flags inaccurate is not returned as a result: the study row
    records the failure with its reason (and --retry-failed redoes it)."""
    from types import SimpleNamespace

    from loglinear.experiments.estimators import _accurate_theta
    from loglinear.robust import RobustSolverError

    ok = SimpleNamespace(status="converged", theta=np.ones(2), solver="newton",
                         certificate=1e-12, info={})
    np.testing.assert_array_equal(_accurate_theta(ok), np.ones(2))
    bad = SimpleNamespace(status="inaccurate", theta=np.zeros(2), solver="newton",
                          certificate=1.8e-3, info={"iterations": 75})
    with pytest.raises(RobustSolverError, match=r"inaccurate \(KKT residual 0.0018\)"):
        _accurate_theta(bad)
