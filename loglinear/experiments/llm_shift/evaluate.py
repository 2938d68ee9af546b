r"""Evaluation statistics for the preference-shift study (numpy only, no torch).

* :func:`reward_sweep`: the mean reward of a policy's completions under r(alpha) for every
  alpha and mixture kind.
* :func:`kl_estimate`: the Monte Carlo estimate of KL(pi || pi_ref) from completions sampled
  from pi,

  .. math:: \widehat{KL} = \frac1m\sum_j \big[\log\pi(a_j|s_j) - \log\pi_{ref}(a_j|s_j)\big],
            \quad a_j \sim \pi(\cdot|s_j),

  with its standard error.
* :func:`mean_ci`: the mean over seeds with a Student-t confidence interval.
* :func:`summarize`: per (method, kind, alpha), the across-seed mean and CI of the per-seed
  mean rewards; and the same for KL and throughput.
"""

from __future__ import annotations

import math

import numpy as np

from loglinear.rewards import mix_rewards
from loglinear.stats import mean_ci

from .emotion import SCORE_FLOOR


def reward_sweep(scores: np.ndarray, *, classes, pair, alphas, kinds) -> list[dict]:
    """Mean (and standard error over completions) of r(alpha) for every kind and alpha.

    Args:
        scores: (m, K) emotion probabilities of m completions, columns in ``classes`` order.
        pair: the two emotions (r_1, r_2) of the mixture.
    Returns:
        rows ``{"kind", "alpha", "reward", "reward_se", "n"}``.
    """
    scores = np.asarray(scores, float)
    if scores.ndim != 2 or scores.shape[1] != len(classes) or scores.shape[0] == 0:
        raise ValueError(f"scores must be (m, {len(classes)}) with m >= 1, got {scores.shape}")
    i, j = (list(classes).index(e) for e in pair)
    rows = []
    for kind in kinds:
        r1, r2 = scores[:, i], scores[:, j]
        if kind == "geometric":
            r1, r2 = np.maximum(r1, SCORE_FLOOR), np.maximum(r2, SCORE_FLOOR)
        for alpha in alphas:
            r = mix_rewards(r1, r2, alpha, kind=kind)
            se = float(r.std(ddof=1) / math.sqrt(r.size)) if r.size > 1 else math.nan
            rows.append({"kind": kind, "alpha": float(alpha), "reward": float(r.mean()),
                         "reward_se": se, "n": int(r.size)})
    return rows


def kl_estimate(policy_logps, ref_logps) -> dict:
    """Monte Carlo KL(pi || pi_ref) from log-probs of completions sampled from pi."""
    p, q = np.asarray(policy_logps, float), np.asarray(ref_logps, float)
    if p.shape != q.shape or p.ndim != 1 or p.size == 0:
        raise ValueError("policy and reference log-probs must be two nonempty (m,) arrays")
    d = p - q
    if not np.all(np.isfinite(d)):
        raise ValueError("log-probs must be finite")
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan
    return {"kl": float(d.mean()), "kl_se": se}


def summarize(eval_rows: list[dict], *, level: float = 0.95) -> list[dict]:
    """Across-seed mean and CI of per-seed mean rewards, per (method, kind, alpha).

    ``eval_rows`` hold ``method, seed, kind, alpha, reward``; each (method, seed, kind,
    alpha) must appear once.
    """
    groups: dict = {}
    seen = set()
    for r in eval_rows:
        key = (r["method"], r["seed"], r["kind"], float(r["alpha"]))
        if key in seen:
            raise ValueError(f"duplicate evaluation row {key}")
        seen.add(key)
        groups.setdefault((r["method"], r["kind"], float(r["alpha"])), []).append(r["reward"])
    out = []
    for (method, kind, alpha), values in sorted(groups.items()):
        ci = mean_ci(values, level=level)
        out.append({"method": method, "kind": kind, "alpha": alpha, "reward": ci["mean"],
                    "ci_lo": ci["lo"], "ci_hi": ci["hi"], "n_seeds": ci["n"]})
    return out


def summarize_runs(run_rows: list[dict], columns, *, level: float = 0.95) -> list[dict]:
    """Across-seed mean and CI half-width of per-run scalars (KL, throughput), per method."""
    groups: dict = {}
    for r in run_rows:
        groups.setdefault(r["method"], []).append(r)
    out = []
    for method, rows in groups.items():
        row = {"method": method, "n_seeds": len(rows)}
        for c in columns:
            vals = [float(r[c]) for r in rows if r.get(c) not in (None, "")
                    and math.isfinite(float(r[c]))]
            if vals:
                ci = mean_ci(vals, level=level)
                row[c], row[c + "_half"] = ci["mean"], ci["half"]
        out.append(row)
    return out
