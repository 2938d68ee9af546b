"""Figures for the exploration notebooks (re-exported by :mod:`loglinear.plots`). Each
function takes records (a DataFrame or a list of dicts) or a result tuple and returns a
matplotlib Figure; none computes science."""

from __future__ import annotations

import numpy as np

from .style import estimator_color, estimator_marker


def _frame(records, cols=()):
    """The records as a non-empty DataFrame holding the columns ``cols``."""
    import pandas as pd

    df = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    if df.empty:
        raise ValueError("no records to plot")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"records lack columns {missing}; have {list(df.columns)}")
    return df


def plot_lines(records, *, x: str, y: str, hue: str | None = None, title: str,
               xlabel: str | None = None, ylabel: str | None = None, logx: bool = False,
               logy: bool = False, band: bool = True, ref_slope: float | None = None,
               hue_format=None, stat: str = "mean", floor: float | None = None,
               palette: dict | None = None, ax=None):
    """Mean of ``y`` against ``x`` (one line per ``hue``), with a min-max band over the
    other rows (replicates). ``ref_slope`` adds a dotted power-law guide x^slope;
    ``hue_format(key) -> str`` names the lines (default ``"hue = key"``); ``stat`` is
    ``"mean"`` or ``"median"``; ``floor`` clips ``y`` from below (e.g. a singular Sigma's
    lambda_min = 0 on a log axis); ``palette`` maps hue values to colours, so that panels
    showing different subsets agree."""
    import matplotlib.pyplot as plt

    df = _frame(records, [x, y] + ([hue] if hue else []))
    if stat not in ("mean", "median"):
        raise ValueError(f"stat must be 'mean' or 'median', got {stat!r}")
    if floor is not None:
        df = df.assign(**{y: np.maximum(df[y], floor)})
    fig, ax = (plt.subplots(figsize=(6.4, 4.2)) if ax is None else (ax.figure, ax))
    groups = df.groupby(hue, sort=True) if hue else [(None, df)]
    for key, sub in groups:
        stats = sub.groupby(x)[y].agg([stat, "min", "max"]).sort_index()
        if hue is None:
            label = None
        elif hue_format is not None:
            label = hue_format(key)
        else:
            label = f"{hue} = {key:g}" if isinstance(key, float) else f"{hue} = {key}"
        color = None if palette is None else palette.get(key)
        (line,) = ax.plot(stats.index, stats[stat], marker="o", ms=3.5, label=label,
                          color=color)
        if band and len(sub) > len(stats):
            ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.18,
                            color=line.get_color(), lw=0)
    if ref_slope is not None:
        xs = np.sort(df[x].unique().astype(float))
        if xs[0] <= 0:
            raise ValueError(f"ref_slope needs positive {x} values, got min {xs[0]:g}")
        ys = df.groupby(x)[y].agg(stat).sort_index().to_numpy()
        anchor = ys[0] * (xs / xs[0]) ** ref_slope
        ax.plot(xs, anchor, ":", color="k", label=f"slope {ref_slope:g}")
    ax.set(title=title, xlabel=xlabel or x, ylabel=ylabel or y)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if hue or ref_slope is not None:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def plot_heatmap(records, *, x: str, y: str, value: str, title: str, log10: bool = True,
                 floor: float = 1e-12, xlabel: str | None = None, ylabel: str | None = None,
                 cbar_label: str | None = None, fmt: str = ".1f", ax=None):
    """Seaborn heatmap of the mean of ``value`` over two knobs (log10 colours by default;
    values below ``floor`` are shown at the floor, i.e. as no coverage)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = _frame(records, [x, y, value])
    table = df.pivot_table(index=y, columns=x, values=value, aggfunc="mean").sort_index(
        ascending=False)
    shown = np.log10(np.maximum(table, floor)) if log10 else table
    fig, ax = (plt.subplots(figsize=(6.4, 4.6)) if ax is None else (ax.figure, ax))
    label = cbar_label or (f"log10 {value}" if log10 else value)
    sns.heatmap(shown, annot=True, fmt=fmt, cmap="viridis", ax=ax,
                cbar_kws={"label": label}, annot_kws={"fontsize": 8})
    ax.set_xticklabels([f"{float(t):g}" for t in table.columns], rotation=0)
    ax.set_yticklabels([f"{float(t):g}" for t in table.index], rotation=0)
    ax.set(title=title, xlabel=xlabel or x, ylabel=ylabel or y)
    fig.tight_layout()
    return fig


def plot_eigen_paths(records, *, title: str = "Spectrum of Σ as sampling concentrates"):
    """Every eigenvalue of Sigma against the concentration (records from
    ``explore.eigen_paths``), log scale; the legend names each eigenvector's main axis at
    the largest concentration."""
    import matplotlib.pyplot as plt

    df = _frame(records, ["concentration", "k", "eigval", "axis"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    last = df[df.concentration == df.concentration.max()].set_index("k")
    for k, sub in df.groupby("k"):
        sub = sub.sort_values("concentration")
        ax.plot(sub.concentration, np.maximum(sub.eigval, 1e-16), marker="o", ms=3,
                label=f"λ_{k + 1} (mostly axis {last.loc[k, 'axis']})")
    ax.set_yscale("log")
    ax.set(title=title, xlabel="sampling concentration γ (π_o ∝ exp(γ g))",
           ylabel="eigenvalue of Σ")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_feature_projections(projections: dict, *, title: str):
    """One panel per labelled ``explore.FeatureProjection``: each action's centred feature
    on the weakest (u_min, vertical) and strongest (u_max, horizontal) eigenvector of
    Sigma, marker area proportional to its sampling mass mu(s) pi_o(a|s), colour = state."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(projections), figsize=(4.6 * len(projections), 4.2),
                             squeeze=False, sharex=True, sharey=True)
    for ax, (label, proj) in zip(axes[0], projections.items()):
        S, A, _ = proj.centered.shape
        colors = plt.cm.tab10(np.arange(S) % 10)
        for s in range(S):
            ax.scatter(proj.centered[s, :, -1], proj.centered[s, :, 0],
                       s=4 + 900 * proj.mass[s], color=colors[s], alpha=0.6,
                       edgecolor="k", lw=0.3)
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set(title=f"{label}\nλ_min = {proj.eigvals[0]:.2e}, λ_max = {proj.eigvals[-1]:.2e}",
               xlabel="centred feature · u_max", ylabel="centred feature · u_min")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_direction_variance(proj, *, title: str):
    """Stacked bars: each state's share of every eigenvalue lambda_k, i.e.
    2 mu(s) Var_{pi_o}[psi . u_k] / lambda_k (an ``explore.FeatureProjection``), with
    lambda_k written above its bar."""
    import matplotlib.pyplot as plt

    var = proj.direction_variance
    S, d = var.shape
    share = var / np.maximum(var.sum(axis=0), 1e-300)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bottom = np.zeros(d)
    colors = plt.cm.tab10(np.arange(S) % 10)
    for s in range(S):
        ax.bar(np.arange(d), share[s], bottom=bottom, color=colors[s], label=f"state {s}")
        bottom += share[s]
    for k in range(d):
        ax.text(k, 1.01, f"λ={proj.eigvals[k]:.1e}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(np.arange(d), [f"u_{k + 1}" for k in range(d)])
    ax.set_ylim(0, 1.1)
    ax.set(title=title, xlabel="eigenvector of Σ (ascending eigenvalue)",
           ylabel="share of λ_k supplied by each state")
    ax.legend(fontsize=7, ncol=2, loc="lower right", framealpha=0.8)
    fig.tight_layout()
    return fig


def _markers():
    return ["o", "s", "^", "D", "v", "P", "X", "*"]


def plot_error_vs_lambda(summary, *, title: str, prediction: str = "pred_sandwich"):
    """RMSE against lambda_min (log-log), one panel per n, one colour per estimator; the
    local prediction ``prediction`` (a column of ``explore.summarize_rates``) is drawn as a
    dashed line of the same colour."""
    import matplotlib.pyplot as plt

    df = _frame(summary, ["n", "estimator", "lambda_min", "rmse", prediction])
    ns = sorted(df.n.unique())
    fig, axes = plt.subplots(1, len(ns), figsize=(4.8 * len(ns), 4.2), squeeze=False,
                             sharey=True)
    ests = sorted(df.estimator.unique())
    for ax, n in zip(axes[0], ns):
        for e in ests:
            sub = df[(df.n == n) & (df.estimator == e)].sort_values("lambda_min")
            ax.plot(sub.lambda_min, sub.rmse, estimator_marker(e), color=estimator_color(e),
                    label=e)
            ok = sub[np.isfinite(sub[prediction])]
            ax.plot(ok.lambda_min, ok[prediction], "--", color=estimator_color(e), lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(title=f"n = {n}", xlabel="λ_min(Σ) of the population")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("RMSE ‖ŵ − w‖ (markers); local prediction (dashed)")
    axes[0][0].legend(fontsize=8, title="estimator", title_fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_prediction_scatter(summary, *, title: str, prediction: str = "pred_sandwich"):
    """Measured RMSE against the local prediction: colour = estimator, marker = n, with
    the diagonal y = x."""
    import matplotlib.pyplot as plt

    df = _frame(summary, ["n", "estimator", "rmse", prediction])
    df = df[np.isfinite(df[prediction]) & np.isfinite(df.rmse)]
    if df.empty:
        raise ValueError(f"no rows with both rmse and {prediction}")
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    ests, ns = sorted(df.estimator.unique()), sorted(df.n.unique())
    for e in ests:
        for j, n in enumerate(ns):
            sub = df[(df.estimator == e) & (df.n == n)]
            ax.scatter(sub[prediction], sub.rmse, marker=_markers()[j % 8],
                       color=estimator_color(e), s=30, alpha=0.8,
                       label=e if j == 0 else None)
    lo = float(min(df[prediction].min(), df.rmse.min())) * 0.8
    hi = float(max(df[prediction].max(), df.rmse.max())) * 1.25
    ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="y = x")
    for j, n in enumerate(ns):
        ax.scatter([], [], marker=_markers()[j % 8], color="grey", label=f"n = {n}")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), title=title,
           xlabel=f"predicted RMSE ({prediction.replace('pred_', '√tr ')}/n)",
           ylabel="measured RMSE over seeds")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_against_lambda(records, *, y: str, hue: str, title: str, ylabel: str,
                        style: str | None = None, references: dict | None = None):
    """``y`` against lambda_min (log-log): colour = ``hue``, marker = ``style`` (rows with
    equal hue and style are joined by a line), plus named reference curves
    ``{label: (lambda_values, y_values)}`` drawn as dashed black lines."""
    import matplotlib.pyplot as plt

    df = _frame(records, ["lambda_min", y, hue] + ([style] if style else []))
    fig, ax = plt.subplots(figsize=(6.6, 4.5))
    hues = sorted(df[hue].unique())
    styles = sorted(df[style].unique()) if style else [None]
    for i, h in enumerate(hues):
        for j, st in enumerate(styles):
            sub = df[(df[hue] == h) & ((df[style] == st) if style else True)]
            if sub.empty:
                continue
            sub = sub.sort_values("lambda_min")
            ax.plot(sub.lambda_min, sub[y], _markers()[(j if style else i) % 8] + "-", lw=0.8,
                    ms=5, color=plt.cm.tab10(i % 10), label=f"{h}" if j == 0 else None)
    if style:
        for j, st in enumerate(styles):
            ax.plot([], [], _markers()[j % 8], color="grey", label=f"{style} {st}")
    for label, (xs, ys) in (references or {}).items():
        order = np.argsort(xs)
        ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], "--", color="k", lw=1,
                label=label)
    ax.set(xscale="log", yscale="log", title=title, xlabel="λ_min(Σ) of the population",
           ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_bound_curves(summary, bounds: dict, *, title: str, ylim=None, ax=None):
    """Measured RMSE against n (one colour per estimator) next to theory bound curves
    ``{label: (n_values, bound_values)}`` (black, dashed styles), log-log."""
    import matplotlib.pyplot as plt

    df = _frame(summary, ["n", "estimator", "rmse"])
    fig, ax = (plt.subplots(figsize=(6.6, 4.6)) if ax is None else (ax.figure, ax))
    for e, sub in df.groupby("estimator", sort=True):
        sub = sub.sort_values("n")
        ax.plot(sub.n, sub.rmse, estimator_marker(e) + "-", color=estimator_color(e),
                label=f"{e}: measured RMSE")
    styles = ["--", "-.", ":", (0, (5, 1, 1, 1))]
    for j, (label, (ns, vals)) in enumerate(bounds.items()):
        ax.plot(ns, vals, linestyle=styles[j % 4], color="k", lw=1.2, label=label)
    ax.set(xscale="log", yscale="log", title=title, xlabel="sample size n",
           ylabel="error ‖ŵ − w‖₂")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5)
    fig.tight_layout()
    return fig


