"""Sections of the 3D-properties report (:mod:`loglinear.report.three_d`): each returns
markdown lines whose numbers come from :mod:`loglinear.experiments.three_d.analysis` and
:mod:`loglinear.experiments.three_d.summary` (and, for the language-model traces, from
:mod:`loglinear.experiments.llm_shift.analysis`)."""

from __future__ import annotations

import numpy as np

from ..experiments.llm_shift.analysis import trace_bands
from ..experiments.three_d import analysis, summary
from ..experiments.three_d.analysis import BASELINE, property_onsets
from ._common import markdown_table, save_figure
from ._llm_shift_figures import plot_training_traces
from ._three_d_figures import plot_noise

KL_TYPE = ("kldpo-paper", "kldpo-official", "kl-exact")

# The mechanism behind each family's effect (analysis.FAMILY), for the conclusions.
MECHANISM = {
    "Wasserstein": "the exact W1 penalty ε β‖w‖ grows with ‖w‖ and stops the parameters at "
                   "a finite point, so π(rejected) stops at a floor (a norm penalty with "
                   "a kink at π_ref). Both WDPO penalties carry a factor σ(−m) (RMS for the "
                   "paper's form, squared for the official one) that vanishes as the margins "
                   "grow, so on separable data they do not bound w: the paper's form then "
                   "behaves like DPO, and the official form with a large ρ only raises a "
                   "non-convex barrier near π_ref that gradient descent may stay behind or "
                   "cross (compare the KL column: where it is small, it stayed behind)",
    "KL": "they only reweight the pairs, and on separable data every reweighting still "
          "drives the margins to infinity, so they change which pairs collapse first, "
          "not whether they collapse (at η = 0 with deterministic labels the weights are "
          "even uniform: see the η = 0 section)",
    "remedy": "they rebalance the push: a small β⁻ (Flex-DPO) caps the force on π⁻, and the "
              "SFT term adds a force on π⁺ that does not vanish as π⁻ → 0",
    "other": "IPO regresses the log-ratio margin to 1/(2β) instead of pushing it to "
             "infinity, so nothing collapses, and it moves little from π_ref",
}


def fmt_step(v) -> str:
    """An onset step, or '–' when the property never appeared."""
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else str(int(v))


def _frac(k, n) -> str:
    return f"{k}/{n}"


def identity(df, ratio_fig) -> list[str]:
    ident = analysis.identity_max_error(df)
    return [
        "## The gradient-ratio identity",
        "For l = −log σ(β log(π⁺/π⁺_ref) − β log(π⁻/π⁻_ref)), ∂l/∂π⁻ ÷ ∂l/∂π⁺ = −π⁺/π⁻. "
        "At every recorded step of every run both partials were taken by central finite "
        "differences in the probabilities; the largest relative deviation from −π⁺/π⁻ over "
        f"all pairs and steps is **{ident:.1e}**. As π⁻ collapses the push on π⁻ outgrows "
        "the push on π⁺ by orders of magnitude:", "", f"![gradient ratio]({ratio_fig})", "",
        "*DPO, deterministic labels: the median over pairs of log10 |∂l/∂π⁻|/|∂l/∂π⁺|; colour: "
        "setting, line style: η.*", ""]


def trajectories(figs, head) -> list[str]:
    lines = ["## Trajectories", "",
             f"*The headline methods ({len(head)}: the middle hyperparameter of each "
             "objective), deterministic labels. Colours: one per method family, as in every "
             "report; dashed: the official forms. Where a line is missing it lies under "
             "another (at η = 0 the KL-type methods coincide with DPO).*", ""]
    for eta, p in figs:
        lines += [f"![trajectories η={eta:g}]({p})", ""]
    return lines


def hyperparameters(onsets, methods) -> list[str]:
    rows = summary.method_summary(onsets, methods)
    def delta(v):
        return "baseline" if np.isnan(v) else f"{v:+.3g}"

    table = [{"method": r["method"], "drop": _frac(r["drop_step"], r["n"]),
              "degrade": _frac(r["degrade_step"], r["n"]),
              "disperse": _frac(r["disperse_step"], r["n"]),
              "Δ reward": delta(r["d_reward"]), "Δ KL": delta(r["d_kl"]),
              "Δ log10 π⁻ end": delta(r["d_log10_p_rejected"])} for r in rows]
    lines = []
    for obj in dict.fromkeys(r["objective"] for r in rows):
        g = [r for r in rows if r["objective"] == obj]
        if len(g) < 2:
            continue
        spans = [f"{key.split('_')[0]} {min(r[key] for r in g)}–{max(r[key] for r in g)}"
                 for key in analysis.KEYS]
        lines.append(f"- {obj} ({len(g)} settings of its hyperparameters): "
                     + ", ".join(spans) + f" of {g[0]['n']} settings.")
    return ["## Every method at several hyperparameters (deterministic labels)",
            "In how many (η, setting) pairs each property appears, and the mean "
            "(method − DPO) final reward and KL and median final log10 π⁻ difference "
            "(DPO: β = 0.5).", "", markdown_table(table, floatfmt=".3g"), "", *lines, ""]


