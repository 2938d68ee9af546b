"""``loglinear report rates DIR``: the rates report (markdown + figures) from stored records.

A view: :func:`build` has :func:`loglinear.experiments.rates.analysis.write_tables` compute
the tables and the summary beside the records, then reads them back and only formats
markdown and draws figures (``plot_*(table) -> Figure``). Output: ``OUT/rates.md`` and
``OUT/rates/*.png`` (OUT defaults to the records directory). The "Changes since the previous
version" paragraph reads the previous version's figures from ``OUT/rates/previous.json``
(written by :func:`loglinear.experiments.rates.analysis_changes.write_previous`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._common import markdown_table, save_figure
from ._rates_figures import (
    COLORS,
    ORDER,
    plot_bias_variance,
    plot_bounds,
    plot_coverage,
    plot_exponents,
    plot_rates,
    plot_star,
)

__all__ = ["COLORS", "ORDER", "build", "plot_bias_variance", "plot_bounds", "plot_coverage",
           "plot_exponents", "plot_rates", "plot_star"]

BAND = ("shaded: the 95% two-level bootstrap interval of the pooled RMSE (environment draws "
        "resampled, then seeds within each draw)")
GUIDES = "grey: reference slopes -1/2 (dotted) and -1/4 (dashed)"


def _ci(v, lo, hi, d=3) -> str:
    return f"{v:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def _exp(r, tag="asym") -> str:
    """An exponent with its CI, or "no power law" where R^2 is below the threshold."""
    slope, r2 = getattr(r, f"slope_{tag}"), getattr(r, f"r2_{tag}")
    if not np.isfinite(slope):
        return "n/a"
    if tag == "asym" and not bool(r.power_law):
        return f"no power law (R² = {r2:.2f})"
    return _ci(slope, getattr(r, f"lo_{tag}"), getattr(r, f"hi_{tag}"))


def _claim(c: dict, what: str) -> str:
    """A sentence on a set of groups: power-law count and CIs containing -1/2 and -1/4."""
    if not c["groups"]:
        return f"{what}: no groups."
    txt = f"{what}: {c['power_law']} of {c['groups']} groups fit a power law (R² ≥ 0.9)"
    if c["power_law"]:
        txt += (f"; their exponents run from {c['min']:.3f} to {c['max']:.3f} (median "
                f"{c['median']:.3f}), and the 95% CI contains -1/2 in {c['ci_half']}/"
                f"{c['power_law']} and -1/4 in {c['ci_quarter']}/{c['power_law']} "
                f"({c['slower']} entirely slower than -1/2, {c['faster']} entirely faster)")
    return txt + "."


def _rate_conclusion(r: dict) -> str:
    lo, hi = r["band"]
    q = r["ci_quarter"]
    txt = (f"1. **{'The rate is n^-1/2, not n^-1/4' if r['all_half'] else 'Mostly n^-1/2'}.** "
           f"Measured against its own exact population target at a fixed radius, "
           f"{r['near_half']} of {r['groups']} groups with a power law have an exponent between "
           f"{lo:g} and {hi:g} (n >= 1e3), and {q} {'has' if q == 1 else 'have'} a 95% CI "
           "containing -1/4.")
    if r["all_half"]:
        radii = r["collapse_radii"]
        txt += (" This covers every estimator, schedule and coverage level in the study"
                + (f", including radii {' and '.join(radii)} the collapse radius" if radii
                   else "") + ".")
    else:
        txt += " Exceptions: " + "; ".join(
            f"{x['estimator']}/{x['schedule']}/{x['setting']} {x['slope']:.3f}"
            for x in r["exceptions"]) + "."
    at = r["at_collapse"]
    if at is not None:
        txt += (f" At the collapse radius {100 * at['at_zero']:.0f}% of the estimates sit "
                f"exactly at the kink w = 0 and the exponent is {at['median']:.3f} (median).")
    if q == 0:
        txt += (" The paper's n^-1/4 (Theorems 1 and 2) does not appear as a rate at a fixed "
                "radius: it comes from bounding the squared error by an n^-1/2 term.")
    return txt


def _changes(p: dict | None, s: dict) -> list[str]:
    """What moved since the previous version (its figures from ``previous.json``)."""
    if p is None:
        return ["No previous version of this study is on record (`rates/previous.json`)."]
    r, f, b = s["by_reason"], s["fixed"], s["bounds"] or {}
    out = [
        f"- **Environment draws.** The previous version drew one environment per setting "
        f"({len(p['settings'])} settings, {p['seeds']} seeds each); this one draws "
        f"{s['draws']['min']}" + (f"-{s['draws']['max']}" if s["draws"]["max"] !=
                                  s["draws"]["min"] else "")
        + f" per setting ({s['seeds']} seeds), and every interval resamples draws and seeds.",
        f"- **One feasible set, certified fits.** The previous version reported "
        f"{p['failed_rows']} failed fits, yet {p['outside_rows']} rows marked `ok` lay outside "
        f"Θ = {{‖w‖ ≤ {p['bound']:g}}} ({', '.join(p['outside_estimators'])}; ‖ŵ‖ up to "
        f"{p['outside_max_norm']:.4g}) and {p['boundary_rows']} sat on its boundary. Now "
        f"{r.get('separable', 0)} rows are recorded as separable, {r.get('failed', 0)} as "
        f"failed, {r.get('on_boundary', 0)} sit on the boundary and {r.get('outside', 0)} lie "
        f"outside Θ; none of them enters a statistic ({r.get('used', 0)} of {s['rows']} rows "
        "do).",
        f"- **Fixed and shrinking radii apart.** The previous headline, {p['in_band']} of "
        f"{p['groups']} groups with an exponent in (-0.6, -0.4), pooled both; their CIs "
        f"contained -1/2 in {p['ci_half']}/{p['groups']} and -1/4 in {p['ci_quarter']}/"
        f"{p['groups']}, and {p['low_r2']} groups were read as power laws with R² < 0.9 "
        + (f"(the lowest, {p['min_r2']['group']}, R² = {p['min_r2']['r2']:.2f})"
           if p["min_r2"] else "") + f". Now, at a fixed radius: {f['power_law']} of "
        f"{f['groups']} groups fit a power law and their CIs contain -1/2 in {f['ci_half']} "
        f"and -1/4 in {f['ci_quarter']}.",
    ]
    if b:
        out.append(
            f"- **Bound tightness where the theorem applies.** The previous tightest factor, "
            f"{p['min_factor']:.3g}, was {p['min_factor_at']}, with estimates outside Θ; in the "
            f"cells whose fits all lay inside Θ it was {p['min_factor_inside']:.3g}. Now the "
            f"factor is computed only where the theorem applies ({b['applies']} of "
            f"{b['cells']} cells)"
            + (f": smallest {b['min_factor']:.3g}." if b.get("min_factor") else "."))
    cov = s["coverage"]
    if cov and p["elasticity_median"] is not None:
        per = ", ".join(f"{e} {v:.2f}" for e, v in p["elasticity_by_estimator"].items())
        out.append(
            f"- **Coverage through sampling.** The previous elasticity with respect to "
            f"1/λ_min, {p['elasticity_median']:.2f}, was a median over estimators ({per}) "
            f"across settings that included feature rescalings "
            f"({', '.join(p['rescaled_settings'])}). Now, per estimator across the sampling "
            "settings: " + "; ".join(
                f"{c['estimator']} {_ci(*c['vs_inv_lambda'], d=2)}" for c in cov
                if c["vs_inv_lambda"][0] is not None) + ".")
    return out


def _findings(s: dict) -> list[str]:
    out = [f"- {_claim(s['fixed'], '**Fixed radius, own target (Theorem 1)**')}",
           f"- {_claim(s['dpo'], '**DPO (Proposition 1)**')}",
           f"- {_claim(s['fixed_star'], '**Fixed radius, distance to w***')} "
           "Without a power law the error tends to the constant bias ‖w(ρ) − w*‖.",
           f"- {_claim(s['shrinking_own'], '**Shrinking radii, own (moving) target**')}"]
    for g in s["star"]:
        name = f"**Distance to w*, `{g['estimator']}` with `{g['schedule']}`**"
        out.append(f"- {_claim(g, name)}")
    if s["policy"]:
        p = s["policy"]
        out.append(f"- {_claim(p['fixed'], '**Policy space, fixed radius, own target**')}")
        name = "**Policy space, distance to π*, shrinking radii**"
        out.append(f"- {_claim(p['star_shrinking'], name)}")
    b, loc = s["bounds"], s["local"]
    if b and b.get("min_factor"):
        out.append(f"- **Bounds** (where the theorem applies, {b['applies']} of {b['cells']} "
                   f"cells): the (1 - δ) quantile is below the bound in {b['holds']}/"
                   f"{b['finite']}; the smallest ratio bound / quantile is "
                   f"{b['min_factor']:.3g}, the median {b['median_factor']:.3g}.")
    if loc:
        out.append(f"- **Local asymptotics**: RMSE / sqrt(tr V / n) has median "
                   f"{loc['median']:.3f} over {loc['groups']} fixed-radius groups (range "
                   f"{loc['min']:.3f} to {loc['max']:.3f}).")
    return out


def _conclusions(s: dict) -> list[str]:
    out = [_rate_conclusion(s["rate"])] if s["rate"] else []
    k = s["kl_bias"]
    if k is not None:
        out.append(
            f"2. **Where n^-1/4 appears: KL-DRO's bias.** With ρ_n ∝ n^-1/2 the KL estimator "
            f"approaches w* with exponent {k['sqrt_n']:.3f} (median over {k['settings']} "
            f"settings; CI contains -1/4 in {k['ci_quarter']} and -1/2 in {k['ci_half']}): its "
            "optimum is displaced by about sqrt(2ρ) standard deviations, a bias O(n^-1/4)."
            + (f" With ρ_n ∝ n^-1 the exponent is {k['inverse_n']:.3f}."
               if k["inverse_n"] is not None else ""))
    b = s["bounds"]
    if b and b.get("min_factor"):
        out.append(f"3. **The bounds of docs/theory.md §5 are vacuous where they apply**: at "
                   f"least {b['min_factor']:.3g} times the empirical 95% quantile."
                   + (" Proposition 1 with C = 1 holds for DPO." if b["prop1_holds"] else ""))
    cov = [c for c in s["coverage"] if c["vs_inv_lambda"][0] is not None]
    if cov:
        ref = s["coverage_reference"]
        inside = [c["estimator"] for c in cov
                  if c["vs_inv_lambda"][1] <= ref <= c["vs_inv_lambda"][2]]
        out.append(f"4. **Coverage, per estimator.** The CI of the elasticity with respect "
                   f"to 1/λ_min contains {ref:g} for {len(inside)} of {len(cov)} estimators"
                   + (f" ({', '.join(inside)})" if inside else "") + "; see the table.")
    return out


DOCS = r"""
## How the study works

