"""The rates study's summary: every number and verdict its report states, from the tables.

:func:`summary` reads the tables of :func:`.analysis.compute` and returns a JSON-able dict;
the report only formats it. Claims about exponents are counted over the groups where a
power law fits (R^2 >= ``R2_MIN``); the rest are listed as "no power law". Each claim
carries its count of 95% intervals that contain -1/2 and -1/4.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .analysis_common import (
    COVERAGE_ELASTICITY,
    HALF,
    INVERSE_N,
    KL_BIAS_ESTIMATOR,
    NEAR_COLLAPSE,
    QUARTER,
    R2_MIN,
    RATE_BAND,
    SQRT_N,
    collapse_fraction,
    schedule_exponent,
)
from .config import NO_SCHEDULE

OVERLAP_RTOL = 0.02   # RMSE curves within 2% of each other at every n hide one another


def _ci_contains(df, value) -> int:
    return int(((df.lo_asym <= value) & (value <= df.hi_asym)).sum())


def _label(r) -> str:
    return f"{r.estimator}/{r.schedule}/{r.setting}"


def claims(ex: pd.DataFrame) -> dict:
    """Counts over a set of exponent groups: how many fit a power law, and among those the
    slopes' range and how many 95% CIs contain -1/2, contain -1/4, lie entirely above
    -1/2 (slower) or entirely below it (faster)."""
    ok = ex[ex.power_law.astype(bool) & np.isfinite(pd.to_numeric(ex.slope_asym))]
    none = ex.drop(ok.index)
    lo, hi = RATE_BAND
    return dict(
        groups=int(len(ex)), power_law=int(len(ok)),
        no_power_law=[dict(group=_label(r), r2=float(r.r2_asym)) for r in none.itertuples()],
        ci_half=_ci_contains(ok, HALF), ci_quarter=_ci_contains(ok, QUARTER),
        slower=int((ok.lo_asym > HALF).sum()), faster=int((ok.hi_asym < HALF).sum()),
        in_band=int(((ok.slope_asym > lo) & (ok.slope_asym < hi)).sum()),
        median=float(ok.slope_asym.median()) if len(ok) else None,
        min=float(ok.slope_asym.min()) if len(ok) else None,
        max=float(ok.slope_asym.max()) if len(ok) else None)


def _rate_summary(own, cfg) -> dict:
    """How many groups run at n^-1/2, the exceptions, and the groups at the collapse."""
    lo, hi = RATE_BAND
    near_half = own[(own.slope_asym > lo) & (own.slope_asym < hi)]
    quarter = own[(own.lo_asym <= QUARTER) & (QUARTER <= own.hi_asym)]
    half = own[(own.lo_asym <= HALF) & (HALF <= own.hi_asym)]
    fractions = own.schedule.map(lambda s: collapse_fraction(cfg, s))
    at = own[np.isclose(fractions, 1.0)]
    near = (fractions >= NEAR_COLLAPSE) & (fractions < 1.0) & ~np.isclose(fractions, 1.0)
    return dict(
        groups=len(own), near_half=len(near_half), ci_quarter=len(quarter),
        ci_half=len(half), all_half=len(near_half) == len(own), band=list(RATE_BAND),
        # which radii relative to the collapse radius the study's groups include
        collapse_radii=[w for w, present in (("near", bool(near.any())), ("at", len(at) > 0))
                        if present],
        exceptions=[dict(estimator=r.estimator, schedule=r.schedule, setting=r.setting,
                         slope=float(r.slope_asym))
                    for r in own.drop(near_half.index).itertuples()],
        at_collapse=(dict(at_zero=float(at.at_zero.mean()),
                          median=float(at.slope_asym.median())) if len(at) else None))


def _kl_bias(ex_star, cfg) -> dict | None:
    """The KL estimator's exponent against theta* with rho_n ~ n^-1/2 (and ~ n^-1)."""
    kl = ex_star[(ex_star.estimator == KL_BIAS_ESTIMATOR) & ex_star.power_law.astype(bool)]
    exps = kl.schedule.map(lambda s: schedule_exponent(cfg, s))
    star, inv = kl[exps == SQRT_N], kl[exps == INVERSE_N]
    if not len(star):
        return None
    return dict(sqrt_n=float(star.slope_asym.median()), settings=int(len(star)),
                ci_quarter=_ci_contains(star, QUARTER), ci_half=_ci_contains(star, HALF),
                inverse_n=float(inv.slope_asym.median()) if len(inv) else None)


