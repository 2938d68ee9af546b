"""Sections of the preference-shift report (:mod:`loglinear.report.llm_shift`): markdown
lines whose numbers come from :mod:`loglinear.experiments.llm_shift.analysis`."""

from __future__ import annotations

import math

from ..experiments.llm_shift import analysis
from ..experiments.llm_shift.analysis import BASELINE, REFERENCE
from ._common import markdown_table


def fmt_ci(mean, lo, hi, digits=3) -> str:
    """A signed value with its interval ("n/a" without one)."""
    if isinstance(lo, float) and math.isnan(lo):
        return f"{mean:+.{digits}g} (n/a)"
    return f"{mean:+.{digits}g} [{lo:+.{digits}g}, {hi:+.{digits}g}]"


def paired_lines(paired, kind, alpha_o, ends, n_seeds) -> list[str]:
    lines = []
    for method, g in paired.groupby("method", sort=False):
        g = g.set_index("alpha")
        where = [f"{a:g}" for a in g.index if g.loc[a, "excludes_zero"]]
        at = "; ".join(f"{fmt_ci(g.loc[a, 'diff'], g.loc[a, 'lo'], g.loc[a, 'hi'])} at "
                       f"α = {a:g}" for a in ends)
        verdict = (f"the interval excludes zero at α ∈ {{{', '.join(where)}}}" if where
                   else "no α where the interval excludes zero")
        lines.append(f"- **{method} minus {BASELINE}** ({kind}): {at}; {verdict} "
                     f"(of {len(g)} α).")
    factor = analysis.t_factor(n_seeds)
    if not math.isnan(factor):
        lines.append(f"- With {n_seeds} seeds a 95% interval is ±{factor:.2f} standard "
                     f"deviations of the per-seed differences (t quantile "
                     f"{factor * math.sqrt(n_seeds):.2f}, divided by √{n_seeds}): "
                     "only large, consistent differences can exclude zero, and an interval "
                     "that contains zero is not evidence of no difference.")
    ours = paired[(paired.method != REFERENCE) & (paired.alpha == alpha_o)]
    cost = [f"{r.method} {fmt_ci(r.diff, r.lo, r.hi)}" for r in ours.itertuples()]
    if cost:
        lines.append(f"- In-distribution cost (difference to DPO at α_o = {alpha_o:g}): "
                     + "; ".join(cost) + ".")
    return lines


def frontier_lines(runs, kl_pairs, tpc, matched=None) -> list[str]:
    by = runs[runs.method != REFERENCE].groupby("method", sort=False)["kl"]
    levels = "; ".join(f"{m} {v.mean():.3g} nats ({v.mean() / tpc:.2g} per token)"
                       for m, v in by)
    diffs = "; ".join(f"{r.method} {fmt_ci(r.diff, r.lo, r.hi)}"
                      for r in kl_pairs.itertuples() if r.method != REFERENCE)
    return [f"- KL(π ‖ π_ref) per completion of {tpc:.3g} new tokens (mean over seeds): "
            f"{levels}.", f"- KL minus DPO's, paired by seed: {diffs}.",
            "- A method that ends at a lower KL is also more regularised, so a reward "
            "difference at α = 1 may be regularisation rather than robustness."
            + (" This study trained DPO at one β only, so the figure shows points, not "
               "frontiers, and no comparison at matched KL is possible."
               if matched is None or matched.empty else
               " DPO at several β traces a frontier per seed (the line in the figure, means "
               "over seeds); each method is compared with it at its own KL:"),
            *([] if matched is None or matched.empty else [
                f"  - {r.method} at α = {r.alpha:g}: reward minus DPO's at matched KL "
                f"{fmt_ci(r.diff, r.lo, r.hi)} over {r.n} seeds"
                + (f" ({r.dropped} seed(s) outside DPO's KL range)" if r.dropped else "")
                for r in matched.itertuples()])]


def trace_lines(bands) -> list[str]:
    lines = []
    for method, g in bands.groupby("method", sort=False):
        last = g.loc[g["step"].idxmax()]
        peak = g["chosen_logratio_mean"].max()
        lines.append(
            f"- {method}, last step: chosen {last.chosen_logratio_mean:.3g} (seeds "
            f"{last.chosen_logratio_min:.3g} to {last.chosen_logratio_max:.3g}), rejected "
            f"{last.rejected_logratio_mean:.3g} ({last.rejected_logratio_min:.3g} to "
            f"{last.rejected_logratio_max:.3g}) nats; "
            + (f"the chosen log-ratio peaked at {peak:+.3g} and then fell below zero"
               if peak > 0 else "the chosen log-ratio never rose above zero")
            + (": the chosen completions lost probability too (degradation)."
               if last.chosen_logratio_max < 0 else "."))
    return lines


