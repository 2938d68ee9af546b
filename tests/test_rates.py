"""Contracts of the rates runner: exact targets, determinism, resume after a kill,
joblib and Dask agreement, count compression, one Theta for every estimator, statuses that
are never "ok" without a certificate, environment draws, coverage through the sampling,
policy-space errors."""

from __future__ import annotations

import json
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
    rng = np.random.default_rng(np.random.SeedSequence([11, rates._stable("peaked"), 0, 400,
                                                        2]))
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


# ------------------------------------------------- one Theta, certified rows, draws
ALL_ESTIMATORS = ("dpo", "kl", "w1", "w2", "wdpo", "kldpo")


def _full_config(**kw):
    """Every estimator, two draws, a poorly covered setting whose small samples are
    separable (few atoms at n = 30), and an avoided-direction setting on the features of
    the uniform one."""
    env = dict(n_states=3, n_actions=3, dim=2, reward_scale=1.0)
    settings = (EnvSpec("flat", **env), EnvSpec("peaked", concentration=3.0, **env),
                EnvSpec("avoid", geometry="flat", avoid=300.0, **env))
    base = dict(name="all", seed=5, n=(30, 3000), seeds=2, draws=2, settings=settings,
                estimators=ALL_ESTIMATORS, bound=2.0,
                schedules=(Schedule("fixed", collapse_fraction=0.3, scale={"kldpo": 1.0}),))
    return RatesConfig(**(base | kw))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    cfg = _full_config()
    rates.main(cfg, out, progress=False)
    return cfg, out, read_records(out / "records.csv")


def test_every_estimator_receives_the_same_theta(tmp_path, monkeypatch):
    """Spies on every registry entry and on the solvers behind them: each fit, on samples
    and on populations (targets), is called with bound = config.bound, and each solver
    (fit_dpo, solve_kl, solve_wasserstein, fit_wdpo, fit_kldpo) receives that bound, so
    no estimator is fitted on another Theta (WDPO and KLDPO once ignored it)."""
    from dataclasses import replace

    from loglinear.experiments import estimators as module
    from loglinear.experiments.estimators import ESTIMATORS

    calls, solved = [], []

    def spy(est):
        def fit(data, *, beta, param, bound):
            calls.append((est.name, bound))
            return est.fit(data, beta=beta, param=param, bound=bound)
        return replace(est, fit=fit)

    def solver_spy(name, solver):
        def solve(*args, **kw):
            solved.append((name, kw.get("bound", "missing")))
            return solver(*args, **kw)
        return solve

    for name in ALL_ESTIMATORS:
        monkeypatch.setitem(ESTIMATORS._items, name, spy(ESTIMATORS[name]))
    for name in ("fit_dpo", "solve_kl", "solve_wasserstein", "fit_wdpo", "fit_kldpo"):
        monkeypatch.setattr(module, name, solver_spy(name, getattr(module, name)))
    cfg = _full_config(seeds=1, draws=1, bound=2.5)
    rates.main(cfg, tmp_path, progress=False)
    assert {e for e, _ in calls} == set(ALL_ESTIMATORS)
    assert {b for _, b in calls} == {2.5}
    assert {s for s, _ in solved} == {"fit_dpo", "solve_kl", "solve_wasserstein", "fit_wdpo",
                                      "fit_kldpo"}
    assert {b for _, b in solved} == {2.5}
    rows = read_records(tmp_path / "records.csv")
    # DPO's target is a closed form; every other (estimator, target) fit went through a spy
    assert len(calls) == len(solved) == len(rows) + (len(ALL_ESTIMATORS) - 1) * 3


def test_no_ok_row_outside_theta_or_without_certificate(full_run):
    cfg, out, df = full_run
    ok = df[df.status == "ok"]
    assert len(ok) == len(df)        # nothing fails on this small design ...
    assert (ok.norm_hat <= cfg.bound * (1 + 1e-9)).all()
    assert ok.certificate.notna().all() and (ok.certificate <= 1e-6).all()
    # ... the separable samples are fitted on the sphere, by every estimator alike
    sep = df[df.separable.astype(bool)]
    assert len(sep) > 0 and set(sep.estimator) == set(ALL_ESTIMATORS)
    on_sphere = sep[sep.on_boundary.astype(bool)]
    np.testing.assert_allclose(on_sphere.norm_hat, cfg.bound, rtol=1e-9)
    assert sep[sep.estimator == "dpo"].on_boundary.astype(bool).all()
    on = df.on_boundary.astype(bool)
    np.testing.assert_array_equal(on, df.norm_hat >= cfg.bound * (1 - 1e-9))
    tgt = read_records(out / "targets.csv", dtype={"hyperparameter": str},
                       keep_default_na=False)
    assert set(tgt.status) == {"ok"} and not tgt.on_boundary.astype(bool).any()


