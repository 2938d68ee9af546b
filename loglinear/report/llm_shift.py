"""Report of the preference-shift (emotion) study, rebuilt from its records alone.

``loglinear report llm-shift DIR [--out OUT]`` reads, for each study, ``config.json``,
``eval.csv``, ``summary.csv``, ``runs.csv``, ``runs_summary.csv`` and
``runs/*/seed*/{train_log.csv, samples.json}`` (written by
:mod:`loglinear.experiments.llm_shift.run`) and writes ``OUT/llm_shift.md`` with figures under
``OUT/llm_shift/<study dir name>/``. DIR is one study's directory, or a root holding several
(``reports/llm_shift`` with ``gpu/``, ``cpu_smollm2/``, ``cpu/``): then the report has one
section per study, GPU studies first. OUT defaults to the directory above the studies, so
``reports/llm_shift`` (or ``reports/llm_shift/cpu``) gives ``reports/llm_shift.md``. The
numbers come from :mod:`loglinear.experiments.llm_shift.analysis`, the figures from
:mod:`._llm_shift_figures`; this module formats them. Needs pandas and matplotlib only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..experiments.llm_shift import analysis
from ..experiments.llm_shift.analysis import BASELINE, REFERENCE
from ..experiments.llm_shift.config import run_dirname
from . import _llm_shift_sections as sections
from ._common import markdown_table, save_figure
from ._llm_shift_figures import plot_alpha_sweep, plot_frontier, plot_training_traces

__all__ = ["GPU_COMMAND", "build", "plot_alpha_sweep", "plot_frontier", "plot_training_logps",
           "plot_training_traces", "study_dirs"]

GPU_COMMAND = ("until loglinear llm-shift --config simulations/llm_shift_gpu.toml "
               "--max-minutes 9 --report; do [ $? -eq 75 ] || break; done")
TRACE_COLUMNS = ("chosen_logratio", "rejected_logratio", "loss")


def _level(mean, lo, hi, digits=3) -> str:
    if isinstance(lo, float) and math.isnan(lo):
        return f"{mean:.{digits}g} (n/a)"
    return f"{mean:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


def plot_training_logps(logs: dict):
    """Training traces of one seed per method (``{method: train_log DataFrame}``); the
    report draws every seed with :func:`plot_training_traces`."""
    bands = analysis.trace_bands({(m, 0): df for m, df in logs.items()}, TRACE_COLUMNS)
    return plot_training_traces(bands, n_seeds=1)


def study_dirs(records_dir) -> list[Path]:
    """The study directories under ``records_dir`` (itself, if it is one): GPU studies
    first, then pretrained-model CPU studies, then tiny-model ones."""
    records_dir = Path(records_dir)
    if (records_dir / "config.json").exists():
        return [records_dir]
    found = sorted(p.parent for p in records_dir.glob("*/config.json")
                   if (p.parent / "summary.csv").exists())
    if not found:
        raise FileNotFoundError(f"no study records (config.json + summary.csv) in "
                                f"{records_dir} or its subdirectories; run `loglinear "
                                "llm-shift --config ...` first")

    def order(path):
        cfg = json.loads((path / "config.json").read_text())
        return (cfg["device"] != "cuda", cfg["model"].startswith("tiny"), path.name)

    return sorted(found, key=order)


def _changes(studies) -> list[str]:
    """The "changes since the previous version" paragraph, its counts from the records."""
    n_sig, n_all, extended = 0, 0, []
    n_flu = sum((d / "fluency.csv").exists() for d in studies)
    for d in studies:
        cfg = json.loads((d / "config.json").read_text())
        paired = analysis.paired_differences(pd.read_csv(d / "eval.csv"),
                                             kind=cfg["kinds"][0])
        paired = paired[(paired.method != REFERENCE) & ~paired.method.map(analysis.is_dpo)]
        n_sig += int(paired["excludes_zero"].sum())
        n_all += len(paired)
        temps = [m.split(":", 1)[1] for m in cfg["methods"] if analysis.is_dpo(m) and ":" in m]
        if temps:
            extended.append(f"{cfg['label']} with DPO at β = {', '.join(temps)} "
                            f"({len(cfg['seeds'])} seeds each)")
    return [
        "**Changes since the previous version.** Methods are now compared with DPO paired "
        "by seed (the per-seed difference, then its mean and Student-t interval over seeds) "
        "at every α, instead of asking whether two unpaired per-method intervals overlap; "
        f"over the studies below, {n_sig} of {n_all} (robust method, α) differences under "
        "the training mixture kind have an interval that excludes zero. New: a reward "
        "against KL-to-reference figure; a degeneracy check of the stored samples (the "
        f"reference model's per-token likelihood where `fluency.csv` is stored: {n_flu} of "
        f"{len(studies)} studies; and a text-only check); the training traces of every seed "
        "with bands. The throughput table now shows its "
        "spread across seeds and is flagged as noise where the spread covers the "
        "difference. `alpha_sweep.png` has labelled axes and error bars in place of "
        "overlapping bands. "
        + ("The training and evaluation records of the earlier methods are the same as "
           "before; " + "; ".join(extended) + " was extended, so that DPO traces a reward-KL "
           "frontier and every method is compared with it at matched KL."
           if extended else
           "The training and evaluation records are the same as before (no re-run of the "
           "studies)."),
        "",
    ]


def build(records_dir, out_dir=None) -> Path:
    """Regenerate ``llm_shift.md`` and its figures from one study or a root of studies."""
    records_dir = Path(records_dir)
    studies = study_dirs(records_dir)
    single = studies == [records_dir]
    if out_dir is not None:
        out = Path(out_dir)
    else:
        out = (records_dir.resolve().parent.parent if single
               else records_dir.resolve().parent)
    labels = [json.loads((d / "config.json").read_text())["label"] for d in studies]
    if single:
        text = [f"# Preference shift: the emotion experiment rebuilt offline — {labels[0]}",
                ""]
    else:
        text = ["# Preference shift: the emotion experiment rebuilt offline", ""]
    text += _changes(studies)
    if not single:
        text += [f"Studies in this report (records under `{records_dir}`):", "",
                 *[f"{i + 1}. {lab} (`{d}`)" for i, (lab, d) in
                   enumerate(zip(labels, studies))], ""]
    level = "##" if single else "###"
    for d, lab in zip(studies, labels):
        if not single:
            text += [f"## {lab}", ""]
        text += _study_section(d, out, level)
    text += [
        "## Regenerate",
        "",
        f"- This report: `loglinear report llm-shift {records_dir}`.",
        "- CPU studies: `loglinear llm-shift --config simulations/llm_shift_cpu.toml "
        "--report` (tiny model, about a minute) and `loglinear llm-shift --config "
        "simulations/llm_shift_cpu_smollm2.toml --report` (SmolLM2-135M).",
        f"- GPU study (one H100, stages of at most 9 minutes that resume): `{GPU_COMMAND}`.",
        "",
    ]
    path = out / "llm_shift.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    return path


def _read_runs(records_dir: Path, cfg: dict) -> tuple[dict, dict]:
    """({(method, seed): train_log}, {(method, seed): [completion, ...]}) as stored."""
    logs, samples = {}, {}
    for method in [REFERENCE, *cfg["methods"]]:
        for seed in cfg["seeds"]:
            d = records_dir / "runs" / run_dirname(method) / f"seed{seed}"
            if (d / "train_log.csv").exists():
                logs[(method, seed)] = pd.read_csv(d / "train_log.csv")
            if (d / "samples.json").exists():
                samples[(method, seed)] = [s["completion"] for s in
                                           json.loads((d / "samples.json").read_text())]
    return logs, samples


def _study_section(records_dir: Path, out: Path, h: str) -> list[str]:
    """Markdown lines of one study, headings at level ``h``."""
    cfg = json.loads((records_dir / "config.json").read_text())
    summary = pd.read_csv(records_dir / "summary.csv")
    evals = pd.read_csv(records_dir / "eval.csv")
    runs = pd.read_csv(records_dir / "runs.csv")
    runs_summary = pd.read_csv(records_dir / "runs_summary.csv")
    fig_dir = out / "llm_shift" / records_dir.name
    alpha_o, emotions, kind = cfg["alpha_o"], cfg["emotions"], cfg["kinds"][0]
    n_seeds = len(cfg["seeds"])
    rel = lambda p: Path(p).resolve().relative_to(out.resolve()).as_posix()

    paired = {k: analysis.paired_differences(evals, kind=k) for k in cfg["kinds"]}
    sweep = save_figure(plot_alpha_sweep(summary, paired, alpha_o=alpha_o, emotions=emotions),
                        fig_dir / "alpha_sweep.png")
    alphas, ends = analysis.sweep_ends(summary, kind=kind, alpha_o=alpha_o)
    far = [alpha_o, alphas[-1]] if alpha_o != alphas[-1] else [alpha_o, alphas[0]]
    front = analysis.frontier(evals, runs, kind=kind, alphas=far)
    front_fig = save_figure(plot_frontier(front[front.method != REFERENCE], alphas=far,
                                          alpha_o=alpha_o), fig_dir / "reward_kl.png")
    tpc = analysis.tokens_per_completion(
        runs, n_completions=cfg["n_eval_prompts"] * cfg["eval_samples"])
    logs, samples = _read_runs(records_dir, cfg)
    fluency = (pd.read_csv(records_dir / "fluency.csv")
               if (records_dir / "fluency.csv").exists() else None)

    table = []
    for method in dict.fromkeys(summary[summary.kind == kind]["method"]):
        row = {"method": method}
        for a in ends:
            r = summary[(summary.kind == kind) & (summary.method == method)
                        & (summary.alpha == a)].iloc[0]
            row[f"r(α={a:g})"] = _level(r["reward"], r["ci_lo"], r["ci_hi"])
        rs = runs_summary[runs_summary.method == method]
        if len(rs):
            row["KL to ref (nats)"] = (f"{rs.iloc[0]['kl']:.3g} ± "
                                       f"{rs.iloc[0].get('kl_half', math.nan):.2g}")
        table.append(row)
    ptable = []
    for a in alphas:
        row = {"α": f"{a:g}"}
        for method, g in paired[kind].groupby("method", sort=False):
            r = g[g.alpha == a].iloc[0]
            row[f"{method} − {BASELINE}"] = (sections.fmt_ci(r["diff"], r["lo"], r["hi"])
                                             + (" *" if r["excludes_zero"] else ""))
        ptable.append(row)
    n_pairs, agree = analysis.label_summary(runs)
    tiny = cfg["model"].startswith("tiny")
    text = [
        f"**This section comes from: {cfg['label']}** (model `{cfg['model']}`, device "
        f"`{cfg['device']}`, dtype `{cfg['dtype']}`). Records: `{records_dir}`.",
        "",
        *([("> **CPU study.** No GPU was available when this was produced. "
             + ("A tiny random model checks the pipeline, the methods' mechanics and their "
                "relative cost, not the paper's claim about SmolLM2/GPT-2-scale models. "
                if tiny else
                "The policy is the real pretrained model, but the study is sized for two "
                "CPU cores (few pairs, short completions, few steps), far below the "
                "paper's scale. ")
             + f"The GPU study is configured and ready: `{GPU_COMMAND}`."), ""]
          if cfg["device"] == "cpu" else []),
        "Setup (docs/theory.md §5.7, Xu et al. 2025 Sec. 6, rebuilt from PyPI-installable parts): "
        f"{n_pairs} preference pairs, two completions per story opening sampled from the "
        f"reference policy; Bradley–Terry labels under the convex mixture r(α_o = {alpha_o}) = "
        f"{alpha_o}·r_{emotions[0]} + {1 - alpha_o:g}·r_{emotions[1]} with scale κ = "
        f"{cfg['reward_scale']} (the label agrees with the higher-reward completion on "
        f"{agree:.0%} of pairs). Rewards are calibrated probabilities of an offline emotion "
        "probe (all-MiniLM-L6-v2 embeddings + temperature-scaled softmax probe trained on "
        f"shipped sentences). β = {cfg['beta']}, "
        f"{'LoRA r=' + str(cfg['lora_r']) if cfg['lora'] else 'full fine-tuning'}, "
        f"lr {cfg['lr']}, {cfg['epochs']} epoch(s), batch {cfg['batch_size']}, seeds "
        f"{cfg['seeds']}. Evaluation: {cfg['eval_samples']} completions on each of "
        f"{cfg['n_eval_prompts']} held-out prompts per policy, scored for every α. Within a "
        "seed every method trains on the same pairs and samples with the same random stream, "
        "so methods are compared paired by seed.",
        "",
        f"![alpha sweep]({rel(sweep)})",
        "",
        f"*Left: mean reward under r(α) of each policy; error bars are 95% Student-t "
        f"intervals over {n_seeds} seeds (points dodged sideways so that bars do not "
        f"overlap). Right: each policy minus DPO, paired by seed; error bars are 95% t-"
        f"intervals of the per-seed differences.*",
        "",
        f"{h} Paired differences to DPO ({kind} mixture, every α)",
        "",
        markdown_table(ptable),
        "",
        "Mean over seeds of the per-seed difference [95% t-interval]; `*`: the interval "
        "excludes zero.",
        "",
        f"{h} What the numbers say",
        "",
        *sections.paired_lines(paired[kind], kind, alpha_o, ends, n_seeds),
        "",
        f"{h} Reward levels and KL to the reference",
        "",
        markdown_table(table),
        "",
        "Per-method means [95% t-interval over seeds]; KL ± the half-width of its interval. "
        "These intervals are not the ones to compare methods with (the paired table is).",
        "",
        f"{h} Reward against KL to the reference",
        "",
        f"![reward against KL]({rel(front_fig)})",
        "",
        "*Small markers: one trained policy per seed (horizontal bars: the Monte Carlo "
        "standard error of its KL); large markers: the mean over seeds.*",
        "",
        *sections.frontier_lines(runs, analysis.paired_runs(runs, "kl"), tpc,
                                 analysis.matched_kl(front, alphas=far)),
        "",
        *sections.degeneracy(samples, h, fluency),
        *sections.throughput(runs, h),
    ]
    if logs:
        bands = analysis.trace_bands({k: v for k, v in logs.items() if k[0] != REFERENCE},
                                     TRACE_COLUMNS)
        diag = save_figure(plot_training_traces(bands, n_seeds=n_seeds),
                           fig_dir / "training_logps.png")
        text += [f"{h} Chosen and rejected log-probabilities over training", "",
                 f"![training log-probs]({rel(diag)})", "",
                 "*Each optimizer step's training batch: log π/π_ref of its chosen and "
                 "rejected completions (sums over tokens) and its DPO loss; line: mean over "
                 "seeds, band: min to max over seeds.*", "", *sections.trace_lines(bands), ""]
    return text
