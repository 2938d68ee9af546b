r"""Analysis of the approximation study: records -> the tables its report formats.

**The error metric.** Parameter errors are reported as

.. math::  \mathrm{rel\_err} = \frac{\|\theta_{approx} - \theta_{exact}\|_\Sigma}
           {\|\theta_{DPO}\|_\Sigma},\qquad \|v\|_\Sigma = (v^\top \Sigma v)^{1/2},
           \ \Sigma = E_q[x x^\top],

the RMS change of the pairs' margins as a fraction of the DPO policy's. It stays meaningful
near the collapse radius, where theta_exact -> 0 and a ratio to ||theta_exact|| (the
records' ``rel_theta_err``) blows up. Excess robust losses are reported as the per-row ratio
``subopt_ratio`` = subopt / subopt_dpo (the surrogate's excess exact robust loss over
plain DPO's). Tables and figures use the same two metrics (:data:`METRICS`).

:func:`write_tables` reads ``records.csv``, ``refit.csv`` and ``config.json`` from the
records directory and writes beside them:

* ``exponents.csv``: per (env, divergence, variant), the slope of log ||error||_Sigma on
  log radius over the small radii (:func:`fit_exponents`; first-order theory,
  docs/theory.md §4.1, predicts 2 for WDPO against W2);
* ``summary.csv``: per (divergence, variant), the exponents' median and range, and the
  median ``rel_err``, ``subopt_ratio`` and value gap at :data:`REPORT_FRACTIONS` of the
  collapse radius;
* ``by_regime.csv``: the median ``rel_err`` per coverage level and data regime;
* ``curves.csv``: median, min and max over environments of each metric per radius
  fraction (the figures), and which variants' median curves coincide (``hidden_by``);
* ``environments.csv``: each environment's coverage, data regime and collapse radii;
* ``refit.csv`` -> ``refit_summary.csv``: the refit-then-reweight KLDPO iteration per
  (data regime, tau), its contraction factor against whether it reached the fixed point
  (docs/theory.md §4.2);
* ``counts.json``: the counts the report's sentences state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..records import read_records, read_table, write_table

ERROR_FLOOR = 1e-9     # errors below this are solver noise and do not enter the fit
EXACT_AGREEMENT = 1e-11  # a median error below this at every radius: the variant is exact
REFIT_REACHED = 1e-6   # ||theta - theta_KLDPO|| counted as having reached the fixed point
REPORT_FRACTIONS = (0.1, 0.9)  # radii (fractions of the collapse radius) the tables quote
METRICS = ("rel_err", "subopt_ratio")  # the metrics of the tables and the figures
EXPONENT_METRIC = "sigma_err"  # the exponents' metric (the same slope as rel_err's)
OVERLAP_RTOL = 0.02   # median curves within 2% at every radius: one hides the other
# Left out of the by-regime table: the baseline, the oracle calibrations at the exact dual,
# and the self-consistent calibration (identical to wdpo-paper by construction).
BY_REGIME_OMIT = frozenset({"dpo", "kldpo-paper@dual", "kldpo-official@dual",
                            "wdpo-official@fit-cal"})
TEXT_COLUMNS = ("env", "divergence", "variant", "data", "hidden_by")
TABLES = dict(exponents="exponents.csv", summary="summary.csv", by_regime="by_regime.csv",
              curves="curves.csv", environments="environments.csv",
              refit="refit_summary.csv")
COUNTS = "counts.json"


def fit_exponents(records, *, max_fraction: float, metric: str = "theta_err"):
    """Least-squares slope of log(metric) on log(radius) per (env, divergence, variant),
    over fractions <= max_fraction with metric > ERROR_FLOOR. Returns a DataFrame with
    columns env, divergence, variant, exponent, points, intercept."""
    rows = []
    df = records[(records["fraction"] <= max_fraction + 1e-12)]
    for (env, div, var), g in df.groupby(["env", "divergence", "variant"], sort=True):
        g = g[np.abs(g[metric]) > ERROR_FLOOR]
        if len(g) < 2:
            rows.append({"env": env, "divergence": div, "variant": var,
                         "exponent": float("nan"), "points": len(g),
                         "intercept": float("nan")})
            continue
        slope, icpt = np.polyfit(np.log(g["radius"]), np.log(np.abs(g[metric])), 1)
        rows.append({"env": env, "divergence": div, "variant": var, "exponent": float(slope),
                     "points": len(g), "intercept": float(icpt)})
    return pd.DataFrame(rows)


def with_metrics(records) -> pd.DataFrame:
    """The records with the derived metrics of :data:`METRICS`: ``rel_err`` =
    sigma_err / dpo_sigma_norm and ``subopt_ratio`` = subopt / subopt_dpo (NaN where DPO's
    excess loss is not positive)."""
    df = records.copy()
    df["rel_err"] = df["sigma_err"] / df["dpo_sigma_norm"].where(df["dpo_sigma_norm"] > 0)
    df["subopt_ratio"] = df["subopt"] / df["subopt_dpo"].where(df["subopt_dpo"] > 0)
    return df


def _median_at(g, frac: float, col: str) -> float:
    sel = g[np.isclose(g["fraction"], frac)][col].dropna()
    return float(sel.median()) if len(sel) else float("nan")


def summary_table(records, exps) -> pd.DataFrame:
    """Per (divergence, variant): exponent median/min/max over environments (``exponents``
    counts the finite ones) and, at each of :data:`REPORT_FRACTIONS`, the medians of
    ``rel_err`` and ``subopt_ratio``, and (at the first) of the value gap."""
    records = with_metrics(records)
    lo = REPORT_FRACTIONS[0]
    rows = []
    for (div, var), g in records.groupby(["divergence", "variant"], sort=True):
        e = exps[(exps["divergence"] == div) & (exps["variant"] == var)]["exponent"].dropna()
        row = {"divergence": div, "variant": var, "exponents": len(e),
               "exponent_median": float(e.median()) if len(e) else float("nan"),
               "exponent_min": float(e.min()) if len(e) else float("nan"),
               "exponent_max": float(e.max()) if len(e) else float("nan")}
        for metric in METRICS:
            for f in REPORT_FRACTIONS:
                row[f"{metric}@{f:g}"] = _median_at(g, f, metric)
        row[f"value_gap@{lo:g}"] = _median_at(g, lo, "value_gap")
        rows.append(row)
    return pd.DataFrame(rows)


def by_regime(records) -> pd.DataFrame:
    """Per (concentration, data regime, divergence, variant): median lambda_min of the
    regime and the median ``rel_err`` at each of :data:`REPORT_FRACTIONS`."""
    df = with_metrics(records)
    df["data"] = np.where(df["n_samples"] == 0, "population", "sample")
    rows = []
    for (conc, data), g in df.groupby(["concentration", "data"], sort=True):
        lam = float(g["lambda_min"].median())
        for (div, var), h in g.groupby(["divergence", "variant"], sort=True):
            if var in BY_REGIME_OMIT:
                continue
            rows.append({"concentration": conc, "data": data, "lambda_min": lam,
                         "divergence": div, "variant": var,
                         **{f"rel_err@{f:g}": _median_at(h, f, "rel_err")
                            for f in REPORT_FRACTIONS}})
    return pd.DataFrame(rows)


def _hidden_by(st: pd.DataFrame) -> dict:
    """variant -> the first variant (in name order) whose median curve it coincides with,
    within :data:`OVERLAP_RTOL` at every radius (drawn later, it hides the earlier one)."""
    piv = st.pivot_table(index="fraction", columns="variant", values="median")
    out, names = {}, sorted(piv.columns)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = np.abs(piv[a].to_numpy()), np.abs(piv[b].to_numpy())
            ok = np.isfinite(ra) & np.isfinite(rb)
            if ok.all() and np.all(np.abs(ra - rb) <= OVERLAP_RTOL * np.maximum(ra, rb)):
                out.setdefault(a, b)
    return out


def curves(records) -> pd.DataFrame:
    """Median, min and max over environments of each of :data:`METRICS` per (divergence,
    variant, fraction); ``exact`` marks a variant whose median ``rel_err`` is below
    :data:`EXACT_AGREEMENT` at every radius (it coincides with the exact solution);
    ``hidden_by`` names a variant whose median curve lies on this one's (NaN if none)."""
    records = with_metrics(records)
    parts = []
    for metric in METRICS:
        for div, df in records.groupby("divergence", sort=True):
            st = df.groupby(["variant", "fraction"])[metric].agg(["median", "min", "max"])
            st = st.reset_index()
            st["exact"] = st.groupby("variant")["median"].transform(
                lambda m: bool(np.all(np.abs(m.to_numpy()) < EXACT_AGREEMENT)))
            st["hidden_by"] = st["variant"].map(_hidden_by(st))   # NaN: hidden by none
            parts.append(st.assign(metric=metric, divergence=div))
    cols = ["metric", "divergence", "variant", "fraction", "median", "min", "max", "exact",
            "hidden_by"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def collapse_scale(records) -> dict:
    """divergence -> the median over environments of ||theta_exact|| / ||theta_DPO|| at the
    largest radius fraction: how far the divisor of a ratio to ||theta_exact|| has fallen."""
    top = records[np.isclose(records["fraction"], records["fraction"].max())
                  & (records["variant"] == "dpo")]
    return {d: float((g["theta_norm"] / g["dpo_norm"]).median())
            for d, g in top.groupby("divergence")}


def environments_table(records) -> pd.DataFrame:
    """Per environment: concentration, data regime (0: population), lambda_min(Sigma) and
    the collapse radius of each divergence (columns ``collapse_<divergence>``)."""
    envs = records.groupby("env")[["concentration", "n_samples", "lambda_min"]].first()
    collapse = records.groupby(["env", "divergence"])["collapse_radius"].first().unstack()
    return envs.join(collapse.add_prefix("collapse_")).reset_index()


def refit_summary(refit) -> pd.DataFrame:
    """Per (data regime, tau): the contraction factor's median/min/max, how many runs
    reached theta_KLDPO (within :data:`REFIT_REACHED`) out of how many, and the median
    final distance."""
    refit = refit.copy()
    refit["data"] = np.where(refit["n_samples"] == 0, "population", "sample")
    return pd.DataFrame([{
        "data": d, "tau": float(t), "contraction_median": x["contraction"].median(),
        "contraction_min": x["contraction"].min(), "contraction_max": x["contraction"].max(),
        "reached": int((x["theta_err"] <= REFIT_REACHED).sum()), "runs": len(x),
        "theta_err_median": float(x["theta_err"].median())}
        for (d, t), x in refit.groupby(["data", "tau"])])


def write_tables(records_dir) -> dict[str, Path]:
    """Compute every table of the report from the records in ``records_dir`` and write them
    there (:data:`TABLES` as CSV, the counts as ``counts.json``); returns name -> path."""
    d = Path(records_dir)
    path = d / "records.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `loglinear approx-study` first")
    records = read_records(path)
    config = json.loads((d / "config.json").read_text()) \
        if (d / "config.json").exists() else {}
    max_frac = float(config.get("exponent_max_fraction", 0.2))
    exps = fit_exponents(records, max_fraction=max_frac, metric=EXPONENT_METRIC)
    exps.to_csv(d / "exponents.csv", index=False)
    frames = dict(summary=summary_table(records, exps), by_regime=by_regime(records),
                  curves=curves(records), environments=environments_table(records))
    failed = records[records["status"] == "exact_failed"]
    counts = {"records": len(records), "max_fraction": max_frac,
              "report_fractions": list(REPORT_FRACTIONS),
              "environments": int(records["env"].nunique()),
              "fraction_max": float(records["fraction"].max()),
              "collapse_scale": collapse_scale(records),
              "exact_failures": [[e, v, float(f)] for e, v, f in failed.groupby(
                  ["env", "divergence", "fraction"]).size().index.tolist()],
              "refit": None}
    if (d / "refit.csv").exists():
        refit = read_records(d / "refit.csv")
        frames["refit"] = refit_summary(refit)
        counts["refit"] = {"runs": len(refit), "reached_tol": REFIT_REACHED, "agree": int(
            ((refit["contraction"] < 1) == (refit["theta_err"] <= REFIT_REACHED)).sum())}
    paths = {"exponents": d / "exponents.csv"}
    paths.update({k: write_table(v, d / TABLES[k]) for k, v in frames.items()})
    paths["counts"] = d / COUNTS
    paths["counts"].write_text(json.dumps(counts, indent=1) + "\n")
    return paths


class ApproxTables(NamedTuple):
    """The analysis tables of one approximation study, as :func:`read_tables` returns them
    (``refit`` is ``None`` when the study has no refit records)."""

    exponents: pd.DataFrame
    summary: pd.DataFrame
    by_regime: pd.DataFrame
    curves: pd.DataFrame
    environments: pd.DataFrame
    refit: pd.DataFrame | None
    counts: dict


def read_tables(records_dir) -> ApproxTables:
    """The tables :func:`write_tables` wrote to ``records_dir``."""
    d = Path(records_dir)
    counts = json.loads((d / COUNTS).read_text())
    frames = {k: read_table(d / name, text=TEXT_COLUMNS) for k, name in TABLES.items()
              if k != "refit" or counts["refit"] is not None}
    return ApproxTables(**{"refit": None, **frames}, counts=counts)
