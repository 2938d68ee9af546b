r"""The rates study's theory checks: the paper's bounds, compared only where they apply.

Per (setting, draw, estimator, schedule, n) cell: the empirical (1 - delta) quantile of the
error over the cell's seeds against the Theorem 1 (W1, W2, WDPO) or Theorem 2 (KL, KLDPO)
bound with lambda = the draw's population lambda_min(Sigma) and, for Theorem 2,
lambda_lo = lambda_hi = the population dual lambda*; for DPO the quantile of
||Delta||_{Sigma_D} against Proposition 1 with C = 1 (docs/theory.md §5.3-5.4). The local
prediction is sqrt(tr V / n) with V the sandwich covariance (docs/theory.md §5.6).

**Where a bound applies.** The theorems bound the estimator over Theta = {||w|| <= B} under
Assumption 2. A cell's ratio bound / quantile is computed only if every fit in it is
certified, inside Theta and off its boundary, the sample's lambda_min(Sigma_D) is positive,
and the bound is defined (finite; for Theorem 2, K / lambda* <= :data:`EXP_CAP`, beyond
which the constant e^{K/lambda*} is not a number). Otherwise the cell records why not.

A finite-sample bound from the self-concordance of the logistic loss, if
``loglinear.bounds.self_concordant_bound`` exists, is evaluated beside the paper's in the
same cells (:func:`self_concordant`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ...estimation import (
    proposition1_bound,
    theorem1_bound,
    theorem2_bound,
    theory_constants,
)
from ...registry import Registry
from ...stats import rmse
from ..estimators import get_estimator
from .analysis_common import hyper_key

EXP_CAP = 700.0                   # theorem2_bound caps K / lambda at this (docs/theory.md §5.3)
SELF_CONCORDANT = ("loglinear.bounds", "self_concordant_bound")
SC_ARGUMENTS = ("n", "beta", "bound", "lam", "delta", "dim", "dual", "tr_hinv",
                "tr_sandwich")


@dataclass(frozen=True)
class Bound:
    """A bound of docs/theory.md §5, looked up by an estimator's ``theorem``.

    Attributes:
        value: ``value(n, *, beta, bound, lam, delta, dual, dim) -> float`` (NaN where the
            bound is not defined).
        statistic: the column of :func:`theory` the bound is compared with (the (1 - delta)
            quantile of the error, or of its Sigma_D norm for Proposition 1).
    """

    value: Callable[..., float]
    statistic: str


def _theorem2(n, *, beta, bound, lam, delta, dual, dim):
    if not 0 < dual < np.inf or theory_constants(beta=beta, bound=bound).K / dual > EXP_CAP:
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


def self_concordant():
    """``loglinear.bounds.self_concordant_bound`` when that module defines it, else None."""
    module, name = SELF_CONCORDANT
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(importlib.import_module(module), name, None)


def _sc_value(fn, args: dict) -> float:
    """The self-concordant bound at one cell, with the keywords it takes among
    :data:`SC_ARGUMENTS` (NaN when it needs others or has no finite positive value)."""
    params = inspect.signature(fn).parameters
    needed = [p.name for p in params.values() if p.default is p.empty
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(k not in args for k in needed):
        return np.nan
    try:
        v = float(np.asarray(fn(**{k: v for k, v in args.items() if k in params})).squeeze())
    except (TypeError, ValueError, ArithmeticError):
        return np.nan
    return v if np.isfinite(v) and v > 0 else np.nan


def _not_applicable(g, value) -> str:
    """Why the theorem does not apply to a cell ("" when it does)."""
    reasons = set(g.reason)
    if not g.usable.any():
        return "no usable fit"
    if reasons & {"separable", "failed"}:
        return "separable or failed fits"
    if "outside" in reasons:
        return "estimates outside Theta"
    if "on_boundary" in reasons:
        return "estimates on the boundary of Theta"
    if "lambda_min_sample" in g and not (pd.to_numeric(g.lambda_min_sample) > 0).all():
        return "sample lambda_min = 0"
    if not (np.isfinite(value) and value > 0):
        return "bound not defined"
    return ""


def _duals(tgt) -> dict:
    return {(r.setting, int(r.draw), r.estimator, hyper_key(r.hyperparameter)): float(r.dual)
            for r in tgt[tgt.status.astype(str) == "ok"].itertuples()}


def theory(rec, tgt, cfg) -> pd.DataFrame:
    """Per (setting, draw, estimator, schedule, n): RMSE and quantiles over the usable fits,
    the local predictions, the bound, whether it ``applies`` (``reason`` otherwise) and
    ``bound_factor`` = bound / quantile where it applies; ``sc_bound``/``sc_factor`` the
    same for the self-concordant bound when :func:`self_concordant` finds one."""
    delta, B = float(cfg["delta"]), float(cfg["bound"])
    specs = {s["name"]: s for s in cfg["settings"]}
    duals, sc = _duals(tgt), self_concordant()
    rows = []
    keys = ["setting", "draw", "estimator", "schedule", "n"]
    for (s, d, e, sch, n), g in rec.groupby(keys, sort=True):
        spec = specs[s]
        beta, dim = float(spec.get("beta", 1.0)), int(spec.get("dim", 4))
        lam = float(g.lambda_min.iloc[0])
        bound = BOUNDS.get(get_estimator(e).theorem)
        hyper = g.hyperparameter.iloc[0]
        dual = duals.get((s, int(d), e, hyper_key(hyper)), np.nan)
        u = g[g.usable]
        err = u.error.to_numpy(float)
        sig = pd.to_numeric(u.get("error_sigma", pd.Series(np.nan, u.index))).to_numpy(float)
        quant = lambda v: float(np.quantile(v, 1 - delta)) if len(v) else np.nan
        row = dict(setting=s, draw=int(d), estimator=e, schedule=sch, kind=g.kind.iloc[0],
                   n=int(n), hyperparameter=hyper, rows=int(len(g)), used=int(len(u)),
                   rmse=float(rmse(err)) if len(err) else np.nan,
                   median=float(np.median(err)) if len(err) else np.nan,
                   q_1md=quant(err), q_sigma=quant(sig),
                   pred_sandwich=float(np.sqrt(g.tr_sandwich.iloc[0] / n)),
                   pred_hinv=float(np.sqrt(g.tr_hinv.iloc[0] / n)), lambda_min=lam,
                   tr_hinv=float(g.tr_hinv.iloc[0]),
                   rmse_star=float(rmse(u.error_star)) if len(u) else np.nan)
        value = bound.value(n, beta=beta, bound=B, lam=lam, delta=delta, dual=dual, dim=dim)
        why = _not_applicable(g, value)
        stat = row[bound.statistic]
        applies = not why and stat > 0
        row.update(theorem=get_estimator(e).theorem, bound=value, q_vs_bound=stat,
                   applies=applies, reason=why or "applies",
                   bound_factor=value / stat if applies else np.nan, sc_bound=np.nan,
                   sc_factor=np.nan)
        if sc is not None and applies:
            row["sc_bound"] = _sc_value(sc, dict(
                n=int(n), beta=beta, bound=B, lam=lam, delta=delta, dim=dim, dual=dual,
                tr_hinv=row["tr_hinv"], tr_sandwich=float(g.tr_sandwich.iloc[0])))
            row["sc_factor"] = row["sc_bound"] / row["q_1md"]
        rows.append(row)
    return pd.DataFrame(rows)


def theory_summary(th: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, estimator, schedule): the cells where the bound applies out of all,
    whether it holds in every such cell, its smallest and median factor, the
    self-concordant bound's (if any), and the local prediction's accuracy (RMSE /
    sqrt(tr V / n), median over cells and at the largest n)."""
    rows = []
    for (s, e, sch), g in th.groupby(["setting", "estimator", "schedule"], sort=True):
        a = g[g.applies.astype(bool)]
        fin = a.bound_factor[np.isfinite(a.bound_factor)]
        ratio = (g.rmse / g.pred_sandwich).where(np.isfinite(g.pred_sandwich))
        last = g[g.n == g.n.max()]
        scf = a.sc_factor[np.isfinite(a.sc_factor)]
        rows.append(dict(
            setting=s, estimator=e, schedule=sch, kind=g.kind.iloc[0], cells=int(len(g)),
            applies=int(len(a)),
            bound_holds=("n/a" if not len(fin) else "yes" if np.all(fin > 1) else "no"),
            min_factor=float(fin.min()) if len(fin) else np.nan,
            median_factor=float(fin.median()) if len(fin) else np.nan,
            sc_min_factor=float(scf.min()) if len(scf) else np.nan,
            sc_violations=int((scf < 1).sum()),
            rmse_over_pred_median=(float(np.nanmedian(ratio)) if np.isfinite(ratio).any()
                                   else np.nan),
            rmse_over_pred_last=float(np.nanmedian(last.rmse / last.pred_sandwich))
            if np.isfinite(last.pred_sandwich).any() else np.nan))
    return pd.DataFrame(rows)
