"""Figures of the preference-shift report (:mod:`loglinear.report.llm_shift`).

Each ``plot_*`` takes the analysis tables of
:mod:`loglinear.experiments.llm_shift.analysis` and returns a Figure; nothing here computes
science. One colour per method family (:data:`loglinear.plots.ESTIMATOR_COLORS`; the
reference policy is grey), the "official" variants dashed, one legend below the panels.
"""

from __future__ import annotations

import numpy as np

from .. import plots as views
from ..experiments.llm_shift.analysis import REFERENCE, is_dpo

REWARD_LABEL = "mean reward of sampled completions"


def _style(method: str) -> dict:
    dashed = "official" in method or method == REFERENCE
    return dict(color=views.estimator_color(method), marker=views.estimator_marker(method),
                ls="--" if dashed else "-")


def _dodge(methods) -> dict:
    """A small horizontal offset per method, so that error bars at one alpha stay apart."""
    k = len(methods)
    return {m: (i - (k - 1) / 2) * 0.012 for i, m in enumerate(methods)}


def plot_alpha_sweep(summary, paired=None, *, alpha_o: float, emotions,
                     baseline: str = "dpo"):
    """Per mixture kind, two panels: the mean reward under r(alpha) of every policy (error
    bars: 95% Student-t intervals over seeds, per method), and every method minus
    ``baseline`` paired by seed (error bars: 95% t-intervals of the per-seed differences).

    Args:
        summary: ``summary.csv`` (method, kind, alpha, reward, ci_lo, ci_hi).
        paired: {kind: :func:`~loglinear.experiments.llm_shift.analysis.paired_differences`};
            None draws the left panels only.
    """
    plt = views.pyplot()
    kinds = list(paired) if paired is not None else list(dict.fromkeys(summary["kind"]))
    paired = paired or {}
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 3.5 * len(kinds)), squeeze=False)
    methods = list(dict.fromkeys(summary["method"]))
    shift = _dodge(methods)
    handles = []
    for row, kind in enumerate(kinds):
        sub = summary[summary.kind == kind]
        left, right = axes[row]
        for method in methods:
            m = sub[sub.method == method].sort_values("alpha")
            x = m["alpha"].to_numpy() + shift[method]
            err = np.vstack([m["reward"] - m["ci_lo"], m["ci_hi"] - m["reward"]])
            h = left.errorbar(x, m["reward"], yerr=None if np.isnan(err).all() else err,
                              ms=4, lw=1.2, capsize=2, elinewidth=0.8, label=method,
                              **_style(method))
            handles.append(h)
            d = paired.get(kind)
            d = None if d is None else d[d.method == method].sort_values("alpha")
            if d is not None and len(d):
                err = np.vstack([d["diff"] - d["lo"], d["hi"] - d["diff"]])
                right.errorbar(d["alpha"].to_numpy() + shift[method], d["diff"],
                               yerr=None if np.isnan(err).all() else err, ms=4, lw=1.2,
                               capsize=2, elinewidth=0.8, **_style(method))
        if kind not in paired:
            right.set_visible(False)
        right.axhline(0.0, color=views.estimator_color(baseline), lw=1.0)
        for ax, what in ((left, REWARD_LABEL), (right, f"reward minus {baseline}")):
            ax.axvline(alpha_o, color="0.5", lw=0.8, ls=":")
            ax.set_xlabel(f"α of the evaluation reward r(α) (training α_o = {alpha_o:g}, "
                          "dotted)")
            ax.set_ylabel(what)
        left.set_title(f"{kind} mixture of {emotions[0]} (α = 1) and {emotions[1]} (α = 0)",
                       fontsize=9)
        right.set_title(f"{kind}: paired by seed, method minus {baseline} "
                        f"({baseline} = horizontal line)", fontsize=9)
    views.legend_outside(fig, handles, ncol=len(methods))
    fig.tight_layout()
    return fig


def plot_frontier(front, *, alphas, alpha_o: float):
    """Reward against KL to the reference, one panel per alpha: every trained policy (small
    markers, one per seed; horizontal bars: the KL's Monte Carlo standard error) and each
    method's mean over seeds (large marker); with DPO at several beta, a line through their
    means (DPO's frontier)."""
    plt = views.pyplot()
    fig, axes = plt.subplots(1, len(alphas), figsize=(5.2 * len(alphas), 3.8), squeeze=False)
    handles = []
    for ax, alpha in zip(axes[0], alphas):
        col = f"reward@{alpha:g}"
        for method, g in front.groupby("method", sort=False):
            st = _style(method)
            ax.errorbar(g["kl"], g[col], xerr=g["kl_se"], ls="none", ms=4, alpha=0.6,
                        color=st["color"], marker=st["marker"], capsize=0, elinewidth=0.7)
            h = ax.scatter([g["kl"].mean()], [g[col].mean()], s=80, color=st["color"],
                           marker=st["marker"], edgecolor="k", zorder=3, label=method)
            handles.append(h)
        dpo = front[front.method.map(is_dpo)].groupby("method")[["kl", col]].mean()
        if len(dpo) >= 2:  # DPO at several beta: its frontier, through the means
            dpo = dpo.sort_values("kl")
            ax.plot(dpo["kl"], dpo[col], color=views.estimator_color("dpo"), lw=1, zorder=2)
        ax.set_xlabel("KL(π ‖ π_ref) per completion (nats)")
        ax.set_ylabel(f"{REWARD_LABEL}, r(α = {alpha:g})")
        where = "training mixture" if np.isclose(alpha, alpha_o) else "shifted"
        ax.set_title(f"α = {alpha:g} ({where})", fontsize=9)
    views.legend_outside(fig, handles)
    fig.tight_layout()
    return fig


def plot_training_traces(bands, *, n_seeds: int):
    """log pi/pi_ref of the chosen and rejected completions of the training batches and the
    batch DPO loss over training: the mean over seeds (line) and the range over seeds
    (band, min to max)."""
    plt = views.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    handles = []
    for method, g in bands.groupby("method", sort=False):
        st = _style(method)
        for ax, col in zip(axes, ("chosen_logratio", "rejected_logratio", "loss")):
            (h,) = ax.plot(g["step"], g[f"{col}_mean"], color=st["color"], ls=st["ls"],
                           lw=1.3, label=method)
            ax.fill_between(g["step"], g[f"{col}_min"], g[f"{col}_max"], color=st["color"],
                            alpha=0.18, lw=0)
        handles.append(h)
    titles = ("chosen: log π/π_ref", "rejected: log π/π_ref", "per-pair DPO loss")
    units = ("log-ratio (nats per completion)", "log-ratio (nats per completion)",
             "loss (nats, batch mean)")
    for ax, title, unit in zip(axes, titles, units):
        ax.set_title(f"{title}; line: mean of {n_seeds} seeds, band: min–max", fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(unit)
    views.legend_outside(fig, handles)
    fig.tight_layout()
    return fig
