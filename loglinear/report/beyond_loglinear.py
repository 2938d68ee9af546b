"""Report of the beyond-log-linear studies: tau calibration, neural policies and
gradient stability, regenerated from stored records.

``loglinear report beyond_loglinear ROOT`` where ROOT holds ``tau/``, ``neural/`` and
``stability/`` record directories (any may be missing; its section then says so). The
default output is ``reports/beyond_loglinear.md`` with figures in
``reports/beyond_loglinear/``. The tables (means over seeds, power-law exponents with
seed-bootstrap intervals, the rule against the sweep, regrets) come from
:mod:`loglinear.experiments.beyond.analysis`; this module formats them, and its plot
functions take record tables and return Figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..experiments.beyond import (
    analysis,
    analysis_neural,
    analysis_stability,
    analysis_tau,
    changes,
)
from ..experiments.beyond.analysis import (
    BOOT_SEED,
    neural_exponents,
    stability_summary,
    tau_summary,
)
from ._beyond_figures import plot_neural, plot_stability, plot_tau
from ._common import markdown_table, save_figure

# BOOT_SEED and the summaries moved to experiments.beyond.analysis; importable here too.
__all__ = ["BOOT_SEED", "DEFAULT_OUT", "build", "neural_exponents", "plot_neural",
           "plot_stability", "plot_tau", "stability_summary", "tau_summary"]
DEFAULT_OUT = Path("reports") / "beyond_loglinear.md"


def _read(path: Path):
    from ..experiments.records import read_records

    return read_records(path) if path.exists() else None


def _config(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _tau_section(root: Path, figdir: Path, rel: str):
    """(lines, tau summary, rule rows, regret rows, selector cells); the tables are None
    without records."""
    df = _read(root / "tau" / "records.csv")
    if df is None:
        return ["## 3. KLDPO temperature calibration", "", "_No records found._", ""], \
            None, None, None, None
    cfg = _config(root / "tau" / "config.json")
    s = tau_summary(df)
    n_shifts = len({k for _, k in analysis_tau.shift_columns(df)})
    lines = ["## 3. KLDPO temperature calibration (study 3)", ""]
    lines += [f"Records: `{root / 'tau'}` ({len(df)} rows, {df.seed.nunique()} seeds; summed "
              f"fit time {df.seconds.sum():.0f} s). Each sample (n pairs as multinomial "
              "counts) is fitted by DPO, by KLDPO at every tau of a log grid, and at the tau "
              "of three selectors that do not see the evaluation reward: the default ESS "
              "rule (`rule`), a validation split (`val`: tau, or DPO, with the smallest "
              f"held-out DPO loss on a {cfg.get('val_fraction', float('nan')):g} split), "
              "and the sampling-noise radius (`noise`: the tau whose implied KL radius is "
              "chi2_1(0.95)/(2n)). Regrets are under r(alpha) = alpha r + (1 - alpha) r' for "
              f"{n_shifts} shift direction(s) r'; the worst case is the exact KL value at the "
              "fixed evaluation radius.", ""]
    cells = analysis_tau.cells(df)
    pooled = analysis_tau.pooled(df)
    cols = ["selector", "setting", "n", "alpha", "selector_regret", "dpo_regret", "diff",
            "lo", "hi", "n_seeds"]
    lines += ["**Each selector against DPO** (regret averaged over the shift directions; "
              "`diff` = selector - DPO, mean over seeds of the per-seed difference, with its "
              "95% seed-bootstrap interval [lo, hi]; positive = worse than DPO):", "",
              markdown_table(pooled, cols, ".3g"), ""]
    lost = [c for c in cells if c["loses"]]
    if lost:
        lines += ["**Cells where a selector loses to DPO** (one shift direction each; shift "
                  "-1 is alpha = 1, no shift):", "",
                  markdown_table(lost, ["selector", "setting", "n", "alpha", "shift", "tau",
                                        "selector_regret", "dpo_regret", "diff", "lo", "hi"],
                                 ".3g"), ""]
    bands = analysis_tau.sweep_bands(df)
    sel = df[df.method.isin(analysis_tau.SELECTORS)]
    for n in sorted(s.n.unique()):
        name = f"tau_sweep_n{n}.png"
        save_figure(plot_tau(bands, sel, n=n), figdir / name)
        lines += [f"![tau sweep n={n}]({rel}/{name})", "",
                  f"_Figure: n = {n}. Orange line: KLDPO over the tau grid; black line: DPO "
                  "(tau = infinity); bands: mean +- 1.96 standard errors over seeds; "
                  "markers: the selectors' median tau and mean regret (at the right edge when "
                  "the median choice is DPO). Regret at alpha = 0.5 "
                  f"is averaged over {n_shifts} shift direction(s)._", ""]
    nmid = sorted(s.n.unique())[len(s.n.unique()) // 2]
    dpo = analysis.dpo_baseline(df)
    show = s[s.n == nmid]
    cols = ["setting", "tau", "implied_radius", "ess_start", "ess_solution", "oscillates",
            "stalls", "official_oscillates", "refit_diverges", "worst_pop", "regret_a100",
            "regret_a50", "regret_a0"]
    base = dpo[dpo.n == nmid]
    show = show.assign(tau=show.tau.map(lambda t: f"{t:.3g}"))
    show = [*({"setting": r["setting"], "tau": "∞ (DPO)", **{c: r[c] for c in base.columns
                                                           if c.startswith(("regret", "worst"))}}
              for r in base.to_dict("records")), *show.to_dict("records")]
    lines += [f"The sweep, means over seeds at n = {nmid}, DPO first (`oscillates`: fraction "
              "of paper-form Algorithm-2 runs with DPO's step that oscillate without "
              "converging, `stalls`: still creeping after the step budget, "
              "`official_oscillates`: the same for the capped official weights; "
              "`refit_diverges`: fraction with refit contraction >= 1):", "",
              markdown_table(show, cols, ".3g"), ""]
    min_ess = cfg.get("min_ess", float("nan"))
    rows = analysis.rule_comparison(df, s, min_ess=min_ess)
    lines += ["The default rule (`loglinear.approx.calibrate.suggest_tau`, ESS target "
              f"{min_ess:g}) against the sweep and DPO (means over seeds; `best_*` is the "
              "oracle tau of the grid, picked on the evaluation reward):", "",
              markdown_table(rows, list(rows[0]), ".3g"), ""]
    return lines, s, rows, analysis.regret_rows(df), (cells, n_shifts)


# ---------------------------------------------------------------------- neural
def _neural_section(root: Path, figdir: Path, rel: str):
    df = _read(root / "neural" / "records.csv")
    tg = _read(root / "neural" / "targets.csv")
    if df is None or tg is None:
        return ["## 1. Neural policies", "", "_No records found._", ""], None, None, []
    cfg = _config(root / "neural" / "config.json")
    lines = ["## 1. Neural policies in the finite environments (study 1)", ""]
    lines += [f"Records: `{root / 'neural'}` ({len(df)} samples, {df.seed.nunique()} seeds, "
              f"{len(tg)} population restarts; summed fit time "
              f"{df.seconds.sum() + tg.seconds.sum():.0f} s). Policies pi(a|s) ∝ "
              "exp(f(psi(s,a))), f a tanh MLP (depth 0 = log-linear); the error is "
              "sqrt(KL(pi* || pi_hat)) averaged over states, pi* the population optimum of "
              "the same architecture (best of the restarts). Each sample is fitted twice: "
              f"from {cfg.get('sample_restarts', 'several')} random initialisations (the "
              "best sample objective kept: the **random-init** estimator, which tests "
              "optimisation too) and from pi*'s parameters (the **local** fit, the sample "
              "optimum next to pi*). Every architecture sees the same samples.", ""]
    agree = analysis.restart_agreement(tg)
    lines += ["**Population optimum by restarts** (exact population; `hess_null`: Hessian "
              "eigenvalues below 1e-6 of the largest, `hess_min_pos`: smallest eigenvalue "
              "above that):", "", markdown_table(agree.to_dict("records"), list(agree.columns),
                                                 ".3g"), ""]
    reach = (analysis_neural.reach_table(df, reach_tv=cfg.get("reach_tv", 1e-3),
                                         reach_gap=cfg.get("reach_gap", 1e-6))
             if "error_random" in df else [])
    if reach:
        lines += ["**Random-init fits reaching the sample optimum** (a restart reaches it "
                  f"when its policy is within TV {cfg.get('reach_tv')} of the local fit's and "
                  f"its objective at most {cfg.get('reach_gap')} above it; `init_tv_min`: "
                  "the smallest TV between a restart's initial policy and pi*):", "",
                  markdown_table(reach, list(reach[0]), ".3g"), ""]
    save_figure(plot_neural(df), figdir / "neural_rates.png")
    lines += [f"![neural rates]({rel}/neural_rates.png)", "",
              "_Figure: RMSE over seeds of the policy error against n (no bands: the "
              "intervals are on the exponents below); solid: random-init estimator, dotted: "
              "local fit; grey dashed: slope -1/2._", ""]
    ex = neural_exponents(df)
    ex_random = analysis_neural.random_exponents(df) if reach else []
    for title, table in (("local fit", ex), ("random-init estimator", ex_random)):
        if table:
            lines += [f"**Exponents, {title}**: RMSE(n) by least squares on log-log; 95% "
                      "seed-bootstrap interval; `exponent_tail` leaves out the smallest n; "
                      "Hessian at the sample solution at the largest n:", "",
                      markdown_table(table, list(table[0]), ".3g"), ""]
    extra = analysis_neural.conclusions(reach, ex_random, ex,
                                        reach_tv=cfg.get("reach_tv", float("nan")),
                                        reach_gap=cfg.get("reach_gap", float("nan")))
    return lines, ex, agree, extra


# ------------------------------------------------------------------- stability
def _stability_section(root: Path, figdir: Path, rel: str):
    df = _read(root / "stability" / "records.csv")
    if df is None:
        return ["## 2. Gradient stability", "", "_No records found._", ""], []
    cfg = _config(root / "stability" / "config.json")
    rtol, ctol = cfg.get("match_rtol", 0.25), cfg.get("collapse_tol", 0.01)
    lines = ["## 2. Gradient stability under a 50/50 preference shift (study 2)", ""]
    lines += [f"Records: `{root / 'stability'}` ({len(df)} checkpoints, {df.seed.nunique()} "
              "seeds). Labels come from r(alpha) = alpha r + (1 - alpha) r' (alpha = 1 clean, "
              "0.5 the 50/50 mixture); plain minibatch SGD from the same start with common "
              "minibatches; every checkpoint measures the minibatch-gradient variance over "
              "fresh minibatches (the update variance is lr^2 times it), the loss and the KL "
              "to the reference. A run's variance is its mean over checkpoints from step 100 "
              f"on; runs whose final loss is within {ctol:g} of log 2 are counted as collapsed "
              "and left out.", ""]
    runs = analysis_stability.run_table(df, collapse_tol=ctol)
    if "kl_ref" not in df:
        return lines + ["_These records carry no KL to the reference; re-run the study._",
                        ""], []
    front = analysis_stability.frontier(runs)
    match = analysis_stability.matched(front, match_rtol=rtol)
    dpo_kl = runs[runs.method == "dpo"].groupby(["alpha", "arch"]).kl_ref.mean().to_dict()
    save_figure(plot_stability(front, dpo_kl), figdir / "stability.png")
    lines += [f"![stability]({rel}/stability.png)", "",
              "_Figure: each WDPO/KLDPO strength's mean final KL to the reference against "
              "its minibatch-gradient variance relative to DPO (geometric mean of per-seed "
              "ratios; bars: 95% seed-bootstrap interval; collapsed runs left out); DPO is "
              "the black point at ratio 1._", ""]
    cols = ["alpha", "arch", "method", "hyper", "kl_ref", "kl_ratio", "matched", "var_ratio",
            "var_lo", "var_hi", "clean_loss_diff", "clean_lo", "clean_hi", "n_seeds",
            "collapsed"]
    lines += [f"**At matched strength** (per condition and method, the strength whose KL to "
              f"the reference is closest to DPO's; `matched`: within {100 * rtol:g}%; "
              "`var_ratio` and `clean_loss_diff` (population loss under the clean reward, "
              "method - DPO) paired by seed with 95% seed-bootstrap intervals):", "",
              markdown_table(match, cols, ".3g"), "",
              "**Every strength** (the frontier):", "",
              markdown_table(front, [c for c in cols if c != "matched"] + ["runs"], ".3g"),
              ""]
    return lines, analysis_stability.conclusions(runs, front, match, match_rtol=rtol,
                                                 collapse_tol=ctol)


# --------------------------------------------------------------------- build
def build(records_dir, out_dir=None) -> Path:
    """Write the report (markdown + figures) from ROOT/{tau,neural,stability}; the
    "changes" paragraph compares ``beyond_loglinear/previous.json`` (beside the figures)
    with the current records."""
    root = Path(records_dir)
    md = Path(out_dir) / "beyond_loglinear.md" if out_dir else DEFAULT_OUT
    figdir = md.parent / "beyond_loglinear"
    figdir.mkdir(parents=True, exist_ok=True)
    rel = "beyond_loglinear"
    nl, ex, agree, neural_extra = _neural_section(root, figdir, rel)
    sl, stab_extra = _stability_section(root, figdir, rel)
    tau_lines, tau_s, tau_rows, regret_rows, tau_cells = _tau_section(root, figdir, rel)
    if regret_rows:
        tau_lines += ["Regret under the shifted rewards r(alpha) at the largest n (averaged "
                      "over the shift directions): the oracle tau of the grid against DPO and "
                      "the rule:", "", markdown_table(regret_rows, list(regret_rows[0]),
                                                      ".3g"), ""]
    prev = changes.read_previous(figdir / changes.PREVIOUS)
    head = ["# Beyond log-linear: neural policies, gradient stability, KLDPO temperature", "",
            changes.changes_paragraph(prev, changes.headline(root)), "",
            "Generated by `loglinear report beyond_loglinear %s` from stored records; "
            "do not edit by hand." % root, "",
            "Regenerate everything (each study prints its runtime):", "", "```",
            "loglinear beyond tau --config simulations/beyond_tau.toml "
            "--out reports/beyond_loglinear/records/tau",
            "loglinear beyond neural --config simulations/beyond_neural.toml "
            "--out reports/beyond_loglinear/records/neural",
            "loglinear beyond stability --config simulations/beyond_stability.toml "
            "--out reports/beyond_loglinear/records/stability",
            "loglinear report beyond_loglinear reports/beyond_loglinear/records --out reports",
            "```", ""]
    concl = analysis.conclusions(tau_rows, tau_s, ex, agree, None, regret_rows)
    tau_head = analysis_tau.conclusions(*tau_cells) if tau_cells else []
    concl = concl[:2] + tau_head + concl[2:]
    at = next((i for i, c in enumerate(concl) if c.startswith("- **tau,")), len(concl))
    concl = concl[:at] + neural_extra + stab_extra + concl[at:]
    body = head + concl + [""] + nl + sl + tau_lines
    md.write_text("\n".join(body) + "\n")
    return md
