r"""Analysis of the preference-shift study: its records -> the report's numbers.

The runner (:mod:`loglinear.experiments.llm_shift.run`) writes ``eval.csv`` (per method,
seed, mixture kind and alpha: the mean reward of that policy's completions),
``summary.csv`` (across-seed mean and CI of those), ``runs.csv`` and ``runs_summary.csv``
(KL to the reference, throughput) and ``runs/METHOD/seedS/{train_log.csv, samples.json}``;
docs/theory.md §5.7 describes the experiment. The functions here take those tables (pandas
DataFrames) and return what the report states; the report
(:mod:`loglinear.report.llm_shift`) only formats them. Numpy, scipy and pandas only.

Methods share seeds (the same preference data, initial adapter and sampling stream within
a seed), so a method is compared with DPO **paired by seed**: the per-seed difference

.. math:: d_s(\alpha) = \bar r_{\text{method}, s}(\alpha) - \bar r_{\text{DPO}, s}(\alpha),

then its mean over the S seeds with the Student-t interval
:math:`\bar d \pm t_{(1+\text{level})/2,\,S-1}\, s_d/\sqrt S`
(:func:`loglinear.stats.mean_ci`). With S = 3 the t quantile is
4.30, so the interval's half-width is 2.5 standard deviations of the per-seed differences.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from ...stats import mean_ci

REFERENCE = "reference"
BASELINE = "dpo"
# A "malformed" word of the text-only degeneracy check: a lower-case letter glued to an
# upper-case one ("cheerfuletyIt"), or a character that is neither a letter, a digit, white
# space nor ordinary punctuation (markup such as "<<<", "***", "{}"). A crude proxy for
# word salad that needs no model; the reference model's likelihood would be the real test.
_GLUED = re.compile(r"[a-z][A-Z]")
_ODD_CHAR = re.compile(r"[^\w\s.,;:!?'\"()\-\u2013\u2014\u2019\u201c\u201d]")


def sweep_ends(summary, *, kind: str, alpha_o: float) -> tuple[list[float], list[float]]:
    """(every alpha of the ``kind`` sweep, sorted; the alphas the report compares at: the
    sweep's ends and the training mixture alpha_o, where evaluated)."""
    alphas = sorted(set(summary[summary.kind == kind]["alpha"]))
    ends = [a for a in (alphas[0], alpha_o, alphas[-1]) if a in alphas]
    return alphas, ends


# ----------------------------------------------------------------- paired differences
def paired_differences(eval_frame, *, kind: str, baseline: str = BASELINE,
                       level: float = 0.95) -> pd.DataFrame:
    """Every other method minus ``baseline`` at every alpha of the ``kind`` sweep, paired
    by seed (module docstring).

    Args:
        eval_frame: ``eval.csv`` (columns method, seed, kind, alpha, reward).
        kind: the mixture kind (``"convex"`` or ``"geometric"``).
        baseline: the method subtracted (DPO).
        level: the confidence level of the Student-t interval over seeds.

    Returns:
        One row per (method, alpha): ``diff`` (mean over seeds of the per-seed
        difference), ``lo``, ``hi``, ``half`` (NaN with one seed), ``n_seeds``, ``sd`` (the
        per-seed differences' standard deviation) and ``excludes_zero``.

    Raises:
        ValueError: no ``baseline`` rows, or a method shares no seed with it.
    """
    conv = eval_frame[eval_frame["kind"] == kind]
    if not (conv["method"] == baseline).any():
        raise ValueError(f"no {baseline!r} rows of kind {kind!r} in the evaluation records; "
                         f"methods: {sorted(set(conv['method']))}")
    table = conv.pivot_table(index=["alpha", "seed"], columns="method", values="reward",
                             aggfunc="first")
    rows = []
    for method in dict.fromkeys(conv["method"]):
        if method == baseline:
            continue
        both = table[[method, baseline]].dropna()
        if both.empty:
            raise ValueError(f"{method!r} shares no seed with {baseline!r}")
        for alpha, g in (both[method] - both[baseline]).groupby(level="alpha"):
            ci = mean_ci(g.to_numpy(), level=level)
            sd = float(g.std(ddof=1)) if len(g) > 1 else math.nan
            rows.append({"method": method, "alpha": float(alpha), "diff": ci["mean"],
                         "lo": ci["lo"], "hi": ci["hi"], "half": ci["half"],
                         "n_seeds": ci["n"], "sd": sd,
                         "excludes_zero": bool(ci["lo"] > 0 or ci["hi"] < 0)})
    return pd.DataFrame(rows)


def t_factor(n_seeds: int, *, level: float = 0.95) -> float:
    """t_{(1+level)/2, n-1} / sqrt(n): the interval half-width in units of the standard
    deviation over seeds (NaN for one seed)."""
    from scipy import stats

    if n_seeds < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + level / 2, n_seeds - 1) / math.sqrt(n_seeds))


