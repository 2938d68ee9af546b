"""Figures of the 3D-properties report (:mod:`loglinear.report.three_d`).

Each ``plot_*`` takes records, onset rows or summary rows and returns a Figure; nothing
here computes science. One colour per method family, shared with the other reports
(:data:`loglinear.plots.ESTIMATOR_COLORS`); the "official" forms and the exact robust
values are told apart from their family by line style; one legend below the panels.
"""

from __future__ import annotations

import numpy as np

from .. import plots as views

PANELS = (("p_chosen", "mean π(chosen)", False), ("p_rejected", "mean π(rejected)", True),
          ("unseen_mass", "unseen mass", False))
# objective -> (colour key of ESTIMATOR_COLORS, line style)
OBJECTIVE_STYLE = {"dpo": ("dpo", "-"), "ipo": ("ipo", "-"), "flex-dpo": ("flex", "-"),
                   "dpo-sft": ("sft", "-"), "wdpo-paper": ("wdpo", "-"),
                   "wdpo-official": ("wdpo", "--"), "kldpo-paper": ("kldpo", "-"),
                   "kldpo-official": ("kldpo", "--"), "kl-exact": ("kl", "-"),
                   "wasserstein-exact": ("w1", "-")}


def _frame(records):
    import pandas as pd

    return records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))


def method_style(objective: str | None) -> dict:
    """Colour and line style of an objective (grey, solid if unknown)."""
    key, ls = OBJECTIVE_STYLE.get(objective, ("", "-"))
    return dict(color=views.ESTIMATOR_COLORS.get(key, views.OTHER_COLOR), ls=ls)


def _objectives(df) -> dict:
    if "objective_name" not in df:
        return {}
    return dict(zip(df["method"], df["objective_name"]))


def plot_trajectories(records, *, sharing: float | None = None, methods=None):
    """Rows: settings; columns: pi(chosen), pi(rejected) (log scale), unseen mass against
    the gradient step; one line per method. ``sharing`` selects one eta (default: the first
    in the records), ``methods`` the methods drawn (default: all)."""
    plt = views.pyplot()
    df = _frame(records)
    sharing = df["sharing"].iloc[0] if sharing is None else sharing
    df = df[np.isclose(df["sharing"], sharing)]
    methods = list(dict.fromkeys(df["method"])) if methods is None else list(methods)
    obj = _objectives(df)
    scenarios = list(dict.fromkeys(df["scenario"]))
    fig, axes = plt.subplots(len(scenarios), len(PANELS), squeeze=False,
                             figsize=(4.2 * len(PANELS), 2.5 * len(scenarios)), sharex=True)
    handles = []
    for i, sc in enumerate(scenarios):
        for j, (col, title, log) in enumerate(PANELS):
            ax = axes[i, j]
            for m in methods:
                g = df[(df["scenario"] == sc) & (df["method"] == m)]
                if len(g):
                    (h,) = ax.plot(g["step"], g[col], lw=1.3, label=m,
                                   **method_style(obj.get(m)))
                    handles.append(h)
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{sc}: {title}", fontsize=9)
            ax.set_ylabel("probability" if j < 2 else "mass on unseen responses",
                          fontsize=8)
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("gradient step")
    fig.suptitle(f"η = {sharing:g}", fontsize=10)
    views.legend_outside(fig, handles, ncol=4)
    fig.tight_layout()
    return fig


def plot_gradient_ratio(records, *, method: str = "DPO"):
    """log10 |dl/dpi-| / |dl/dpi+| (median over pairs) against step for one method: colour
    per setting, line style per eta; the identity says it equals log10(pi+/pi-)."""
    plt = views.pyplot()
    df = _frame(records)
    df = df[df["method"] == method]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    scenarios = list(dict.fromkeys(df["scenario"]))
    etas = list(dict.fromkeys(df["sharing"]))
    # settings are not methods: Okabe-Ito colours without black (DPO) and yellow
    colours = [views.OKABE_ITO[c] for c in ("orange", "sky_blue", "bluish_green",
                                             "reddish_purple", "blue", "vermillion")]
    styles = ("-", "--", ":", "-.")
    for (eta, sc), g in df.groupby(["sharing", "scenario"], sort=False):
        ax.plot(g["step"], g["log10_grad_ratio"], lw=1.2,
                color=colours[scenarios.index(sc) % len(colours)],
                ls=styles[etas.index(eta) % len(styles)])
    handles = [views.key_handle(sc, color=colours[i % len(colours)])
               for i, sc in enumerate(scenarios)]
    handles += [views.key_handle(f"η = {eta:g}", ls=styles[i % len(styles)])
                for i, eta in enumerate(etas)]
    ax.set_xlabel("gradient step")
    ax.set_ylabel("log10 |∂l/∂π⁻| / |∂l/∂π⁺| (median over pairs)")
    ax.set_title(f"{method}: push on the rejected against the chosen probability",
                 fontsize=9)
    ax.grid(alpha=0.3)
    views.legend_outside(fig, handles, ncol=4)
    fig.tight_layout()
    return fig


def plot_reward_cost(onsets, *, methods=None):
    """Final true reward against final KL(pi || pi_ref), one panel per setting, one marker
    per (method, eta); marker size grows with eta."""
    plt = views.pyplot()
    df = _frame(onsets)
    if methods is not None:
        df = df[df["method"].isin(list(methods))]
    scenarios = list(dict.fromkeys(df["scenario"]))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(3.4 * len(scenarios), 3.4),
                             squeeze=False, sharey=True)
    handles = []
    for ax, sc in zip(axes[0], scenarios):
        for m, g in df[df["scenario"] == sc].groupby("method", sort=False):
            st = method_style(g["objective"].iloc[0] if "objective" in g else None)
            h = ax.scatter(g["kl_end"], g["reward_end"], s=15 + 60 * g["sharing"],
                           color=st["color"], marker="o" if st["ls"] == "-" else "s",
                           alpha=0.85, label=m)
            handles.append(h)
        ax.set_title(sc, fontsize=9)
        ax.set_xlabel("KL(π‖π_ref) at the end (nats)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("true reward at the end")
    views.legend_outside(fig, handles, ncol=4)
    fig.tight_layout()
    return fig


def plot_noise(rows):
    """Median over settings of the final pi(rejected) / its start against the label-flip
    probability, one line per method (log scale)."""
    plt = views.pyplot()
    df = _frame(rows)
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    handles = []
    for m, g in df.groupby("method", sort=False):
        g = g.sort_values("label_flip")
        st = method_style(g["objective"].iloc[0] if "objective" in g else None)
        (h,) = ax.plot(g["label_flip"], g["p_rejected_ratio"], marker="o", ms=4, lw=1.2,
                       label=m, **st)
        handles.append(h)
    ax.set_yscale("log")
    ax.set_xlabel("label-flip probability of the Bradley–Terry labels")
    ax.set_ylabel("final π(rejected) ÷ initial (median)")
    ax.set_title("How far π(rejected) falls, by label noise", fontsize=9)
    ax.grid(alpha=0.3)
    views.legend_outside(fig, handles, ncol=3)
    fig.tight_layout()
    return fig