def noise(onsets, noisy, config, head, fig_dir, rel) -> list[str]:
    if not noisy:
        return []
    th = config.thresholds
    by_flip = {0.0: [o for o in onsets if o["method"] in head]}
    for v in noisy:
        by_flip[float(v["label_flip"].iloc[0])] = property_onsets(v, th)
    objective = {m.label: m.objective for m in config.methods}
    rows = [{**r, "objective": objective.get(r["method"])}
            for r in summary.noise_summary(by_flip)]
    fig = rel(save_figure(plot_noise(rows), fig_dir / "label_noise.png"))
    table = [{"flip": f"{r['label_flip']:g}", "method": r["method"],
              "drop": _frac(r["drop_step"], r["n"]), "degrade": _frac(r["degrade_step"], r["n"]),
              "disperse": _frac(r["disperse_step"], r["n"]),
              "π⁻ end ÷ start (median)": f"{r['p_rejected_ratio']:.2g}",
              "reward end (mean)": f"{r['reward_end']:.3f}"} for r in rows]
    dpo = [r for r in rows if r["method"] == BASELINE]
    drops = ", ".join(f"{r['drop_step']}/{r['n']} at flip {r['label_flip']:g} (median final "
                      f"ratio {r['p_rejected_ratio']:.2g})" for r in dpo)
    degr = ", ".join(f"{r['degrade_step']}/{r['n']}" for r in dpo)
    return [
        "## Label noise: is the drastic drop forced by separable data?",
        "With deterministic labels every pair is separable, so DPO's loss keeps falling only "
        "by pushing each margin to infinity and π(rejected) → 0 is forced. With m "
        "Bradley–Terry labels of which k prefer the chosen response, the tabular DPO "
        "optimum of that pair has a finite margin, log(k/(m − k)), unless k = m.", "",
        f"![label noise]({fig})", "",
        "*Median over the (η, setting) pairs of the final π(rejected) over its start, per "
        "headline method, against the label-flip probability (0: deterministic labels).*",
        "", markdown_table(table), "",
        f"- DPO's π(rejected) falls below {th.drop_ratio:g} × its start in {drops}; "
        f"degradation appears in {degr} settings at the same noise levels.", ""]


def dispersion(onsets, th, settings) -> list[str]:
    """``settings``: (name, scenario, overrides) of the toy (``ToyConfig.settings()``)."""
    rows = summary.dispersion_by_scenario(onsets)
    table = [{"setting": r["scenario"],
              "U₀": (f"{r['unseen_0_min']:.3f}" if np.isclose(r["unseen_0_min"],
                                                             r["unseen_0_max"])
                     else f"{r['unseen_0_min']:.3f}–{r['unseen_0_max']:.3f}"),
              "largest rise U − U₀": f"{r['rise_max']:+.3f}",
              "peak D": f"{r['dispersion_peak']:+.2f}",
              f"disperse (D ≥ {th.disperse_share:g})": _frac(r["n_relative"], r["n"]),
              f"disperse (abs. +{th.disperse_delta:g})": _frac(r["n_absolute"], r["n"])}
             for r in rows]
    role = {name: scenario.split("-") for name, scenario, _ in settings}
    lines = []
    for i, who in enumerate(("chosen", "rejected")):
        parts = []
        for where in ("off", "on"):
            g = [r for r in rows if role.get(r["scenario"], ["", ""])[i] == where]
            if g:
                parts.append(f"{where}-policy {who} responses in "
                             f"{sum(r['n_relative'] for r in g)}/{sum(r['n'] for r in g)}")
        if parts:
            lines.append(f"- Dispersion (relative rule) by where the {who} response sits: "
                         + "; ".join(parts) + " (η, setting) pairs.")
    for name, scenario, over in settings:
        if not over:
            continue
        r = next((r for r in rows if r["scenario"] == name), None)
        if r is None:
            continue
        room = "disperses" if r["n_relative"] else "does not disperse"
        lines.append(
            f"- `{name}` ({scenario} pairs, U₀ = {r['unseen_0_min']:.3f}, so there is room "
            f"to disperse) {room}: peak D {r['dispersion_peak']:+.2f}, "
            f"{r['n_relative']}/{r['n']} (η) values. "
            + ("The ceiling at U₀ near 1 did not hide an off-policy effect: off-policy pairs "
               "as such do not disperse in this toy." if not r["n_relative"] else
               "With the ceiling removed, off-policy pairs disperse."))
    return ["## Dispersion relative to the start, and the off-policy question",
            "DPO, deterministic labels, per setting over η. D = (U − U₀)/(1 − U₀) is the "
            "share of the mass that could still move onto unseen responses that did; unlike "
            "the absolute rise it is not capped when U₀ is near 1.", "",
            markdown_table(table), "", *lines, ""]


