"""``loglinear report rates DIR``: the rates report (markdown + figures) from stored records.

A view: :func:`build` has :func:`loglinear.experiments.rates.analysis.write_tables` compute
the tables and the summary beside the records, then reads them back and only formats
markdown and draws figures (``plot_*(table) -> Figure``). Output: ``OUT/rates.md`` and
``OUT/rates/*.png`` (OUT defaults to the records directory).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..experiments.rates.config import NO_SCHEDULE
from ._common import markdown_table, save_figure
from ._rates_figures import (
    COLORS,
    ORDER,
    plot_bounds,
    plot_coverage,
    plot_exponents,
    plot_rates,
    plot_star,
)

__all__ = ["COLORS", "ORDER", "build", "plot_bounds", "plot_coverage", "plot_exponents",
           "plot_rates", "plot_star"]


def _fmt_ci(r, tag):
    if not np.isfinite(getattr(r, f"slope_{tag}")):
        return "n/a"
    return (f"{getattr(r, f'slope_{tag}'):.3f} [{getattr(r, f'lo_{tag}'):.3f}, "
            f"{getattr(r, f'hi_{tag}'):.3f}]")


def _findings(s: dict) -> list[str]:
    """Plain-language findings; every number is read from the analysis summary."""
    out = []
    for g in s["own"]:
        out.append(
            f"- **Own target, schedule `{g['schedule']}`** ({g['groups']} estimator x setting "
            f"groups): exponents (n >= 1e3) from {g['min']:.3f} to {g['max']:.3f}, "
            f"median {g['median']:.3f}; the 95% CI contains -1/2 in "
            f"{g['ci_half']}/{g['groups']} groups and -1/4 in "
            f"{g['ci_quarter']}/{g['groups']}.")
    for g in s["star"]:
        out.append(
            f"- **Distance to theta*, `{g['estimator']}` with `{g['schedule']}`**: exponent "
            f"median {g['median']:.3f} (range {g['min']:.3f} to {g['max']:.3f}); CI contains "
            f"-1/4 in {g['ci_quarter']}/{g['settings']} settings, -1/2 in "
            f"{g['ci_half']}/{g['settings']}.")
    b = s["bounds"]
    if b is not None:
        out.append(
            f"- **Bounds**: the (1 - delta) quantile is below the docs/theory.md §5 bound in "
            f"{b['holds']}/{b['finite']} groups with a finite bound; the tightest ratio bound / "
            f"quantile is {b['min_factor']:.3g} and the median {b['median_factor']:.3g}: the "
            "bounds hold but are vacuous by orders of magnitude, and the gap grows like n^(1/4) "
            "because the bounds decay as n^(-1/4) while the errors decay as n^(-1/2).")
        r = s["local"]
        if r is not None:
            out.append(
                f"- **Local asymptotics**: RMSE / sqrt(tr V / n) has median {r['median']:.3f} "
                f"over {r['groups']} groups (range {r['min']:.3f} to {r['max']:.3f}): the "
                "sandwich covariance of the robust objective at its population optimum "
                "predicts the error, constant included.")
    c = s["coverage"]
    if c is not None:
        out.append(
            f"- **Coverage**: across settings the RMSE at the largest n scales like "
            f"(1/lambda_min)^e with e from {c['lam_min']:.2f} to {c['lam_max']:.2f} (the "
            f"paper's 1/(gamma lambda) bound suggests 1 for the squared error, i.e. 1/2 here), "
            f"and like (tr H^-1)^e with e from {c['tr_min']:.2f} to {c['tr_max']:.2f} (1/2 "
            "expected).")
    return out


def _rate_conclusion(r: dict) -> str:
    lo, hi = r["band"]
    q = r["ci_quarter"]
    txt = (f"1. **{'The rate is n^-1/2, not n^-1/4' if r['all_half'] else 'Mostly n^-1/2'}.** "
           f"Measured against its own exact population target, {r['near_half']} of "
           f"{r['groups']} estimator x setting x schedule groups have an exponent between "
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
                f"exactly at the kink w = 0 and the exponent is {at['median']:.3f} "
                "(median): the kink does not slow the rate.")
    if q == 0:
        txt += (" The paper's n^-1/4 (Theorems 1 and 2) does not reproduce as a rate: it is "
                "an artefact of bounding the squared error by an n^-1/2 term. Remark 3's "
                "open question is answered empirically in favour of n^-1/2 in this family "
                "(as DRO-REBEL claims).")
    return txt


def _conclusions(s: dict) -> list[str]:
    """Plain-language conclusions, each stated only if the summary's numbers support it."""
    out = []
    if s["rate"] is not None:
        out.append(_rate_conclusion(s["rate"]))
    k = s["kl_bias"]
    if k is not None:
        txt = (f"2. **Where n^-1/4 does appear: KL-DRO's bias.** With rho_n proportional to "
               f"n^-1/2 the KL estimator approaches theta* (DPO's target) with exponent "
               f"{k['sqrt_n']:.3f} (median over settings), because the KL-DRO "
               "optimum is displaced by about sqrt(2 rho) standard deviations (the robust "
               "objective is mean + sqrt(2 rho Var) to first order), so its bias is "
               "O(sqrt(rho_n)) = O(n^-1/4).")
        if k["inverse_n"] is not None:
            txt += f" With rho_n proportional to n^-1 the exponent is {k['inverse_n']:.3f}."
        txt += (" The Wasserstein estimators and WDPO are displaced linearly in their radius, "
                "so eps_n proportional to n^-1/2 already gives n^-1/2; KLDPO's temperature "
                "tau_n proportional to n^1/2 corresponds to a KL radius of order 1/n. A fixed "
                "radius leaves a constant bias (exponent near 0 against theta*).")
        out.append(txt)
    b = s["bounds"]
    if b is not None:
        out.append(
            f"3. **The bounds of docs/theory.md §5 hold and are vacuous.** Where they are "
            "finite they exceed the empirical 95% quantile by at least a factor "
            f"{b['min_factor']:.3g} "
            "(the constants 1/gamma and, for KL, e^{K/lambda*} are astronomically large), and "
            "the gap widens like n^1/4."
            + (" Proposition 1 with C = 1 also holds for DPO." if b["prop1_holds"] else
               " Proposition 1 with C = 1 FAILS for DPO in some setting (see the table)."))
        r = s["local"]
        if r is not None:
            out.append(
                f"4. **What predicts the error is the local asymptotics.** sqrt(tr V / n), "
                f"with V the sandwich covariance of the robust objective at its population "
                f"optimum, matches the RMSE to a median ratio {r['median']:.3f}; for DPO "
                "V = H^-1 (Fisher information).")
    c = s["coverage"]
    if c is not None:
        txt = (f"5. **Coverage.** Across the coverage settings the elasticity of the RMSE (largest "
               f"n) with respect to 1/lambda_min is {c['lam_median']:.2f} (median over "
               f"estimators and schedules; the 1/(gamma lambda) bound would suggest 1/2 for the "
               f"error), and with respect to tr H^-1 it is {c['tr_median']:.2f} (1/2 if "
               "sqrt(tr H^-1 / n) is the scale).")
        if c["tr_explains_better"]:
            txt += (" tr H^-1 explains the coverage effect better than lambda_min: lambda_min "
                    "bounds only the worst direction, while the error sums the inverse "
                    "curvature over all directions.")
        out.append(txt)
    return out


