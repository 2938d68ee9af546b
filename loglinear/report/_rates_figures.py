"""Figures of the rates report: each ``plot_*`` takes analysis tables of
:mod:`loglinear.experiments.rates.analysis` (``curves``, the exponent tables ``ex``,
``theory``, ``bias_variance``, ``coverage``, ``elasticities``) and returns a matplotlib
Figure. Colours and markers are the estimators' own (:data:`loglinear.plots.ESTIMATOR_COLORS`,
the same in every report); bands, fit lines and guides are the ones the captions define.
"""

from __future__ import annotations

import numpy as np

from ..experiments.rates.config import NO_SCHEDULE
from ..plots import (
    ESTIMATOR_COLORS,
    ESTIMATOR_ORDER,
    REFERENCE_SLOPES,
    add_reference_slopes,
    estimator_color,
    estimator_marker,
    key_handle,
    legend_outside,
    note_clipped,
    plain_log_ticks,
    pyplot,
    sane_limits,
)

ORDER = list(ESTIMATOR_ORDER)
COLORS = ESTIMATOR_COLORS
N_LABEL = r"sample size $n$"
YLABELS = {
    "error": r"RMSE of $\|\hat w - w(\rho)\|_2$",
    "error_star": r"RMSE of $\|\hat w - w^\star\|_2$",
    "policy": r"RMS of $\mathrm{KL}(\pi_{w(\rho)}\,\|\,\pi_{\hat w})^{1/2}$",
    "policy_star": r"RMS of $\mathrm{KL}(\pi^\star\,\|\,\pi_{\hat w})^{1/2}$",
}


def _order(names) -> list[str]:
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda e: (ORDER.index(e) if e in ORDER else len(ORDER), e))


def _line(ax, x, y, e, **kw):
    return ax.plot(x, y, color=estimator_color(e), marker=estimator_marker(e), ms=4, lw=1,
                   label=e, **kw)[0]


def _anchor(sub) -> float:
    """Where the reference slopes start: above the curves at the smallest n."""
    first = sub[sub.n == sub.n.min()].rmse
    return float(2.0 * first.max()) if np.isfinite(first).any() else 1.0


def plot_rates(curves, ex, schedule: str, *, metric: str = "error"):
    """Log-log RMSE against n, one panel per setting, for one schedule (DPO always shown):
    the pooled RMSE over draws and seeds (markers), its 95% two-level bootstrap band
    (shaded), the fitted power law over the n range of the reported exponent (solid, only
    where R^2 >= the threshold), the local prediction sqrt(tr V / n) (dotted, parameter
    error only) and the reference slopes -1/2 and -1/4 (grey)."""
    plt = pyplot()
    cur = curves[(curves.metric == metric) & curves.schedule.isin([schedule, NO_SCHEDULE])]
    settings = sorted(cur.setting.unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(3.6 * len(settings), 3.4),
                             squeeze=False, sharey=True)
    lo, hi, clipped = sane_limits(np.r_[cur.rmse, cur.lo, cur.hi, 2 * cur.rmse.max()])
    ests, keys = {}, []
    for ax, s in zip(axes[0], settings):
        sub = cur[cur.setting == s]
        for e in _order(sub.estimator):
            g = sub[sub.estimator == e].sort_values("n")
            c = estimator_color(e)
            ests[e] = _line(ax, g.n, g.rmse, e, ls="none")
            ax.fill_between(g.n, g.lo, g.hi, color=c, alpha=0.12, lw=0)
            fit = ex[(ex.setting == s) & (ex.estimator == e) & (ex.schedule == g.schedule.iloc[0])]
            if len(fit) and bool(fit.power_law.iloc[0]):
                f = fit.iloc[0]
                nn = g.n[g.n >= f.fit_n_min].to_numpy(float)
                ax.plot(nn, np.exp(f.intercept_asym) * nn**f.slope_asym, "-", color=c, lw=1.2)
            if "pred" in g and np.isfinite(g.pred).any():
                ax.plot(g.n, g.pred, ":", color=c, lw=1)
                keys = [key_handle(r"$\sqrt{\mathrm{tr}\,V/n}$", ls=":")]
        guides = add_reference_slopes(ax, float(sub.n.min()), float(sub.n.max()),
                                      min(_anchor(sub), hi / 1.2))
        ax.set(xscale="log", yscale="log", ylim=(lo, hi), title=s, xlabel=N_LABEL)
        ax.grid(alpha=0.3, which="both")
    note_clipped(axes[0][0], clipped)
    axes[0][0].set_ylabel(YLABELS.get(metric, metric))
    legend_outside(fig, [ests[e] for e in _order(ests)]
                   + [key_handle("fitted power law (n range of the exponent)")] + keys
                   + guides)
    fig.tight_layout()
    return fig


