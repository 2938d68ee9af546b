"""``loglinear report rates DIR``: the rates report (markdown + figures) from stored records.

All numbers come from :mod:`loglinear.experiments.rates_analysis`; this module formats
tables and draws figures only. Output: ``OUT/rates.md`` and ``OUT/rates/*.png`` (OUT
defaults to the records directory).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._common import markdown_table, save_figure

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
        sub = th[(th.setting == s) & ((th.schedule == schedule) | (th.estimator == "dpo"))]
        for e in [x for x in ORDER if x in set(sub.estimator)]:
            g = sub[sub.estimator == e].sort_values("n")
            c = COLORS.get(e, None)
            ax.loglog(g.n, g.rmse, "o", color=c, ms=4, label=e)
            fit = ex[(ex.setting == s) & (ex.estimator == e) & (ex.schedule.isin([schedule,
                                                                                "none"]))]
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


def plot_bounds(th, setting: str):
    """The (1 - delta) error quantile against the Theorem 1/2 and Proposition 1 bounds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sub = th[th.setting == setting]
    for (e, sch), g in sub.groupby(["estimator", "schedule"]):
        if sch not in ("none", sub.schedule[sub.schedule != "none"].min()):
            continue
        g = g.sort_values("n")
        c = COLORS.get(e, None)
        y = g.q_sigma if e == "dpo" else g.q_1md
        ax.loglog(g.n, y, "o-", color=c, ms=3, lw=1, label=f"{e} quantile")
        ax.loglog(g.n, g.bound, "--", color=c, lw=1, label=f"{e} bound")
    ax.set_xlabel("n")
    ax.set_ylabel("error (DPO: Sigma_D norm)")
    ax.set_title(f"{setting}: (1-delta) quantile vs section 5 bounds", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
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


def _fmt_ci(r, tag):
    if not np.isfinite(getattr(r, f"slope_{tag}")):
        return "n/a"
    return (f"{getattr(r, f'slope_{tag}'):.3f} [{getattr(r, f'lo_{tag}'):.3f}, "
            f"{getattr(r, f'hi_{tag}'):.3f}]")


def build(records_dir, out_dir=None) -> Path:
    """Write ``rates.md`` and ``rates/*.png`` for the study in ``records_dir``."""
    from ..experiments import rates_analysis as ra

    records_dir = Path(records_dir)
    out = Path(out_dir) if out_dir is not None else records_dir
    figdir = out / "rates"
    figdir.mkdir(parents=True, exist_ok=True)
    rec, tgt, cfg = ra.load(records_dir)
    ex = ra.exponents(rec)
    ex_star = ra.exponents(rec, column="error_star")
    th = ra.theory(rec, tgt, cfg)
    ts = ra.theory_summary(th)
    cov = ra.coverage_table(rec)
    el = ra.elasticities(cov)
    rel = lambda p: os.path.relpath(p, out)

    figs = []
    for sch in sorted(set(rec.schedule) - {"none"}) or ["none"]:
        figs.append((f"RMSE vs n, schedule {sch}",
                     save_figure(plot_rates(th, ex, sch), figdir / f"rates_{sch}.png")))
    figs.append(("Exponents with 95% CIs", save_figure(plot_exponents(ex),
                                                      figdir / "exponents.png")))
    first = sorted(th.setting.unique())[0]
    figs.append(("Bounds", save_figure(plot_bounds(th, first), figdir / "bounds.png")))
    if cov.setting.nunique() > 1:
        figs.append(("Coverage", save_figure(plot_coverage(cov), figdir / "coverage.png")))

    settings = []
    lam = rec.groupby("setting").lambda_min.first()
    for s in cfg["settings"]:
        settings.append(dict(setting=s["name"], concentration=s["concentration"],
                             spectrum=str(s["spectrum"]) if s["spectrum"] else "-",
                             S=s["n_states"], A=s["n_actions"], d=s["dim"], beta=s["beta"],
                             lambda_min=float(lam.get(s["name"], np.nan))))
    exp_rows = [dict(setting=r.setting, estimator=r.estimator, schedule=r.schedule,
                     seeds=r.seeds, exponent_all_n=_fmt_ci(r, "all"),
                     exponent_n_ge_1e3=_fmt_ci(r, "asym"), R2=r.r2_all,
                     rmse_first=r.rmse_first, rmse_last=r.rmse_last, failed=r.failed,
                     frac_at_zero=r.at_zero) for r in ex.itertuples()]
    star_rows = [dict(setting=r.setting, estimator=r.estimator, schedule=r.schedule,
                      exponent_to_theta_star=_fmt_ci(r, "asym"))
                 for r in ex_star.itertuples() if r.schedule not in ("none",)]
    fails = tgt[tgt.status != "ok"][["setting", "estimator", "param", "status"]]
    failed_rows = rec[rec.status != "ok"].groupby(["setting", "estimator", "schedule"]).size()

    lines = [
        f"# Estimation rates and coverage ({cfg['name']})",
        "",
        "Generated by `loglinear report rates` from the stored records alone; regenerate with",
        "",
        "```",
        f"loglinear rates --config simulations/{cfg['name']}.toml --out {records_dir}",
        f"loglinear report rates {records_dir} --out {out}",
        "```",
        "",
        f"Design: n in {cfg['n']}, {cfg['seeds']} seeds, estimators {cfg['estimators']}, "
        f"B = {cfg['bound']}, delta = {cfg['delta']}, master seed {cfg['seed']}; "
        f"{len(rec)} rows ({int((rec.status != 'ok').sum())} failed fits), "
        f"{len(tgt)} exact targets ({len(fails)} failed).",
        "",
        "## Settings (coverage design)",
        "",
        markdown_table(settings),
        "",
        "Schedules: " + "; ".join(
            f"`{s['name']}`: base "
            + (f"{s['collapse_fraction']} x collapse radius" if s["collapse_fraction"]
               else "scale") + f" (scales {s['scale']}) x (n/{s['reference_n']:g})^-"
            f"{s['exponent']}" for s in cfg["schedules"]),
        "",
        "## Fitted exponents (RMSE vs n; 95% seed-bootstrap CI)",
        "",
        markdown_table(exp_rows),
        "",
    ]
    if star_rows:
        lines += ["### Distance to theta* (DPO's target) for the robust estimators", "",
                  markdown_table(star_rows), ""]
    lines += [
        "## Theory: bounds and local asymptotics",
        "",
        "`bound_holds`: the empirical (1 - delta) error quantile is below the bound at every "
        "n; `min_factor`: the smallest ratio bound / quantile (how loose the bound is); "
        "`rmse_over_pred`: RMSE / sqrt(tr V / n) with V the sandwich covariance of the "
        "robust objective at its population optimum.",
        "",
        markdown_table(ts.to_dict("records")),
        "",
        "## Coverage: error against 1/lambda_min and tr H^-1 (largest n)",
        "",
        markdown_table(cov.to_dict("records")),
        "",
        "Elasticities across settings (log-log slopes):",
        "",
        markdown_table(el.to_dict("records")),
        "",
        "## Figures",
        "",
        *[f"![{t}]({rel(p)})\n" for t, p in figs],
    ]
    if len(fails) or len(failed_rows):
        lines += ["## Failures", "", markdown_table(fails.to_dict("records")), "",
                  markdown_table([dict(setting=k[0], estimator=k[1], schedule=k[2], rows=v)
                                  for k, v in failed_rows.items()]), ""]
    path = out / "rates.md"
    path.write_text("\n".join(lines) + "\n")
    return path
