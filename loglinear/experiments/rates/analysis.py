r"""Analysis of the rates records: exponents with bootstrap CIs, theory checks, coverage,
and the summary every sentence of the report is written from.

Everything the rates report shows is computed here from ``records.csv``, ``targets.csv``
and ``config.json``; :func:`write_tables` writes the tables beside the records and the
report module (:mod:`loglinear.report.rates`) only formats and plots them.

* **Exponent.** For each (setting, estimator, schedule): the slope of log RMSE(n) on log n
  with a 95% seed-bootstrap percentile interval (:func:`loglinear.stats.bootstrap_exponent`),
  on the whole n grid and on n >= ``asymptotic_from`` (the pre-asymptotic regime at small n
  can bend the line); docs/theory.md §5.5.
* **Theory.** At each n: the empirical (1 - delta) quantile of the error against the
  Theorem 1 (W1, W2, WDPO) or Theorem 2 (KL, KLDPO) bound with lambda = the population
  lambda_min(Sigma) and, for Theorem 2, lambda_lo = lambda_hi = the population dual
  lambda*; for DPO the (1 - delta) quantile of ||Delta||_{Sigma_D} against Proposition 1
  with C = 1 (the report gives the empirical constant); docs/theory.md §5.3-5.4. The local
  prediction is sqrt(tr V / n) with V the sandwich covariance (sqrt(tr H^{-1}/n) is also
  shown); docs/theory.md §5.6.
* **Coverage.** RMSE at fixed n across settings against 1/lambda_min and tr H^{-1}
  (docs/theory.md §5.2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from ...estimation import proposition1_bound, theorem1_bound, theorem2_bound
from ...registry import Registry
from ...stats import bootstrap_exponent, fit_power_law, rmse
from ..estimators import get_estimator
from ..records import read_records, read_table, write_table
from .config import NO_SCHEDULE

BOOT = 2000
BOOT_SEED = 20260522
HALF, QUARTER = -0.5, -0.25       # the exponents in question (docs/theory.md §5.5)
RATE_BAND = (-0.6, -0.4)          # an exponent in this open band counts as n^-1/2
COVERAGE_ELASTICITY = 0.5         # elasticity of the error if sqrt(tr H^-1 / n) is the scale
NEAR_COLLAPSE = 0.75              # collapse fractions in [0.75, 1) are "near" the collapse
SQRT_N, INVERSE_N = 0.5, 1.0      # schedule exponents of rho_n ~ n^-1/2 and rho_n ~ n^-1
KL_BIAS_ESTIMATOR = "kl"          # the estimator whose O(sqrt(rho)) bias the report discusses
TEXT_COLUMNS = ("setting", "estimator", "schedule")
TABLES = dict(exponents="exponents.csv", exponents_star="exponents_theta_star.csv",
              theory="theory.csv", theory_summary="theory_summary.csv",
              coverage="coverage.csv", elasticities="elasticities.csv")
SUMMARY = "summary.json"


# ------------------------------------------------------------------ the bounds
@dataclass(frozen=True)
class Bound:
    """A bound of docs/theory.md §5, looked up by an estimator's ``theorem``.

    Attributes:
        value: ``value(n, *, beta, bound, lam, delta, dual, dim) -> float``.
        statistic: the column of :func:`theory` the bound is compared with (the (1 - delta)
            quantile of the error, or of its Sigma_D norm for Proposition 1).
    """

    value: Callable[..., float]
    statistic: str


def _theorem2(n, *, beta, bound, lam, delta, dual, dim):
    if not 0 < dual < np.inf:
        return np.nan
    return float(theorem2_bound(n, beta=beta, bound=bound, lam=lam, dual_lo=dual,
                                dual_hi=dual, delta=delta))


BOUNDS: Registry[Bound] = Registry("bound", {
    "thm1": Bound(lambda n, *, beta, bound, lam, delta, dual, dim: float(
        theorem1_bound(n, beta=beta, bound=bound, lam=lam, delta=delta)), "q_1md"),
    "thm2": Bound(_theorem2, "q_1md"),
    "prop1": Bound(lambda n, *, beta, bound, lam, delta, dual, dim: float(
        proposition1_bound(n, beta=beta, bound=bound, dim=dim, delta=delta)), "q_sigma"),
})
PROPOSITION_1 = "prop1"  # DPO's bound: the report says whether it holds with C = 1


# ------------------------------------------------------------------- the tables
def load(records_dir):
    """(records, targets, config) of a rates study directory."""
    d = Path(records_dir)
    rec_path = d / "records.csv"
    if not rec_path.exists() and (d / "records.csv.gz").exists():
        rec_path = d / "records.csv.gz"  # archived copy (reports/rates/records)
    for path in (rec_path, d / "targets.csv", d / "config.json"):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: is {d} a rates records directory?")
    rec = read_records(rec_path)
    tgt = read_records(d / "targets.csv", dtype={"param": str}, keep_default_na=False)
    for c in ("norm", "error_star", "tr_hinv", "tr_sandwich", "dual", "collapse_radius"):
        tgt[c] = pd.to_numeric(tgt[c], errors="coerce")
    return rec, tgt, json.loads((d / "config.json").read_text())


def groups(rec):
    return rec.groupby(["setting", "estimator", "schedule"], sort=True)


def _table(g, column="error"):
    """(n grid, errors (N, R)) of one group, NaN where a fit failed."""
    piv = g.pivot(index="n", columns="seed", values=column).sort_index()
    return piv.index.to_numpy(float), piv.to_numpy(float)


def exponents(rec, *, asymptotic_from: int = 1000, column: str = "error") -> pd.DataFrame:
    """One row per (setting, estimator, schedule): slope, CI, R^2, RMSE range, failures.

    ``column="error_star"`` measures the distance to theta* (DPO's target) instead of the
    estimator's own population target.
    """
    rows = []
    for (s, e, sch), g in groups(rec):
        n, err = _table(g, column)
        row = dict(setting=s, estimator=e, schedule=sch, seeds=err.shape[1],
                   failed=int((g.status != "ok").sum()), at_zero=float(g.at_zero.mean()),
                   rmse_first=float(rmse(err[0])), rmse_last=float(rmse(err[-1])))
        for tag, keep in (("all", n > 0), ("asym", n >= asymptotic_from)):
            try:
                ci = bootstrap_exponent(n[keep], err[keep], n_boot=BOOT,
                                        rng=np.random.default_rng(BOOT_SEED))
                r2 = fit_power_law(n[keep], rmse(err[keep])).r2
                row.update({f"slope_{tag}": ci.estimate, f"lo_{tag}": ci.lo,
                            f"hi_{tag}": ci.hi, f"r2_{tag}": r2})
            except ValueError:  # zero RMSE (collapsed at every seed) or too few n
                row.update({f"slope_{tag}": np.nan, f"lo_{tag}": np.nan,
                            f"hi_{tag}": np.nan, f"r2_{tag}": np.nan})
        rows.append(row)
    return pd.DataFrame(rows)


def _setting_specs(cfg):
    return {s["name"]: s for s in cfg["settings"]}


def _schedules(cfg) -> dict:
    return {s["name"]: s for s in cfg["schedules"]}


def _exponent(cfg, schedule: str) -> float:
    return float(_schedules(cfg).get(schedule, {}).get("exponent", 0.0))


def _collapse_fraction(cfg, schedule: str) -> float:
    return float(_schedules(cfg).get(schedule, {}).get("collapse_fraction") or 0.0)


def theory(rec, tgt, cfg) -> pd.DataFrame:
    """Per (setting, estimator, schedule, n): RMSE, (1-delta) quantile, bound, prediction.

    ``q_vs_bound`` is the quantile the bound is compared with, ``shrinking`` whether the
    schedule's radius shrinks with n."""
    delta, B = cfg["delta"], cfg["bound"]
    specs = _setting_specs(cfg)
    tg = tgt.set_index(["setting", "estimator", "param"])
    rows = []
    for (s, e, sch, n), g in rec[rec.status == "ok"].groupby(
            ["setting", "estimator", "schedule", "n"], sort=True):
        spec = specs[s]
        beta, lam = float(spec.get("beta", 1.0)), float(g.lambda_min.iloc[0])
        bound = BOUNDS.get(get_estimator(e).theorem)
        param = g.param.iloc[0]
        pkey = "" if not np.isfinite(param) else repr(float(param))
        t = tg.loc[(s, e, pkey)] if (s, e, pkey) in tg.index else None
        err = g.error.to_numpy()
        q = float(np.quantile(err, 1 - delta))
        row = dict(setting=s, estimator=e, schedule=sch, n=int(n), param=param,
                   rmse=float(rmse(err)), mean=float(err.mean()), median=float(np.median(err)),
                   q_1md=q, q_sigma=float(np.quantile(g.error_sigma, 1 - delta)),
                   pred_sandwich=float(np.sqrt(g.tr_sandwich.iloc[0] / n)),
                   pred_hinv=float(np.sqrt(g.tr_hinv.iloc[0] / n)), lambda_min=lam,
                   tr_hinv=float(g.tr_hinv.iloc[0]), rmse_star=float(rmse(g.error_star)))
        row["bound"] = bound.value(n, beta=beta, bound=B, lam=lam, delta=delta,
                                   dual=float(t["dual"]) if t is not None else np.nan,
                                   dim=int(spec.get("dim", 4)))
        stat = row[bound.statistic]
        row["bound_factor"] = row["bound"] / stat if stat > 0 else np.inf
        row.update(q_vs_bound=stat, shrinking=_exponent(cfg, sch) > 0)
        rows.append(row)
    return pd.DataFrame(rows)


def theory_summary(th: pd.DataFrame) -> pd.DataFrame:
    """Per group: does the bound hold at every n, the smallest factor, and the local
    prediction's accuracy (RMSE / sqrt(tr V / n), median over n and at the largest n)."""
    rows = []
    for (s, e, sch), g in th.groupby(["setting", "estimator", "schedule"], sort=True):
        g = g.sort_values("n")
        ratio = g.rmse / g.pred_sandwich
        fin = g.bound_factor[np.isfinite(g.bound_factor)]
        rows.append(dict(setting=s, estimator=e, schedule=sch,
                         bound_holds=bool(np.all(fin > 1)) if len(fin) else "n/a",
                         min_factor=float(fin.min()) if len(fin) else np.nan,
                         rmse_over_pred_median=(float(np.nanmedian(ratio))
                                                if np.isfinite(ratio).any() else np.nan),
                         rmse_over_pred_last=float(ratio.iloc[-1])))
    return pd.DataFrame(rows)


def coverage_table(rec, *, n=None) -> pd.DataFrame:
    """RMSE at one n (default the largest) per (estimator, schedule, setting), with
    lambda_min, 1/lambda_min and tr H^{-1}, plus elasticities across settings."""
    n = int(rec.n.max()) if n is None else int(n)
    sub = rec[(rec.n == n) & (rec.status == "ok")]
    rows = []
    for (e, sch, s), g in sub.groupby(["estimator", "schedule", "setting"], sort=True):
        rows.append(dict(estimator=e, schedule=sch, setting=s, n=n,
                         lambda_min=float(g.lambda_min.iloc[0]),
                         inv_lambda=1.0 / float(g.lambda_min.iloc[0]),
                         tr_hinv=float(g.tr_hinv.iloc[0]), rmse=float(rmse(g.error))))
    return pd.DataFrame(rows)


def elasticities(cov: pd.DataFrame) -> pd.DataFrame:
    """d log RMSE / d log(1/lambda_min) and d log RMSE / d log tr H^{-1} across settings."""
    rows = []
    for (e, sch), g in cov.groupby(["estimator", "schedule"], sort=True):
        if g.setting.nunique() < 2 or not np.all(g.rmse > 0):
            continue
        row = dict(estimator=e, schedule=sch, settings=int(len(g)))
        row["vs_inv_lambda"] = fit_power_law(g.inv_lambda, g.rmse).slope
        ok = np.isfinite(g.tr_hinv) & (g.tr_hinv > 0)
        row["vs_tr_hinv"] = (fit_power_law(g.tr_hinv[ok], g.rmse[ok]).slope
                             if ok.sum() >= 2 and g.tr_hinv[ok].nunique() >= 2 else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ the summary
def _ci_contains(df, value) -> int:
    return int(((df.lo_asym <= value) & (value <= df.hi_asym)).sum())


def _rate_summary(own, cfg) -> dict:
    """How many groups run at n^-1/2, the exceptions, and the groups at the collapse."""
    lo, hi = RATE_BAND
    near_half = own[(own.slope_asym > lo) & (own.slope_asym < hi)]
    quarter = own[(own.lo_asym <= QUARTER) & (QUARTER <= own.hi_asym)]
    fractions = own.schedule.map(lambda s: _collapse_fraction(cfg, s))
    at = own[np.isclose(fractions, 1.0)]
    near = (fractions >= NEAR_COLLAPSE) & (fractions < 1.0) & ~np.isclose(fractions, 1.0)
    return dict(
        groups=len(own), near_half=len(near_half), ci_quarter=len(quarter),
        all_half=len(near_half) == len(own),
        # which radii relative to the collapse radius the study's groups include
        band=list(RATE_BAND),
        collapse_radii=[w for w, present in (("near", bool(near.any())), ("at", len(at) > 0))
                        if present],
        exceptions=[dict(estimator=r.estimator, schedule=r.schedule, setting=r.setting,
                         slope=float(r.slope_asym))
                    for r in own.drop(near_half.index).itertuples()],
        at_collapse=(dict(at_zero=float(at.at_zero.mean()),
                          median=float(at.slope_asym.median())) if len(at) else None))


def _kl_bias(ex_star, cfg) -> dict | None:
    """The KL estimator's exponent against theta* with rho_n ~ n^-1/2 (and ~ n^-1)."""
    kl = ex_star[ex_star.estimator == KL_BIAS_ESTIMATOR]
    exps = kl.schedule.map(lambda s: _exponent(cfg, s))
    star = kl[(exps == SQRT_N) & np.isfinite(kl.slope_asym)]
    inv = kl[exps == INVERSE_N]
    if not len(star):
        return None
    return dict(sqrt_n=float(star.slope_asym.median()),
                inverse_n=float(inv.slope_asym.median()) if len(inv) else None)


def summary(rec, tgt, cfg, ex, ex_star, th, ts, el) -> dict:
    """Every number and verdict the report states, from the tables of one run (JSON-able)."""
    fails = tgt[tgt.status != "ok"][["setting", "estimator", "param", "status"]]
    failed_fits = rec[rec.status != "ok"].groupby(["setting", "estimator", "schedule"]).size()
    first = sorted(th.setting.unique())[0] if len(th) else None
    others = sorted(set(th[th.setting == first].schedule) - {NO_SCHEDULE})
    out = dict(
        rows=int(len(rec)), failed_rows=int((rec.status != "ok").sum()), targets=int(len(tgt)),
        failed_targets=fails.to_dict("records"),
        failed_fits=[dict(setting=k[0], estimator=k[1], schedule=k[2], rows=int(v))
                     for k, v in failed_fits.items()],
        schedules=sorted(set(rec.schedule) - {NO_SCHEDULE}) or [NO_SCHEDULE],
        lambda_min={s: float(v) for s, v in rec.groupby("setting").lambda_min.first().items()},
        first_setting=first,
        # the bounds figure shows the fixed (non-shrinking) schedule with the smallest radius
        bounds_schedule=min(others, key=lambda s: (_exponent(cfg, s) > 0,
                                                   _collapse_fraction(cfg, s), s),
                            default=NO_SCHEDULE),
        shrinking=bool(th.shrinking.any()) if len(th) else False)
    own = ex[np.isfinite(ex.slope_asym)]
    out["own"] = [dict(schedule=sch, groups=len(g), min=float(g.slope_asym.min()),
                       max=float(g.slope_asym.max()), median=float(g.slope_asym.median()),
                       ci_half=_ci_contains(g, HALF), ci_quarter=_ci_contains(g, QUARTER))
                  for sch, g in own.groupby("schedule", sort=True)]
    star = ex_star[(ex_star.schedule != NO_SCHEDULE) & np.isfinite(ex_star.slope_asym)]
    out["star"] = [dict(schedule=sch, estimator=e, settings=len(g),
                        median=float(g.slope_asym.median()), min=float(g.slope_asym.min()),
                        max=float(g.slope_asym.max()), ci_quarter=_ci_contains(g, QUARTER),
                        ci_half=_ci_contains(g, HALF))
                   for (sch, e), g in star.groupby(["schedule", "estimator"], sort=True)
                   if _exponent(cfg, sch) > 0]
    out["rate"] = _rate_summary(own, cfg) if len(own) else None
    out["kl_bias"] = _kl_bias(ex_star, cfg)
    out["bounds"] = out["local"] = out["coverage"] = None
    if len(ts):
        fin = ts[np.isfinite(ts.min_factor)]
        prop1 = ts[ts.estimator.map(lambda e: get_estimator(e).theorem) == PROPOSITION_1]
        out["bounds"] = dict(
            holds=int((ts.bound_holds == True).sum()),  # noqa: E712 (bool or "n/a")
            finite=int((ts.bound_holds != "n/a").sum()),
            min_factor=float(fin.min_factor.min()), median_factor=float(fin.min_factor.median()),
            prop1_holds=bool((prop1.bound_holds == True).all()))  # noqa: E712
        r = ts.rmse_over_pred_median.dropna()
        if len(r):
            out["local"] = dict(median=float(r.median()), groups=len(r), min=float(r.min()),
                                max=float(r.max()))
    if len(el):
        lam, tr = float(el.vs_inv_lambda.median()), float(np.nanmedian(el.vs_tr_hinv))
        out["coverage"] = dict(
            lam_min=float(el.vs_inv_lambda.min()), lam_max=float(el.vs_inv_lambda.max()),
            tr_min=float(np.nanmin(el.vs_tr_hinv)), tr_max=float(np.nanmax(el.vs_tr_hinv)),
            lam_median=lam, tr_median=tr,
            tr_explains_better=bool(abs(tr - COVERAGE_ELASTICITY)
                                    < abs(lam - COVERAGE_ELASTICITY)))
    return out


# ------------------------------------------------------------- tables on disk
class RatesTables(NamedTuple):
    """The analysis tables of one rates study, as :func:`read_tables` returns them."""

    exponents: pd.DataFrame
    exponents_star: pd.DataFrame
    theory: pd.DataFrame
    theory_summary: pd.DataFrame
    coverage: pd.DataFrame
    elasticities: pd.DataFrame
    summary: dict
    config: dict


def write_tables(records_dir) -> dict[str, Path]:
    """Compute every table of the report from the records in ``records_dir`` and write them
    there (``TABLES`` as CSV, the summary as ``summary.json``); returns name -> path."""
    d = Path(records_dir)
    rec, tgt, cfg = load(d)
    ex = exponents(rec)
    ex_star = exponents(rec, column="error_star")
    th = theory(rec, tgt, cfg)
    ts = theory_summary(th)
    cov = coverage_table(rec)
    el = elasticities(cov)
    frames = dict(exponents=ex, exponents_star=ex_star, theory=th, theory_summary=ts,
                  coverage=cov, elasticities=el)
    paths = {k: write_table(frames[k], d / name) for k, name in TABLES.items()}
    paths["summary"] = d / SUMMARY
    paths["summary"].write_text(json.dumps(summary(rec, tgt, cfg, ex, ex_star, th, ts, el),
                                           indent=1) + "\n")
    return paths


def read_tables(records_dir) -> RatesTables:
    """The tables :func:`write_tables` wrote to ``records_dir``, with the study's config."""
    d = Path(records_dir)
    frames = {k: read_table(d / name, text=TEXT_COLUMNS) for k, name in TABLES.items()}
    return RatesTables(**frames, summary=json.loads((d / SUMMARY).read_text()),
                       config=json.loads((d / "config.json").read_text()))