DOCS = r"""
## How the study works

**Targets are exact.** Each environment is finite (S states, A actions), so its population
of atoms (s, a1, a2, y) and their probabilities are enumerated exactly
(`env.population(centered=True)`, parameter w = theta - theta_ref, zero offsets). DPO's
target is w* = omega / beta (closed form, checked against a Newton fit on the
population in the tests). A robust estimator's target is the same estimator applied to the
population, at the same radius (for shrinking schedules the target moves with n; the
distance to theta* is reported separately).

**Count compression.** n i.i.d. pairs from a finite population are summarised without
loss, for any weighted M-estimator, by the multinomial counts over the atoms: the
empirical measure is sum_k (c_k / n) delta_atom_k. `env.sample_counts(n, rng)` draws the
counts directly, so a fit at n = 10^6 works on at most S A^2 2 atoms (576 here) and costs
what it costs at n = 10^3 (see `benchmarks/rates_study.py` for the measured speed-up).

**Coverage design.** Coverage is varied in two ways: the concentration c of the sampling
policy pi_o(a|s) proportional to exp(c g(s, a)) with g ~ N(0, 1) (larger c puts the pairs
on few actions and shrinks lambda_min(Sigma)), and the feature spectrum: one feature
coordinate scaled by 0.1 or 0.01 before normalisation, so that lambda_min(Sigma) -> 0
along that direction. lambda_min is the population value of Sigma = E[x x^T].

**Bounds (docs/theory.md §5.1, §5.3–5.4; delta = 0.05).** gamma = beta^2 e^{4 beta
B}/(1 + e^{4 beta B})^2 and K = log(1 + e^{4 beta B}); Theorem 1 (W1, W2, WDPO):
||theta_n - theta||^2 <= (4K / (gamma lambda)) sqrt(log(2/delta) / (2n)); Theorem 2 (KL,
KLDPO): 4K replaced by 4 lambda_hi e^{K / lambda_lo}, with lambda_lo = lambda_hi = the
population KL dual variable lambda* (tau for KLDPO) (constants reconstructed from the
proofs, docs/theory.md §5.3); lambda is the population
lambda_min(Sigma) (Assumption 2 asks for it over the whole ball, so this is optimistic).
Proposition 1 (DPO) is checked in the Sigma_D norm against C (beta / gamma)
sqrt((d + log(1/delta)) / n) with C = 1 (the paper gives only O(.)).

**Local asymptotics.** sqrt(n)(w_n - w) -> N(0, V) with V = H^{-1} J H^{-1}: H the
Hessian of the population objective, J = E_q[psi psi^T] with psi_j the derivative of the
population gradient along the mixture direction delta_j - q (the influence function).
DPO: H = E[sigma(m) sigma(-m) beta^2 x x^T] = J (well specified). W1 (kappa = inf): the
objective is L(w) + eps beta ||w||, so H = H_L + eps beta (I - u u^T)/||w||, u = w/||w||.
KL: the profiled dual F(w) = min_lambda lambda rho + lambda log E_q e^{l/lambda}; with
p the worst case at lambda*, H = E_p[H_i] + (1/lambda)[Cov_p(g) - Cov_p(g, l) Cov_p(g, l)^T
/ Var_p(l)] (implicit-function correction for lambda*), and psi includes the shift of
lambda*. KLDPO: tau log E_q e^{l/tau}, H = E_p[H_i] + Cov_p(g)/tau. WDPO (paper form)
L + rho beta ||w|| (E_q sigma(-m)^2)^{1/2}: H by differences of the analytic gradient; W2
uses this first-order expansion. All formulas are checked against finite differences in
`tests/test_rates_theory.py`. At a kink (w = 0) there is no normal limit and no
prediction. The `tr_hinv` prediction sqrt(tr H^{-1} / n) equals sqrt(tr V / n) only
for DPO.

**Radius schedules.** Radii are set relative to each estimator's population collapse
radius (the smallest radius at which the robust optimum is w = 0): `fixed` uses 0.3 times
it at every n, `sqrt-n` 0.3 times it at n = 100 shrinking like n^-1/2, `1-over-n` like
n^-1, `near-collapse` 0.9 times it, `at-collapse` exactly it (the population optimum sits
on the kink w = 0). KLDPO's temperature runs the other way (tau = (n/100)^a).

**Determinism and resume.** The sample of row (setting, n, seed) comes from
SeedSequence([config seed, crc32(setting), n, seed]) and is shared by all estimators
(common random numbers); a rerun reproduces every column except `seconds`. Rows are
appended one line at a time, and a rerun skips finished rows (tested by killing a run).
"""