**Targets are exact.** Each environment is finite, so its population of atoms (s, a1, a2, y)
is enumerated exactly (`env.population(centered=True)`, w = θ − θ_ref). DPO's target is
w* = ω/β; a robust estimator's target is the same estimator on the population at the same
radius (for shrinking schedules it moves with n). Every estimator is fitted on the same
Θ = {‖w‖ ≤ B}; a fit that is not certified, or a separable sample, is recorded with its
reason, and fits on the boundary of Θ are left out of every statistic (counted below).

**Draws and seeds.** Each setting is drawn several times (environment draws); each draw has
its own λ_min, target and bounds. Exponents pool the squared errors of all draws and seeds
at each n; their 95% intervals come from a two-level bootstrap (draws resampled, then seeds
within each draw). A power law is reported only where it fits (R² ≥ 0.9 on n ≥ 1e3).

**Count compression.** n i.i.d. pairs from a finite population are summarised without loss
by the multinomial counts over the atoms (`env.sample_counts`), so n = 10^6 costs what
n = 10^3 costs.

**Bounds (docs/theory.md §5.3–5.4; δ = 0.05).** Theorem 1 (W1, W2, WDPO), Theorem 2 (KL,
KLDPO; λ_lo = λ_hi = the population dual λ*) and Proposition 1 (DPO, Σ_D norm, C = 1) with
λ = the draw's population λ_min(Σ). A cell's ratio is computed only where the theorem
applies: every fit certified, inside Θ and off its boundary, the sample's λ_min(Σ_D) > 0, and
the bound defined (for Theorem 2, K/λ* ≤ 700).