def _fluency(fluency, h: str) -> list[str]:
    table, threshold = analysis.fluency_table(fluency)
    rows = [{"method": r.method, "completions": int(r.n_samples),
             "log π_ref per token": f"{r.logp:.3g} [{r.lo:.3g}, {r.hi:.3g}]",
             "minus the reference policy's samples": fmt_ci(r.diff, r.diff_lo, r.diff_hi),
             f"share below {threshold:.3g}": f"{r.below:.0%}"}
            for r in table.itertuples()]
    worst = table.loc[table["logp"].idxmin()]
    return [f"{h} Degeneracy of the samples: the reference model's likelihood", "",
            markdown_table(rows), "",
            "The pretrained reference model's mean log-likelihood per token of each stored "
            "completion (given its prompt; `fluency.csv`), averaged per seed, then over seeds "
            "[95% t-interval]; the difference to the reference policy's own samples is paired "
            f"by seed. The threshold {threshold:.3g} is the 10% quantile of the reference "
            f"policy's samples. The least plausible samples are {worst.method}'s: "
            f"{worst.logp:.3g} nats per token, "
            f"{fmt_ci(worst['diff'], worst.diff_lo, worst.diff_hi)} against the reference "
            "policy's, with "
            f"{worst.below:.0%} of them below the threshold. A reward gained by text the "
            "reference model finds this implausible is the probe being gamed, not better "
            "stories.", ""]


def degeneracy(samples: dict, h: str, fluency=None) -> list[str]:
    """The degeneracy check: the reference model's likelihood of the samples when
    ``fluency`` (``fluency.csv``) is stored, and the text-only statistics."""
    lines = _fluency(fluency, h) if fluency is not None else []
    if not samples:
        return lines + [f"{h} Degeneracy of the samples", "", "No samples are stored.", ""]
    deg = analysis.degeneracy_table(samples)
    rows = [{"method": r.method, "completions": int(r.n_samples), "words": r.words,
             "distinct words": r.distinct, "repeated bigrams": r.repeated_bigrams,
             "malformed words": r.malformed, "completions with a malformed word":
             r.any_malformed} for r in deg.itertuples()]
    ref = deg[deg.method == REFERENCE]
    worst = deg.loc[deg["any_malformed"].idxmax()]
    line = (f"The highest share of completions with a malformed word is {worst.method}'s "
            f"({worst.any_malformed:.0%} of {int(worst.n_samples)})"
            + (f", against {ref.iloc[0].any_malformed:.0%} for the reference policy"
               if len(ref) else "") + ".")
    stands = (" The likelihood table above is the model-based version of this check."
              if fluency is not None else " The reference model's per-token log-likelihood "
              "of the policy's samples (which needs the model; `loglinear.experiments."
              "llm_shift.fluency`) is the test this table stands in for.")
    return lines + [
        f"{h} Degeneracy of the samples (text only)", "",
        markdown_table(rows, floatfmt=".3g"), "",
        "Over the completions stored per (method, seed) (the first prompts' samples), "
        "words split on white space: distinct words / words, the share of word bigrams "
        "seen earlier in the completion, and the share of malformed words (a lower-case "
        "letter glued to an upper-case one, or markup characters). " + line + " This is a "
        "text-only check: it catches glued tokens and markup, not fluent-looking word "
        "salad." + stands, ""]


def throughput(runs, h: str) -> list[str]:
    spread = analysis.throughput_spread(runs)
    if not spread:
        return []
    rows = [{"method": r["method"], "train seconds per seed (min–max)":
             f"{r['seconds_min']:.3g}–{r['seconds_max']:.3g}",
             "pairs/s ÷ DPO's, per seed (min–max)": f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f}",
             "reading": "noise (range covers 1)" if r["noise"] else "consistent"}
            for r in spread if r["method"] != BASELINE]
    cv = spread[0]["dpo_cv"]
    return [f"{h} Throughput (training steps only; a shared machine)", "",
            markdown_table(rows), "",
            f"DPO's own train time varied with a coefficient of variation of {cv:.0%} across "
            "seeds on this shared machine; a ratio whose per-seed range covers 1 is noise, "
            "not a speed difference.", ""]