# ------------------------------------------------------------------------ frontier
def frontier(eval_frame, runs, *, kind: str, alphas) -> pd.DataFrame:
    """Each trained policy's KL to the reference against its mean reward under r(alpha),
    one row per (method, seed) with columns ``kl``, ``kl_se`` and ``reward@<alpha>``.

    Only the final policies are in the records, so this is one point per policy, not a
    curve: comparing methods at matched KL needs several strengths per method (DPO at
    several beta, or the policies of intermediate checkpoints)."""
    conv = eval_frame[eval_frame["kind"] == kind]
    out = runs[["method", "seed", "kl", "kl_se"]].copy()
    for alpha in alphas:
        sel = conv[np.isclose(conv["alpha"], alpha)][["method", "seed", "reward"]]
        if sel.empty:
            raise ValueError(f"alpha {alpha} is not in the {kind!r} sweep")
        out = out.merge(sel.rename(columns={"reward": f"reward@{alpha:g}"}),
                        on=["method", "seed"], how="left")
    return out.reset_index(drop=True)


def is_dpo(method: str) -> bool:
    """DPO at the study's temperature (``dpo``) or at its own (``dpo:BETA``)."""
    return method == BASELINE or str(method).startswith(BASELINE + ":")


def matched_kl(front: pd.DataFrame, *, alphas, level: float = 0.95) -> pd.DataFrame:
    """Each non-DPO method minus DPO at the same KL to the reference, paired by seed.

    For every seed the DPO policies (``dpo`` and every ``dpo:BETA``) give a frontier of
    (KL, reward) points; a method's reward is compared with that frontier interpolated to the
    method's KL (linear in log KL). A KL outside the seed's frontier range leaves the pair
    out (counted in ``dropped``). Needs at least two DPO temperatures; returns rows
    ``method, alpha, diff, lo, hi, n, dropped`` (mean and Student-t interval over seeds).
    """
    rows = []
    dpo = front[front.method.map(is_dpo)]
    if dpo.method.nunique() < 2:
        return pd.DataFrame(columns=["method", "alpha", "diff", "lo", "hi", "n", "dropped"])
    others = front[~front.method.map(is_dpo) & (front.method != REFERENCE)]
    for method, g in others.groupby("method", sort=False):
        for alpha in alphas:
            col, diffs = f"reward@{alpha:g}", []
            for _, r in g.iterrows():
                f = dpo[dpo.seed == r["seed"]].sort_values("kl")
                x = np.log(f.kl.to_numpy(float))
                k = float(r["kl"])
                ok = len(f) >= 2 and k > 0 and x[0] <= np.log(k) <= x[-1]
                diffs.append(r[col] - np.interp(np.log(k), x, f[col]) if ok else np.nan)
            d = np.asarray(diffs, float)
            kept = d[np.isfinite(d)]
            ci = (mean_ci(kept, level=level) if kept.size else
                  {"mean": np.nan, "lo": np.nan, "hi": np.nan, "n": 0})
            rows.append(dict(method=method, alpha=float(alpha), diff=ci["mean"], lo=ci["lo"],
                             hi=ci["hi"], n=int(ci["n"]), dropped=int(d.size - kept.size)))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------- degeneracy
def text_degeneracy(text: str) -> dict:
    """Text-only statistics of one completion (words are runs of non-space characters):
    ``words``; ``distinct`` (distinct words / words); ``repeated_bigrams`` (fraction of
    word bigrams that occurred earlier in the text); ``malformed`` (fraction of words with
    a glued lower-upper case change or an unusual character, see :data:`_ODD_CHAR`)."""
    words = text.split()
    n = len(words)
    if n == 0:
        return {"words": 0, "distinct": math.nan, "repeated_bigrams": math.nan,
                "malformed": math.nan}
    bigrams = list(zip(words, words[1:]))
    seen, repeats = set(), 0
    for b in bigrams:
        repeats += b in seen
        seen.add(b)
    odd = sum(bool(_GLUED.search(w) or _ODD_CHAR.search(w)) for w in words)
    return {"words": n, "distinct": len(set(words)) / n,
            "repeated_bigrams": repeats / len(bigrams) if bigrams else 0.0,
            "malformed": odd / n}