def plot_exponents(ex, *, title: str = ""):
    """Exponents (n >= the fit threshold) with their 95% two-level bootstrap intervals, one
    panel per schedule (fixed radii first), one row per setting, estimators offset within a
    row; groups without a power law are left out (the caption counts them). Reference
    lines at -1/2 and -1/4."""
    plt = pyplot()
    ok = ex[ex.power_law.astype(bool) & np.isfinite(ex.slope_asym)]
    scheds = sorted(ok.schedule.unique(), key=lambda s: (ok[ok.schedule == s].kind.iloc[0]
                                                         != "fixed", s))
    settings = sorted(ex.setting.unique())
    ests = _order(ex.estimator)
    fig, axes = plt.subplots(1, max(1, len(scheds)), figsize=(2.6 * max(1, len(scheds)),
                                                              0.5 * len(settings) + 1.6),
                             squeeze=False, sharey=True, sharex=True)
    handles, guides = {}, []
    for ax, sch in zip(axes[0], scheds):
        sub = ok[ok.schedule == sch]
        for k, e in enumerate(ests):
            g = sub[sub.estimator == e]
            y = np.array([settings.index(s) for s in g.setting], float)
            y += (k - (len(ests) - 1) / 2) * 0.6 / max(1, len(ests))
            h = ax.errorbar(g.slope_asym, y, xerr=[g.slope_asym - g.lo_asym,
                                                   g.hi_asym - g.slope_asym],
                            fmt=estimator_marker(e), color=estimator_color(e), ms=4, lw=1,
                            label=e)
            if len(g):
                handles[e] = h
        guides = [ax.axvline(v, color="0.45", lw=1, ls=st["ls"], label=st["label"])
                  for v, st in REFERENCE_SLOPES.items()]
        ax.set_title(f"{sch} ({sub.kind.iloc[0]})" if len(sub) else sch, fontsize=9)
        ax.set_xlabel("exponent")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(range(len(settings)), settings)
    axes[0][0].set_ylim(-0.6, len(settings) - 0.4)
    if title:
        fig.suptitle(title, fontsize=10)
    legend_outside(fig, [handles[e] for e in _order(handles)] + guides)
    fig.tight_layout()
    return fig


def plot_bias_variance(bv, setting: str):
    """For each robust estimator under each shrinking schedule (one panel per estimator):
    RMSE to w* (solid), the bias ||w(rho_n) - w*|| of the moving target (dashed) and the
    spread RMSE to the own target (dotted) against n, with the reference slopes."""
    plt = pyplot()
    sub = bv[(bv.setting == setting) & (bv.kind == "shrinking")]
    ests = _order(sub.estimator)
    fig, axes = plt.subplots(1, max(1, len(ests)), figsize=(3.0 * max(1, len(ests)), 3.2),
                             squeeze=False, sharey=True)
    vals = np.r_[sub.total, sub.bias, sub.spread]
    lo, hi, clipped = sane_limits(vals) if np.isfinite(vals).any() and (vals > 0).any() \
        else (1e-3, 1.0, 0)
    handles, guides = [], []
    styles = ("-", (0, (5, 2)), ":")
    scheds = sorted(sub.schedule.unique())
    for ax, e in zip(axes[0], ests):
        for j, sch in enumerate(scheds):
            g = sub[(sub.estimator == e) & (sub.schedule == sch)].sort_values("n")
            c, m = estimator_color(e), "os^v"[j % 4]
            for col, ls, lab in zip(("total", "bias", "spread"), styles,
                                    (r"$\|\hat w - w^\star\|$ (RMSE)",
                                     r"bias $\|w(\rho_n) - w^\star\|$",
                                     r"spread $\|\hat w - w(\rho_n)\|$ (RMSE)")):
                mk = m if col == "total" else None
                ax.plot(g.n, g[col], ls=ls, marker=mk, ms=3.5, color=c, lw=1)
                if e == ests[0]:
                    handles.append(key_handle(f"{lab}, {sch}", ls=ls, marker=mk))
        if len(sub):
            guides = add_reference_slopes(ax, float(sub.n.min()), float(sub.n.max()),
                                          min(2 * float(sub.total.max()), hi / 1.2))
        ax.set(xscale="log", yscale="log", ylim=(lo, hi), title=e, xlabel=N_LABEL)
        ax.grid(alpha=0.3, which="both")
    note_clipped(axes[0][0], clipped)
    axes[0][0].set_ylabel("error")
    legend_outside(fig, handles + guides, ncol=3)
    fig.suptitle(setting, fontsize=10)
    fig.tight_layout()
    return fig


THEOREMS = {"prop1": "Proposition 1 (DPO)", "thm1": "Theorem 1 (W1, W2, WDPO)",
            "thm2": "Theorem 2 (KL, KLDPO)"}