def _headline_schedule(el: pd.DataFrame, cfg) -> pd.DataFrame:
    """Per estimator, the elasticity row of its fixed radius with the smallest collapse
    fraction (DPO: no schedule)."""
    f = el[el.kind == "fixed"].copy()
    if not len(f):
        return f
    f["_order"] = f.schedule.map(lambda s: (s != NO_SCHEDULE, collapse_fraction(cfg, s), s))
    return f.sort_values("_order").groupby("estimator", sort=True).head(1).drop(
        columns="_order").sort_values("estimator")


def _num(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _coverage(el, cfg) -> list[dict]:
    out = []
    for r in _headline_schedule(el, cfg).itertuples():
        d = dict(estimator=r.estimator, schedule=r.schedule, settings=int(r.settings),
                 draws=int(r.draws))
        for k in ("vs_inv_lambda", "vs_tr_hinv", "policy_vs_inv_lambda"):
            d[k] = [_num(getattr(r, k)), _num(getattr(r, f"{k}_lo")),
                    _num(getattr(r, f"{k}_hi"))]
        out.append(d)
    return out


def _overlaps(curves: pd.DataFrame) -> dict:
    """schedule -> ["a and b (k settings)", ...]: estimators whose RMSE curves (own target)
    agree within :data:`OVERLAP_RTOL` at every n, so one hides the other in a figure."""
    cur = curves[curves.metric == "error"]
    found: dict = {}
    for (s, sch), g in cur.groupby(["setting", "schedule"]):
        piv = g.pivot_table(index="n", columns="estimator", values="rmse")
        ests = list(piv.columns)
        for i, a in enumerate(ests):
            for b in ests[i + 1:]:
                ra, rb = piv[a].to_numpy(float), piv[b].to_numpy(float)
                if np.all(np.isfinite(ra) & np.isfinite(rb)) and np.all(
                        np.abs(ra - rb) <= OVERLAP_RTOL * np.maximum(ra, rb)):
                    found.setdefault(sch, {}).setdefault((a, b), set()).add(s)
    return {sch: [f"{a} and {b} ({len(v)} setting{'s' if len(v) > 1 else ''})"
                  for (a, b), v in sorted(pairs.items())] for sch, pairs in found.items()}


def _bounds(th: pd.DataFrame, ts: pd.DataFrame, sc_available: bool) -> dict | None:
    if not len(th):
        return None
    a = th[th.applies.astype(bool)]
    fin = a[np.isfinite(a.bound_factor)]
    raw = th.bound / th.q_vs_bound   # ignoring the hypotheses, as the previous version did
    raw = raw[np.isfinite(raw) & (th.q_vs_bound > 0)]
    prop1 = fin[fin.theorem == "prop1"]
    out = dict(cells=int(len(th)), applies=int(len(a)),
               excluded={k: int(v) for k, v in th[~th.applies.astype(bool)]
                         .reason.value_counts().items()},
               holds=int((fin.bound_factor > 1).sum()), finite=int(len(fin)),
               min_factor=_num(fin.bound_factor.min()) if len(fin) else None,
               median_factor=_num(fin.bound_factor.median()) if len(fin) else None,
               min_by_estimator={e: float(g.bound_factor.min())
                                 for e, g in fin.groupby("estimator")},
               min_factor_ignoring_hypotheses=_num(raw.min()) if len(raw) else None,
               prop1_holds=bool((prop1.bound_factor > 1).all()) if len(prop1) else None,
               self_concordant=None, sc_available=sc_available)
    sc = a[np.isfinite(a.sc_factor)]
    if len(sc):
        big = sc[(sc.n >= 1000) & (sc.kind == "fixed")]
        out["self_concordant"] = dict(
            cells=int(len(sc)), min_factor=float(sc.sc_factor.min()),
            median_factor=float(sc.sc_factor.median()),
            violations=int((sc.sc_factor < 1).sum()),
            within_5=int((big.sc_factor <= 5).sum()), fixed_large_n=int(len(big)))
    return out


def summary(rec, tgt, cfg, frames) -> dict:
    """Every number and verdict the report states, from the tables of one run (JSON-able)."""
    from .analysis_bounds import self_concordant
    from .analysis_coverage import sampling_settings

    ex, ex_star = frames["exponents"], frames["exponents_star"]
    pol, pol_star = frames["exponents_policy"], frames["exponents_policy_star"]
    th, ts = frames["theory"], frames["theory_summary"]
    fails = tgt[tgt.status.astype(str) != "ok"]
    bad = rec[rec.status != "ok"].groupby(["setting", "estimator", "schedule"]).size()
    first = sorted(rec.setting.unique())[0] if len(rec) else None
    others = sorted(set(rec[rec.setting == first].schedule) - {NO_SCHEDULE})
    outside = rec[rec.reason == "outside"]
    lam = rec.groupby(["setting", "draw"]).lambda_min.first()
    sampling = sampling_settings(cfg)
    out = dict(
        rows=int(len(rec)), failed_rows=int((rec.status != "ok").sum()),
        by_reason={k: int(v) for k, v in rec.reason.value_counts().items()},
        outside_max_norm=float(outside.norm_hat.max()) if len(outside) else None,
        targets=int(len(tgt)),
        failed_targets=fails[["setting", "draw", "estimator", "hyperparameter", "status"]]
        .to_dict("records"),
        failed_fits=[dict(setting=k[0], estimator=k[1], schedule=k[2], rows=int(v))
                     for k, v in bad.items()],
        draws=dict(min=int(rec.groupby("setting").draw.nunique().min()),
                   max=int(rec.groupby("setting").draw.nunique().max())),
        seeds=int(rec.seed.nunique()), r2_min=R2_MIN,
        schedules=sorted(set(rec.schedule) - {NO_SCHEDULE}) or [NO_SCHEDULE],
        lambda_min={s: float(v.median()) for s, v in lam.groupby(level=0)},
        lambda_min_range={s: [float(v.min()), float(v.max())] for s, v in lam.groupby(level=0)},
        first_setting=first,
        # the bounds figure shows the fixed (non-shrinking) schedule with the smallest radius
        bounds_schedule=min(others, key=lambda s: (schedule_exponent(cfg, s) > 0,
                                                   collapse_fraction(cfg, s), s),
                            default=NO_SCHEDULE),
        shrinking=bool((rec.kind == "shrinking").any()),
        sampling_settings=sampling,
        other_settings=sorted(set(rec.setting) - set(sampling)))
    # Theorem 1's object: a robust estimator at a radius that does not move with n
    fixed = (ex.kind == "fixed") & (ex.schedule != NO_SCHEDULE)
    robust_fixed = (ex_star.kind == "fixed") & (ex_star.schedule != NO_SCHEDULE)
    out["dpo"] = claims(ex[ex.schedule == NO_SCHEDULE])
    out["fixed"] = claims(ex[fixed])
    out["fixed_by_schedule"] = {sch: claims(g) for sch, g in ex[fixed].groupby("schedule")}
    out["fixed_star"] = claims(ex_star[robust_fixed])
    out["shrinking_own"] = claims(ex[ex.kind == "shrinking"])
    out["own"] = [dict(schedule=sch, **claims(g)) for sch, g in ex.groupby("schedule")]
    star = ex_star[ex_star.kind == "shrinking"]
    out["star"] = [dict(schedule=sch, estimator=e, **claims(g))
                   for (sch, e), g in star.groupby(["schedule", "estimator"], sort=True)]
    out["policy"] = None
    if len(pol):
        pf = pol.kind == "fixed"
        out["policy"] = dict(fixed=claims(pol[pf]), shrinking=claims(pol[~pf]),
                             star_shrinking=claims(pol_star[pol_star.kind == "shrinking"]),
                             star_fixed=claims(pol_star[(pol_star.kind == "fixed") & (
                                 pol_star.schedule != NO_SCHEDULE)]))
    own = ex[fixed & ex.power_law.astype(bool) & np.isfinite(ex.slope_asym)]
    out["rate"] = _rate_summary(own, cfg) if len(own) else None
    out["kl_bias"] = _kl_bias(ex_star, cfg)
    bv = frames["bias_variance"]
    last = bv[(bv.n == bv.n.max()) & (bv.kind == "shrinking") & (bv.total > 0)] \
        if len(bv) else bv
    out["bias_share"] = [dict(schedule=sch, estimator=e, settings=int(len(g)),
                              median=float(np.nanmedian(g.bias**2 / g.total**2)))
                         for (sch, e), g in last.groupby(["schedule", "estimator"])
                         if np.isfinite(g.bias).any()] if len(last) else []
    out["bounds"] = _bounds(th, ts, self_concordant() is not None)
    r = ts[ts.kind == "fixed"].rmse_over_pred_median.dropna() if len(ts) else pd.Series()
    out["local"] = (dict(median=float(r.median()), groups=int(len(r)), min=float(r.min()),
                         max=float(r.max())) if len(r) else None)
    out["coverage"] = _coverage(frames["elasticities"], cfg) if len(frames["elasticities"]) \
        else []
    out["coverage_reference"] = COVERAGE_ELASTICITY
    out["overlaps"] = _overlaps(frames["curves"])
    return out
