"""Analysis of the preference-shift study: its summary records -> the report's numbers.

The runner (:mod:`loglinear.experiments.llm_shift.run`) writes ``summary.csv`` (across-seed
mean reward and CI per method, kind and alpha), ``runs.csv`` and ``runs_summary.csv``
(KL and throughput); docs/theory.md §5.7 describes the experiment. The functions here take
those tables (pandas DataFrames) and return what the report states; the report
(:mod:`loglinear.report.llm_shift`) only formats them. Numpy and pandas only (no torch).
"""

from __future__ import annotations

import math

REFERENCE = "reference"
BASELINE = "dpo"


def sweep_ends(summary, *, kind: str, alpha_o: float) -> tuple[list[float], list[float]]:
    """(every alpha of the ``kind`` sweep, sorted; the alphas the report compares at: the
    sweep's ends and the training mixture alpha_o, where evaluated)."""
    alphas = sorted(set(summary[summary.kind == kind]["alpha"]))
    ends = [a for a in (alphas[0], alpha_o, alphas[-1]) if a in alphas]
    return alphas, ends


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


def reward_differences(summary, *, kind: str, alpha_o: float) -> dict | None:
    """Plain comparisons of the stored means under the ``kind`` mixture.

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