def degeneracy_table(samples: dict) -> pd.DataFrame:
    """Per method, the text-only statistics of :func:`text_degeneracy` averaged over every
    stored completion of every seed, with ``n_samples`` and ``any_malformed`` (fraction of
    completions with at least one malformed word).

    Args:
        samples: {(method, seed): [completion text, ...]}.
    """
    rows = []
    for (method, seed), texts in samples.items():
        for t in texts:
            rows.append({"method": method, "seed": seed, **text_degeneracy(t)})
    if not rows:
        raise ValueError("no stored samples to check")
    frame = pd.DataFrame(rows).dropna(subset=["distinct"])
    frame["any_malformed"] = frame["malformed"] > 0
    agg = frame.groupby("method", sort=False).agg(
        n_samples=("words", "size"), words=("words", "mean"), distinct=("distinct", "mean"),
        repeated_bigrams=("repeated_bigrams", "mean"), malformed=("malformed", "mean"),
        any_malformed=("any_malformed", "mean"))
    return agg.reset_index()


# ------------------------------------------------------------------------ throughput
def throughput(runs_summary) -> list[dict]:
    """Per trained method: pairs/s, tokens/s, mean train seconds per seed, and pairs/s
    relative to DPO (NaN without a DPO run)."""
    thr = runs_summary[runs_summary.method != REFERENCE]
    dpo_pps = thr.loc[thr.method == BASELINE, "pairs_per_s"]
    rows = []
    for _, r in thr.iterrows():
        rows.append({"method": r["method"], "pairs_per_s": r["pairs_per_s"],
                     "tokens_per_s": r["tokens_per_s"],
                     "relative_to_dpo": r["pairs_per_s"] / dpo_pps.iloc[0] if len(dpo_pps)
                     else math.nan,
                     "train_seconds": r["train_seconds"]})
    return rows


def throughput_spread(runs) -> list[dict]:
    """Per trained method, over seeds: train seconds (min, max) and the per-seed ratio of
    pairs/s to DPO's in the same seed (min, max), with ``noise``: whether that ratio range
    contains 1, and ``dpo_cv``: the coefficient of variation of DPO's own train seconds
    across seeds (how much the shared machine's load moved a timing)."""
    thr = runs[runs["method"] != REFERENCE]
    dpo = thr[thr["method"] == BASELINE].set_index("seed")
    cv = (float(dpo["train_seconds"].std(ddof=1) / dpo["train_seconds"].mean())
          if len(dpo) > 1 else math.nan)
    rows = []
    for method, g in thr.groupby("method", sort=False):
        g = g.set_index("seed")
        ratio = (g["pairs_per_s"] / dpo["pairs_per_s"]).dropna()
        rows.append({"method": method, "n_seeds": len(g),
                     "seconds_min": float(g["train_seconds"].min()),
                     "seconds_max": float(g["train_seconds"].max()),
                     "ratio_min": float(ratio.min()) if len(ratio) else math.nan,
                     "ratio_max": float(ratio.max()) if len(ratio) else math.nan,
                     "noise": bool(len(ratio) and ratio.min() <= 1 <= ratio.max()),
                     "dpo_cv": cv})
    return rows


# --------------------------------------------------------------------- other tables
def reward_differences(summary, *, kind: str, alpha_o: float) -> dict | None:
    """Unpaired comparisons of the stored across-seed means under the ``kind`` mixture
    (kept for callers of earlier versions; the report uses :func:`paired_differences`).

    Returns None without a DPO or a reference row; otherwise ``dpo_minus_reference``
    (alpha -> DPO reward minus the reference policy's, at alpha_o and the sweep's ends)
    and ``versus_dpo``: per other method, a list of (alpha, method reward minus DPO's,
    ``"overlap"`` | ``"separate"`` | ``"no_ci"``), whether the two across-seed intervals
    overlap (``"no_ci"``: one seed, no interval).
    """
    conv = summary[summary.kind == kind]
    alphas, ends = sweep_ends(summary, kind=kind, alpha_o=alpha_o)
    dpo = conv[conv.method == BASELINE].set_index("alpha")
    ref = conv[conv.method == REFERENCE].set_index("alpha")
    if not (len(dpo) and len(ref)):
        return None
    gap = {a: dpo.loc[a, "reward"] - ref.loc[a, "reward"]
           for a in (alpha_o, alphas[-1], alphas[0])}
    versus = {}
    for method in dict.fromkeys(conv["method"]):
        if method in (BASELINE, REFERENCE):
            continue
        m = conv[conv.method == method].set_index("alpha")
        parts = []
        for a in ends:
            d = m.loc[a, "reward"] - dpo.loc[a, "reward"]
            overlap = not (m.loc[a, "ci_lo"] > dpo.loc[a, "ci_hi"]
                           or m.loc[a, "ci_hi"] < dpo.loc[a, "ci_lo"])
            tag = "overlap" if overlap else "separate"
            if math.isnan(m.loc[a, "ci_lo"]):
                tag = "no_ci"
            parts.append((a, d, tag))
        versus[method] = parts
    return {"dpo_minus_reference": gap, "versus_dpo": versus}


