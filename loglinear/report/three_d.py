"""Report of the 3D-properties study, rebuilt from its stored records alone.

``build(records_dir, out_dir=None)`` reads ``config.json``, ``records.parquet`` (or
``records.jsonl`` while a run is in progress) and
``skipped.json`` (written by ``loglinear three-d``) and writes ``three_d.md`` plus figures.
The numbers come from :mod:`loglinear.experiments.three_d.analysis`; this module only
formats them. The plot functions take records (a list of dicts or a DataFrame) and return
Figures.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

from ..experiments.config import PROVENANCE_KEY
from ..experiments.three_d import analysis
from ..experiments.three_d.analysis import FAMILY, load_records, property_onsets
from ..experiments.three_d.config import ThreeDConfig
from ._common import markdown_table, save_figure

__all__ = ["FAMILY", "MECHANISM", "build", "load_records", "plot_gradient_ratio",
           "plot_reward_cost", "plot_trajectories"]

PANELS = (("p_chosen", "mean π(chosen)", False), ("p_rejected", "mean π(rejected)", True),
          ("unseen_mass", "unseen mass", False))
DEFAULT_OUT = Path("reports")


def _frame(records):
    import pandas as pd

    return records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))


def plot_trajectories(records, *, sharing: float | None = None, methods=None):
    """Rows: scenarios; columns: pi(chosen), pi(rejected) (log scale), unseen mass; one
    line per method. ``sharing`` selects one eta (default: the first in the records)."""
    import matplotlib.pyplot as plt

    df = _frame(records)
    sharing = df["sharing"].iloc[0] if sharing is None else sharing
    df = df[np.isclose(df["sharing"], sharing)]
    methods = list(dict.fromkeys(df["method"])) if methods is None else list(methods)
    scenarios = list(dict.fromkeys(df["scenario"]))
    fig, axes = plt.subplots(len(scenarios), len(PANELS), squeeze=False,
                             figsize=(4.2 * len(PANELS), 2.6 * len(scenarios)), sharex=True)
    colors = plt.get_cmap("tab10")
    for i, sc in enumerate(scenarios):
        for j, (col, title, log) in enumerate(PANELS):
            ax = axes[i, j]
            for k, m in enumerate(methods):
                g = df[(df["scenario"] == sc) & (df["method"] == m)]
                if len(g):
                    ax.plot(g["step"], g[col], color=colors(k % 10), lw=1.4, label=m)
            if log:
                ax.set_yscale("log")
            ax.set_title(f"{sc}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel(f"η = {sharing:g}")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, -0.02 - 0.02 * (len(labels) // 5)))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_gradient_ratio(records, *, method: str = "DPO"):
    """log10 |dl/dpi-| / |dl/dpi+| (median over pairs) against step, one line per
    (sharing, scenario), for one method: the identity says it equals log10(pi+/pi-)."""
    import matplotlib.pyplot as plt

    df = _frame(records)
    df = df[df["method"] == method]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (eta, sc), g in df.groupby(["sharing", "scenario"], sort=False):
        ax.plot(g["step"], g["log10_grad_ratio"], lw=1.2, label=f"η={eta:g}, {sc}")
    ax.set_xlabel("step")
    ax.set_ylabel("log10 |∂l/∂π⁻| / |∂l/∂π⁺|")
    ax.set_title(f"{method}: push on the rejected vs the chosen probability", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def plot_reward_cost(onsets):
    """Final reward against final KL(π || π_ref), one marker per method, one panel per
    scenario (all sharing values pooled, marker size grows with η)."""
    import matplotlib.pyplot as plt

    df = _frame(onsets)
    scenarios = list(dict.fromkeys(df["scenario"]))
    methods = list(dict.fromkeys(df["method"]))
    fig, axes = plt.subplots(1, len(scenarios), figsize=(3.6 * len(scenarios), 3.4),
                             squeeze=False, sharey=True)
    colors = plt.get_cmap("tab10")
    for ax, sc in zip(axes[0], scenarios):
        for k, m in enumerate(methods):
            g = df[(df["scenario"] == sc) & (df["method"] == m)]
            ax.scatter(g["kl_end"], g["reward_end"], s=20 + 60 * g["sharing"],
                       color=colors(k % 10), label=m if sc == scenarios[0] else None)
        ax.set_title(sc, fontsize=9)
        ax.set_xlabel("KL(π‖π_ref) at the end")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("true reward at the end")
    fig.legend(loc="lower center", ncol=min(5, len(methods)), fontsize=7,
               bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _fmt_step(v):
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else str(int(v))


def build(records_dir, out_dir=None) -> Path:
    """Regenerate ``three_d.md`` and its figures from the records in ``records_dir``."""
    records_dir = Path(records_dir)
    raw = json.loads((records_dir / "config.json").read_text())
    raw.pop(PROVENANCE_KEY, None)   # what produced the run, beside the config's sections
    config = ThreeDConfig.from_dict(raw)
    df, variants = analysis.split_runs(load_records(records_dir, variants=True))
    skipped_path = records_dir / "skipped.json"
    skipped = json.loads(skipped_path.read_text()) if skipped_path.exists() else []
    runtime_path = records_dir / "runtime.json"
    runtime = json.loads(runtime_path.read_text())["seconds"] if runtime_path.exists() else None
    out = Path(out_dir) if out_dir is not None else records_dir.parent
    fig_dir = records_dir / "figures"
    th = config.thresholds
    onsets = property_onsets(df, th)
    figs = []
    for eta in dict.fromkeys(df["sharing"]):
        p = save_figure(plot_trajectories(df, sharing=eta),
                        fig_dir / f"trajectories_eta{eta:g}.png")
        figs.append((eta, p))
    ratio_fig = save_figure(plot_gradient_ratio(df), fig_dir / "gradient_ratio.png")
    cost_fig = save_figure(plot_reward_cost(onsets), fig_dir / "reward_cost.png")

    def rel(p):
        return Path(p).resolve().relative_to(out.resolve()) if out.resolve() in Path(
            p).resolve().parents else Path(p).resolve()

    rows = [{"η": o["sharing"], "scenario": o["scenario"], "method": o["method"],
             "drop": _fmt_step(o["drop_step"]), "degrade": _fmt_step(o["degrade_step"]),
             "disperse": _fmt_step(o["disperse_step"]),
             "π⁺ 0→peak→end": f"{o['p_chosen_0']:.3f}→{o['p_chosen_peak']:.3f}→"
                              f"{o['p_chosen_end']:.3f}",
             "π⁻ end": f"{o['p_rejected_end']:.1e}",
             "unseen 0→peak→end": f"{o['unseen_0']:.3f}→{o['unseen_peak']:.3f}→"
                                  f"{o['unseen_end']:.3f}"} for o in onsets]
    cost = [{"η": c["sharing"], "scenario": c["scenario"], "method": c["method"],
             "reward end": c["reward_end"], "reward best": c["reward_best"],
             "KL end": c["kl_end"], "Δ reward vs DPO": c["delta_reward"]}
            for c in analysis.reward_cost(onsets)]
    text = _markdown(config, df, onsets, rows, cost, skipped, runtime, figs, ratio_fig,
                     cost_fig, rel, records_dir,
                     None if out_dir is None or out.resolve() == records_dir.parent.resolve()
                     else out)
    if variants:
        text += _sensitivity(onsets, [property_onsets(v, th) for v in variants],
                             [v["run"].iloc[0] for v in variants], config)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "three_d.md"
    path.write_text(text)
    return path


def _counts_text(d: dict) -> str:
    return (f"{d['earlier']} earlier / {d['later']} later / {d['same']} same / "
            f"{d['new']} new / {d['removed']} removed")


def _sensitivity(main, variant_onsets, names, config) -> str:
    """Onsets of the variant runs next to the main run, same methods and settings."""
    lines = ["", "## Optimizer sensitivity",
             f"The same settings with another optimizer (main run: {config.training.optimizer}, "
             f"lr {config.training.lr:g}). Cells: drop / degrade / disperse onset steps "
             "('–' never) and the final true reward.", ""]

    def cell(r):
        return (f"{_fmt_step(r['drop_step'])} / {_fmt_step(r['degrade_step'])}"
                f" / {_fmt_step(r['disperse_step'])}; {r['reward_end']:.3f}")

    for name, onsets in zip(names, variant_onsets):
        rows = [{"η": o["sharing"], "scenario": o["scenario"], "method": o["method"],
                 "main": cell(b) if b else "", name: cell(o)}
                for o, b in analysis.sensitivity(main, onsets)]
        n_deg = {k: analysis.count_onsets(ons, analysis.BASELINE, "degrade_step")[0]
                 for k, ons in (("main", main), (name, onsets))}
        n_disp = {k: analysis.count_onsets(ons, analysis.BASELINE, "disperse_step")[0]
                  for k, ons in (("main", main), (name, onsets))}
        lines += [f"### {name}", "", markdown_table(rows), "",
                  f"DPO degradation appears in {n_deg['main']} settings with the main "
                  f"optimizer and in {n_deg[name]} with {name}; dispersion in "
                  f"{n_disp['main']} and {n_disp[name]}.", ""]
    return "\n".join(lines)


def _commands(records_dir, report_out) -> tuple[str, str]:
    """The commands that rerun the study into ``records_dir`` (named with ``--out``: the
    command's default is under ``results/``) and that rebuild this report alone."""
    study = ["loglinear", "three-d", "--config", "simulations/three_d.toml", "--out",
             str(records_dir)]
    report = ["loglinear", "report", "three-d", str(records_dir)]
    if report_out is not None:
        report += ["--out", str(report_out)]
    return shlex.join(study), shlex.join(report)


def _markdown(config, df, onsets, rows, cost, skipped, runtime, figs, ratio_fig, cost_fig,
              rel, records_dir, report_out=None) -> str:
    th, toy, tr = config.thresholds, config.toy, config.training
    methods = list(dict.fromkeys(df["method"]))
    ident = analysis.identity_max_error(df)
    lines = [
        "# The 3D-properties of DPO, measured exactly in a finite log-linear policy",
        "",
        "Yan et al. (arXiv 2406.07327) report three properties of DPO trained for many "
        "epochs on a fixed dataset: a **d**rastic drop of π(rejected), a **d**egradation in "
        "which π(chosen) falls too, and a **d**ispersion of mass onto responses in no "
        "pair. Here every quantity is exact (no sampling), in the paper's toy rebuilt as a "
        "log-linear policy (`loglinear.experiments.three_d.toy_setting`).",
        "",
        f"Regenerate: `{_commands(records_dir, report_out)[0]}` (runs and writes "
        f"`{records_dir}`), or `{_commands(records_dir, report_out)[1]}` (report only).",
        "",
        "## Setting",
        f"- {toy.n_states} prompts × {toy.n_actions} responses; under π_ref each prompt has "
        f"{toy.n_on_policy} on-policy responses (logit {toy.ref_gap:g}) and "
        f"{toy.n_actions - toy.n_on_policy} off-policy ones (logit 0); "
        f"{toy.pairs_per_state} (chosen, rejected) pairs per prompt, labels deterministic.",
        "- Scenario `<chosen>-<rejected>`: where the chosen and rejected responses sit "
        "under π_ref (on- or off-policy).",
        "- Features ψ(s,a) = (√(1−η) e_(s,a), √η e_a): η = 0 is the tabular policy, η > 0 "
        "shares a response's parameter across prompts (as a language model shares weights).",
        "- True reward: +1 on chosen, −1 on rejected, uniform on "
        f"[−{toy.unseen_reward_scale:g}, {toy.unseen_reward_scale:g}] elsewhere.",
        f"- Training: {tr.optimizer}, lr {tr.lr:g}, {tr.steps} full-batch steps from π_ref, "
        f"β = {tr.beta:g}; recorded every {tr.record_every} steps.",
        "",
        "## The gradient-ratio identity",
        "For l = −log σ(β log(π⁺/π⁺_ref) − β log(π⁻/π⁻_ref)), ∂l/∂π⁻ ÷ ∂l/∂π⁺ = −π⁺/π⁻. "
        "At every recorded step of every run both partials were taken by central finite "
        "differences in the probabilities; the largest relative deviation from −π⁺/π⁻ over "
        f"all pairs and steps is **{ident:.1e}**. As π⁻ collapses the push on π⁻ outgrows "
        "the push on π⁺ by orders of magnitude:",
        "",
        f"![gradient ratio]({rel(ratio_fig)})",
        "",
        "## Trajectories",
    ]
    for eta, p in figs:
        lines += [f"η = {eta:g}:", "", f"![trajectories η={eta:g}]({rel(p)})", ""]
    lines += [
        "## When each property appears",
        f"First recorded step at which: **drop** — mean π(rejected) ≤ {th.drop_ratio:g} × "
        f"its initial value; **degrade** — mean π(chosen) < {th.degrade_ratio:g} × its "
        f"running peak; **disperse** — unseen mass ≥ initial + {th.disperse_delta:g}. "
        "'–' means never within the run.",
        "",
        markdown_table(rows),
        "",
        "## Do WDPO and KLDPO delay or worsen the properties?",
        "Counts over the (η, scenario) settings, against DPO with the same β: "
        "*earlier*/*later* onset, *new* (appears only with the method), *removed*.",
        "",
    ]
    drows = [{"method": d["method"], "drop": _counts_text(d["drop_step"]),
              "degrade": _counts_text(d["degrade_step"]),
              "disperse": _counts_text(d["disperse_step"])}
             for d in analysis.delay_table(onsets, methods)]
    lines += [markdown_table(drows), "", "## What the remedies cost in reward",
              "Final true reward and KL to π_ref; Δ is against DPO in the same setting.", "",
              markdown_table(cost, floatfmt=".3f"), "", f"![reward vs KL]({rel(cost_fig)})",
              "", "## Conclusions", ""]
    lines += _conclusions(onsets, methods)
    if skipped:
        miss = sorted({s["method"] for s in skipped})
        lines += ["", "## Not run", f"{len(skipped)} runs were skipped because their objective "
                  f"was not available in this checkout: {', '.join(miss)}. Reason: "
                  f"{skipped[0]['reason']}"]
    if runtime is not None:
        lines += ["", f"_Study runtime: {runtime:.1f} s._"]
    return "\n".join(lines) + "\n"


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
          "not whether they collapse",
    "remedy": "they rebalance the push: a small β⁻ (Flex-DPO) caps the force on π⁻, and the "
              "SFT term adds a force on π⁺ that does not vanish as π⁻ → 0",
    "other": "IPO regresses the log-ratio margin to 1/(2β) instead of pushing it to "
             "infinity, so nothing collapses, and it moves little from π_ref",
}