def test_failures_are_recorded_with_their_reason(tmp_path, monkeypatch):
    """A separable sample without a bound, an uncertified fit and an estimate outside Theta
    are never 'ok': status 'separable' / 'failed: ...', the reason in 'failure', errors NaN."""
    from dataclasses import replace

    from loglinear.experiments.estimators import ESTIMATORS, Estimator, EstimatorFit, _w_star
    from loglinear.fit import SeparableDataError

    def separable(data, *, beta, param, bound):
        raise SeparableDataError(np.ones(2), "the data are separable: stand-in")

    def uncertified(data, *, beta, param, bound):
        return EstimatorFit(np.zeros(2), "max_iter", 3e-3)

    def outside(data, *, beta, param, bound):
        return EstimatorFit(np.full(2, bound), "converged", 1e-12)

    for name, fit, closed in (("sep", separable, _w_star), ("unc", uncertified, None),
                              ("out", outside, None)):
        monkeypatch.setitem(ESTIMATORS._items, name, Estimator(
            name, fit, None, False, "dpo", "prop1", population_optimum=closed))
    cfg = replace(_config(seeds=1), estimators=("dpo", "sep", "unc", "out"))
    rates.main(cfg, tmp_path, progress=False)
    df = read_records(tmp_path / "records.csv").set_index("estimator")
    tgt = read_records(tmp_path / "targets.csv", dtype={"hyperparameter": str},
                       keep_default_na=False).set_index("estimator")
    assert tgt.loc["unc", "status"].str.startswith("failed: uncertified: max_iter").all()
    assert tgt.loc["unc", "failure"].str.contains(r"certificate 0\.003").all()
    assert tgt.loc["out", "status"].str.startswith("failed: outside Theta").all()
    assert (df.loc["dpo", "status"] == "ok").all()
    sep = df.loc["sep"]
    assert set(sep.status) == {"separable"}
    assert sep.failure.str.contains("SeparableDataError: the data are separable").all()
    assert sep.error.isna().all() and sep.policy_kl.isna().all()
    assert "unc" not in df.index and "out" not in df.index   # their targets failed


def test_draws_are_distinct_environments_and_extend_like_seeds(tmp_path, full_run):
    cfg, out, df = full_run
    assert set(df.draw) == {0, 1}
    assert len(df) == 3 * 2 * 2 * 2 * 6      # settings x draws x n x seeds x estimators
    assert not df.duplicated(rates.ROW_KEY).any()
    e0, e1 = rates.environment(cfg, "flat", 0)[0], rates.environment(cfg, "flat", 1)[0]
    assert not np.allclose(e0.features, e1.features)
    # draw d of a setting is SeedSequence([seed, crc32(geometry), d, env_seed])
    rng = np.random.default_rng(np.random.SeedSequence([5, rates._stable("flat"), 1, 0]))
    np.testing.assert_array_equal(cfg.settings[0].make(rng).features, e1.features)
    one = _full_config(draws=1)
    rates.main(one, tmp_path, progress=False)
    rates.main(cfg, tmp_path, progress=False)      # adding a draw keeps the old rows
    pd.testing.assert_frame_equal(_frame(tmp_path / "records.csv"), _frame(out / "records.csv"))