**Local asymptotics (docs/theory.md §5.6).** √n (w_n − w) → N(0, V), V = H⁻¹ J H⁻¹; the
prediction of the RMSE is sqrt(tr V / n).

**Determinism and resume.** The sample of row (setting, draw, n, seed) is shared by all
estimators (common random numbers); rows are appended one line at a time and a rerun skips
finished rows.
"""


def _table(ex, star, pol, kind):
    s_key = {(r.setting, r.estimator, r.schedule): r for r in star.itertuples()}
    p_key = {(r.setting, r.estimator, r.schedule): r for r in pol.itertuples()}
    rows = []
    for r in ex[ex.kind == kind].itertuples():
        k = (r.setting, r.estimator, r.schedule)
        row = dict(setting=r.setting, estimator=r.estimator, schedule=r.schedule,
                   draws=r.draws, seeds=r.seeds, own_target=_exp(r),
                   to_w_star=_exp(s_key[k]) if k in s_key else "-")
        row["policy_KL^1/2"] = _exp(p_key[k]) if k in p_key else "-"
        row.update(rmse_last=r.rmse_last, left_out=int(r.excluded),
                   left_out_n_ge_1e3=int(r.excluded_fit))
        rows.append(row)
    return markdown_table(rows)


def build(records_dir, out_dir=None) -> Path:
    """Write ``rates.md`` and ``rates/*.png`` for the study in ``records_dir``."""
    from ..experiments.rates import analysis
    from ..experiments.rates.analysis_changes import PREVIOUS, read_previous

    records_dir = Path(records_dir)
    out = Path(out_dir) if out_dir is not None else records_dir
    figdir = out / "rates"
    figdir.mkdir(parents=True, exist_ok=True)
    analysis.write_tables(records_dir)
    t = analysis.read_tables(records_dir)
    s, cfg = t.summary, t.config
    rel = lambda p: os.path.relpath(p, out)
    overlap = lambda sch: ("; curves that coincide within 2% at every n (one hides the "
                           "other): " + ", ".join(s["overlaps"][sch]) + "."
                           if s["overlaps"].get(sch) else ".")
    figs = []
    for sch in s["schedules"]:
        figs.append((f"RMSE against n, schedule `{sch}`", f"rates_{sch}.png",
                     plot_rates(t.curves, t.exponents, sch),
                     f"Markers: pooled RMSE; {BAND}; solid: fitted power law over the n range "
                     f"of the reported exponent (only where R² ≥ 0.9); dotted: sqrt(tr V / n);"
                     f" {GUIDES}" + overlap(sch)))
        if len(t.exponents_policy):
            figs.append((f"Policy error against n, schedule `{sch}`", f"policy_{sch}.png",
                         plot_rates(t.curves, t.exponents_policy, sch, metric="policy"),
                         f"KL(π_target ‖ π_ŵ)^1/2 pooled over draws and seeds; {BAND}; solid: "
                         f"fitted power law; {GUIDES}."))
    figs.append(("Exponents at a fixed radius and under shrinking radii", "exponents.png",
                 plot_exponents(t.exponents),
                 "Bars: 95% two-level bootstrap intervals of the exponent (n ≥ 1e3); groups "
                 "without a power law are not drawn (counted in the tables)."))
    if s["shrinking"]:
        figs.append(("Bias and variance under shrinking radii", "bias_variance.png",
                     plot_bias_variance(t.bias_variance, s["first_setting"]),
                     "Solid: RMSE to w*; dashed: the bias of the moving target (RMS over "
                     f"draws); dotted: RMSE to the own target; {GUIDES}."))
    if len(t.theory) and t.theory.applies.astype(bool).any():
        figs.append(("Bound tightness where the theorem applies", "bounds.png",
                     plot_bounds(t.theory),
                     "Dots: one (setting, draw) cell; line: median over cells per n; only "
                     "cells where the theorem applies."))
    head = {(c["estimator"], c["schedule"]) for c in s["coverage"]}
    el = t.elasticities[[(r.estimator, r.schedule) in head
                         for r in t.elasticities.itertuples()]] if len(t.elasticities) else None
    if el is not None and len(el):
        figs.append(("Coverage through the sampling policy", "coverage.png",
                     plot_coverage(t.coverage, el),
                     "One point per (setting, draw) at the largest n; lines: the fitted "
                     "elasticity (legend: value and 95% two-level bootstrap interval)."))
    fig_lines = []
    for title, name, fig, caption in figs:
        fig_lines += [f"![{title}]({rel(save_figure(fig, figdir / name))})", "",
                      f"*{title}.* {caption}", ""]
    varying = [k for k in cfg["settings"][0] if k != "name" and len(
        {str(x.get(k)) for x in cfg["settings"]}) > 1]   # what tells the settings apart
    settings = [dict(setting=x["name"], **{k: x.get(k) for k in varying},
                     lambda_min_median=float(s["lambda_min"].get(x["name"], np.nan)),
                     lambda_min_range=" – ".join(f"{v:.3g}" for v in
                                                 s["lambda_min_range"][x["name"]]))
                for x in cfg["settings"] if x["name"] in s["lambda_min"]]
    cov_rows = [dict(estimator=c["estimator"], schedule=c["schedule"],
                     settings=c["settings"], draws=c["draws"],
                     vs_inv_lambda=_ci(*c["vs_inv_lambda"], d=2)
                     if c["vs_inv_lambda"][0] is not None else "n/a",
                     vs_tr_hinv=_ci(*c["vs_tr_hinv"], d=2)
                     if c["vs_tr_hinv"][0] is not None else "n/a",
                     policy_vs_inv_lambda=_ci(*c["policy_vs_inv_lambda"], d=2)
                     if c["policy_vs_inv_lambda"][0] is not None else "n/a")
                for c in s["coverage"]]
    b = s["bounds"] or {}
    ts = t.theory_summary
    lines = [
        f"# Estimation rates and coverage ({cfg['name']})", "",
        "Generated by `loglinear report rates` from the stored records alone; regenerate with",
        "", "```", f"loglinear rates --config simulations/{cfg['name']}.toml --out {records_dir}",
        f"loglinear report rates {records_dir} --out {out}", "```", "",
        "## Changes since the previous version", "",
        *_changes(read_previous(figdir / PREVIOUS), s), "",
        f"Design: n in {cfg['n']}, {s['seeds']} seeds, {s['draws']['min']}"
        + (f"-{s['draws']['max']}" if s['draws']['max'] != s['draws']['min'] else "")
        + f" environment draw{'s' if s['draws']['max'] > 1 else ''} per setting, estimators "
        f"{cfg['estimators']}, B = {cfg['bound']}, δ = {cfg['delta']}, master seed "
        f"{cfg['seed']}; {s['rows']} rows "
        f"({s['by_reason'].get('used', 0)} used), {s['targets']} exact targets "
        f"({len(s['failed_targets'])} failed).", "",
        "## Findings", "", *_findings(s), "",
        "## Conclusions", "", *_conclusions(s), "",
        "## Fitted exponents at a fixed radius: the test of Theorem 1", "",
        "Exponent of the RMSE against n (n ≥ 1e3) with its 95% two-level bootstrap CI, "
        "against the estimator's own target w(ρ), against w*, and in policy space; "
        "`left_out`: rows not used (separable, failed, on or outside the boundary of Θ).", "",
        _table(t.exponents, t.exponents_star, t.exponents_policy, "fixed"), "",
        "## Fitted exponents under shrinking radii: bias and variance", "",
        "Share of the squared error to w* at the largest n that is bias (median over "
        "settings): " + ("; ".join(f"{x['estimator']}/{x['schedule']} {x['median']:.2f}"
                                   for x in s["bias_share"]) or "none") + ".", "",
        _table(t.exponents, t.exponents_star, t.exponents_policy, "shrinking"), "",
        "## Coverage: elasticities per estimator", "",
        f"Across the settings whose coverage acts through the sampling policy "
        f"({', '.join(s['sampling_settings'])}) at the largest n; 95% two-level bootstrap "
        "CIs (draws resampled within settings, seeds within draws)"
        + (f"; left out (feature rescalings): {', '.join(s['other_settings'])}"
           if s["other_settings"] else "") + ".", "",
        markdown_table(cov_rows), "",
        "## Bounds where the theorem applies", "",
        f"Cells (setting, draw, estimator, schedule, n) where the theorem applies: "
        f"{b.get('applies', 0)} of {b.get('cells', 0)}; not applicable: "
        + (", ".join(f"{k} {v}" for k, v in b.get("excluded", {}).items()) or "none") + ". "
        + ("Self-concordant bound: " + (
            f"smallest ratio {b['self_concordant']['min_factor']:.3g}, violated in "
            f"{b['self_concordant']['violations']} of {b['self_concordant']['cells']} cells."
            if b.get("self_concordant") else "none computable from these records ("
            + ("`loglinear.bounds.self_concordant_bound` gave no value)." if b["sc_available"]
               else "`loglinear.bounds` defines no `self_concordant_bound`).")) if b else ""),
        "", markdown_table(ts.dropna(axis=1, how="all").to_dict("records")) if len(ts) else "",
        "",
        "## Figures", "", *fig_lines,
        "## Settings", "", markdown_table(settings), "",
        "## Rows left out, by estimator and n", "",
        markdown_table(t.exclusions.to_dict("records")), "",
    ]
    if s["failed_targets"]:
        lines += ["Exact population targets that failed (their rows are not run):", "",
                  markdown_table(s["failed_targets"]), ""]
    lines += [DOCS]
    path = out / "rates.md"
    path.write_text("\n".join(lines) + "\n")
    return path
