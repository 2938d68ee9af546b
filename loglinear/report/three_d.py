"""Report of the 3D-properties study, rebuilt from its stored records alone.

``build(records_dir, out_dir=None)`` reads ``config.json``, ``records.parquet`` (or
``records.jsonl`` while a run is in progress), ``variants.parquet``, ``lm_traces.csv`` and
``skipped.json`` (written by ``loglinear three-d``) and writes ``three_d.md`` plus figures.
The numbers come from :mod:`loglinear.experiments.three_d.analysis` and
:mod:`~loglinear.experiments.three_d.summary`, the figures from :mod:`._three_d_figures`,
the longer sections from :mod:`._three_d_sections`; this module assembles them.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ..experiments.config import PROVENANCE_KEY
from ..experiments.three_d import analysis
from ..experiments.three_d.analysis import FAMILY, load_records, property_onsets
from ..experiments.three_d.config import ThreeDConfig
from . import _three_d_sections as sections
from ._common import markdown_table, save_figure
from ._three_d_figures import plot_gradient_ratio, plot_reward_cost, plot_trajectories
from ._three_d_sections import MECHANISM, fmt_step

__all__ = ["FAMILY", "MECHANISM", "build", "load_records", "plot_gradient_ratio",
           "plot_reward_cost", "plot_trajectories"]

DEFAULT_OUT = Path("reports")


def headline_methods(config: ThreeDConfig) -> list[str]:
    """The methods drawn in the trajectory figures and run under label noise: those of the
    first label-noise variant (all methods without one)."""
    noisy = [v for v in config.variants if v.label_flip > 0]
    labels = [m.label for m in config.methods]
    return [m for m in labels if m in noisy[0].methods] if noisy else labels


def build(records_dir, out_dir=None) -> Path:
    """Regenerate ``three_d.md`` and its figures from the records in ``records_dir``."""
    import pandas as pd

    records_dir = Path(records_dir)
    raw = json.loads((records_dir / "config.json").read_text())
    raw.pop(PROVENANCE_KEY, None)   # what produced the run, beside the config's sections
    config = ThreeDConfig.from_dict(raw)
    df, variants = analysis.split_runs(load_records(records_dir, variants=True))
    skipped_path = records_dir / "skipped.json"
    skipped = json.loads(skipped_path.read_text()) if skipped_path.exists() else []
    runtime_path = records_dir / "runtime.json"
    runtime = json.loads(runtime_path.read_text())["seconds"] if runtime_path.exists() else None
    lm_path = records_dir / "lm_traces.csv"
    lm = pd.read_csv(lm_path) if lm_path.exists() else None
    out = Path(out_dir) if out_dir is not None else records_dir.parent
    fig_dir = records_dir / "figures"
    th = config.thresholds
    onsets = property_onsets(df, th)
    head = [m for m in headline_methods(config) if m in set(df["method"])]
    noisy = [v for v in variants if "label_flip" in v and v["label_flip"].iloc[0] > 0]
    other = [v for v in variants if not any(v is n for n in noisy)]

    def rel(p):
        p = Path(p).resolve()
        return p.relative_to(out.resolve()) if out.resolve() in p.parents else p

    figs = []
    for eta in dict.fromkeys(df["sharing"]):
        p = save_figure(plot_trajectories(df, sharing=eta, methods=head),
                        fig_dir / f"trajectories_eta{eta:g}.png")
        figs.append((eta, rel(p)))
    ratio_fig = rel(save_figure(plot_gradient_ratio(df), fig_dir / "gradient_ratio.png"))
    cost_fig = rel(save_figure(plot_reward_cost(onsets, methods=head),
                               fig_dir / "reward_cost.png"))
    report_out = (None if out_dir is None or out.resolve() == records_dir.parent.resolve()
                  else out)
    parts = [_intro(config, df, onsets, noisy, lm, records_dir, report_out),
             sections.identity(df, ratio_fig),
             sections.trajectories(figs, head),
             _onset_table(onsets, head, th),
             sections.hyperparameters(onsets, config.methods),
             sections.noise(onsets, noisy, config, head, fig_dir, rel),
             sections.dispersion(onsets, th, config.toy.settings()),
             sections.equivalence(df, noisy),
             _delays(onsets, [m.label for m in config.methods]),
             ["## What the methods cost in reward", "",
              f"![reward vs KL]({cost_fig})", "",
              "*Final true reward against final KL to π_ref of the headline methods, one "
              "marker per (method, η) (larger markers: larger η; squares: the official "
              "forms); the hyperparameter table gives the mean differences to DPO.*", ""],
             sections.language_model(lm, onsets, fig_dir, rel),
             ["## Conclusions", "", *sections.conclusions(onsets, head), ""]]
    if skipped:
        miss = sorted({s["method"] for s in skipped})
        parts.append(["## Not run", f"{len(skipped)} runs were skipped because their "
                      f"objective was not available in this checkout: {', '.join(miss)}. "
                      f"Reason: {skipped[0]['reason']}", ""])
    if runtime is not None:
        parts.append([f"_Study runtime: {runtime:.1f} s._", ""])
    text = "\n".join(line for part in parts for line in part)
    if other:
        text += _sensitivity(onsets, [property_onsets(v, th) for v in other],
                             [v["run"].iloc[0] for v in other], config)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "three_d.md"
    path.write_text(text)
    return path


def _commands(records_dir, report_out) -> tuple[str, str]:
    """The commands that rerun the study into ``records_dir`` (named with ``--out``: the
    command's default is under ``results/``) and that rebuild this report alone."""
    study = ["loglinear", "three-d", "--config", "simulations/three_d.toml", "--out",
             str(records_dir)]
    report = ["loglinear", "report", "three-d", str(records_dir)]
    if report_out is not None:
        report += ["--out", str(report_out)]
    return shlex.join(study), shlex.join(report)


def _intro(config, df, onsets, noisy, lm, records_dir, report_out) -> list[str]:
    toy, tr, th = config.toy, config.training, config.thresholds
    n_rel, n = analysis.count_onsets(onsets, analysis.BASELINE, "disperse_step")
    n_abs = analysis.count_onsets(onsets, analysis.BASELINE, "disperse_abs_step")[0]
    flips = sorted({float(v["label_flip"].iloc[0]) for v in noisy})
    extras = [e["name"] for e in toy.extra]
    u0 = {o["scenario"]: o["unseen_0"] for o in onsets if o["method"] == analysis.BASELINE}
    per = {}
    for m in config.methods:
        per.setdefault(m.objective, []).append(m.label)
    k_min = min(len(v) for v in per.values())
    study, report = _commands(records_dir, report_out)
    return [
        "# The 3D-properties of DPO, measured exactly in a finite log-linear policy", "",
        "**Changes since the previous version.** "
        + (f"Labels are now also drawn from the Bradley–Terry preference model, at label-flip "
           f"probabilities {', '.join(f'{f:g}' for f in flips)} ({toy.labels_per_pair} labels "
           "per pair), beside the deterministic labels that made the data separable. "
           if flips else "")
        + f"Dispersion is measured relative to where the unseen mass started (the share "
        f"of its headroom 1 − U₀ gained, threshold {th.disperse_share:g}); under the earlier "
        f"absolute rule (+{th.disperse_delta:g}) DPO disperses in {n_abs}/{n} settings, under "
        f"the relative one in {n_rel}/{n}. "
        + (f"A new setting ({', '.join(f'{e}: U₀ = {u0[e]:.3f}' for e in extras if e in u0)}"
           ") asks the off-policy question without a ceiling. " if extras else "")
        + f"Every objective runs at ≥ {k_min} hyperparameters ({len(config.methods)} methods "
        "in all). The η = 0 equality of the KL-type methods with DPO is explained. "
        + ("The SmolLM2 training traces of every seed are drawn with bands and discussed. "
           if lm is not None else "")
        + f"Runs are {tr.steps} gradient steps (half the previous length, so that the "
        "larger grid runs in a few minutes on one core); onsets later than that now read "
        "'never within the run'.", "",
        "Yan et al. (arXiv 2406.07327) report three properties of DPO trained for many "
        "epochs on a fixed dataset: a **d**rastic drop of π(rejected), a **d**egradation in "
        "which π(chosen) falls too, and a **d**ispersion of mass onto responses in no "
        "pair. Here every quantity is exact (no sampling), in the paper's toy rebuilt as a "
        "log-linear policy (`loglinear.experiments.three_d.toy_setting`).", "",
        f"Regenerate: `{study}` (runs and writes `{records_dir}`), or `{report}` (report "
        "only).", "",
        "## Setting",
        f"- {toy.n_states} prompts × {toy.n_actions} responses; under π_ref each prompt has "
        f"{toy.n_on_policy} on-policy responses (logit {toy.ref_gap:g}) and "
        f"{toy.n_actions - toy.n_on_policy} off-policy ones (logit 0); "
        f"{toy.pairs_per_state} (chosen, rejected) pairs per prompt.",
        "- Scenario `<chosen>-<rejected>`: where the chosen and rejected responses sit "
        "under π_ref (on- or off-policy)."
        + "".join(f" Extra setting `{e['name']}`: scenario {e['scenario']} with "
                  + ", ".join(f"{k} = {e[k]:g}" for k in e if k not in ("name", "scenario"))
                  + "." for e in toy.extra),
        "- Features ψ(s,a) = (√(1−η) e_(s,a), √η e_a): η = 0 is the tabular policy, η > 0 "
        "shares a response's parameter across prompts (as a language model shares weights).",
        "- True reward: +1 on chosen, −1 on rejected, uniform on "
        f"[−{toy.unseen_reward_scale:g}, {toy.unseen_reward_scale:g}] elsewhere.",
        "- Labels: deterministic in the main runs (the chosen response always wins, so the "
        "data are separable). Label-noise runs draw "
        f"{toy.labels_per_pair} labels per pair from P(chosen ≻ rejected) = σ(κ·2) with κ "
        "set so that a label prefers the rejected response with the stated flip probability; "
        "π(chosen) and π(rejected) always follow the pair as designed.",
        f"- Training: {tr.optimizer}, lr {tr.lr:g}, {tr.steps} full-batch steps from π_ref, "
        f"β = {tr.beta:g}; recorded every {tr.record_every} steps.", ""]


def _onset_table(onsets, head, th) -> list[str]:
    rows = [{"η": o["sharing"], "setting": o["scenario"], "method": o["method"],
             "drop": fmt_step(o["drop_step"]), "degrade": fmt_step(o["degrade_step"]),
             "disperse": fmt_step(o["disperse_step"]),
             "disperse (abs.)": fmt_step(o["disperse_abs_step"]),
             "π⁺ 0→peak→end": f"{o['p_chosen_0']:.3f}→{o['p_chosen_peak']:.3f}→"
                              f"{o['p_chosen_end']:.3f}",
             "π⁻ end": f"{o['p_rejected_end']:.1e}",
             "unseen 0→peak→end": f"{o['unseen_0']:.3f}→{o['unseen_peak']:.3f}→"
                                  f"{o['unseen_end']:.3f}",
             "D peak": f"{o['dispersion_peak']:+.2f}"}
            for o in onsets if o["method"] in head]
    return [
        "## When each property appears (deterministic labels, headline methods)",
        f"First recorded step at which: **drop** — mean π(rejected) ≤ {th.drop_ratio:g} × "
        f"its initial value; **degrade** — mean π(chosen) < {th.degrade_ratio:g} × its "
        "running peak; **disperse** — the unseen mass has gained "
        f"D = (U − U₀)/(1 − U₀) ≥ {th.disperse_share:g} of its headroom; **disperse (abs.)** "
        f"— the earlier rule U ≥ U₀ + {th.disperse_delta:g}. '–' means never within the run; "
        "D peak is the largest D reached.", "", markdown_table(rows), ""]


def _counts_text(d: dict) -> str:
    return (f"{d['earlier']} earlier / {d['later']} later / {d['same']} same / "
            f"{d['new']} new / {d['removed']} removed")


def _delays(onsets, methods) -> list[str]:
    drows = [{"method": d["method"], "drop": _counts_text(d["drop_step"]),
              "degrade": _counts_text(d["degrade_step"]),
              "disperse": _counts_text(d["disperse_step"])}
             for d in analysis.delay_table(onsets, methods)]
    return ["## Do the robust methods and the remedies delay or worsen the properties?",
            "Counts over the (η, setting) pairs with deterministic labels, against DPO "
            "(β = 0.5): *earlier*/*later* onset, *new* (appears only with the method), "
            "*removed*.", "", markdown_table(drows), ""]


def _sensitivity(main, variant_onsets, names, config) -> str:
    """Onsets of the optimizer variant runs next to the main run, same methods and
    settings."""
    lines = ["", "## Optimizer sensitivity",
             f"The same settings with another optimizer (main run: {config.training.optimizer}, "
             f"lr {config.training.lr:g}). Cells: drop / degrade / disperse onset steps "
             "('–' never) and the final true reward.", ""]

    def cell(r):
        return (f"{fmt_step(r['drop_step'])} / {fmt_step(r['degrade_step'])}"
                f" / {fmt_step(r['disperse_step'])}; {r['reward_end']:.3f}")

    for name, onsets in zip(names, variant_onsets):
        rows = [{"η": o["sharing"], "setting": o["scenario"], "method": o["method"],
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