def build(records_dir, out_dir=None) -> Path:
    """Write ``rates.md`` and ``rates/*.png`` for the study in ``records_dir``.

    Calls :func:`loglinear.experiments.rates.analysis.write_tables` (the tables and
    ``summary.json`` beside the records), then formats what
    :func:`~loglinear.experiments.rates.analysis.read_tables` reads back.
    """
    from ..experiments.rates import analysis

    records_dir = Path(records_dir)
    out = Path(out_dir) if out_dir is not None else records_dir
    figdir = out / "rates"
    figdir.mkdir(parents=True, exist_ok=True)
    analysis.write_tables(records_dir)
    t = analysis.read_tables(records_dir)
    ex, ex_star, th, ts, cov, el = (t.exponents, t.exponents_star, t.theory, t.theory_summary,
                                    t.coverage, t.elasticities)
    s, cfg = t.summary, t.config
    rel = lambda p: os.path.relpath(p, out)

    figs = []
    for sch in s["schedules"]:
        figs.append((f"RMSE vs n, schedule {sch}",
                     save_figure(plot_rates(th, ex, sch), figdir / f"rates_{sch}.png")))
    figs.append(("Exponents with 95% CIs", save_figure(plot_exponents(ex),
                                                      figdir / "exponents.png")))
    first = s["first_setting"]
    figs.append(("Bounds", save_figure(plot_bounds(th, first, s["bounds_schedule"]),
                                       figdir / "bounds.png")))
    if s["shrinking"]:
        figs.append(("Distance to theta* under shrinking radii",
                     save_figure(plot_star(th, first), figdir / "theta_star.png")))
    if cov.setting.nunique() > 1:
        figs.append(("Coverage", save_figure(plot_coverage(cov), figdir / "coverage.png")))

    settings = [dict(setting=x["name"], concentration=x["concentration"],
                     spectrum=str(x["spectrum"]) if x["spectrum"] else "-",
                     S=x["n_states"], A=x["n_actions"], d=x["dim"], beta=x["beta"],
                     lambda_min=float(s["lambda_min"].get(x["name"], np.nan)))
                for x in cfg["settings"]]
    exp_rows = [dict(setting=r.setting, estimator=r.estimator, schedule=r.schedule,
                     seeds=r.seeds, exponent_all_n=_fmt_ci(r, "all"),
                     exponent_n_ge_1e3=_fmt_ci(r, "asym"), R2=r.r2_all,
                     rmse_first=r.rmse_first, rmse_last=r.rmse_last, failed=r.failed,
                     frac_at_zero=r.at_zero) for r in ex.itertuples()]
    star_rows = [dict(setting=r.setting, estimator=r.estimator, schedule=r.schedule,
                      exponent_to_theta_star=_fmt_ci(r, "asym"))
                 for r in ex_star.itertuples() if r.schedule != NO_SCHEDULE]
    fails, failed_fits = s["failed_targets"], s["failed_fits"]

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
        f"{s['rows']} rows ({s['failed_rows']} failed fits), "
        f"{s['targets']} exact targets ({len(fails)} failed).",
        "",
        "## Findings",
        "",
        *_findings(s),
        "",
        "## Conclusions",
        "",
        *_conclusions(s),
        "",
        "## Settings (coverage design)",
        "",
        markdown_table(settings),
        "",
        "Schedules: " + "; ".join(
            f"`{x['name']}`: base "
            + (f"{x['collapse_fraction']} x collapse radius" if x["collapse_fraction"]
               else "scale") + f" (scales {x['scale']}) x (n/{x['reference_n']:g})^-"
            f"{x['exponent']}" for x in cfg["schedules"]),
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
    if len(fails) or len(failed_fits):
        lines += ["## Failures", "",
                  "Exact population targets that failed (their rows are not run):", "",
                  markdown_table(fails), "",
                  "Sample fits that failed (left out of every statistic above; the reason "
                  "is in the records' `status`; `loglinear rates ... --retry-failed` "
                  "recomputes them after a solver fix):", "",
                  markdown_table(failed_fits), ""]
    lines += [DOCS]
    path = out / "rates.md"
    path.write_text("\n".join(lines) + "\n")
    return path
