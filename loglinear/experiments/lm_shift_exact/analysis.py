r"""Tables of the exact preference-shift study, computed from its records alone
(docs/theory.md §10.3).

* **Normalised gain.** For a policy :math:`\pi` and a mixture weight :math:`\alpha`,
  :math:`G_\alpha(\pi) = [R_\alpha(\pi) - R_\alpha(\pi_{ref})] /
  [R_\alpha(\pi^\star_\alpha) - R_\alpha(\pi_{ref})]`, with :math:`R_\alpha` the exact
  held-out reward and :math:`\pi^\star_\alpha` the population DPO optimum of labels drawn at
  :math:`\alpha` (``oracles.csv``): the share of what the policy class can gain at
  :math:`\alpha` when trained in distribution.
* **Degradation** of a method: :math:`G_{\alpha_o} - G_1` (points of attainable gain lost
  when the preference moves from :math:`\alpha_o` to 1), per seed, then mean and Student-t
  interval (:func:`loglinear.stats.mean_ci`).
* **Paired differences**: a robust fit minus DPO on the same sample (same kind, n, seed),
  at :math:`\alpha = 1` (the gain under shift) and at :math:`\alpha_o` (the in-distribution
  cost), and the same against DPO **at matched KL**: DPO's frontier
  :math:`t\hat w` (DPO at temperature :math:`\beta/t`) interpolated, on the same sample, to
  the robust fit's KL to the reference (linear in log KL; outside the frontier's range the
  pair is dropped and counted).
* **Rates**: the seed-bootstrap exponent of the RMSE of :math:`\|\hat w - w^\star\|` and of
  :math:`\sqrt{KL(\pi^\star\|\hat\pi)}` against n (:func:`loglinear.stats.bootstrap_exponent`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ...stats import bootstrap_exponent, fit_power_law, mean_ci, rmse
from ..records import read_records

BASELINE = "dpo"


def load(records_dir) -> dict:
    """The study's files as frames (and its config as a dict)."""
    d = Path(records_dir)
    frames = {name: read_records(d / f"{name}.csv", keep_default_na=False,
                                 na_values=["nan", ""])
              for name in ("records", "targets", "oracles", "environment", "runs")}
    frames["config"] = json.loads((d / "config.json").read_text())
    frames["artifact"] = json.loads((d / "artifact.json").read_text())
    return frames


def reward_col(alpha: float) -> str:
    return f"reward_a{alpha:g}"


def with_gains(frame: pd.DataFrame, oracles: pd.DataFrame, alphas) -> pd.DataFrame:
    """``frame`` with a column ``gain_a{alpha}`` per alpha: G_alpha of every row."""
    out = frame.copy()
    for a in alphas:
        o = oracles[np.isclose(oracles.alpha, a)].set_index("kind")
        span = out.kind.map(o.reward - o.ref_reward)
        out[f"gain_a{a:g}"] = (out[reward_col(a)] - out.kind.map(o.ref_reward)) / span
    return out


def _ci_row(values, **key) -> dict:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return dict(key, mean=np.nan, lo=np.nan, hi=np.nan, seeds=0)
    ci = mean_ci(v)
    return dict(key, mean=ci["mean"], lo=ci["lo"], hi=ci["hi"], seeds=ci["n"])


def fits(frames) -> pd.DataFrame:
    """Certified fits at t = 1 (DPO's own estimate and every robust fit), with gains."""
    cfg = frames["config"]
    r = frames["records"]
    r = r[np.isclose(r.t, 1.0) & r.status.isin(["converged", "collapsed", "nominal", "kink"])]
    return with_gains(r, frames["oracles"], cfg["alphas"])


def degradation(frames) -> pd.DataFrame:
    """Per (kind, n, estimator, fraction): G at alpha_o and at 1, and G_{alpha_o} - G_1 with
    intervals over seeds."""
    cfg = frames["config"]
    f = fits(frames)
    go, g1 = f"gain_a{cfg['alpha_o']:g}", "gain_a1"
    rows = []
    for (kind, n, est, frac), g in f.groupby(["kind", "n", "estimator", "fraction"]):
        key = dict(kind=kind, n=int(n), estimator=est, fraction=float(frac))
        for name, vals in (("gain_alpha_o", g[go]), ("gain_1", g[g1]),
                           ("degradation", g[go] - g[g1]), ("kl_ref", g.kl_ref)):
            rows.append(_ci_row(vals, quantity=name, **key))
    return pd.DataFrame(rows)


def _frontier(records: pd.DataFrame) -> dict:
    """(kind, n, seed) -> DPO's frontier rows sorted by KL to the reference."""
    d = records[records.estimator == BASELINE].dropna(subset=["kl_ref"])
    return {k: g.sort_values("kl_ref") for k, g in d.groupby(["kind", "n", "seed"])}


def _at_kl(front: pd.DataFrame, kl: float, column: str) -> float:
    x, y = np.log(front.kl_ref.to_numpy(float)), front[column].to_numpy(float)
    if not (kl > 0 and x[0] <= np.log(kl) <= x[-1]):
        return np.nan
    return float(np.interp(np.log(kl), x, y))


