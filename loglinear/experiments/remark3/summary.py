"""The numbers the Remark 3 report quotes, computed from the records and the analysis
tables (:mod:`loglinear.experiments.remark3.analysis`); the report only formats them.

Conventions: an exponent "reaches n^-1/2" in a setting when its 95% bootstrap interval
contains -1/2 or lies below it (lo <= -1/2); "the fastest schedule reaching n^-1/2" is the
smallest a from which every larger a reaches it in every setting; a schedule "keeps the
certificate" when (i) holds in at least 95% of samples at the largest n, and ``a_keep`` is the
fastest schedule that keeps it along with every slower one; certificate and interval
coverages are pooled over settings (``setting == "all"``) with Wilson intervals; a bound is
"within 5x" in a (setting, n) group when its median is at most TIGHT times the empirical 95%
quantile of the error it bounds (n >= MIN_INTERVAL_N, a fixed radius).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...remark3 import bias_order, certificate_exponent
from .common import POOLED, wilson
from .fits import get_fit

HALF = -0.5
NOMINAL = 0.95          # the certificate level a "keeping" schedule must reach
MIN_INTERVAL_N = 1000   # interval coverage and bound tightness are quoted for n >= this
TIGHT = 5.0             # a bound is "tight" within this factor of the 95% error quantile


def _f(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _design(records, config, envs) -> dict:
    status = records.status.str.split(":").str[0].value_counts().to_dict()
    shifts, bases = {}, {}
    for r in envs.itertuples():
        table = {"shift": shifts, "base": bases}.get(r.kind)
        if table is not None:
            table.setdefault(r.name, {})[r.setting] = float(r.value)
    return dict(settings=[s["name"] for s in config["settings"]], sizes=len(config["n"]),
                n_min=min(config["n"]), n_max=max(config["n"]), seeds=config["seeds"],
                exponents=config["exponents"], estimators=config["estimators"],
                rows=len(records), status={k: int(v) for k, v in status.items()},
                collapse_fraction=config["collapse_fraction"],
                shift_fraction=config["shift_fraction"], reference_n=config["reference_n"],
                tail_n=config["tail_n"], level=config["level"], delta=config["delta"],
                bound=config["bound"], shifts=shifts, bases=bases)


def _predictions(estimators) -> dict:
    out = {}
    for e in estimators:
        rate = get_fit(e).rate
        if rate is not None:
            g = bias_order(rate)
            out[e] = dict(gamma=g, a_c=certificate_exponent(rate), a_half=0.5 / g,
                          hyperparameter=get_fit(e).hyperparameter)
    return out


def _timing(runs: pd.DataFrame, records: pd.DataFrame) -> dict:
    if runs.empty:
        return dict(runs=0)
    last = runs.iloc[-1]
    return dict(runs=len(runs), seconds=float(runs.seconds.sum()),
                fit_seconds=float(records.seconds.sum()), last_jobs=int(last.jobs),
                last_seconds=float(last.seconds), last_estimated=float(last.estimated_seconds),
                last_rows=int(last.rows_added), ms_per_row=float(last.ms_per_row))


def _exponents(exps: pd.DataFrame, estimators) -> dict:
    tail = exps[exps.fit == "tail"]
    target = tail[(tail.against == "target") & tail.a.notna()]
    fitted = target[target.estimate.notna()]
    out = dict(target=dict(groups=len(target), fitted=len(fitted),
                           contain_half=int(((fitted.lo <= HALF) & (fitted.hi >= HALF)).sum()),
                           median=_f(fitted.estimate.median()), min=_f(fitted.estimate.min()),
                           max=_f(fitted.estimate.max())), star={}, dpo={})
    dpo = tail[tail.a.isna()]
    for against, g in dpo.groupby("against"):
        out["dpo"][against] = dict(median=_f(g.estimate.median()), min=_f(g.estimate.min()),
                                   max=_f(g.estimate.max()))
    for e in estimators:
        g = tail[(tail.estimator == e) & (tail.against == "theta_star") & tail.a.notna()]
        if g.empty:
            continue
        by_a = {}
        for a, h in g.groupby("a"):
            by_a[repr(float(a))] = dict(
                a=float(a), median=_f(h.estimate.median()), min=_f(h.estimate.min()),
                max=_f(h.estimate.max()), predicted=float(h.predicted.iloc[0]),
                settings=len(h), reach_half=int((h.lo <= HALF).sum()),
                contain_predicted=int(((h.lo <= h.predicted) & (h.hi >= h.predicted)).sum()))
        reaching = [v["a"] for v in by_a.values() if v["reach_half"] == v["settings"]]
        a_half = None
        for v in sorted(by_a.values(), key=lambda v: -v["a"]):
            if v["reach_half"] != v["settings"]:
                break
            a_half = v["a"]
        out["star"][e] = dict(by_a=by_a, a_half=a_half, reaching=reaching)
    return out


def _pooled(table: pd.DataFrame, n) -> pd.DataFrame:
    return table[(table.setting == POOLED) & (table.n == n)]


def _certificates(cert: pd.DataFrame, estimators, n_max, n_min) -> dict:
    out = {}
    for e in estimators:
        big = _pooled(cert, n_max)
        big = big[big.estimator == e]
        small = _pooled(cert, n_min)
        small = small[small.estimator == e]
        allg = cert[(cert.setting == POOLED) & (cert.estimator == e)]
        by_a = {}
        for r in big.itertuples():
            key = "none" if pd.isna(r.a) else repr(float(r.a))
            s = small[(small.a == r.a) | (small.a.isna() & pd.isna(r.a))]
            worst = allg[(allg.a == r.a) | (allg.a.isna() & pd.isna(r.a))]
            by_a[key] = dict(a=_f(r.a), true=r.true, true_lo=r.true_lo, true_hi=r.true_hi,
                             shift=r.shift, shift_lo=r.shift_lo, shift_hi=r.shift_hi,
                             samples=int(r.samples), predicted=_f(r.predicted_true),
                             true_small=_f(s.true.iloc[0]) if len(s) else None,
                             shift_small=_f(s["shift"].iloc[0]) if len(s) else None,
                             true_min=_f(worst.true.min()), shift_min=_f(worst["shift"].min()))
        a_keep = None   # the fastest schedule such that it and every slower one keep (i)
        for v in sorted((v for v in by_a.values() if v["a"] is not None), key=lambda v: v["a"]):
            if v["true"] < NOMINAL:
                break
            a_keep = v["a"]
        shift_best = max((v for v in by_a.values() if v["a"] is not None),
                         key=lambda v: (v["shift"], -v["a"]), default=None)
        out[e] = dict(by_a=by_a, a_keep=a_keep,
                      a_shift=None if shift_best is None else shift_best["a"])
    return out


def _interval_cover(rows: pd.DataFrame, tag: str) -> dict:
    k = float((rows[tag] * rows.usable).sum())
    m = int(rows.usable.sum())
    lo, hi = wilson(round(k), m)
    return dict(cover=k / m if m else None, lo=_f(lo), hi=_f(hi), usable=m,
                no_limit=int(rows.no_limit.sum()))


def _intervals(iv: pd.DataFrame, estimators, n_max) -> dict:
    out = {}
    per = iv[(iv.setting != POOLED) & (iv.n >= MIN_INTERVAL_N)]
    for e in estimators:
        g = per[per.estimator == e]
        fixed = g[g.a.isna() | (g.a == 0.0)]
        groups = fixed.groupby(["setting", "n"])
        below = [(s, int(n)) for (s, n), h in groups
                 if h.usable.sum() and (h.target * h.usable).sum() / h.usable.sum() < 0.93]
        big = _pooled(iv, n_max)
        big = big[big.estimator == e]
        by_setting = {st: dict(target=_interval_cover(h, "target"),
                               star=_interval_cover(h, "star"), worst=_f(h.target.min()),
                               samples=int(h.samples.sum()))
                      for st, h in fixed.groupby("setting")}
        out[e] = dict(fixed_target=_interval_cover(fixed, "target"), fixed_min=_f(min(
                          (w["target"]["cover"] for w in by_setting.values()
                           if w["target"]["cover"] is not None), default=np.nan)),
                      fixed_star=_interval_cover(fixed, "star"), by_setting=by_setting,
                      fixed_groups=int(groups.ngroups), fixed_below_93=len(below),
                      star_by_a={("none" if pd.isna(r.a) else repr(float(r.a))):
                                 dict(a=_f(r.a), cover=_f(r.star), lo=_f(r.star_lo),
                                      hi=_f(r.star_hi), target=_f(r.target))
                                 for r in big.itertuples()})
    return out


def _bounds(bt: pd.DataFrame) -> dict:
    """Per estimator, over its (setting, n >= MIN_INTERVAL_N) groups: the tightness ratio
    (median, range over the finite ones), how many groups are within TIGHT of the 95%
    quantile, the vacuous groups (half or more of the bounds infinite), the violations
    pooled (count of replicates, Wilson interval) and per group (the worst rate), the
    paper's ratio, and the smallest n from which every larger group is within TIGHT."""
    g = bt[bt.n >= MIN_INTERVAL_N]
    out = {}
    for e, h in g.groupby("estimator", sort=True):
        ok = h.ratio <= TIGHT
        finite = h.ratio[np.isfinite(h.ratio)]
        k, m = int(h.violation_count.sum()), int(h.replicates.sum())
        lo, hi = wilson(k, m)
        bad = h.n[~ok]
        out[e] = dict(against=str(h.against.iloc[0]), groups=len(h), within=int(ok.sum()),
                      vacuous=int((h.vacuous >= 0.5).sum()), ratio_median=_f(h.ratio.median()),
                      ratio_min=_f(finite.min()) if len(finite) else None,
                      ratio_max=_f(finite.max()) if len(finite) else None,
                      violations=k, replicates=m, violation_rate=k / m if m else None,
                      violation_lo=_f(lo), violation_hi=_f(hi),
                      violations_max=_f(h.violations.max()),
                      paper_ratio_median=_f(h.paper_ratio.median()),
                      n_tight=_f(min((n for n in h.n if n > bad.max()), default=np.nan)
                                 if len(bad) else h.n.min()))
    return dict(groups=len(g), tight=TIGHT, by_estimator=out)


def summarise(records: pd.DataFrame, frames: dict, config: dict, runs: pd.DataFrame,
              envs: pd.DataFrame) -> dict:
    """The report's numbers (see the module docstring for the conventions)."""
    est = list(config["estimators"])
    scheduled = [e for e in est if get_fit(e).rate is not None]
    n_max, n_min = max(config["n"]), min(config["n"])
    return dict(design=_design(records, config, envs), predictions=_predictions(est),
                timing=_timing(runs, records),
                exponents=_exponents(frames["exponents"], scheduled),
                certificate=_certificates(frames["certificate"], est, n_max, n_min),
                intervals=_intervals(frames["intervals"], est, n_max),
                bounds=_bounds(frames["bounds"]), nominal=NOMINAL,
                min_interval_n=MIN_INTERVAL_N)