def test_coverage_settings_share_the_geometry_and_differ_in_sampling(full_run):
    """'avoid' samples the features of 'flat' away from a direction: in every draw the two
    share features, reward, theta* and mu exactly, and 'avoid' covers less."""
    cfg, _, df = full_run
    for d in range(cfg.draws):
        flat, pop_f, w_f, lam_f = rates.environment(cfg, "flat", d)
        avoid, pop_a, w_a, lam_a = rates.environment(cfg, "avoid", d)
        for name in ("features", "omega", "state_dist", "theta_ref"):
            np.testing.assert_array_equal(getattr(avoid, name), getattr(flat, name))
        np.testing.assert_array_equal(w_a, w_f)
        assert not np.allclose(avoid.sampling_policy, flat.sampling_policy)
        assert lam_a < lam_f
    got = df.groupby(["setting", "draw"]).lambda_min.first()
    assert (got.xs("avoid") < got.xs("flat")).all()
    assert (df[df.setting == "avoid"].avoid == 300.0).all()


def test_policy_errors_recomputed_from_the_row(full_run):
    """policy_kl / policy_tv (against the row's own target) and *_star (against pi*) from
    an independent refit of the documented sample and direct sums over (s, a)."""
    from loglinear.experiments.estimators import get_estimator

    cfg, out, df = full_run
    tgt = read_records(out / "targets.csv", dtype={"hyperparameter": str},
                       keep_default_na=False)
    row = df[(df.setting == "peaked") & (df.draw == 1) & (df.n == 3000) & (df.seed == 1)
             & (df.estimator == "kl")].iloc[0]
    env, _, w_star, _ = rates.environment(cfg, "peaked", 1)
    rng = np.random.default_rng(np.random.SeedSequence([5, rates._stable("peaked"), 1, 3000,
                                                        1]))
    data = env.sample_counts(3000, rng, centered=True)
    w = get_estimator("kl").solve(data, beta=env.beta, param=row.hyperparameter,
                                  bound=cfg.bound).theta
    t = tgt[(tgt.setting == "peaked") & (tgt.draw == 1) & (tgt.estimator == "kl")
            & (tgt.hyperparameter == repr(float(row.hyperparameter)))].iloc[0]
    target = np.array(json.loads(t.theta))

    def direct(a, b):
        p, q = env.policy(a), env.policy(b)
        kl = float(env.state_dist @ np.sum(p * np.log(p / q), axis=1))
        return kl, float(env.state_dist @ (0.5 * np.abs(p - q).sum(axis=1)))

    assert row.error == pytest.approx(np.linalg.norm(w - target), abs=1e-12)
    np.testing.assert_allclose([row.policy_kl, row.policy_tv], direct(target, w), rtol=1e-9)
    np.testing.assert_allclose([row.policy_kl_star, row.policy_tv_star], direct(w_star, w),
                               rtol=1e-9)
    dpo = df[df.estimator == "dpo"]      # DPO's target is w*: both columns agree
    np.testing.assert_array_equal(dpo.policy_kl, dpo.policy_kl_star)


def test_smoke_config_is_deterministic(tmp_path):
    """simulations/rates_quick.toml (cut to one seed and two sizes), serial and with two
    workers: identical records but for the timing column."""
    cfg = load_config(RatesConfig, Path(__file__).parents[1] / "simulations" /
                      "rates_quick.toml", seeds=1, n=[100, 10000])
    assert cfg.draws >= 2 and len(cfg.estimators) == 6
    rates.main(cfg, tmp_path / "a", progress=False)
    rates.main(cfg, tmp_path / "b", jobs=2, progress=False)
    a, b = _frame(tmp_path / "a/records.csv"), _frame(tmp_path / "b/records.csv")
    pd.testing.assert_frame_equal(a, b)
    assert set(a.status) == {"ok"} and len(a) == 3 * 2 * 2 * 12   # 12 fits per sample


def test_full_config_meets_the_design():
    """The full study: one Theta with B = 2 ||w*||, at least 5 draws, no reparametrised
    (spectrum) setting, and the avoided-direction settings on the uniform geometry."""
    cfg = load_config(RatesConfig, Path(__file__).parents[1] / "simulations" / "rates.toml")
    assert cfg.draws >= 5 and cfg.draws * cfg.seeds >= 100
    norms = {s.reward_scale / s.beta for s in cfg.settings}
    assert norms == {1.5} and cfg.bound == 2 * 1.5
    assert all(s.spectrum is None for s in cfg.settings)
    avoid = [s for s in cfg.settings if s.avoid > 0]
    assert avoid and all(s.geometry_name == "uniform" for s in avoid)