def paired(frames) -> pd.DataFrame:
    """Robust minus DPO on the same samples: at DPO's own temperature and at matched KL,
    for the gain at alpha = 1 and at alpha_o; mean and interval over seeds."""
    cfg = frames["config"]
    f = fits(frames)
    allrec = with_gains(frames["records"], frames["oracles"], cfg["alphas"])
    fronts = _frontier(allrec)
    base = f[f.estimator == BASELINE].set_index(["kind", "n", "seed"])
    rows = []
    for (kind, n, est, frac), g in f[f.estimator != BASELINE].groupby(
            ["kind", "n", "estimator", "fraction"]):
        key = dict(kind=kind, n=int(n), estimator=est, fraction=float(frac))
        idx = [(kind, n, s) for s in g.seed]
        for a, tag in ((1.0, "shift"), (cfg["alpha_o"], "in_dist")):
            col = f"gain_a{a:g}"
            same = g[col].to_numpy() - base.reindex(idx)[col].to_numpy()
            rows.append(_ci_row(same, comparison=f"{tag}_same_beta", **key))
            matched = np.array([v - _at_kl(fronts[i], k, col) if i in fronts else np.nan
                                for i, v, k in zip(idx, g[col], g.kl_ref)])
            rows.append(dict(_ci_row(matched, comparison=f"{tag}_matched_kl", **key),
                             dropped=int(np.sum(~np.isfinite(matched)))))
    return pd.DataFrame(rows)


TAIL_N = 1000  # the "tail" exponents fit n >= TAIL_N (the predictions are asymptotic)


def rates(frames, *, rng_seed: int = 0, min_n: int = 0) -> pd.DataFrame:
    """Seed-bootstrap exponents of the RMSE against n (n >= ``min_n``): DPO to w*, each
    robust fit to w* and (in policy space) to its own target."""
    f = fits(frames)
    f = f[(f.n > 0) & (f.n >= min_n)]
    rows = []
    for (kind, est, frac), g in f.groupby(["kind", "estimator", "fraction"]):
        for what, col in (("theta_err", "theta_err"), ("sqrt_policy_kl", "policy_kl"),
                          ("sqrt_target_kl", "target_kl")):
            tab = g.pivot_table(index="n", columns="seed", values=col)
            if tab.isna().all().all():
                continue
            vals = tab.to_numpy(float)
            if col != "theta_err":
                vals = np.sqrt(np.maximum(vals, 0.0))
            try:
                ci = bootstrap_exponent(tab.index.to_numpy(float), vals,
                                        rng=np.random.default_rng(rng_seed), n_boot=1000)
                r2 = fit_power_law(tab.index.to_numpy(float), rmse(vals)).r2
            except ValueError:  # too few sizes or seeds, or a zero error
                continue
            rows.append(dict(kind=kind, estimator=est, fraction=float(frac), error=what,
                             min_n=int(min_n), exponent=ci.estimate, lo=ci.lo, hi=ci.hi,
                             r2=r2))
    return pd.DataFrame(rows)


def directions(frames) -> pd.DataFrame:
    """Per kind, the cosine between the population optimum at alpha_o (what every method is
    trained towards) and the one at alpha = 1 (what the shifted preference rewards)."""
    cfg = frames["config"]
    o = frames["oracles"]
    rows = []
    for kind, g in o.groupby("kind"):
        at = {float(a): np.array([float(v) for v in str(t).split()])
              for a, t in zip(g.alpha, g.theta)}
        u, v = at[float(cfg["alpha_o"])], at[1.0]
        rows.append(dict(kind=kind, cosine=float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v))),
                         norm_alpha_o=float(np.linalg.norm(u)), norm_1=float(np.linalg.norm(v))))
    return pd.DataFrame(rows)


def approximation_gap(frames) -> pd.DataFrame:
    """How far each surrogate sits from its exact ball at the same fraction: the population
    targets' gains at alpha = 1 and KL to the reference (``targets.csv``), and on the
    samples of the largest n the surrogate's gain at alpha = 1 minus the exact fit's on the
    same sample (mean and interval over seeds)."""
    cfg = frames["config"]
    t = with_gains(frames["targets"], frames["oracles"], cfg["alphas"])
    f = fits(frames)
    f = f[f.n == max(cfg["n"])].set_index(["kind", "fraction", "seed", "estimator"]).gain_a1
    rows = []
    for surrogate, exact in (("wdpo", "w2"), ("kldpo", "kl")):
        for (kind, frac), g in t.groupby(["kind", "fraction"]):
            s, e = g[g.estimator == surrogate], g[g.estimator == exact]
            if s.empty or e.empty:
                continue
            try:
                diff = (f.xs((kind, frac, surrogate), level=[0, 1, 3])
                        - f.xs((kind, frac, exact), level=[0, 1, 3])).to_numpy()
            except KeyError:
                diff = np.array([])
            sample = _ci_row(diff)
            rows.append(dict(kind=kind, fraction=float(frac), surrogate=surrogate, exact=exact,
                             gain_1_surrogate=float(s.gain_a1.iloc[0]),
                             gain_1_exact=float(e.gain_a1.iloc[0]),
                             kl_ref_surrogate=float(s.kl_ref.iloc[0]),
                             kl_ref_exact=float(e.kl_ref.iloc[0]),
                             sample_diff=sample["mean"], sample_lo=sample["lo"],
                             sample_hi=sample["hi"], sample_seeds=sample["seeds"]))
    return pd.DataFrame(rows)


def compute(records_dir) -> dict:
    """Every table of the report."""
    frames = load(records_dir)
    return dict(frames=frames, degradation=degradation(frames), paired=paired(frames),
                rates=pd.concat([rates(frames), rates(frames, min_n=TAIL_N)],
                                ignore_index=True),
                gap=approximation_gap(frames), directions=directions(frames))
