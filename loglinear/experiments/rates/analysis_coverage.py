r"""Coverage in the rates study: how the error at the largest n depends on lambda_min.

Per estimator (and schedule), across the settings whose coverage acts through the sampling
policy (:func:`sampling_settings`), the elasticities d log RMSE / d log(1/lambda_min) and
d log RMSE / d log tr H^{-1} (docs/theory.md §5.2), in parameter space and in policy space
(KL(pi_target || pi_hat)^{1/2}), each with a two-level bootstrap interval
(:func:`.analysis_boot.elasticity`: draws resampled within settings, seeds within draws).
The paper's 1/(gamma lambda) suggests an elasticity 1/2 for the error; the local
asymptotics sqrt(tr H^{-1} / n) suggest 1/2 with respect to tr H^{-1}.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...stats import rmse
from . import analysis_boot as boot
from .analysis_common import BOOT, BOOT_SEED


def sampling_settings(cfg) -> list[str]:
    """The settings whose coverage acts through the sampling policy: every setting that does
    not rescale the features (a ``spectrum`` with unequal entries reparametrises the
    problem instead of changing which directions the data explore)."""
    out = []
    for s in cfg["settings"]:
        spec = s.get("spectrum")
        if not spec or len(set(float(v) for v in spec)) == 1:
            out.append(s["name"])
    return out


def coverage_table(rec, *, n=None) -> pd.DataFrame:
    """Per (estimator, schedule, setting, draw) at one n (default the largest): lambda_min,
    1/lambda_min, tr H^{-1}, the RMSE (usable rows) in parameter and policy space."""
    n = int(rec.n.max()) if n is None else int(n)
    rows = []
    for (e, sch, s, d), g in rec[rec.n == n].groupby(["estimator", "schedule", "setting",
                                                     "draw"], sort=True):
        u = g[g.usable]
        lam = float(g.lambda_min.iloc[0])
        rows.append(dict(estimator=e, schedule=sch, setting=s, draw=int(d), n=n,
                         kind=g.kind.iloc[0], lambda_min=lam, inv_lambda=1.0 / lam,
                         tr_hinv=float(g.tr_hinv.iloc[0]), used=int(len(u)), rows=int(len(g)),
                         rmse=float(rmse(u.error)) if len(u) else np.nan,
                         rmse_policy=(float(rmse(np.sqrt(u.policy_kl.clip(lower=0))))
                                      if len(u) and u.policy_kl.notna().any() else np.nan)))
    return pd.DataFrame(rows)


def _elasticity_cube(g, column, transform):
    """x (S, D) = 1/lambda_min per (setting, draw) and errors (S, D, R) at one n."""
    settings, draws = sorted(g.setting.unique()), sorted(g.draw.unique())
    seeds = sorted(g.seed.unique())
    lam = g.groupby(["setting", "draw"]).lambda_min.first()
    trh = g.groupby(["setting", "draw"]).tr_hinv.first()
    v = pd.to_numeric(g[column], errors="coerce")
    v = (v if transform is None else transform(v.clip(lower=0))).where(g.usable)
    piv = (pd.DataFrame({"setting": g.setting, "draw": g.draw, "seed": g.seed, "v": v})
           .pivot_table(index=["setting", "draw"], columns="seed", values="v", dropna=False)
           .reindex(index=pd.MultiIndex.from_product([settings, draws]), columns=seeds))
    shape = (len(settings), len(draws))
    idx = pd.MultiIndex.from_product([settings, draws])
    return (1.0 / lam.reindex(idx).to_numpy(float).reshape(shape),
            trh.reindex(idx).to_numpy(float).reshape(shape),
            piv.to_numpy(float).reshape(*shape, len(seeds)))


def elasticities(rec, cfg, *, n=None) -> pd.DataFrame:
    """Per (estimator, schedule): d log RMSE / d log(1/lambda_min) and d log RMSE /
    d log tr H^{-1} at one n (default the largest) across the sampling settings
    (:func:`sampling_settings`), in parameter space and (``policy_*``) for
    KL(pi_target || pi_hat)^{1/2}, each with its two-level bootstrap 95% interval."""
    n = int(rec.n.max()) if n is None else int(n)
    keep = set(sampling_settings(cfg))
    sub = rec[(rec.n == n) & rec.setting.isin(keep)]
    rows = []
    for (e, sch), g in sub.groupby(["estimator", "schedule"], sort=True):
        if g.setting.nunique() < 2:
            continue
        row = dict(estimator=e, schedule=sch, kind=g.kind.iloc[0], n=n,
                   settings=int(g.setting.nunique()), draws=int(g.draw.nunique()))
        for tag, col, tr in (("", "error", None), ("policy_", "policy_kl", np.sqrt)):
            x, trh, cube = _elasticity_cube(g, col, tr)
            for name, cov in (("inv_lambda", x), ("tr_hinv", trh)):
                key = f"{tag}vs_{name}"
                try:
                    f = boot.elasticity(cov, cube, rng=np.random.default_rng(BOOT_SEED),
                                        n_boot=BOOT)
                    row.update({key: f.estimate, f"{key}_lo": f.lo, f"{key}_hi": f.hi,
                                f"{key}_r2": f.r2, f"{key}_intercept": f.intercept})
                except ValueError:  # no policy column, a kink (no tr H^-1), zero errors
                    row.update({key: np.nan, f"{key}_lo": np.nan, f"{key}_hi": np.nan,
                                f"{key}_r2": np.nan, f"{key}_intercept": np.nan})
        rows.append(row)
    return pd.DataFrame(rows)