def plot_kl_reweighting(panels: dict, *, title: str):
    """The KL adversary's reweighting: for each labelled radius, the worst-case weight
    ratio p_i / q_i against the pair's margin m_i (marker area ~ q_i). ``panels`` maps a
    label to ``(margins, p, q)`` arrays."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.6, 4.4))
    for i, (label, (m, p, q)) in enumerate(panels.items()):
        m, p, q = (np.asarray(a, float) for a in (m, p, q))
        keep = q > 0
        ax.scatter(m[keep], p[keep] / q[keep], s=8 + 400 * q[keep], alpha=0.6,
                   color=plt.cm.viridis(i / max(1, len(panels) - 1)), label=label,
                   edgecolor="k", lw=0.2)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set(yscale="log", title=title, xlabel="margin m_i = (2y−1)β(θ·x − o) at the robust θ",
           ylabel="worst-case weight / data weight  p_i / q_i")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, markerscale=0.6)
    fig.tight_layout()
    return fig


def plot_transport(panels: dict, *, title: str, magnify: float = 1.0):
    """Where the Wasserstein adversary moves the data: one panel per labelled solve,
    each ``(x, y, weight, transport, theta)`` with 2-d feature differences x. Arrows run
    from a pair's x toward its transported x' (width ~ mass; length x ``magnify``, stated
    in the panel title), colour = label, and the robust theta is drawn from the origin."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 5.0), squeeze=False)
    for ax, (label, (x, y, w, tr, theta)) in zip(axes[0], panels.items()):
        x, y, w = np.asarray(x, float), np.asarray(y, float), np.asarray(w, float)
        if x.shape[1] != 2:
            raise ValueError(f"plot_transport needs 2-d features, got d = {x.shape[1]}")
        colors = np.where(y > 0.5, "tab:blue", "tab:red")
        ax.scatter(x[:, 0], x[:, 1], s=10 + 600 * w, c=colors, alpha=0.35, edgecolor="k",
                   lw=0.3)
        src = np.asarray(tr.source)
        moved = np.linalg.norm(tr.x - x[src], axis=1) > 1e-12
        for k in np.nonzero(moved)[0]:
            a = x[src[k]]
            b = a + magnify * (tr.x[k] - a)
            ax.annotate("", xy=b, xytext=a, arrowprops=dict(
                arrowstyle="->", color=colors[src[k]], lw=0.5 + 40 * tr.weight[k], alpha=0.8))
        theta = np.asarray(theta, float)
        nt = float(np.linalg.norm(theta))
        if nt > 0:
            u = theta / nt * 0.5 * float(np.abs(x).max())
            ax.annotate("", xy=u, xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color="k",
                                                                   lw=1.8))
            ax.text(*(1.08 * u), "θ", fontsize=11)
        ax.scatter([], [], color="tab:blue", label="y = 1 (a¹ preferred)")
        ax.scatter([], [], color="tab:red", label="y = 0")
        shown = label if magnify == 1 else f"{label}\n(displacements ×{magnify:g})"
        ax.set(title=shown, xlabel="x₁ = ψ₁(s,a¹) − ψ₁(s,a²)",
               ylabel="x₂ = ψ₂(s,a¹) − ψ₂(s,a²)", aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_mass_dynamics(records, *, title: str, facet: str = "scenario",
                       style: str | None = "sharing"):
    """Chosen, rejected and unseen probability mass against the training step: one panel
    per ``facet`` value, colour = quantity, line style = ``style`` value (records from
    ``loglinear.experiments.three_d.dynamics.train`` / the 3D study, one method)."""
    import matplotlib.pyplot as plt

    df = _frame(records, ["step", "p_chosen", "p_rejected", "unseen_mass", facet]
                + ([style] if style else []))
    facets = list(dict.fromkeys(df[facet]))
    styles = sorted(df[style].unique()) if style else [None]
    dashes = ["-", "--", ":", "-."]
    quantities = {"p_chosen": ("π(chosen)", "tab:blue"),
                  "p_rejected": ("π(rejected)", "tab:red"),
                  "unseen_mass": ("mass on unseen responses", "tab:green")}
    fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets), 3.9), squeeze=False,
                             sharey=True)
    for ax, fv in zip(axes[0], facets):
        for j, sv in enumerate(styles):
            sub = df[(df[facet] == fv) & ((df[style] == sv) if style else True)]
            sub = sub.sort_values("step")
            for col, (name, color) in quantities.items():
                ax.plot(sub.step, sub[col], dashes[j % 4], color=color,
                        label=name if j == 0 else None)
        ax.set(title=f"{facet} {fv}", xlabel="training step", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("probability (mean over pairs / states)")
    if style:
        for j, sv in enumerate(styles):
            axes[0][0].plot([], [], dashes[j % 4], color="grey", label=f"{style} {sv:g}"
                            if isinstance(sv, float) else f"{style} {sv}")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
