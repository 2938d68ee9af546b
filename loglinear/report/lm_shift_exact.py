"""``loglinear report lm_shift_exact DIR``: the exact preference-shift report (markdown +
figures) from stored records (docs/theory.md §10).

A view: the tables come from :mod:`loglinear.experiments.lm_shift_exact.analysis`; every
sentence below is computed from them. Output: ``OUT/lm_shift_exact.md`` and
``OUT/lm_shift_exact/*.png`` (OUT defaults to the records directory).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..experiments.lm_shift_exact import analysis as an
from ..plots import estimator_color, estimator_marker, legend_outside, pyplot
from ._common import markdown_table, save_figure
from ._lm_shift_exact_text import (
    NAMES,
    approximation_section,
    ci,
    design_section,
    paired_section,
    rates_section,
    verdict_section,
)

__all__ = ["build", "plot_alpha_sweep", "plot_frontier", "plot_paired"]


def _middle(fractions) -> float:
    f = sorted(fractions)
    return float(f[len(f) // 2])


# ------------------------------------------------------------------ figures
def plot_alpha_sweep(fits: pd.DataFrame, cfg: dict, *, n: int, fraction: float):
    """G_alpha against alpha at one n: mean over seeds with its 95% Student-t band, one
    curve per method (robust methods at one fraction)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(cfg["kinds"]), figsize=(4.6 * len(cfg["kinds"]), 3.4),
                             squeeze=False, sharey=True)
    alphas = cfg["alphas"]
    handles = {}
    for ax, kind in zip(axes[0], cfg["kinds"]):
        sub = fits[(fits.kind == kind) & (fits.n == n)]
        for est in ["dpo", *cfg["estimators"]]:
            g = sub[(sub.estimator == est) & (np.isclose(sub.fraction, fraction)
                                               | (sub.estimator == "dpo"))]
            if g.empty:
                continue
            rows = [an._ci_row(g[f"gain_a{a:g}"]) for a in alphas]
            m = np.array([r["mean"] for r in rows])
            lo = np.array([r["lo"] for r in rows])
            hi = np.array([r["hi"] for r in rows])
            (h,) = ax.plot(alphas, m, color=estimator_color(est), marker=estimator_marker(est),
                           ms=4, lw=1.4)
            ax.fill_between(alphas, lo, hi, color=estimator_color(est), alpha=0.15, lw=0)
            handles[NAMES.get(est, est)] = h
        ax.axvline(cfg["alpha_o"], color="0.6", lw=0.8, ls=":")
        ax.set_title(f"{kind} mixture, n = {n:,}")
        ax.set_xlabel(r"evaluation mixture weight $\alpha$ (training: $\alpha_o$, dotted)")
    axes[0][0].set_ylabel(r"normalised gain $G_\alpha$ (share of attainable)")
    fig.tight_layout()
    legend_outside(fig, list(handles.values()), list(handles))
    return fig


def plot_paired(paired: pd.DataFrame, cfg: dict, *, fraction: float):
    """Robust minus DPO, paired by seed, against n: the gain at alpha = 1 (top) and at
    alpha_o (bottom), at DPO's own temperature (solid) and at matched KL (dashed)."""
    plt = pyplot()
    kinds = cfg["kinds"]
    fig, axes = plt.subplots(2, len(kinds), figsize=(4.6 * len(kinds), 6.2), squeeze=False,
                             sharex=True)
    handles = {}
    for col, kind in enumerate(kinds):
        for row, tag in enumerate(("shift", "in_dist")):
            ax = axes[row][col]
            ax.axhline(0.0, color="0.5", lw=0.8)
            for est in cfg["estimators"]:
                for ls, how in (("-", "same_beta"), ("--", "matched_kl")):
                    g = paired[(paired.kind == kind) & (paired.estimator == est)
                               & np.isclose(paired.fraction, fraction)
                               & (paired.comparison == f"{tag}_{how}")].sort_values("n")
                    if g.empty:
                        continue
                    (h,) = ax.plot(g.n, g["mean"], ls=ls, color=estimator_color(est),
                                   marker=estimator_marker(est), ms=3.5, lw=1.2)
                    ax.fill_between(g.n, g.lo, g.hi, color=estimator_color(est), alpha=0.12,
                                    lw=0)
                    if how == "same_beta":
                        handles[NAMES.get(est, est)] = h
            ax.set_xscale("log")
            what = r"$\alpha = 1$" if tag == "shift" else r"$\alpha_o$"
            ax.set_title(f"{kind}: gain at {what}, minus DPO's")
            if col == 0:
                ax.set_ylabel(r"paired difference in $G$")
            if row == 1:
                ax.set_xlabel("n (preference pairs)")
    fig.tight_layout()
    legend_outside(fig, list(handles.values()), list(handles))
    return fig