def plot_bounds(th):
    """Bound / empirical (1 - delta) quantile against n in the cells where the theorem
    applies, one panel per theorem (their constants differ by decades): one dot per
    (setting, draw) cell, coloured by estimator, the median over cells per n joined by a
    line, and the self-concordant bound's ratio (hollow markers) where it exists."""
    plt = pyplot()
    a = th[th.applies.astype(bool) & np.isfinite(th.bound_factor)]
    thms = [k for k in THEOREMS if k in set(a.theorem)]
    fig, axes = plt.subplots(1, max(1, len(thms)), figsize=(3.8 * max(1, len(thms)), 3.4),
                             squeeze=False)
    ests, keys = {}, []
    for ax, thm in zip(axes[0], thms):
        sub = a[a.theorem == thm]
        for e in _order(sub.estimator):
            g = sub[sub.estimator == e]
            c = estimator_color(e)
            ax.scatter(g.n, g.bound_factor, s=6, color=c, alpha=0.35, lw=0)
            med = g.groupby("n").bound_factor.median()
            ests[e] = ax.plot(med.index, med.to_numpy(), marker=estimator_marker(e), ms=4,
                              color=c, lw=1, label=e)[0]
            sc = g[np.isfinite(g.sc_factor)]
            if len(sc):
                ax.scatter(sc.n, sc.sc_factor, s=14, facecolors="none", edgecolors=c)
                keys = [key_handle("self-concordant bound / quantile", ls="none",
                                   marker="o")]
        ax.axhline(1.0, color="0.3", lw=1)
        lo, hi, clipped = sane_limits(np.r_[sub.bound_factor, sub.sc_factor, 1.0],
                                      quantile=0.9, spread=100.0)
        note_clipped(ax, clipped)
        ax.set(xscale="log", yscale="log", xlabel=N_LABEL, title=THEOREMS[thm],
               ylim=(min(lo, 0.7), hi))
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(r"bound / $(1-\delta)$ quantile of the error")
    legend_outside(fig, [ests[e] for e in _order(ests)] + keys
                   + [key_handle("bound = quantile", color="0.3")])
    fig.tight_layout()
    return fig


COVERAGE_PANELS = (("rmse", "vs_inv_lambda", r"RMSE of $\|\hat w - w(\rho)\|_2$"),
                   ("rmse_policy", "policy_vs_inv_lambda",
                    r"RMS of $\mathrm{KL}(\pi_{w(\rho)}\|\pi_{\hat w})^{1/2}$"))


def plot_coverage(cov, el):
    """RMSE at the largest n against 1/lambda_min(Sigma), in parameter space (left) and,
    where recorded, policy space (right): one point per (setting, draw), coloured by
    estimator, marker by setting, each estimator on its headline schedule; no line joins
    separate settings (the lines are the fitted elasticities, whose values and 95%
    intervals the legend gives for the parameter error)."""
    plt = pyplot()
    panels = [p for p in COVERAGE_PANELS if np.isfinite(cov[p[0]]).any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.7), squeeze=False)
    settings = sorted(cov.setting.unique())
    marks = dict(zip(settings, "osD^vPX*"))
    handles = []
    for r in el.sort_values("estimator", key=lambda c: c.map(
            lambda e: ORDER.index(e) if e in ORDER else len(ORDER))).itertuples():
        g = cov[(cov.estimator == r.estimator) & (cov.schedule == r.schedule)]
        c = estimator_color(r.estimator)
        for ax, (col, key, _) in zip(axes[0], panels):
            for s in settings:
                h = g[g.setting == s]
                ax.scatter(h.inv_lambda, h[col], s=14, color=c, marker=marks[s], alpha=0.8)
            v, lo, hi = (getattr(r, key), getattr(r, f"{key}_lo"), getattr(r, f"{key}_hi"))
            if np.isfinite(v):
                x = np.geomspace(g.inv_lambda.min(), g.inv_lambda.max(), 10)
                line = ax.plot(x, np.exp(getattr(r, f"{key}_intercept")) * x**v, color=c,
                               lw=1)[0]
                if col == "rmse":
                    line.set_label(f"{r.estimator} ({r.schedule}): {v:.2f} [{lo:.2f}, "
                                   f"{hi:.2f}]")
                    handles.append(line)
    for s in settings:
        handles.append(axes[0][0].scatter([], [], color="0.4", marker=marks[s], label=s))
    for ax, (_, _, ylab) in zip(axes[0], panels):
        ax.set(xscale="log", yscale="log", xlabel=r"$1/\lambda_{\min}(\Sigma)$",
               ylabel=ylab)
        plain_log_ticks(ax)
        ax.grid(alpha=0.3, which="both")
    legend_outside(fig, handles, ncol=3)
    fig.tight_layout()
    return fig


def plot_star(th, setting: str):
    """Deprecated: the distance to w* under shrinking radii is drawn, with its bias and
    spread, by :func:`plot_bias_variance` (from the ``bias_variance`` table). This draws
    the median over draws of the RMSE to w* from the ``theory`` table."""
    import warnings

    warnings.warn("plot_star is deprecated; use plot_bias_variance(bias_variance, setting)",
                  DeprecationWarning, stacklevel=2)
    plt = pyplot()
    sub = th[(th.setting == setting) & (th.kind == "shrinking")]
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for (e, _), g in sub.groupby(["estimator", "schedule"]):
        med = g.groupby("n").rmse_star.median()
        _line(ax, med.index, med.to_numpy(), e, ls="-")
    ax.set(xscale="log", yscale="log", xlabel=N_LABEL, ylabel=YLABELS["error_star"])
    legend_outside(fig, ax.get_lines())
    fig.tight_layout()
    return fig
