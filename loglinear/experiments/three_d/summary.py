"""Summaries of the 3D study beyond the onsets (:mod:`.analysis`): the hyperparameter
sweep, the label-noise runs, equivalences between trajectories, and the language-model
traces gathered from a preference-shift study. Each takes records or onset rows and
returns the numbers the report states; numpy and pandas only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .analysis import BASELINE, KEYS, count_onsets, versus_dpo

LM_COLUMNS = ("chosen_logratio", "rejected_logratio", "loss")


# ----------------------------------------------------------------- method summaries
def method_summary(onsets, methods) -> list[dict]:
    """One row per method (in ``methods`` order, the Method objects of the config): its
    objective and hyperparameters, in how many settings each property appears, and the
    mean (method - DPO) final reward and KL and the median (method - DPO) final
    log10 pi(rejected), over the settings both were run in (NaN for DPO itself)."""
    rows = []
    for m in methods:
        if not any(o["method"] == m.label for o in onsets):
            continue
        row = {"method": m.label, "objective": m.objective, "params": dict(m.params)}
        for key in KEYS:
            row[key], row["n"] = count_onsets(onsets, m.label, key)
        for col, stat, name in (("reward_end", np.mean, "d_reward"), ("kl_end", np.mean, "d_kl"),
                                ("log10_p_rejected_end", np.median, "d_log10_p_rejected")):
            diffs = versus_dpo(onsets, m.label, col) if m.label != BASELINE else []
            row[name] = float(stat(diffs)) if diffs else float("nan")
        rows.append(row)
    return rows


def noise_summary(onsets_by_flip: dict) -> list[dict]:
    """Per label-flip level and method: in how many settings each property appears, the
    median final pi(rejected), the mean final reward and the median peak relative
    dispersion.

    Args:
        onsets_by_flip: {label_flip: onset rows of the runs at that noise level}.
    """
    rows = []
    for flip, onsets in sorted(onsets_by_flip.items()):
        for method in dict.fromkeys(o["method"] for o in onsets):
            sel = [o for o in onsets if o["method"] == method]
            row = {"label_flip": flip, "method": method, "n": len(sel)}
            for key in KEYS:
                row[key] = count_onsets(onsets, method, key)[0]
            row["p_rejected_end"] = float(np.median([o["p_rejected_end"] for o in sel]))
            row["p_rejected_ratio"] = float(np.median(
                [o["p_rejected_end"] / o["p_rejected_0"] for o in sel]))
            row["reward_end"] = float(np.mean([o["reward_end"] for o in sel]))
            row["dispersion_peak"] = float(np.median([o["dispersion_peak"] for o in sel]))
            rows.append(row)
    return rows


def dispersion_by_scenario(onsets, method: str = BASELINE) -> list[dict]:
    """Per scenario (over the sharing values): the starting unseen mass (range), the
    largest absolute rise, the peak relative dispersion (max over sharing) and in how many
    sharing values dispersion appears under each rule (relative, absolute)."""
    rows = []
    sel = [o for o in onsets if o["method"] == method]
    for sc in dict.fromkeys(o["scenario"] for o in sel):
        g = [o for o in sel if o["scenario"] == sc]
        rows.append({
            "scenario": sc, "n": len(g),
            "unseen_0_min": min(o["unseen_0"] for o in g),
            "unseen_0_max": max(o["unseen_0"] for o in g),
            "rise_max": max(o["unseen_peak"] - o["unseen_0"] for o in g),
            "dispersion_peak": max(o["dispersion_peak"] for o in g),
            "n_relative": sum(o["disperse_step"] is not None
                              and not (isinstance(o["disperse_step"], float)
                                       and np.isnan(o["disperse_step"])) for o in g),
            "n_absolute": sum(o.get("disperse_abs_step") is not None
                              and not (isinstance(o.get("disperse_abs_step"), float)
                                       and np.isnan(o["disperse_abs_step"])) for o in g),
        })
    return rows


def trajectory_gap(records, method: str, other: str = BASELINE, *,
                   columns=("p_chosen", "p_rejected", "unseen_mass"), sharing=None) -> float:
    """The largest |method - other| of ``columns`` over every recorded step and setting
    (optionally only at one ``sharing``); NaN if the two share no recorded step."""
    df = records if sharing is None else records[np.isclose(records["sharing"], sharing)]
    keys = ["sharing", "scenario", "step"]
    a = df[df["method"] == method][keys + list(columns)]
    b = df[df["method"] == other][keys + list(columns)]
    joined = a.merge(b, on=keys, how="inner", suffixes=("_a", "_b"))
    if joined.empty:
        return float("nan")
    return float(max(np.abs(joined[f"{c}_a"] - joined[f"{c}_b"]).max() for c in columns))


# -------------------------------------------------------------- language-model traces
def gather_lm_traces(study_dir):
    """The per-step training logs of every (method, seed) of a preference-shift study
    (``runs/METHOD/seedS/train_log.csv``, written by ``loglinear llm-shift``) as one
    DataFrame with columns method, seed, step and :data:`LM_COLUMNS`."""
    import pandas as pd

    study_dir = Path(study_dir)
    logs = sorted(study_dir.glob("runs/*/seed*/train_log.csv"))
    if not logs:
        raise FileNotFoundError(f"no runs/*/seed*/train_log.csv under {study_dir}; point "
                                "[lm] traces at a `loglinear llm-shift` study directory")
    frames = []
    for path in logs:
        df = pd.read_csv(path)
        method = path.parent.parent.name.replace("_", ":")
        frames.append(df[["step", *LM_COLUMNS]].dropna().assign(
            method=method, seed=int(path.parent.name.removeprefix("seed"))))
    return pd.concat(frames, ignore_index=True)[["method", "seed", "step", *LM_COLUMNS]]


def lm_summary(traces) -> list[dict]:
    """Per method of the language-model traces: the number of seeds, and at the last step
    the mean, min and max over seeds of the chosen and rejected log-ratios, with the peak
    of the seed-mean chosen log-ratio."""
    rows = []
    for method, g in traces.groupby("method", sort=False):
        last = g[g["step"] == g["step"].max()]
        mean = g.groupby("step")["chosen_logratio"].mean()
        row = {"method": method, "n_seeds": int(g["seed"].nunique()),
               "step": int(g["step"].max()), "chosen_peak": float(mean.max())}
        for col in ("chosen_logratio", "rejected_logratio"):
            row[f"{col}_mean"] = float(last[col].mean())
            row[f"{col}_min"] = float(last[col].min())
            row[f"{col}_max"] = float(last[col].max())
        rows.append(row)
    return rows
