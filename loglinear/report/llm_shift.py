"""Report of the preference-shift (emotion) study, rebuilt from its records alone.

``loglinear report llm-shift DIR [--out OUT]`` reads, for each study, ``config.json``,
``summary.csv``, ``runs.csv``, ``runs_summary.csv`` and ``runs/*/seed*/train_log.csv``
(written by :mod:`loglinear.experiments.llm_shift.run`) and writes ``OUT/llm_shift.md`` with
figures under
``OUT/llm_shift/<study dir name>/``. DIR is one study's directory, or a root holding several
(``reports/llm_shift`` with ``gpu/``, ``cpu_smollm2/``, ``cpu/``): then the report has one
section per study, GPU studies first. OUT defaults to the directory above the studies, so
``reports/llm_shift`` (or ``reports/llm_shift/cpu``) gives ``reports/llm_shift.md``. The
comparisons come from :mod:`loglinear.experiments.llm_shift.analysis`; this module formats
them. Needs pandas and matplotlib only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..experiments.llm_shift import analysis
from ..experiments.llm_shift.analysis import REFERENCE
from ..experiments.llm_shift.config import run_dirname
from ._common import markdown_table, save_figure

GPU_COMMAND = ("until loglinear llm-shift --config simulations/llm_shift_gpu.toml "
               "--max-minutes 9 --report; do [ $? -eq 75 ] || break; done")


def _fmt_ci(mean, lo, hi, digits=4) -> str:
    if isinstance(lo, float) and math.isnan(lo):
        return f"{mean:.{digits}g} (n/a)"
    return f"{mean:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


def plot_alpha_sweep(summary: pd.DataFrame, *, alpha_o: float, emotions):
    """Mean reward under r(alpha) per method with across-seed CI bands; one panel per kind,
    absolute and relative to the reference policy."""
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(summary["kind"]))
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 3.6 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        sub = summary[summary.kind == kind]
        ref = sub[sub.method == REFERENCE].set_index("alpha")["reward"]
        for method in dict.fromkeys(sub["method"]):
            m = sub[sub.method == method].sort_values("alpha")
            style = dict(color="k", ls="--") if method == REFERENCE else {}
            for col, base in ((0, 0.0), (1, ref.reindex(m["alpha"]).to_numpy())):
                ax = axes[row, col]
                ax.plot(m["alpha"], m["reward"] - base, marker="o", ms=3, label=method,
                        **style)
                if m["ci_lo"].notna().all():
                    ax.fill_between(m["alpha"], m["ci_lo"] - base, m["ci_hi"] - base,
                                    alpha=0.15, color=ax.lines[-1].get_color())
        for col, title in enumerate(("mean reward", "mean reward minus reference")):
            ax = axes[row, col]
            ax.axvline(alpha_o, color="grey", lw=0.8, ls=":")
            ax.set_title(f"{kind} r(α) = mix({emotions[0]}, {emotions[1]}): {title}",
                         fontsize=9)
            ax.set_xlabel(f"α (training α_o = {alpha_o})")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_training_logps(logs: dict):
    """Policy log-probs of chosen and rejected completions over training (3D diagnostics)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for method, df in logs.items():
        df = df.dropna(subset=["chosen_logratio"])
        line = axes[0].plot(df["step"], df["chosen_logratio"], label=f"{method} chosen")[0]
        axes[0].plot(df["step"], df["rejected_logratio"], ls="--", color=line.get_color())
        axes[1].plot(df["step"], df["loss"], color=line.get_color(), label=method)
    axes[0].set_title("log π/π_ref of chosen (solid) and rejected (dashed), seed 0",
                      fontsize=9)
    axes[1].set_title("per-pair DPO loss (batch mean)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


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
        text = ["# Preference shift: the emotion experiment rebuilt offline", "",
                f"Studies in this report (records under `{records_dir}`):", "",
                *[f"{i + 1}. {lab} (`{d}`)" for i, (lab, d) in enumerate(zip(labels, studies))],
                ""]
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


def _study_section(records_dir: Path, out: Path, h: str) -> list[str]:
    """Markdown lines of one study, headings at level ``h``."""
    cfg = json.loads((records_dir / "config.json").read_text())
    summary = pd.read_csv(records_dir / "summary.csv")
    runs = pd.read_csv(records_dir / "runs.csv")
    runs_summary = pd.read_csv(records_dir / "runs_summary.csv")
    fig_dir = out / "llm_shift" / records_dir.name
    alpha_o, emotions = cfg["alpha_o"], cfg["emotions"]
    sweep = save_figure(plot_alpha_sweep(summary, alpha_o=alpha_o, emotions=emotions),
                        fig_dir / "alpha_sweep.png")
    logs = {}
    for method in cfg["methods"]:
        seed_dir = f"seed{cfg['seeds'][0]}"
        path = records_dir / "runs" / run_dirname(method) / seed_dir / "train_log.csv"
        if path.exists():
            logs[method] = pd.read_csv(path)
    diag = save_figure(plot_training_logps(logs), fig_dir / "training_logps.png") \
        if logs else None
    rel = lambda p: Path(p).resolve().relative_to(out.resolve()).as_posix()

    kind = cfg["kinds"][0]
    conv = summary[summary.kind == kind]
    alphas, far = analysis.sweep_ends(summary, kind=kind, alpha_o=alpha_o)
    table = []
    for method in dict.fromkeys(conv["method"]):
        row = {"method": method}
        for a in far:
            r = conv[(conv.method == method) & (conv.alpha == a)].iloc[0]
            row[f"r(α={a:g})"] = _fmt_ci(r["reward"], r["ci_lo"], r["ci_hi"])
        rs = runs_summary[runs_summary.method == method]
        if len(rs):
            rs = rs.iloc[0]
            row["KL to ref"] = f"{rs['kl']:.3g} ± {rs.get('kl_half', math.nan):.2g}"
        table.append(row)

    thr_rows = [{"method": r["method"], "pairs/s": r["pairs_per_s"],
                 "tokens/s": r["tokens_per_s"], "relative to DPO": r["relative_to_dpo"],
                 "train seconds (mean per seed)": r["train_seconds"]}
                for r in analysis.throughput(runs_summary)]

    # plain comparisons of stored means: each method minus DPO at the sweep's ends
    lines = []
    diff = analysis.reward_differences(summary, kind=kind, alpha_o=alpha_o)
    if diff is not None:
        gap = diff["dpo_minus_reference"]
        lines.append(f"- DPO minus the reference: {gap[alpha_o]:+.3g} at α_o = {alpha_o}, "
                     f"{gap[alphas[-1]]:+.3g} at α = {alphas[-1]:g}, {gap[alphas[0]]:+.3g} at "
                     f"α = {alphas[0]:g} (convex mixture).")
        tags = {"overlap": "CIs overlap", "separate": "CIs separate", "no_ci": "one seed, no CI"}
        for method, parts in diff["versus_dpo"].items():
            lines.append(f"- {method} minus DPO: " + "; ".join(
                f"{d:+.3g} at α = {a:g} ({tags[tag]})" for a, d, tag in parts) + ".")
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
        f"{agree:.0%} of pairs). Rewards are calibrated probabilities of an offline emotion probe "
        "(all-MiniLM-L6-v2 embeddings + temperature-scaled softmax probe trained on shipped "
        "sentences). "
        f"β = {cfg['beta']}, "
        f"{'LoRA r=' + str(cfg['lora_r']) if cfg['lora'] else 'full fine-tuning'}, "
        f"lr {cfg['lr']}, {cfg['epochs']} epoch(s), batch {cfg['batch_size']}, seeds "
        f"{cfg['seeds']}. Evaluation: {cfg['eval_samples']} completions on each of "
        f"{cfg['n_eval_prompts']} held-out prompts per policy, scored for every α; intervals are "
        f"{cfg['ci_level']:.0%} Student-t intervals across seeds. Within a seed every policy is "
        "sampled with the same random stream (common random numbers), so differences between "
        "methods are less noisy than the per-method intervals suggest.",
        "",
        f"![alpha sweep]({rel(sweep)})",
        "",
        f"{h} Reward at the ends of the sweep and KL to the reference",
        "",
        markdown_table(table),
        "",
        f"{h} What the numbers say",
        "",
        *lines,
        "",
        "Read the differences against the CIs: with a small model, few pairs and few seeds the "
        "methods can be statistically indistinguishable, and then the study does not show the "
        "paper's effect either way. The robust methods' in-distribution cost is their "
        f"difference to DPO at α_o = {alpha_o}.",
        "",
        f"{h} Throughput (training steps only)",
        "",
        markdown_table(thr_rows),
        "",
    ]
    if diag is not None:
        text += [f"{h} 3D diagnostics: chosen and rejected log-probabilities over training",
                 "", f"![training log-probs]({rel(diag)})", ""]
    return text
