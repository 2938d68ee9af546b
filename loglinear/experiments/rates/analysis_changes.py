"""The previous version of the rates study, in numbers: what its report stated and what its
records held, kept so that the next report can say what changed.

:func:`previous_headline` reads a records directory written by an earlier version of the
study (its ``summary.json`` and tables, as that version's analysis wrote them, and its
``records.csv``) and returns the figures its report quoted, plus the facts about its rows
that the current analysis checks: fits marked ``ok`` outside Theta = {||w|| <= B} or on its
boundary, and the bound factor where the theorem's hypotheses held. :func:`write_previous`
stores them as JSON (``previous.json`` beside the report's figures) before the records are
replaced; the report's "Changes since the previous version" reads that file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..records import read_records
from .analysis_common import R2_MIN, RATE_BAND

PREVIOUS = "previous.json"
ON_BALL_RTOL = 1e-6   # ||w|| within this (relative) of B: the fit sits on the ball


def _records(d: Path) -> pd.DataFrame:
    path = d / "records.csv"
    return read_records(path if path.exists() else d / "records.csv.gz")


def _on_ball(rec, B):
    norm = pd.to_numeric(rec.norm_hat, errors="coerce")
    ok = rec.status.astype(str) == "ok"
    return ok & (norm > B * (1 + ON_BALL_RTOL)), ok & (np.abs(norm - B) <= B * ON_BALL_RTOL)


def _elasticity_median(cov):
    """The median elasticity with respect to 1/lambda_min as the summary stated it (one
    pooled number in the first version, per estimator since)."""
    if not cov:
        return None
    if isinstance(cov, dict):
        return float(cov["lam_median"])
    vals = [c["vs_inv_lambda"][0] for c in cov if c["vs_inv_lambda"][0] is not None]
    return float(np.median(vals)) if vals else None


def previous_headline(records_dir) -> dict:
    """The headline figures of an earlier rates study in ``records_dir`` (JSON-able)."""
    d = Path(records_dir)
    s = json.loads((d / "summary.json").read_text())
    cfg = json.loads((d / "config.json").read_text())
    ex = pd.read_csv(d / "exponents.csv")
    el = pd.read_csv(d / "elasticities.csv")
    th = pd.read_csv(d / "theory.csv")
    rec = _records(d)
    B = float(cfg["bound"])
    outside, ball = _on_ball(rec, B)
    draws = int(rec.draw.nunique()) if "draw" in rec else 1
    lo, hi = RATE_BAND
    own = ex[np.isfinite(ex.slope_asym)]
    low = ex[ex.r2_all < R2_MIN].sort_values("r2_all")
    # the bound factor where every fit of the cell lay strictly inside Theta
    key = ["setting", "estimator", "schedule", "n"]
    clean = (~(outside | ball)).groupby([rec[k] for k in key]).all().rename("clean")
    th = th.join(clean, on=key)
    inside = th[th.clean.fillna(False).astype(bool) & np.isfinite(th.bound_factor)]
    fin = th[np.isfinite(th.bound_factor)]
    worst = fin.loc[fin.bound_factor.idxmin()] if len(fin) else None
    headline = el[el.schedule.isin(["none", "fixed"])]
    first_n = ex.loc[ex.rmse_first.idxmax()]
    return dict(
        rows=int(len(rec)), failed_rows=int(s["failed_rows"]), seeds=int(cfg["seeds"]),
        settings=[x["name"] for x in cfg["settings"]], draws=draws, bound=B,
        rescaled_settings=[x["name"] for x in cfg["settings"]
                           if x.get("spectrum") and len(set(x["spectrum"])) > 1],
        outside_rows=int(outside.sum()),
        outside_estimators=sorted(rec[outside].estimator.unique()),
        outside_max_norm=float(rec[outside].norm_hat.max()) if outside.any() else None,
        boundary_rows=int(ball.sum()),
        boundary_by_estimator={e: int(v) for e, v in rec[ball].estimator.value_counts()
                               .sort_index().items()},
        groups=int(len(own)),
        in_band=int(((own.slope_asym > lo) & (own.slope_asym < hi)).sum()),
        ci_half=int(sum(g["ci_half"] for g in s["own"])),
        ci_quarter=int(sum(g["ci_quarter"] for g in s["own"])),
        low_r2=int(len(low)),
        min_r2=dict(group=f"{low.iloc[0].estimator}/{low.iloc[0].schedule}/"
                          f"{low.iloc[0].setting}", r2=float(low.iloc[0].r2_all))
        if len(low) else None,
        largest_first_rmse=dict(group=f"{first_n.estimator}/{first_n.schedule}/"
                                      f"{first_n.setting}", rmse=float(first_n.rmse_first)),
        min_factor=(float(s["bounds"]["min_factor"]) if (s.get("bounds") or {}).get(
            "min_factor") is not None else None),
        min_factor_at=(f"{worst.estimator}/{worst.schedule}/{worst.setting} at n = "
                       f"{int(worst.n)}") if worst is not None else None,
        min_factor_inside=float(inside.bound_factor.min()) if len(inside) else None,
        local_median=float(s["local"]["median"]) if s.get("local") else None,
        elasticity_median=_elasticity_median(s.get("coverage")),
        elasticity_by_estimator={r.estimator: float(r.vs_inv_lambda)
                                 for r in headline.itertuples()},
    )


def write_previous(records_dir, path) -> Path:
    """Write :func:`previous_headline` of ``records_dir`` to ``path`` (JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(previous_headline(records_dir), indent=1) + "\n")
    return path


def read_previous(path) -> dict | None:
    """The stored previous headline, or None when there is none."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None