def equivalence(df, noisy) -> list[str]:
    obj = dict(zip(df["method"], df["objective_name"]))
    kl = [m for m in dict.fromkeys(df["method"]) if obj.get(m) in KL_TYPE]
    if not kl or BASELINE not in obj:
        return []
    shared = sorted(e for e in set(df["sharing"]) if e > 0)
    noisy0 = [v for v in noisy if np.isclose(v["sharing"], 0).any()]
    if not np.isclose(df["sharing"], 0).any():
        return []
    rows = []
    for m in kl:
        row = {"method": m, "η = 0": summary.trajectory_gap(df, m, sharing=0.0)}
        if shared:
            row["η > 0"] = max(summary.trajectory_gap(df, m, sharing=e) for e in shared)
        for v in noisy0:
            if m in set(v["method"]):
                row[f"η = 0, flip {v['label_flip'].iloc[0]:g}"] = summary.trajectory_gap(
                    v, m, sharing=0.0)
        rows.append(row)
    gap0 = max(r["η = 0"] for r in rows)
    columns = list(dict.fromkeys(c for r in rows for c in r))
    table = [{c: (f"{r[c]:.2g}" if isinstance(r.get(c), float) else r.get(c, "not run"))
              for c in columns} for r in rows]
    return [
        "## Why the KL-type methods equal DPO at η = 0",
        "Largest |method − DPO| of π(chosen), π(rejected) and the unseen mass over every "
        "recorded step and setting (label-noise columns: against DPO at the same noise):",
        "", markdown_table(table, columns), "",
        f"With tabular features (η = 0) and deterministic labels the gap is at most "
        f"{gap0:.1g}. The reason is a symmetry of the toy, not a general mechanism: every "
        "pair of a setting has its own two parameters, the same reference probabilities and "
        "the same label, so all pairs are interchangeable; they start with equal losses and "
        "gradient descent keeps the losses equal. Equal losses give uniform KL weights "
        "(q·e^{l/τ} normalised, and the exact KL-DRO worst case alike), and the reweighted "
        "gradient is DPO's. Shared features (η > 0) and noisy labels (pairs with different "
        "label counts) break the symmetry, and the columns beside show the methods then "
        "part from DPO.", ""]


def language_model(lm, onsets, fig_dir, rel) -> list[str]:
    head = "## The language-model evidence: SmolLM2 training traces"
    if lm is None:
        return [head, "", "No language-model traces are stored with these records.", ""]
    logs = {(m, s): g for (m, s), g in lm.groupby(["method", "seed"], sort=False)}
    n_seeds = int(lm["seed"].nunique())
    bands = trace_bands(logs, ("chosen_logratio", "rejected_logratio", "loss"))
    fig = rel(save_figure(plot_training_traces(bands, n_seeds=n_seeds),
                          fig_dir / "lm_traces.png"))
    dpo = [o for o in onsets if o["method"] == BASELINE]
    tab = [o for o in dpo if o["sharing"] == 0]
    sh = [o for o in dpo if o["sharing"] > 0]
    k_tab = sum(analysis.has_onset(o["degrade_step"]) for o in tab)
    k_sh = sum(analysis.has_onset(o["degrade_step"]) for o in sh)
    lines = []
    for r in summary.lm_summary(lm):
        falls = r["chosen_logratio_max"] < 0 and r["rejected_logratio_max"] < 0
        further = r["rejected_logratio_mean"] < r["chosen_logratio_mean"]
        lines.append(
            f"- {r['method']} ({r['n_seeds']} seeds, step {r['step']}): chosen log π/π_ref "
            f"{r['chosen_logratio_mean']:+.3g} (seeds {r['chosen_logratio_min']:+.3g} to "
            f"{r['chosen_logratio_max']:+.3g}, seed-mean peak {r['chosen_peak']:+.3g}), "
            f"rejected {r['rejected_logratio_mean']:+.3g} ({r['rejected_logratio_min']:+.3g} "
            f"to {r['rejected_logratio_max']:+.3g}) nats: "
            + ("both fall in every seed" + (", the rejected further" if further else "")
               + " — drop and degradation together." if falls
               else "the two do not both fall in every seed."))
    return [
        head, "", f"![language-model traces]({fig})", "",
        f"*The training traces of the preference-shift study (records copied into "
        f"`lm_traces.csv`): log π/π_ref of each step's chosen and rejected completions "
        f"(sums over tokens) and the batch DPO loss; line: mean of {n_seeds} seeds, band: "
        "min–max over seeds.*", "", *lines, "",
        f"The toy predicts when degradation can happen: under DPO it appears in {k_tab}/"
        f"{len(tab)} tabular settings and {k_sh}/{len(sh)} settings with shared parameters "
        "(η > 0), and in a tabular policy it cannot happen at all (below). A language model "
        "shares every parameter across prompts and responses, the case in which the toy "
        "allows the chosen probability to fall; the SmolLM2 traces are the only real-model "
        f"evidence here, from a small CPU study ({int(lm['step'].max()) + 1} optimizer steps "
        "of LoRA training, each step's values on a different batch), so they show the "
        "direction, not a rate.", ""]


