"""Figures of the rates report: each ``plot_*`` takes analysis tables (the theory table
``th``, the exponents ``ex``, the coverage table ``cov`` of
:mod:`loglinear.experiments.rates.analysis`) and returns a matplotlib Figure."""

from __future__ import annotations

import numpy as np

from ..experiments.rates.config import NO_SCHEDULE

ORDER = ["dpo", "kl", "kldpo", "w1", "w2", "wdpo"]
COLORS = dict(dpo="black", kl="tab:blue", kldpo="tab:cyan", w1="tab:red", w2="tab:orange",
              wdpo="tab:green")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rates(th, ex, schedule: str):
    """Log-log RMSE against n per setting for one schedule (DPO always shown): points,
    fitted power laws (dashed) and local predictions sqrt(tr V / n) (dotted)."""
    plt = _plt()
    settings = sorted(th.setting.unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.6),
                             squeeze=False, sharey=True)
    for ax, s in zip(axes[0], settings):
        sub = th[(th.setting == s) & th.schedule.isin([schedule, NO_SCHEDULE])]
        for e in [x for x in ORDER if x in set(sub.estimator)]:
            g = sub[sub.estimator == e].sort_values("n")
            c = COLORS.get(e, None)
            ax.loglog(g.n, g.rmse, "o", color=c, ms=4, label=e)
            fit = ex[(ex.setting == s) & (ex.estimator == e)
                     & ex.schedule.isin([schedule, NO_SCHEDULE])]
            if len(fit) and np.isfinite(fit.slope_all.iloc[0]):
                b = fit.slope_all.iloc[0]
                a = np.exp(np.mean(np.log(g.rmse) - b * np.log(g.n)))
                ax.loglog(g.n, a * g.n**b, "--", color=c, lw=1)
            ax.loglog(g.n, g.pred_sandwich, ":", color=c, lw=1)
        ax.set_title(f"{s}")
        ax.set_xlabel("n")
    axes[0][0].set_ylabel("RMSE of ||w_hat - target||")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"schedule: {schedule} (dashed: fit; dotted: sqrt(tr V / n))", fontsize=9)
    return fig


def plot_bounds(th, setting: str, schedule: str = NO_SCHEDULE):
    """The (1 - delta) error quantile against the Theorem 1/2 and Proposition 1 bounds, for
    the estimators without a schedule and those on ``schedule``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sub = th[th.setting == setting]
    for (e, sch), g in sub.groupby(["estimator", "schedule"]):
        if sch not in (NO_SCHEDULE, schedule):
            continue
        g = g.sort_values("n")
        c = COLORS.get(e, None)
        ax.loglog(g.n, g.q_vs_bound, "o-", color=c, ms=3, lw=1, label=f"{e} quantile")
        ax.loglog(g.n, g.bound, "--", color=c, lw=1, label=f"{e} bound")
    ax.set_xlabel("n")
    ax.set_ylabel("error (DPO: Sigma_D norm)")
    ax.set_title(f"{setting}: (1-delta) quantile vs the bounds of docs/theory.md §5.3-5.4",
                 fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return fig


def plot_star(th, setting: str):
    """RMSE of the distance to theta* (DPO's target) against n for the shrinking-radius
    schedules (``th.shrinking``), with reference slopes -1/2 and -1/4."""
    plt = _plt()
    sub = th[(th.setting == setting) & th.shrinking]
    scheds = sorted(set(sub.schedule))
    fig, axes = plt.subplots(1, max(1, len(scheds)), figsize=(4.2 * max(1, len(scheds)), 3.6),
                             squeeze=False, sharey=True)
    dpo = th[(th.setting == setting) & (th.schedule == NO_SCHEDULE)].sort_values("n")
    for ax, sch in zip(axes[0], scheds):
        for e, g in sub[sub.schedule == sch].groupby("estimator"):
            g = g.sort_values("n")
            ax.loglog(g.n, g.rmse_star, "o-", color=COLORS.get(e), ms=3, lw=1, label=e)
        if len(dpo):
            ax.loglog(dpo.n, dpo.rmse, "o-", color="black", ms=3, lw=1, label="dpo")
            n0, y0 = float(dpo.n.iloc[0]), float(dpo.rmse.iloc[0])
            nn = dpo.n.to_numpy(float)
            ax.loglog(nn, y0 * (nn / n0) ** -0.5, "k:", lw=0.8, label="n^-1/2")
            ax.loglog(nn, y0 * (nn / n0) ** -0.25, "r:", lw=0.8, label="n^-1/4")
        ax.set_title(f"{setting}, schedule {sch}", fontsize=9)
        ax.set_xlabel("n")
    axes[0][0].set_ylabel("RMSE of ||w_hat - w*||")
    axes[0][-1].legend(fontsize=7)
    return fig


def plot_coverage(cov):
    """RMSE at the largest n against 1/lambda_min across settings, per estimator."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for (e, sch), g in cov.groupby(["estimator", "schedule"]):
        g = g.sort_values("inv_lambda")
        c = COLORS.get(e, None)
        ls = "-" if sch in ("none", "fixed") else ":"
        axes[0].loglog(g.inv_lambda, g.rmse, "o" + ls, color=c, ms=3, lw=1, label=f"{e}/{sch}")
        axes[1].loglog(g.tr_hinv, g.rmse, "o" + ls, color=c, ms=3, lw=1)
    axes[0].set_xlabel("1 / lambda_min(Sigma)")
    axes[1].set_xlabel("tr H^{-1}")
    axes[0].set_ylabel(f"RMSE at n = {int(cov.n.iloc[0])}")
    axes[0].legend(fontsize=6, ncol=2)
    return fig


def plot_exponents(ex):
    """Fitted exponents with 95% CIs per estimator and schedule, with -1/2 and -1/4."""
    plt = _plt()
    labels, est, lo, hi, cols = [], [], [], [], []
    for r in ex.sort_values(["schedule", "estimator", "setting"]).itertuples():
        labels.append(f"{r.estimator}/{r.schedule}/{r.setting}")
        est.append(r.slope_asym)
        lo.append(r.lo_asym)
        hi.append(r.hi_asym)
        cols.append(COLORS.get(r.estimator, "gray"))
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(6, 0.22 * len(labels) + 1.2))
    for i in range(len(y)):
        ax.errorbar(est[i], y[i], xerr=[[est[i] - lo[i]], [hi[i] - est[i]]], fmt="o",
                    color=cols[i], ms=3, lw=1)
    ax.axvline(-0.5, color="k", lw=0.8)
    ax.axvline(-0.25, color="r", lw=0.8, ls="--")
    ax.set_yticks(y, labels, fontsize=6)
    ax.set_xlabel("exponent of RMSE vs n (n >= 1e3), 95% bootstrap CI")
    return fig