def label_summary(runs) -> tuple[int, float]:
    """(preference pairs per seed, mean fraction of labels that agree with the
    higher-reward completion); (0, NaN) without runs."""
    if not len(runs):
        return 0, math.nan
    return int(runs["n_pairs"].iloc[0]), float(runs["label_agreement"].mean())


def trace_bands(logs: dict, columns) -> pd.DataFrame:
    """Training traces over seeds: per (method, step) the mean, min and max over seeds of
    each column of ``columns``.

    Args:
        logs: {(method, seed): train_log DataFrame with ``step`` and ``columns``}.
    """
    frames = [df.assign(method=m, seed=s) for (m, s), df in logs.items()]
    if not frames:
        raise ValueError("no training logs")
    every = pd.concat(frames, ignore_index=True).dropna(subset=list(columns))
    agg = every.groupby(["method", "step"], sort=False)[list(columns)].agg(
        ["mean", "min", "max", "size"])
    agg.columns = [f"{c}_{s}" for c, s in agg.columns]
    return agg.reset_index()


def paired_runs(runs, column: str, *, baseline: str = BASELINE, level: float = 0.95
                ) -> pd.DataFrame:
    """A per-run scalar of ``runs.csv`` (e.g. ``kl``) of every method minus ``baseline``'s,
    paired by seed: one row per method with ``diff``, ``lo``, ``hi``, ``n_seeds``."""
    table = runs.pivot_table(index="seed", columns="method", values=column, aggfunc="first")
    if baseline not in table:
        raise ValueError(f"no {baseline!r} runs; methods: {sorted(table.columns)}")
    rows = []
    for method in dict.fromkeys(runs["method"]):
        if method == baseline:
            continue
        d = (table[method] - table[baseline]).dropna()
        if d.empty:
            raise ValueError(f"{method!r} shares no seed with {baseline!r}")
        ci = mean_ci(d.to_numpy(), level=level)
        rows.append({"method": method, "diff": ci["mean"], "lo": ci["lo"], "hi": ci["hi"],
                     "n_seeds": ci["n"]})
    return pd.DataFrame(rows)


def tokens_per_completion(runs, *, n_completions: int) -> float:
    """Mean new tokens per evaluation completion (``eval_new_tokens`` / completions)."""
    if n_completions < 1:
        raise ValueError(f"n_completions must be >= 1, got {n_completions}")
    return float(runs["eval_new_tokens"].mean() / n_completions)


def fluency_table(fluency, *, reference: str = REFERENCE, quantile: float = 0.1,
                  level: float = 0.95) -> tuple[pd.DataFrame, float]:
    """The reference model's mean per-token log-likelihood of each policy's samples
    (``fluency.csv``, :mod:`loglinear.experiments.llm_shift.fluency`).

    Returns (table, threshold): per method ``n_samples``, ``logp`` (mean over seeds of the
    per-seed mean) with its t-interval ``lo``/``hi``, ``diff``/``diff_lo``/``diff_hi``
    (minus the reference policy's own samples, paired by seed), and ``below``: the share of
    samples under ``threshold``, the ``quantile`` of the reference policy's samples (so
    that share is about ``quantile`` for the reference itself).
    """
    if not (fluency["method"] == reference).any():
        raise ValueError(f"no samples of the {reference!r} policy to compare with")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    threshold = float(np.quantile(fluency.loc[fluency.method == reference,
                                              "logp_per_token"], quantile))
    per_seed = fluency.pivot_table(index="seed", columns="method", values="logp_per_token",
                                   aggfunc="mean")
    rows = []
    for method, g in fluency.groupby("method", sort=False):
        ci = mean_ci(per_seed[method].dropna().to_numpy(), level=level)
        d = (per_seed[method] - per_seed[reference]).dropna()
        dci = mean_ci(d.to_numpy(), level=level)
        rows.append({"method": method, "n_samples": len(g), "logp": ci["mean"],
                     "lo": ci["lo"], "hi": ci["hi"], "diff": dci["mean"],
                     "diff_lo": dci["lo"], "diff_hi": dci["hi"],
                     "below": float((g["logp_per_token"] < threshold).mean())})
    return pd.DataFrame(rows), threshold