def _where(settings) -> str:
    return ", ".join(f"η={eta:g} {sc}" for eta, sc in settings) or "nowhere"


def conclusions(onsets, methods) -> list[str]:
    out = []
    p = analysis.dpo_properties(onsets)
    n = p["n"]
    verdict = {True: "appears", False: "does NOT appear"}
    out.append(f"- **Drastic drop** {verdict[p['n_drop'] > 0]} with deterministic labels: "
               f"DPO drives π(rejected) below the threshold in {p['n_drop']}/{n} settings; "
               "with separable data this is forced (see the label-noise section for what "
               "remains when it is not).")
    out.append(f"- **Degradation** {verdict[p['n_degrade'] > 0]} in {p['n_degrade']}/{n} "
               f"settings ({_where(p['degrade_where'])}), {p['n_degrade_tabular']} of them "
               "tabular. In a tabular policy under DPO gradient flow it cannot happen when no "
               "response is both chosen and rejected in a prompt: each pair raises the chosen "
               "logit and lowers the rejected one, unseen logits stay put, and then "
               "d/dt Σ π(chosen) = (1 − Π⁺) Σ π⁺ż⁺ + Π⁺ Σ π⁻|ż⁻| ≥ 0 with Π⁺ = Σ π(chosen) "
               "(tested). It needs shared parameters (η > 0): a response's shared weight "
               "moves in every prompt, including prompts where it is unseen or rejected.")
    out.append(f"- **Dispersion** (relative rule) {verdict[p['n_disperse'] > 0]} in "
               f"{p['n_disperse']}/{n} DPO settings ({_where(p['disperse_where'])}).")
    out.append(f"- The gradient-ratio identity holds at every step (largest relative error "
               f"in the DPO runs {p['identity_max_err']:.1e}); under DPO the push on π⁻ "
               f"relative to π⁺, |∂l/∂π⁻|/|∂l/∂π⁺| = π⁺/π⁻, grows by "
               f"{p['ratio_growth_min']:.1f} to {p['ratio_growth_max']:.1f} orders of "
               "magnitude over the run.")
    titles = {"Wasserstein": "Wasserstein-type (WDPO, exact W-DRO)",
              "KL": "KL-type (KLDPO, exact KL-DRO)", "remedy": "The remedies",
              "other": "Other losses"}
    for fam, rows in analysis.remedy_effects(onsets, methods).items():
        parts = [f"{r['method']}: {r['delayed']} delayed/removed vs {r['advanced']} "
                 f"advanced/added, Δreward {r['d_reward']:+.3f}, ΔKL {r['d_kl']:+.2f}, "
                 f"Δlog10 π⁻(end) {r['d_log10_p_rejected']:+.1f}" for r in rows]
        out.append(f"- **{titles[fam]}**: " + "; ".join(parts)
                   + f". Mechanism: {MECHANISM[fam]}.")
    out.append("- The family lines above are for the headline methods; the hyperparameter "
               "table gives every method. Counts are over the (η, setting) pairs against DPO; "
               "Δ are means (medians "
               "for log10 π⁻) of (method − DPO) at the last step. A delayed onset is not a "
               "smaller end value: with a small β⁻ the rejected push saturates later, so "
               "Flex-DPO can end with a lower π⁻ than DPO. The true reward is +1 on every "
               "chosen response, so pushing π(chosen) up is rewarded by construction; with a "
               "reward less aligned with the chosen responses Δreward could change sign.")
    return out