def _where(settings) -> str:
    return ", ".join(f"η={eta:g} {sc}" for eta, sc in settings) or "nowhere"


def _conclusions(onsets, methods) -> list[str]:
    out = []
    p = analysis.dpo_properties(onsets)
    n = p["n"]
    verdict = {True: "reproduces", False: "does NOT reproduce"}
    out.append(f"- **Drastic drop** {verdict[p['n_drop'] > 0]}: DPO drives π(rejected) below "
               f"the threshold in {p['n_drop']}/{n} settings.")
    out.append(f"- **Degradation** {verdict[p['n_degrade'] > 0]} in {p['n_degrade']}/{n} "
               f"settings ({_where(p['degrade_where'])}), {p['n_degrade_tabular']} of them "
               "tabular. In a "
               "tabular policy under DPO gradient flow it cannot happen when no response is "
               "both chosen and rejected in a prompt: each pair raises the chosen logit and "
               "lowers the rejected one, unseen logits stay put, and then "
               "d/dt Σ π(chosen) = (1 − Π⁺) Σ π⁺ż⁺ + Π⁺ Σ π⁻|ż⁻| ≥ 0 with Π⁺ = Σ π(chosen) "
               "(tested). It needs shared parameters (η > 0): a response's shared weight "
               "moves in every prompt, including prompts where it is unseen or rejected.")
    out.append(f"- **Dispersion** {verdict[p['n_disperse'] > 0]} in {p['n_disperse']}/{n} DPO "
               f"settings ({_where(p['disperse_where'])}). An early rise means rejected "
               "mass left faster than the chosen responses absorbed it; a late rise comes "
               "with degradation.")
    out.append(f"- The gradient-ratio identity holds at every step (largest relative error "
               f"in the DPO runs "
               f"{p['identity_max_err']:.1e}); under DPO the push on π⁻ "
               f"relative to π⁺, |∂l/∂π⁻|/|∂l/∂π⁺| = π⁺/π⁻, grows by "
               f"{p['ratio_growth_min']:.1f} to {p['ratio_growth_max']:.1f} orders of "
               "magnitude over the run.")
    worst = p["worst_unseen"]
    out.append(f"- Yan et al. find the effects strongest with off-policy pairs. Here the "
               f"largest rise of the unseen mass under DPO is at η={worst['sharing']:g}, "
               f"{worst['scenario']} (+{p['worst_unseen_rise']:.3f}), and "
               f"degradation appears only at {_where(p['degrade_where'])}; where "
               "these are on-policy scenarios, the paper's off-policy claim is not reproduced "
               "by this toy.")
    titles = {"Wasserstein": "Wasserstein-type (WDPO, exact W-DRO)",
              "KL": "KL-type (KLDPO, exact KL-DRO)", "remedy": "The remedies",
              "other": "Other losses"}
    for fam, rows in analysis.remedy_effects(onsets, methods).items():
        parts = [f"{r['method']}: {r['delayed']} delayed/removed vs {r['advanced']} "
                 f"advanced/added, Δreward {r['d_reward']:+.3f}, ΔKL {r['d_kl']:+.2f}, "
                 f"Δlog10 π⁻(end) {r['d_log10_p_rejected']:+.1f}" for r in rows]
        out.append(f"- **{titles[fam]}**: " + "; ".join(parts)
                   + f". Mechanism: {MECHANISM[fam]}.")
    out.append("- Counts are over the (η, scenario) settings against DPO; Δ are means "
               "(medians for log10 π⁻) of (method − DPO) at the last step. A delayed onset "
               "is not a smaller end value: with a small β⁻ the rejected push saturates "
               "later, so Flex-DPO can end with a lower π⁻ than DPO. The true reward is +1 "
               "on every chosen response, so pushing π(chosen) up is rewarded by "
               "construction; with a reward less aligned with the chosen responses "
               "Δreward could change sign.")
    return out
