"""Analysis of the 3D-properties study: records -> the tables and numbers its report states.

Records are the rows written by :func:`loglinear.experiments.three_d.run.main` (one per
run and recorded step, with the diagnostics of docs/theory.md §6.2). From them:

* :func:`property_onsets`: per (sharing, scenario, method, run), the first recorded step at
  which each property (drop, degrade, disperse) holds, with initial/peak/final values;
* :func:`delay_counts`, :func:`delay_table`: onsets of each method against DPO in the same
  setting (earlier, later, same, new, removed);
* :func:`reward_cost`: final reward and KL, and the reward difference to DPO;
* :func:`dpo_properties`, :func:`remedy_effects`: the numbers behind the conclusions.

The report (:mod:`loglinear.report.three_d`) only formats these.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .config import Thresholds

KEYS = ("drop_step", "degrade_step", "disperse_step")
BASELINE = "DPO"
# Which family a registered objective belongs to, for the grouped conclusions.
FAMILY = {"wdpo-paper": "Wasserstein", "wdpo-official": "Wasserstein",
          "wasserstein-exact": "Wasserstein", "kldpo-paper": "KL", "kldpo-official": "KL",
          "kl-exact": "KL", "flex-dpo": "remedy", "dpo-sft": "remedy", "ipo": "other"}
FAMILIES = ("Wasserstein", "KL", "remedy", "other")


# ------------------------------------------------------------------------------ records
def read_jsonl(path):
    """Records appended one JSON object per line, as a pandas DataFrame."""
    import pandas as pd

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no records")
    return pd.DataFrame(rows)


def load_records(records_dir, *, variants: bool = False):
    """The study's records as a pandas DataFrame (one row per run and recorded step).

    ``records.parquet`` holds the main runs (``run == "main"``); the optimizer-sensitivity
    variants live in ``variants.parquet`` and are appended when ``variants=True``.
    """
    import pandas as pd

    parquet = Path(records_dir) / "records.parquet"
    if parquet.exists():
        frame = pd.read_parquet(parquet)
        extra = Path(records_dir) / "variants.parquet"
        if variants and extra.exists():
            frame = pd.concat([frame, pd.read_parquet(extra)], ignore_index=True)
        return frame
    path = Path(records_dir) / "records.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no records.parquet or records.jsonl in {records_dir}; run "
                                "`loglinear three-d` first")
    frame = read_jsonl(path)
    if not variants and "run" in frame:
        frame = frame[frame["run"] == "main"]
    return frame


def split_runs(every):
    """(main records, [records of each variant run, in order of appearance])."""
    run = every["run"] if "run" in every else None
    if run is None:
        return every, []
    return every[run == "main"], [every[run == v] for v in dict.fromkeys(run) if v != "main"]


def identity_max_error(records) -> float:
    """The largest relative deviation from the gradient-ratio identity (§6.1) in the records."""
    return float(np.nanmax(records["identity_rel_err"]))


# ------------------------------------------------------------------------------- onsets
def property_onsets(records, thresholds: Thresholds) -> list[dict]:
    """One row per (sharing, scenario, method, run): the first recorded step at which each
    property holds (None if never), with the initial and final diagnostics.

    Properties (thresholds from :class:`Thresholds`): drop, mean pi(rejected) <=
    drop_ratio x initial; degrade, mean pi(chosen) < degrade_ratio x its running peak;
    disperse, :func:`relative_dispersion` >= disperse_share (``disperse_abs_step``: the
    absolute rule, unseen mass >= initial + disperse_delta).
    """
    import pandas as pd

    frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame(records)
    if "run" not in frame:
        frame = frame.assign(run="main")
    out = []
    for key, g in frame.groupby(["sharing", "scenario", "method", "run"], sort=False):
        g = g.sort_values("step")
        steps = g["step"].to_numpy()
        pc, pr, un = (g[c].to_numpy() for c in ("p_chosen", "p_rejected", "unseen_mass"))

        def first(mask, steps=steps):
            idx = np.flatnonzero(mask)
            return int(steps[idx[0]]) if idx.size else None

        out.append({
            "sharing": key[0], "scenario": key[1], "method": key[2], "run": key[3],
            "objective": g["objective_name"].iloc[0] if "objective_name" in g else None,
            "drop_step": first(pr <= thresholds.drop_ratio * pr[0]),
            "degrade_step": first(pc < thresholds.degrade_ratio * np.maximum.accumulate(pc)),
            "disperse_step": first(relative_dispersion(un) >= thresholds.disperse_share),
            "disperse_abs_step": first(un >= un[0] + thresholds.disperse_delta),
            "dispersion_peak": float(relative_dispersion(un).max()),
            "label_flip": float(g["label_flip"].iloc[0]) if "label_flip" in g else 0.0,
            "p_chosen_0": pc[0], "p_chosen_peak": pc.max(), "p_chosen_end": pc[-1],
            "p_rejected_0": pr[0], "p_rejected_end": pr[-1],
            "log10_p_rejected_end": float(np.log10(pr[-1])) if pr[-1] > 0 else -np.inf,
            "unseen_0": un[0], "unseen_peak": un.max(), "unseen_end": un[-1],
            "reward_0": g["reward"].iloc[0], "reward_end": g["reward"].iloc[-1],
            "reward_best": g["reward"].max(), "kl_end": g["kl"].iloc[-1],
            "identity_max_err": g["identity_rel_err"].max(),
            "log10_ratio_0": g["log10_grad_ratio"].iloc[0] if "log10_grad_ratio" in g else None,
            "log10_ratio_end": g["log10_grad_ratio"].iloc[-1] if "log10_grad_ratio" in g
            else None,
        })
    return out


def relative_dispersion(unseen) -> np.ndarray:
    r"""The share of its headroom that the unseen mass has gained since the start,

    .. math:: D_t = \frac{U_t - U_0}{1 - U_0},

    1 when all mass has left the seen responses, 0 at the start, negative when the unseen
    mass fell. Unlike the absolute rise U_t - U_0 it can reach any threshold in (0, 1]
    whatever U_0 is, so a setting that starts near U_0 = 1 is not judged against a ceiling.

    Args:
        unseen: (T,) the unseen mass along a trajectory, U_0 first, each in [0, 1).
    """
    u = np.asarray(unseen, dtype=float)
    if u.ndim != 1 or not u.size or np.any(~np.isfinite(u)) or not 0 <= u[0] < 1:
        raise ValueError("unseen must be a nonempty finite trajectory that starts in [0, 1)")
    return (u - u[0]) / (1.0 - u[0])


def has_onset(step) -> bool:
    """Whether an onset step was reached (not None, not NaN)."""
    return step is not None and not (isinstance(step, float) and np.isnan(step))


def count_onsets(onsets, method: str, key: str) -> tuple[int, int]:
    """(settings where ``key`` appears, settings) for one method."""
    sel = [o for o in onsets if o["method"] == method]
    return sum(has_onset(o[key]) for o in sel), len(sel)


def settings_with(onsets, method: str, key: str) -> list[tuple[float, str]]:
    """The (sharing, scenario) settings in which ``key`` appears for ``method``."""
    return [(o["sharing"], o["scenario"]) for o in onsets
            if o["method"] == method and has_onset(o[key])]


def delay_counts(onsets, method: str, key: str) -> dict:
    """Against DPO in the same setting: onsets earlier, later, the same, appearing only with
    ``method`` (new), or appearing only with DPO (removed)."""
    base = {(o["sharing"], o["scenario"]): o[key] for o in onsets if o["method"] == BASELINE}
    out = {"earlier": 0, "later": 0, "same": 0, "new": 0, "removed": 0}
    for o in onsets:
        if o["method"] != method or (o["sharing"], o["scenario"]) not in base:
            continue
        b, v = base[(o["sharing"], o["scenario"])], o[key]
        if has_onset(b) and has_onset(v):
            out["earlier" if v < b else "later" if v > b else "same"] += 1
        elif has_onset(v):
            out["new"] += 1
        elif has_onset(b):
            out["removed"] += 1
    return out


def delay_table(onsets, methods) -> list[dict]:
    """One row per method other than DPO: its :func:`delay_counts` for each property."""
    return [{"method": m, **{k: delay_counts(onsets, m, k) for k in KEYS}}
            for m in methods if m != BASELINE]


def versus_dpo(onsets, method: str, key: str) -> list[float]:
    """(method - DPO) of ``key`` in every setting both were run in."""
    return [o[key] - b[key] for o in onsets for b in onsets
            if o["method"] == method and b["method"] == BASELINE
            and (o["sharing"], o["scenario"]) == (b["sharing"], b["scenario"])]


def reward_cost(onsets) -> list[dict]:
    """Final and best true reward, final KL to pi_ref, and the final reward minus DPO's in
    the same setting (NaN where DPO was not run)."""
    base = {(o["sharing"], o["scenario"]): o for o in onsets if o["method"] == BASELINE}
    out = []
    for o in onsets:
        ref = base.get((o["sharing"], o["scenario"]))
        out.append({"sharing": o["sharing"], "scenario": o["scenario"], "method": o["method"],
                    "reward_end": o["reward_end"], "reward_best": o["reward_best"],
                    "kl_end": o["kl_end"],
                    "delta_reward": (o["reward_end"] - ref["reward_end"]) if ref else
                    float("nan")})
    return out


def sensitivity(main, variant) -> list[tuple[dict, dict | None]]:
    """Each onset row of a variant run with the main run's row of the same setting and
    method (None if the main run has none)."""
    base = {(o["sharing"], o["scenario"], o["method"]): o for o in main}
    return [(o, base.get((o["sharing"], o["scenario"], o["method"]))) for o in variant]


# ---------------------------------------------------------------------- conclusions
def dpo_properties(onsets) -> dict:
    """The numbers behind the DPO conclusions: in how many settings each property appears
    (and where), how many degradations are tabular (eta = 0), the identity's largest error
    in the DPO runs, the growth in orders of magnitude of the gradient ratio, and the
    setting with the largest rise of the unseen mass."""
    n_drop, n = count_onsets(onsets, BASELINE, "drop_step")
    dpo = [o for o in onsets if o["method"] == BASELINE]
    growth = [o["log10_ratio_end"] - o["log10_ratio_0"] for o in dpo]
    worst = max(dpo, key=lambda o: o["unseen_peak"] - o["unseen_0"])
    return {
        "n": n, "n_drop": n_drop,
        "n_degrade": count_onsets(onsets, BASELINE, "degrade_step")[0],
        "n_disperse": count_onsets(onsets, BASELINE, "disperse_step")[0],
        "n_degrade_tabular": sum(has_onset(o["degrade_step"]) for o in dpo
                                 if o["sharing"] == 0),
        "degrade_where": settings_with(onsets, BASELINE, "degrade_step"),
        "disperse_where": settings_with(onsets, BASELINE, "disperse_step"),
        "identity_max_err": max(o["identity_max_err"] for o in dpo),
        "ratio_growth_min": min(growth), "ratio_growth_max": max(growth),
        "worst_unseen": worst, "worst_unseen_rise": worst["unseen_peak"] - worst["unseen_0"],
    }


def remedy_effects(onsets, methods) -> dict[str, list[dict]]:
    """Per family of :data:`FAMILY` (in :data:`FAMILIES` order, families without methods
    left out), one row per method: onsets delayed or removed against DPO, onsets advanced
    or added, and the mean (method - DPO) final reward and KL and the median final
    log10 pi(rejected) difference."""
    fams = {}
    for o in onsets:
        fams.setdefault(FAMILY.get(o.get("objective"), None), set()).add(o["method"])
    out = {}
    for fam in FAMILIES:
        ms = [m for m in methods if m in fams.get(fam, set())]
        if not ms:
            continue
        rows = []
        for m in ms:
            d = [delay_counts(onsets, m, k) for k in KEYS]
            rows.append({
                "method": m,
                "delayed": sum(v["later"] + v["removed"] for v in d),
                "advanced": sum(v["earlier"] + v["new"] for v in d),
                "d_reward": np.mean(versus_dpo(onsets, m, "reward_end")),
                "d_kl": np.mean(versus_dpo(onsets, m, "kl_end")),
                "d_log10_p_rejected": np.median(versus_dpo(onsets, m,
                                                           "log10_p_rejected_end")),
            })
        out[fam] = rows
    return out