def plot_frontier(records: pd.DataFrame, cfg: dict, *, n: int):
    """Gain against KL to the reference at one n: DPO's frontier t w-hat (mean over seeds
    per t) and each robust fit (mean per fraction), at alpha = 1 and alpha_o."""
    plt = pyplot()
    kinds = cfg["kinds"]
    fig, axes = plt.subplots(2, len(kinds), figsize=(4.6 * len(kinds), 6.6), squeeze=False,
                             sharex="col")
    handles = {}
    for col, kind in enumerate(kinds):
        sub = records[(records.kind == kind) & (records.n == n)]
        for row, a in enumerate((1.0, cfg["alpha_o"])):
            ax, gcol = axes[row][col], f"gain_a{a:g}"
            d = sub[sub.estimator == "dpo"].groupby("t")[["kl_ref", gcol]].mean()
            (h,) = ax.plot(d.kl_ref, d[gcol], color=estimator_color("dpo"), lw=1.4,
                           marker=estimator_marker("dpo"), ms=3)
            handles["DPO (temperature β/t)"] = h
            for est in cfg["estimators"]:
                e = sub[(sub.estimator == est) & np.isclose(sub.t, 1.0)].groupby(
                    "fraction")[["kl_ref", gcol]].mean()
                (h,) = ax.plot(e.kl_ref, e[gcol], ls="none", color=estimator_color(est),
                               marker=estimator_marker(est), ms=6)
                handles[NAMES.get(est, est)] = h
            ax.set_xscale("log")
            ax.set_title(f"{kind}, n = {n:,}: " + (r"$\alpha = 1$" if a == 1.0
                                                   else r"$\alpha_o$"))
            if row == 1:
                ax.set_xlabel(r"KL($\pi$ ‖ $\pi_{ref}$) on held-out prompts (nats)")
            if col == 0:
                ax.set_ylabel(r"normalised gain $G_\alpha$")
    fig.tight_layout()
    legend_outside(fig, list(handles.values()), list(handles))
    return fig


def smollm2_line(records_dir, cfg) -> str | None:
    """The SmolLM2 training study's paired differences at alpha = 1 and alpha_o, read from
    its records beside this study's (``reports/llm_shift/cpu_smollm2``), for comparison."""
    from ..experiments.llm_shift.analysis import paired_differences
    from ..experiments.records import read_records

    path = Path(records_dir).resolve().parent.parent / "llm_shift" / "cpu_smollm2"
    if not (path / "eval.csv").exists():
        return None
    scfg = json.loads((path / "config.json").read_text())
    d = paired_differences(read_records(path / "eval.csv"), kind=scfg["label_kind"])
    d = d[~d.method.str.startswith("dpo") & (d.method != "reference")]
    parts, gains, costs = [], 0, 0
    a_o = float(scfg["alpha_o"])
    for method, g in d.groupby("method", sort=False):
        g = g.set_index("alpha")
        a1 = float(g.index.max())
        parts.append(f"{method}: {ci(*g.loc[a1, ['diff', 'lo', 'hi']])} at α = {a1:g}, "
                     f"{ci(*g.loc[a_o, ['diff', 'lo', 'hi']])} at α_o")
        gains += int(g.loc[a1, "lo"] > 0)
        costs += int(g.loc[a_o, "hi"] < 0)
    n = int(d.n_seeds.max()) if len(d) else 0
    m = d.method.nunique()
    return ("**Against the SmolLM2 training study** (`reports/llm_shift.md`, LoRA on the "
            f"real model, {n} seeds, raw probe reward minus DPO's, paired by seed): "
            + "; ".join(parts) + f". There, {gains} of {m} robust methods gain significantly "
            f"at α = 1 and {costs} of {m} cost significantly at α_o, at DPO's temperature; "
            "the exact environment measures the same differences with 100 seeds and at "
            "matched KL.")


