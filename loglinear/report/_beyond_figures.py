"""Figures of the beyond-log-linear report: each takes the tables of
:mod:`loglinear.experiments.beyond` analyses and returns a Figure. One colour per method
(:data:`loglinear.plots.ESTIMATOR_COLORS`: DPO black, KLDPO orange, WDPO green), labelled
axes with units, one legend below the panels, DPO drawn in every panel."""

from __future__ import annotations

import numpy as np

from .. import plots as views

SELECTOR_MARKERS = {"rule": "D", "val": "s", "noise": "^"}
SELECTOR_LABELS = {"rule": "tau by the ESS rule", "val": "tau by validation split",
                   "noise": "tau by sampling-noise radius"}
ARCH_MARKERS = ("o", "s", "^", "v", "P")


def _ticks(ax, *, y: bool = True, x_subs=(1.0, 2.0, 5.0)) -> None:
    """Plain-number ticks on log axes (``x_subs`` per decade on x; finer on y, whose
    ranges are short)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axes = [(ax.xaxis, x_subs)] + ([(ax.yaxis, (1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 7.0))]
                                   if y else [])
    for axis, subs in axes:
        axis.set_major_locator(LogLocator(base=10, subs=subs))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def plot_tau(bands, selectors, *, n):
    """Regret against tau at one n: rows alpha = 0.5 (mean over shift directions) and
    alpha = 1 (in distribution), plus the implied KL radius; one column per setting. The
    KLDPO sweep (orange line, band: mean +- 1.96 standard errors over seeds), DPO (black
    line and band), and the selectors' median tau and mean regret as orange markers (at
    the right edge when the median choice is DPO)."""
    plt = views.pyplot()
    b = bands[bands.n == n]
    settings = sorted(b.setting.unique())
    rows = [("regret_a50", "regret at alpha = 0.5\n(nats of KL-regularised value)"),
            ("regret_a100", "regret at alpha = 1\n(nats of KL-regularised value)"),
            ("implied_radius", "implied KL radius rho(tau) (nats)")]
    fig, axes = plt.subplots(len(rows), len(settings), figsize=(4.6 * len(settings), 8.4),
                             squeeze=False, sharex=True)
    kcol, dcol = views.estimator_color("kldpo"), views.estimator_color("dpo")
    for j, setting in enumerate(settings):
        g = b[(b.setting == setting) & np.isfinite(b.tau)].sort_values("tau")
        d = b[(b.setting == setting) & ~np.isfinite(b.tau)]
        s = selectors[(selectors.setting == setting) & (selectors.n == n)]
        for i, (col, ylab) in enumerate(rows):
            ax = axes[i, j]
            ax.plot(g.tau, g[col], "-", color=kcol, marker="o", ms=3, label="KLDPO, tau grid")
            if f"{col}_half" in g:
                ax.fill_between(g.tau, g[col] - g[f"{col}_half"], g[col] + g[f"{col}_half"],
                                color=kcol, alpha=0.2, lw=0)
                if len(d):
                    m, h = float(d[col].iloc[0]), float(d[f"{col}_half"].iloc[0])
                    ax.axhline(m, color=dcol, lw=1.2, label="DPO (tau = infinity)")
                    ax.axhspan(m - h, m + h, color=dcol, alpha=0.12, lw=0)
            edge = 1.8 * float(g.tau.max()) if len(g) else 1.0
            for sel, h in s.groupby("method"):
                if col in h and np.isfinite(h[col]).any():
                    # a selector whose median choice is DPO sits at the right edge
                    tau = float(h.tau.median())
                    if col == "implied_radius" and not np.isfinite(tau):
                        continue   # DPO buys no radius
                    ax.plot(tau if np.isfinite(tau) else edge, h[col].mean(), ls="none",
                            color=kcol, mec="k", marker=SELECTOR_MARKERS.get(sel, "x"), ms=8,
                            label=SELECTOR_LABELS.get(sel, sel))
            ax.set_xscale("log")
            _ticks(ax, y=False, x_subs=(1.0,))
            ax.set_ylabel(ylab)
            if i == 0:
                ax.set_title(setting)
            if i == len(rows) - 1:
                ax.set_xlabel("KLDPO temperature tau (log scale)")
                ax.set_yscale("log")
    handles = [h for ax in axes.flat for h in ax.get_lines()]
    views.legend_outside(fig, handles, ncol=5)
    fig.suptitle(f"KLDPO temperature sweep, n = {n}")
    fig.tight_layout()
    return fig


def plot_neural(df):
    """RMSE over seeds of sqrt(KL(pi* || pi_hat)) against n, one panel per setting: the
    random-init fit (solid) and the local fit from pi* (dotted), one marker per
    architecture; all are DPO fits (black); grey reference slope -1/2."""
    plt = views.pyplot()
    settings = sorted(df.setting.unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(4.6 * len(settings), 3.9),
                             squeeze=False)
    color = views.estimator_color("dpo")
    archs = sorted(df.arch.unique())
    handles = []
    for ax, setting in zip(axes[0], settings):
        sub = df[df.setting == setting]
        for k, arch in enumerate(archs):
            g = sub[sub.arch == arch]
            mk = ARCH_MARKERS[k % len(ARCH_MARKERS)]
            for col, ls, what in (("error_random", "-", "random init"),
                                  ("error", ":", "local, from pi*")):
                if col not in g or not np.isfinite(g[col]).any():
                    continue
                r = g.groupby("n")[col].apply(lambda e: np.sqrt(np.mean(e**2)))
                (h,) = ax.loglog(r.index, r.values, ls=ls, marker=mk, ms=4, color=color,
                                 label=f"{arch}, {what}")
                handles.append(h)
        ns = np.array(sorted(sub.n.unique()), float)
        top = float(np.sqrt(np.mean(sub[sub.n == ns[0]].error ** 2)))
        handles += views.add_reference_slopes(ax, ns[0], ns[-1], top, slopes=(-0.5,))
        ax.set_title(f"{setting} (lambda_min = {sub.lambda_min.iloc[0]:.3g})")
        ax.set_xlabel("sample size n (pairs)")
        ax.set_ylabel("RMSE of sqrt(KL(pi* || pi_hat)) (sqrt nats)")
    views.legend_outside(fig, handles, ncol=4)
    fig.tight_layout()
    return fig


def plot_stability(front, dpo_kl):
    """The strength-variance frontier: per (alpha, arch) panel, each WDPO/KLDPO strength's
    mean final KL to the reference (x) against its minibatch-gradient variance relative to
    DPO (y, geometric mean of per-seed ratios; bars: 95% seed-bootstrap interval); DPO is
    the black point at (its KL, 1). ``dpo_kl``: {(alpha, arch): DPO's mean final KL}."""
    plt = views.pyplot()
    cells = sorted({(r["alpha"], r["arch"]) for r in front}, key=lambda c: (-c[0], c[1]))
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.9), squeeze=False)
    handles = []
    for ax, (alpha, arch) in zip(axes[0], cells):
        for method in ("wdpo", "kldpo"):
            rows = sorted((r for r in front if (r["alpha"], r["arch"]) == (alpha, arch)
                           and r["method"] == method and np.isfinite(r["var_ratio"])),
                          key=lambda r: r["kl_ref"])
            if not rows:
                continue
            x = np.array([r["kl_ref"] for r in rows])
            y = np.array([r["var_ratio"] for r in rows])
            err = np.array([[r["var_ratio"] - r["var_lo"] for r in rows],
                            [r["var_hi"] - r["var_ratio"] for r in rows]])
            c = views.estimator_color(method)
            h = ax.errorbar(x, y, yerr=err, color=c, marker=views.estimator_marker(method),
                            ms=5, capsize=2, label=method.upper())
            handles.append(h)
            for r in rows:
                ax.annotate("%s=%g" % ("rho" if method == "wdpo" else "tau", r["hyper"]),
                            (r["kl_ref"], r["var_ratio"]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points", color=c)
        (h,) = ax.plot([dpo_kl[(alpha, arch)]], [1.0], "o", color=views.estimator_color("dpo"),
                       ms=7, label="DPO")
        handles.append(h)
        ax.axhline(1.0, color=views.estimator_color("dpo"), lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _ticks(ax)
        ax.set_title(f"alpha = {alpha:g}, {arch}")
        ax.set_xlabel("final KL to the reference (nats)")
        ax.set_ylabel("minibatch-gradient variance / DPO's")
    views.legend_outside(fig, handles, ncol=3)
    fig.tight_layout()
    return fig
