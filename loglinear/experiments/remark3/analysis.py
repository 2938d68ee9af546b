r"""The Remark 3 study's records -> the tables its report formats (docs/theory.md §8).

* ``exponents.csv``: per (setting, estimator, a), the slope of log RMSE against log n,
  against theta* and against the estimator's own target theta(rho_n), fitted on every n
  (``all``) and on n >= ``tail_n`` (``tail``), with a 95% seed-bootstrap interval
  (:func:`loglinear.stats.bootstrap_exponent`), beside :func:`loglinear.remark3.
  predicted_exponent`;
* ``predicted.csv``: the predicted exponent on a fine grid of a (the figure's lines);
* ``certificate.csv``: per (setting or ``all``, estimator, a, n), the fraction of samples
  whose robust objective certifies (i) the population risk and (ii) the worst case over the
  stated shift, with Wilson intervals, beside :func:`loglinear.remark3.certificate_limit`;
* ``intervals.csv``: per (setting or ``all``, estimator, a, n), how often the plug-in 95%
  ellipsoid covers theta(rho_n) and theta*, and how many samples have no normal limit;
* ``bounds.csv``: per (setting, estimator, n) at a fixed radius,
  :func:`loglinear.bounds.bound_tightness` of the local-curvature bound (DPO: §9.2, against
  theta*; the robust estimators: §9.5, against their own target theta(rho)) and of the
  paper's bound (Proposition 1; Theorems 1-2);
* ``rmse.csv``: RMSE against theta* and theta(rho_n) per (setting, estimator, a, n);
* ``summary.json``: the numbers the report's sentences quote
  (:mod:`loglinear.experiments.remark3.summary`).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ...bounds import bound_tightness
from ...remark3 import certificate_limit, predicted_exponent
from ...stats import bootstrap_exponent, rmse
from ..records import read_records, read_table, write_table
from .common import POOLED, wilson
from .fits import get_fit
from .summary import summarise

TABLES = {"exponents": "exponents.csv", "predicted": "predicted.csv",
          "certificate": "certificate.csv", "intervals": "intervals.csv",
          "bounds": "bounds.csv", "rmse": "rmse.csv"}
SUMMARY = "summary.json"
AGAINST = {"theta_star": "error_star", "target": "error_target"}
N_BOOT = 2000
ROOT_N = -0.5           # DPO is an M-estimator of theta* itself (docs/theory.md §8.1)
A_GRID = np.round(np.arange(0.0, 1.6001, 0.01), 2)
TEXT = ("setting", "estimator", "against", "fit", "reason")


class Remark3Tables(NamedTuple):
    """The analysis tables, the summary, the resolved config and the run log."""

    exponents: pd.DataFrame
    predicted: pd.DataFrame
    certificate: pd.DataFrame
    intervals: pd.DataFrame
    bounds: pd.DataFrame
    rmse: pd.DataFrame
    summary: dict
    config: dict


def predicted(estimator: str, a, against: str) -> float:
    """The predicted exponent of ``estimator`` under schedule exponent ``a``."""
    rate = get_fit(estimator).rate
    if rate is None:
        return ROOT_N
    return predicted_exponent(rate, float(a), against=against)


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("|".join(map(str, key)).encode()))


def error_matrix(frame: pd.DataFrame, column: str, *, min_n: int = 0):
    """(n (N,), errors (N, R)) of one group's ok rows: row k for n[k], column r for a seed
    (NaN where that fit failed)."""
    ok = frame[(frame.status == "ok") & (frame.n >= min_n)]
    table = ok.pivot_table(index="n", columns="seed", values=column, aggfunc="first")
    return table.index.to_numpy(float), table.to_numpy(float)


def measured_exponent(frame: pd.DataFrame, *, against: str, min_n: int = 0, key=()) -> dict:
    """The slope of log RMSE(n) on log n for one group of rows, with its 95% seed-bootstrap
    interval (``estimate``, ``lo``, ``hi``, ``se``; NaN with a ``reason`` where it cannot be
    fitted). ``key`` seeds the bootstrap (same rows and key, same interval)."""
    n, e = error_matrix(frame, AGAINST[against], min_n=min_n)
    out = dict(estimate=np.nan, lo=np.nan, hi=np.nan, se=np.nan, sizes=len(n),
               seeds=int(e.shape[1]) if e.ndim == 2 else 0, reason="")
    try:
        ci = bootstrap_exponent(n, e, rng=_rng(*key, against, min_n), n_boot=N_BOOT)
    except ValueError as exc:
        return out | dict(reason=str(exc)[:120])
    return out | dict(estimate=ci.estimate, lo=ci.lo, hi=ci.hi, se=ci.se)


def _groups(records: pd.DataFrame, by):
    return records.groupby(list(by), dropna=False, sort=True)


def exponents_table(records: pd.DataFrame, *, tail_n: int) -> pd.DataFrame:
    """Measured and predicted exponents per (setting, estimator, a, against, fit)."""
    rows = []
    for (setting, est, a), g in _groups(records, ["setting", "estimator", "a"]):
        for against in AGAINST:
            for fit, min_n in (("all", 0), ("tail", tail_n)):
                m = measured_exponent(g, against=against, min_n=min_n,
                                      key=(setting, est, a, fit))
                rows.append(dict(setting=setting, estimator=est, a=a, against=against,
                                 fit=fit, **m, predicted=predicted(est, a, against)))
    return pd.DataFrame(rows)


def predicted_table(estimators) -> pd.DataFrame:
    """The predicted exponent on :data:`A_GRID` for every scheduled estimator."""
    return pd.DataFrame([dict(estimator=e, against=against, a=a,
                              predicted=predicted(e, a, against))
                         for e in estimators if get_fit(e).rate is not None
                         for against in AGAINST for a in A_GRID])


def _with_pooled(records: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([records, records.assign(setting=POOLED)], ignore_index=True)


def certificate_table(records: pd.DataFrame) -> pd.DataFrame:
    """Certificate coverage (i) and (ii) per (setting or ``all``, estimator, a, n)."""
    rows = []
    ok = _with_pooled(records[records.status == "ok"])
    for (setting, est, a, n), g in _groups(ok, ["setting", "estimator", "a", "n"]):
        m = len(g)
        row = dict(setting=setting, estimator=est, a=a, n=n, samples=m)
        for tag in ("true", "shift"):
            k = int(g[f"cert_{tag}"].astype(bool).sum())
            lo, hi = wilson(k, m)
            row.update({tag: k / m, f"{tag}_lo": lo, f"{tag}_hi": hi})
        rate = get_fit(est).rate
        row["predicted_true"] = np.nan if rate is None else certificate_limit(rate, a)
        row["excess_true"] = float(np.median(g.value_sample - g.risk_pop))
        row["excess_shift"] = float(np.median(g.value_sample - g.worst_shift))
        rows.append(row)
    return pd.DataFrame(rows)


def intervals_table(records: pd.DataFrame) -> pd.DataFrame:
    """Coverage of theta(rho_n) and theta* by the plug-in 95% ellipsoid (and the mean
    per-coordinate coverage) per (setting or ``all``, estimator, a, n)."""
    rows = []
    ok = _with_pooled(records[records.status == "ok"])
    for (setting, est, a, n), g in _groups(ok, ["setting", "estimator", "a", "n"]):
        usable = g[g.interval == "ok"]
        m = len(usable)
        row = dict(setting=setting, estimator=est, a=a, n=n, samples=len(g), usable=m,
                   no_limit=len(g) - m)
        for tag in ("target", "star"):
            k = int(usable[f"ellipse_{tag}"].astype(bool).sum())
            lo, hi = wilson(k, m)
            row.update({tag: k / m if m else np.nan, f"{tag}_lo": lo, f"{tag}_hi": hi,
                        f"coord_{tag}": float(usable[f"coord_{tag}"].mean()) if m
                        else np.nan})
        rows.append(row)
    return pd.DataFrame(rows)


def bounds_table(records: pd.DataFrame, *, delta: float) -> pd.DataFrame:
    """:func:`loglinear.bounds.bound_tightness` of the rows that carry finite-sample bounds,
    per (setting, estimator, n) at a fixed radius (a = 0; DPO at radius 0): the median bound
    over the empirical (1 - delta) quantile of the error it bounds, the violation rate and
    count, and the paper's bound beside it. The error is the one to the estimator's own
    target: ``error_target`` (theta(rho)) for the robust estimators (docs/theory.md §9.5),
    ``error_star`` (theta*) for DPO (§9.2); ``against`` says which."""
    rows = []
    fixed = records.a.isna() | (records.a == 0.0)
    has = records[(records.status == "ok") & records.local_bound.notna() & fixed]
    for (setting, est, n), g in _groups(has, ["setting", "estimator", "n"]):
        against = "theta_star" if get_fit(est).rate is None else "target"
        t = bound_tightness(g[AGAINST[against]].to_numpy(float), g.local_bound.to_numpy(float),
                            delta=delta, paper_bounds=g.paper_bound.to_numpy(float))
        rows.append(dict(setting=setting, estimator=est, against=against, n=n, **t._asdict(),
                         violation_count=int(np.sum(g[AGAINST[against]].to_numpy(float)
                                                    > g.local_bound.to_numpy(float)))))
    return pd.DataFrame(rows)


def rmse_table(records: pd.DataFrame) -> pd.DataFrame:
    """RMSE over seeds against theta* and theta(rho_n) per (setting, estimator, a, n)."""
    rows = []
    ok = records[records.status == "ok"]
    for (setting, est, a, n), g in _groups(ok, ["setting", "estimator", "a", "n"]):
        rows.append(dict(setting=setting, estimator=est, a=a, n=n, seeds=len(g),
                         rmse_star=float(rmse(g.error_star.to_numpy(float))),
                         rmse_target=float(rmse(g.error_target.to_numpy(float))),
                         hyperparameter=float(g.hyperparameter.iloc[0])))
    return pd.DataFrame(rows)


def load_records(records_dir) -> pd.DataFrame:
    """The rows of ``records.csv`` (``a`` is NaN for DPO, which has no schedule)."""
    return read_records(Path(records_dir) / "records.csv", keep_default_na=False,
                        na_values=["", "nan"], dtype={"setting": str, "estimator": str,
                                                      "status": str, "interval": str,
                                                      "failure": str})


def compute(records_dir) -> dict:
    """Every table and the summary, from the records in ``records_dir``."""
    d = Path(records_dir)
    config = json.loads((d / "config.json").read_text())
    records = load_records(d)
    if records.empty:
        raise ValueError(f"{d / 'records.csv'} holds no rows: run the study first")
    frames = dict(exponents=exponents_table(records, tail_n=int(config["tail_n"])),
                  predicted=predicted_table(config["estimators"]),
                  certificate=certificate_table(records),
                  intervals=intervals_table(records),
                  bounds=bounds_table(records, delta=float(config["delta"])),
                  rmse=rmse_table(records))
    runs = read_records(d / "runs.csv") if (d / "runs.csv").exists() else pd.DataFrame()
    envs = read_records(d / "environments.csv", keep_default_na=False)
    return dict(frames=frames, summary=summarise(records, frames, config, runs, envs))


def write_tables(records_dir) -> dict[str, Path]:
    """Compute every table from the records in ``records_dir`` and write them there
    (:data:`TABLES` as CSV, the summary as ``summary.json``); returns name -> path."""
    d = Path(records_dir)
    out = compute(d)
    paths = {k: write_table(out["frames"][k], d / name) for k, name in TABLES.items()}
    paths["summary"] = d / SUMMARY
    paths["summary"].write_text(json.dumps(out["summary"], indent=1, sort_keys=True) + "\n")
    return paths


def read_tables(records_dir) -> Remark3Tables:
    """The tables :func:`write_tables` wrote to ``records_dir``, with the study's config."""
    d = Path(records_dir)
    frames = {k: read_table(d / name, text=TEXT) for k, name in TABLES.items()}
    return Remark3Tables(**frames, summary=json.loads((d / SUMMARY).read_text()),
                         config=json.loads((d / "config.json").read_text()))