def synthetic_line(records_dir) -> str | None:
    """DPO's tail exponent and lambda_min in the synthetic settings of the rates study
    (``reports/rates/records``), beside the real-feature ones."""
    path = Path(records_dir).resolve().parent.parent / "rates" / "records"
    if not (path / "exponents.csv").exists() or not (path / "coverage.csv").exists():
        return None
    e = pd.read_csv(path / "exponents.csv")
    e = e[e.estimator == "dpo"].set_index("setting")
    c = pd.read_csv(path / "coverage.csv")
    lam = c[c.estimator == "dpo"].groupby("setting").lambda_min.median()
    parts = [f"{st} λ_min {lam.get(st, np.nan):.2g}, exponent "
             f"{ci(r.slope_asym, r.lo_asym, r.hi_asym)}" for st, r in e.iterrows()]
    return ("- Next to the synthetic settings of `reports/rates.md` (DPO, tail exponents, "
            "λ_min the median over environment draws): " + "; ".join(parts) + ".")


# -------------------------------------------------------------------- build
def build(records_dir, out_dir=None) -> Path:
    """Write ``lm_shift_exact.md`` and its figures from the records in ``records_dir``."""
    records_dir = Path(records_dir)
    out_dir = Path(out_dir) if out_dir is not None else records_dir
    figs = out_dir / "lm_shift_exact"
    t = an.compute(records_dir)
    frames, cfg = t["frames"], t["frames"]["config"]
    fits = an.fits(frames)
    allrec = an.with_gains(frames["records"], frames["oracles"], cfg["alphas"])
    n_max = int(max(cfg["n"]))
    n_front = min(cfg["n"], key=lambda v: abs(np.log(v / 1e4)))
    frac = _middle(cfg["fractions"])
    save_figure(plot_alpha_sweep(fits, cfg, n=n_max, fraction=frac), figs / "alpha_sweep.png")
    save_figure(plot_paired(t["paired"], cfg, fraction=frac), figs / "paired.png")
    save_figure(plot_frontier(allrec, cfg, n=n_front), figs / "frontier.png")
    rel = figs.relative_to(out_dir)
    lines = ["# The preference-shift claim, solved exactly over real text", ""]
    lines += design_section(frames, cfg)
    lines += ["## 1. How much DPO degrades", ""]
    deg = t["degradation"]
    d = deg[(deg.estimator == "dpo")]
    rows = []
    for (kind, n), g in d.groupby(["kind", "n"]):
        q = g.set_index("quantity")
        rows.append({"kind": kind, "n": f"{n:,}",
                     "G at α_o": ci(*q.loc["gain_alpha_o", ["mean", "lo", "hi"]]),
                     "G at α = 1": ci(*q.loc["gain_1", ["mean", "lo", "hi"]]),
                     "degradation G(α_o) − G(1)": ci(*q.loc["degradation", ["mean", "lo", "hi"]]),
                     "seeds": int(q.loc["degradation", "seeds"])})
    lines += [markdown_table(rows), "",
              f"![gain against alpha]({rel}/alpha_sweep.png)", "",
              f"*Normalised held-out gain against the evaluation mixture at n = {n_max:,}; "
              f"robust methods at {frac:g} of their collapse radius. Bands: 95% Student-t "
              "intervals over seeds.*", ""]
    lines += paired_section(t["paired"], cfg, frac, rel)
    lines += [f"![reward against KL]({rel}/frontier.png)", "",
              f"*Normalised gain against KL to the reference at n = {n_front:,} (means over "
              "seeds). DPO's curve is its estimate scaled by t (DPO at temperature β/t); a "
              "robust point above the curve beats DPO at the same KL.*", ""]
    lines += approximation_section(t["gap"])
    lines += rates_section(t["rates"], frames, cfg)
    synthetic = synthetic_line(records_dir)
    if synthetic is not None:
        lines.insert(len(lines) - 1, synthetic)
    lines += verdict_section(t, cfg, frac, smollm2_line(records_dir, cfg))
    out = out_dir / "lm_shift_exact.md"
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out
