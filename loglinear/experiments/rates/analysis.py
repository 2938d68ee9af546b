r"""Analysis of the rates records: exponents with two-level bootstrap CIs, theory checks,
coverage elasticities, and the summary every sentence of the report is written from.

Everything the rates report shows is computed here (and in the sibling modules
``analysis_boot``, ``analysis_summary``, ``analysis_changes``) from ``records.csv``,
``targets.csv`` and ``config.json``; :func:`write_tables` writes the tables beside the
records and :mod:`loglinear.report.rates` only formats and plots them.

* **Which rows count.** A row enters a statistic only if its fit is certified (status
  ``ok``), its estimate lies inside Theta = {||w|| <= B} and not on its boundary (a fit
  stopped by the ball estimates a projection, not the estimator). Every table counts the
  rows it left out, by reason (:data:`REASONS`).
* **Exponent.** Per (setting, estimator, schedule): the slope of log RMSE(n) on log n, the
  RMSE pooled over environment draws and seeds, with a 95% two-level bootstrap interval
  (draws, then seeds within a draw; :mod:`.analysis_boot`), on the whole n grid and on
  n >= ``asymptotic_from``. A power law is claimed only where it fits (R^2 >= :data:`R2_MIN`
  on the fitted range); docs/theory.md §5.5. Fixed-radius groups (``kind`` "fixed") test
  Theorem 1's object, shrinking schedules are a bias-variance trade-off (``kind``
  "shrinking"). The same is done for the distance to theta* and, in policy space, for
  KL(pi_target || pi_hat)^{1/2} (:data:`METRICS`).
* **Theory.** Per (setting, draw, estimator, schedule, n): the empirical (1 - delta) quantile
  against the Theorem 1/2 or Proposition 1 bound (docs/theory.md §5.3-5.4), compared only
  where the theorem applies (:func:`theory`); the local prediction sqrt(tr V / n)
  (docs/theory.md §5.6).
* **Coverage.** Elasticities of the error at the largest n with respect to 1/lambda_min and
  tr H^{-1}, per estimator, across the settings whose coverage acts through the sampling
  policy (docs/theory.md §5.2), with two-level bootstrap intervals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from ...registry import Registry
from ...stats import rmse
from ..records import read_records, read_table, write_table
from . import analysis_boot as boot
from .analysis_bounds import BOUNDS, PROPOSITION_1, Bound, theory, theory_summary
from .analysis_common import (
    ASYMPTOTIC_FROM,
    BOOT,
    BOOT_SEED,
    R2_MIN,
    collapse_fraction,
    hyper_key,
    kind,
    schedule_exponent,
)
from .analysis_coverage import coverage_table, elasticities, sampling_settings
from .analysis_summary import _kl_bias, _rate_summary  # noqa: F401  (kept importable)
from .analysis_summary import summary as _summary
from .config import NO_SCHEDULE

__all__ = ["BOOT", "BOOT_SEED", "BOUNDS", "Bound", "METRICS", "PROPOSITION_1", "R2_MIN",
           "REASONS", "RatesTables", "TABLES", "bias_variance", "collapse_fraction",
           "coverage_table", "hyper_key", "kind", "sampling_settings", "schedule_exponent",
           "elasticities", "exponents", "groups", "load", "read_tables", "summary", "theory",
           "theory_summary", "write_tables"]

BOUNDARY_RTOL = 1e-6              # records without on_boundary: ||w|| >= B (1 - this)
REASONS = ("used", "on_boundary", "outside", "separable", "failed")
POLICY_COLUMNS = ("policy_kl", "policy_tv", "policy_kl_star", "policy_tv_star")
TEXT_COLUMNS = ("setting", "estimator", "schedule", "kind", "metric", "reason",
                "bound_holds", "theorem")
TABLES = dict(exponents="exponents.csv", exponents_star="exponents_theta_star.csv",
              exponents_policy="exponents_policy.csv",
              exponents_policy_star="exponents_policy_star.csv", curves="curves.csv",
              theory="theory.csv", theory_summary="theory_summary.csv",
              coverage="coverage.csv", elasticities="elasticities.csv",
              bias_variance="bias_variance.csv", exclusions="exclusions.csv")
SUMMARY = "summary.json"


@dataclass(frozen=True)
class Metric:
    """An error the exponents are fitted to: a records column and a transform."""

    column: str
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    label: str = ""


METRICS: Registry[Metric] = Registry("metric", {
    "error": Metric("error", None, "||w_hat - w(rho)||"),
    "error_star": Metric("error_star", None, "||w_hat - w*||"),
    "policy": Metric("policy_kl", np.sqrt, "KL(pi_target || pi_hat)^(1/2)"),
    "policy_star": Metric("policy_kl_star", np.sqrt, "KL(pi* || pi_hat)^(1/2)"),
    "policy_tv": Metric("policy_tv", None, "TV(pi_target, pi_hat)"),
    "policy_tv_star": Metric("policy_tv_star", None, "TV(pi*, pi_hat)"),
})
EXPONENT_TABLES = dict(exponents="error", exponents_star="error_star",
                       exponents_policy="policy", exponents_policy_star="policy_star")


# ------------------------------------------------------------------ the records
def _as_bool(col) -> pd.Series:
    return col.map(lambda v: str(v).strip().lower() in ("1", "true", "1.0"))


def _normalise(rec: pd.DataFrame, tgt: pd.DataFrame, cfg: dict):
    """Records of any version of the study in one form: a ``draw`` and a ``hyperparameter``
    column, ``on_boundary``, ``inside`` (||w_hat|| <= B), the policy columns (NaN where the
    study did not record them), ``reason`` (one of :data:`REASONS`) and ``usable``."""
    rec, tgt = rec.copy(), tgt.copy()
    for df in (rec, tgt):
        if "hyperparameter" not in df and "param" in df:
            df.rename(columns={"param": "hyperparameter"}, inplace=True)
        if "draw" not in df:
            df["draw"] = 0
    B = float(cfg["bound"])
    ok = rec.status.astype(str) == "ok"
    norm = pd.to_numeric(rec.norm_hat, errors="coerce")
    rec["inside"] = norm <= B * (1 + BOUNDARY_RTOL)
    rec["on_boundary"] = (_as_bool(rec.on_boundary) if "on_boundary" in rec
                          else ok & rec.inside & (norm >= B * (1 - BOUNDARY_RTOL)))
    for c in POLICY_COLUMNS:
        rec[c] = pd.to_numeric(rec[c], errors="coerce") if c in rec else np.nan
    status = rec.status.astype(str)
    rec["reason"] = np.select(
        [ok & rec.inside & ~rec.on_boundary, ok & ~rec.inside, ok,
         status.str.startswith("separable") | status.str.contains("SeparableDataError")],
        ["used", "outside", "on_boundary", "separable"], default="failed")
    rec["usable"] = rec.reason == "used"
    rec["kind"] = rec.schedule.map(lambda s: kind(cfg, s))
    return rec, tgt


def load(records_dir):
    """(records, targets, config) of a rates study directory, records normalised (see
    :func:`_normalise`)."""
    d = Path(records_dir)
    rec_path = d / "records.csv"
    if not rec_path.exists() and (d / "records.csv.gz").exists():
        rec_path = d / "records.csv.gz"  # archived copy (reports/rates/records)
    for path in (rec_path, d / "targets.csv", d / "config.json"):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: is {d} a rates records directory?")
    cfg = json.loads((d / "config.json").read_text())
    tgt = read_records(d / "targets.csv", dtype={"param": str, "hyperparameter": str},
                       keep_default_na=False)
    for c in ("norm", "error_star", "tr_hinv", "tr_sandwich", "dual", "collapse_radius"):
        if c in tgt:
            tgt[c] = pd.to_numeric(tgt[c], errors="coerce")
    rec, tgt = _normalise(read_records(rec_path), tgt, cfg)
    return rec, tgt, cfg


def groups(rec):
    return rec.groupby(["setting", "estimator", "schedule"], sort=True)


def _cube(g: pd.DataFrame, values: pd.Series):
    """(n grid, (N, D, R) array) of one group, NaN where a row is not usable."""
    v = values.where(g.usable)
    draws, seeds = sorted(g.draw.unique()), sorted(g.seed.unique())
    cols = pd.MultiIndex.from_product([draws, seeds], names=["draw", "seed"])
    piv = (pd.DataFrame({"n": g.n, "draw": g.draw, "seed": g.seed, "v": v})
           .pivot_table(index="n", columns=["draw", "seed"], values="v", dropna=False)
           .reindex(columns=cols).sort_index())
    return piv.index.to_numpy(float), piv.to_numpy(float).reshape(len(piv), len(draws),
                                                                 len(seeds))


def _values(g, metric: Metric) -> pd.Series:
    v = pd.to_numeric(g[metric.column], errors="coerce")
    return v if metric.transform is None else metric.transform(v.clip(lower=0))


def _counts(g) -> dict:
    c = g.reason.value_counts()
    return {f"rows_{r}": int(c.get(r, 0)) for r in REASONS}


def _prediction(g, n) -> np.ndarray:
    """The local prediction of the pooled RMSE: sqrt(mean over draws of tr V / n)."""
    trv = g.groupby(["n", "draw"]).tr_sandwich.first().groupby(level=0).mean()
    return np.sqrt(trv.reindex(n).to_numpy(float) / n)


def _fit_group(g, metric: Metric, asymptotic_from: int):
    """The exponent row and the curve rows of one group (NaN where nothing fits)."""
    n, cube = _cube(g, _values(g, metric))
    row = dict(draws=int(cube.shape[1]), seeds=int(cube.shape[2]), rows=int(len(g)),
               **_counts(g), failed=int((g.status != "ok").sum()),
               at_zero=float(pd.to_numeric(g.at_zero, errors="coerce").mean()),
               excluded=int((~g.usable).sum()),
               excluded_fit=int((~g.usable & (g.n >= asymptotic_from)).sum()))
    with boot._quiet():
        curve = rmse(cube.reshape(len(n), -1))
    row.update(rmse_first=float(curve[0]), rmse_last=float(curve[-1]))
    curves = pd.DataFrame(dict(n=n.astype(int), rmse=curve, lo=np.nan, hi=np.nan,
                               used=np.sum(np.isfinite(cube), axis=(1, 2)),
                               pred=_prediction(g, n) if metric.column == "error" else np.nan))
    for tag, keep in (("all", n > 0), ("asym", n >= asymptotic_from)):
        try:
            f = boot.exponent(n[keep], cube[keep], rng=np.random.default_rng(BOOT_SEED),
                              n_boot=BOOT)
            row.update({f"slope_{tag}": f.estimate, f"lo_{tag}": f.lo, f"hi_{tag}": f.hi,
                        f"r2_{tag}": f.r2, f"intercept_{tag}": f.intercept})
            if tag == "all":
                curves["lo"], curves["hi"] = f.curve_lo, f.curve_hi
        except ValueError:  # zero RMSE (collapsed everywhere), too few n, or no data
            row.update({f"slope_{tag}": np.nan, f"lo_{tag}": np.nan, f"hi_{tag}": np.nan,
                        f"r2_{tag}": np.nan, f"intercept_{tag}": np.nan})
    row["power_law"] = bool(np.isfinite(row["r2_asym"]) and row["r2_asym"] >= R2_MIN)
    row["fit_n_min"] = int(asymptotic_from)
    return row, curves


def fit_groups(rec, *, metric: str = "error", asymptotic_from: int = ASYMPTOTIC_FROM):
    """(exponents, curves) of one metric of :data:`METRICS` over every group."""
    m = METRICS.get(metric)
    rows, parts = [], []
    for (s, e, sch), g in groups(rec):
        if g[m.column].isna().all():
            continue  # the study did not record this metric for the group
        row, cur = _fit_group(g, m, asymptotic_from)
        key = dict(setting=s, estimator=e, schedule=sch, kind=g.kind.iloc[0])
        rows.append({**key, **row})
        parts.append(cur.assign(**key, metric=metric))
    cols = ["metric", "setting", "estimator", "schedule", "kind", "n", "rmse", "lo", "hi",
            "used", "pred"]
    cur = pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
    empty = ["setting", "estimator", "schedule", "kind", "power_law", "slope_asym", "lo_asym",
             "hi_asym", "r2_asym"]   # a metric the study did not record: no groups
    return (pd.DataFrame(rows) if rows else pd.DataFrame(columns=empty)), cur


def exponents(rec, *, asymptotic_from: int = ASYMPTOTIC_FROM, column: str = "error"
              ) -> pd.DataFrame:
    """One row per (setting, estimator, schedule): slopes with two-level bootstrap CIs, R^2,
    ``power_law`` (R^2 >= :data:`R2_MIN` on n >= ``asymptotic_from``), RMSE at the first
    and last n, and the rows left out by reason. ``column`` names a metric of
    :data:`METRICS` (``"error_star"``: the distance to theta*)."""
    if "usable" not in rec:
        raise ValueError("exponents takes records from analysis.load (normalised)")
    return fit_groups(rec, metric=column, asymptotic_from=asymptotic_from)[0]


# ------------------------------------------------------- bias and variance, coverage
def _target_bias(tgt) -> dict:
    """(setting, draw, estimator, hyperparameter key) -> ||w(rho) - w*|| of the target."""
    t = tgt[tgt.status.astype(str) == "ok"]
    return {(r.setting, int(r.draw), r.estimator, str(r.hyperparameter)): float(r.error_star)
            for r in t.itertuples()}


def bias_variance(rec, tgt) -> pd.DataFrame:
    """Per (setting, estimator, schedule, n) of a robust estimator, pooled over draws: the
    bias ||w(rho_n) - w*|| (RMS over draws), the spread RMSE to the own target, and the
    RMSE to w*; bias^2 + spread^2 ~= total^2 up to the cross term."""
    bias = _target_bias(tgt)
    rows = []
    sub = rec[rec.usable & (rec.schedule != NO_SCHEDULE)]
    for (s, e, sch, n), g in sub.groupby(["setting", "estimator", "schedule", "n"]):
        b = [bias.get((s, int(d), e, hyper_key(h))) for d, h in
             g.groupby("draw").hyperparameter.first().items()]
        b = np.array([np.nan if v is None else v for v in b], float)
        rows.append(dict(setting=s, estimator=e, schedule=sch, kind=g.kind.iloc[0], n=int(n),
                         hyperparameter=float(g.hyperparameter.median()),
                         bias=float(np.sqrt(np.mean(b**2))) if np.isfinite(b).all() else np.nan,
                         spread=float(rmse(g.error)), total=float(rmse(g.error_star)),
                         used=int(len(g))))
    return pd.DataFrame(rows)


def exclusions(rec) -> pd.DataFrame:
    """Rows per (estimator, n) by reason (:data:`REASONS`): what the statistics left out."""
    t = rec.groupby(["estimator", "n", "reason"]).size().unstack(fill_value=0)
    t = t.reindex(columns=list(REASONS), fill_value=0).reset_index()
    t["rows"] = t[list(REASONS)].sum(axis=1)
    return t


# ------------------------------------------------------------- tables on disk
class RatesTables(NamedTuple):
    """The analysis tables of one rates study, as :func:`read_tables` returns them."""

    exponents: pd.DataFrame
    exponents_star: pd.DataFrame
    exponents_policy: pd.DataFrame
    exponents_policy_star: pd.DataFrame
    curves: pd.DataFrame
    theory: pd.DataFrame
    theory_summary: pd.DataFrame
    coverage: pd.DataFrame
    elasticities: pd.DataFrame
    bias_variance: pd.DataFrame
    exclusions: pd.DataFrame
    summary: dict
    config: dict


def compute(records_dir) -> dict:
    """Every table of the report (name -> DataFrame) and the summary, in memory."""
    rec, tgt, cfg = load(records_dir)
    frames, curves = {}, []
    for name, metric in EXPONENT_TABLES.items():
        frames[name], cur = fit_groups(rec, metric=metric)
        if len(cur):
            curves.append(cur)
    frames["curves"] = pd.concat(curves, ignore_index=True)
    frames["theory"] = theory(rec, tgt, cfg)
    frames["theory_summary"] = theory_summary(frames["theory"])
    frames["coverage"] = coverage_table(rec)
    frames["elasticities"] = elasticities(rec, cfg)
    frames["bias_variance"] = bias_variance(rec, tgt)
    frames["exclusions"] = exclusions(rec)
    return dict(frames=frames, summary=_summary(rec, tgt, cfg, frames))


def summary(rec, tgt, cfg, frames) -> dict:
    """Every number and verdict the report states (see :mod:`.analysis_summary`)."""
    return _summary(rec, tgt, cfg, frames)


def write_tables(records_dir) -> dict[str, Path]:
    """Compute every table of the report from the records in ``records_dir`` and write them
    there (:data:`TABLES` as CSV, the summary as ``summary.json``); returns name -> path."""
    d = Path(records_dir)
    out = compute(d)
    paths = {k: write_table(out["frames"][k], d / name) for k, name in TABLES.items()}
    paths["summary"] = d / SUMMARY
    paths["summary"].write_text(json.dumps(out["summary"], indent=1) + "\n")
    return paths


def read_tables(records_dir) -> RatesTables:
    """The tables :func:`write_tables` wrote to ``records_dir``, with the study's config."""
    d = Path(records_dir)
    frames = {k: read_table(d / name, text=TEXT_COLUMNS) for k, name in TABLES.items()}
    return RatesTables(**frames, summary=json.loads((d / SUMMARY).read_text()),
                       config=json.loads((d / "config.json").read_text()))
