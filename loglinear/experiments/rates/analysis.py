r"""Analysis of the rates records: exponents with bootstrap CIs, theory checks, coverage.

Everything the rates report shows is computed here from ``records.csv``, ``targets.csv``
and ``config.json``; the report module only formats and plots these tables.

* **Exponent.** For each (setting, estimator, schedule): the slope of log RMSE(n) on log n
  with a 95% seed-bootstrap percentile interval (:func:`loglinear.stats.bootstrap_exponent`),
  on the whole n grid and on n >= ``asymptotic_from`` (the pre-asymptotic regime at small n
  can bend the line).
* **Theory.** At each n: the empirical (1 - delta) quantile of the error against the
  Theorem 1 (W1, W2, WDPO) or Theorem 2 (KL, KLDPO) bound with lambda = the population
  lambda_min(Sigma) and, for Theorem 2, lambda_lo = lambda_hi = the population dual
  lambda*; for DPO the (1 - delta) quantile of ||Delta||_{Sigma_D} against Proposition 1
  with C = 1 (the report gives the empirical constant). The local prediction is
  sqrt(tr V / n) with V the sandwich covariance (sqrt(tr H^{-1}/n) is also shown).
* **Coverage.** RMSE at fixed n across settings against 1/lambda_min and tr H^{-1}.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ...estimation import proposition1_bound, theorem1_bound, theorem2_bound
from ...stats import bootstrap_exponent, fit_power_law, rmse
from ..estimators import get_estimator
from ..records import read_records

BOOT = 2000
BOOT_SEED = 20260522


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


def theory(rec, tgt, cfg) -> pd.DataFrame:
    """Per (setting, estimator, schedule, n): RMSE, (1-delta) quantile, bound, prediction."""
    delta, B = cfg["delta"], cfg["bound"]
    specs = _setting_specs(cfg)
    tg = tgt.set_index(["setting", "estimator", "param"])
    rows = []
    for (s, e, sch, n), g in rec[rec.status == "ok"].groupby(
            ["setting", "estimator", "schedule", "n"], sort=True):
        spec = specs[s]
        beta, lam = float(spec.get("beta", 1.0)), float(g.lambda_min.iloc[0])
        est = get_estimator(e)
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
        if est.theorem == "thm1":
            row["bound"] = float(theorem1_bound(n, beta=beta, bound=B, lam=lam, delta=delta))
        elif est.theorem == "thm2":
            dual = float(t["dual"]) if t is not None else np.nan
            row["bound"] = (float(theorem2_bound(n, beta=beta, bound=B, lam=lam, dual_lo=dual,
                                                 dual_hi=dual, delta=delta))
                            if 0 < dual < np.inf else np.nan)
        else:  # Proposition 1, in the Sigma_D norm
            row["bound"] = float(proposition1_bound(n, beta=beta, bound=B,
                                                    dim=int(spec.get("dim", 4)), delta=delta))
        stat = row["q_sigma"] if est.theorem == "prop1" else q
        row["bound_factor"] = row["bound"] / stat if stat > 0 else np.inf
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
