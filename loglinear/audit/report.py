"""The audit as one page: ``audit.md`` with its figures, ``audit.json`` (the numbers) and
``pairs.csv`` (every pair's worst-case weight), written by :func:`write_report`.

Every sentence is computed from the :class:`~loglinear.audit.core.AuditReport`; the plot
functions take its parts and return a matplotlib Figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..report._common import markdown_table, save_figure
from .core import RANK_RTOL, SEPARABLE_MARGIN
from .results import AuditReport, CoverageSummary, FitSummary, WorstCase
from .text import Projection

TOP = 10               # pairs listed with the largest worst-case weight
TEXT_CHARS = 140       # a listed text is cut to this many characters
MAX_COEF_ROWS = 32     # coefficients tabulated (the largest |theta / se| first beyond this)
RULES = {
    "given": "the radius given (`--radius`)",
    "suggested": "the suggested radius ρ(τ) of section 4",
    "half-collapse": "half the collapse radius ρ₀: the temperature rule had no answer",
}


# ---------------------------------------------------------------------- figures
def plot_coverage(cov: CoverageSummary, embedding: Projection | None = None):
    """The coverage spectrum (decreasing, log scale) with lambda_min and the effective
    dimension; beside it the full embedding spectrum when the features came from text."""
    import matplotlib.pyplot as plt

    panels = 2 if embedding is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.6), squeeze=False)
    ax = axes[0, 0]
    vals = np.maximum(cov.eigvals[::-1], 1e-300)
    ax.semilogy(np.arange(1, vals.size + 1), vals, marker="o", ms=3)
    ax.axhline(max(cov.lambda_min, 1e-300), color="C3", ls="--", lw=1,
               label=f"λ_min = {cov.lambda_min:.3g}")
    ax.set_xlabel("eigenvalue index (largest first)")
    ax.set_ylabel("eigenvalue of Σ = Σ_i q_i x_i x_iᵀ")
    ax.set_title(f"coverage: effective dimension {cov.effective_dimension:.3g} of "
                 f"{vals.size}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    if embedding is not None:
        ax = axes[0, 1]
        spec = embedding.spectrum
        rank = int(np.sum(spec > RANK_RTOL * spec[0])) if spec[0] > 0 else 0
        ax.semilogy(np.arange(1, rank + 1), spec[:rank], lw=1)
        ax.axvline(embedding.dim, color="C3", ls="--", lw=1,
                   label=f"kept {embedding.dim} ({embedding.explained:.0%} of the trace)")
        ax.set_xlabel("eigenvalue index (largest first)")
        ax.set_title(f"embedding differences: rank {rank} of {spec.size} dims")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_worst_case(wc: WorstCase, *, top: int = TOP):
    """p_i/q_i of every pair, sorted, and against the pair's margin at the robust
    optimum; the ``top`` pairs in red."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10.4, 3.6))
    order = np.argsort(-wc.ratio, kind="stable")
    ranks = np.arange(1, wc.ratio.size + 1)
    left.plot(ranks, wc.ratio[order], lw=1)
    left.scatter(ranks[:top], wc.ratio[order[:top]], color="C3", s=12, zorder=3)
    left.axhline(1.0, color="grey", lw=0.8)
    left.set_xscale("log")
    left.set_xlabel("pair rank")
    left.set_ylabel("worst-case weight p_i / q_i")
    left.set_title(f"exact KL worst case at ρ = {wc.radius:.3g}")
    picked = wc.top(top)
    right.scatter(wc.margins, wc.ratio, s=6, alpha=0.5)
    right.scatter(wc.margins[picked], wc.ratio[picked], color="C3", s=14)
    right.axhline(1.0, color="grey", lw=0.8)
    right.axvline(0.0, color="grey", lw=0.8)
    right.set_xlabel("margin at the robust optimum (negative: the fit disagrees)")
    right.set_ylabel("p_i / q_i")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def _coef_rows(fit: FitSummary, names) -> np.ndarray:
    """The coefficients to show: all up to MAX_COEF_ROWS, else the largest |theta / se|."""
    d = fit.theta.size
    if d <= MAX_COEF_ROWS:
        return np.arange(d)
    key = np.abs(fit.theta / fit.se) if fit.se is not None else np.abs(fit.theta)
    return np.sort(np.argsort(-key, kind="stable")[:MAX_COEF_ROWS])


def plot_fit(fit: FitSummary, names):
    """The DPO coefficients with their 95% sandwich intervals (where they exist)."""
    import matplotlib.pyplot as plt

    rows = _coef_rows(fit, names)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.28 * rows.size + 1.5), 3.4))
    pos = np.arange(rows.size)
    if fit.se is not None:
        ax.errorbar(pos, fit.theta[rows], yerr=1.959964 * fit.se[rows], fmt="o", ms=4,
                    capsize=2)
    else:
        ax.plot(pos, fit.theta[rows], "o", ms=4)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(pos)
    ax.set_xticklabels([names[r] for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("θ̂ (DPO)")
    ax.set_title("DPO fit" + (" with 95% sandwich intervals" if fit.se is not None else
                              " (no standard errors: see the report)"))
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- text
def _cell(text: str) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def _fmt(v, spec: str = ".4g") -> str:
    if v is None:
        return "—"
    return "∞" if np.isinf(v) else format(v, spec)


def _coverage_section(r: AuditReport) -> list[str]:
    cov = r.coverage
    ratio = cov.lambda_min / cov.lambda_max if cov.lambda_max > 0 else 0.0
    lines = ["## 1. Coverage", "",
             f"Σ = Σ_i q_i x_i x_iᵀ has λ_min = {cov.lambda_min:.4g} and λ_max = "
             f"{cov.lambda_max:.4g} (ratio {ratio:.3g}), rank {cov.rank} of {r.d}, and "
             f"effective dimension {cov.effective_dimension:.3g} ((tr Σ)² / tr Σ², the number "
             "of directions with comparable coverage). The DPO estimate is least certain "
             "along the eigenvectors of the smallest eigenvalues (docs/theory.md §5.2): the "
             "directions the data barely explore.", ""]
    if r.embedding is not None:
        e = r.embedding
        lines += [f"The features are the {e.dim} principal directions of the "
                  f"{e.spectrum.size}-dimensional {e.model} embedding differences; they keep "
                  f"{e.explained:.1%} of its trace (right panel).", ""]
    rows = []
    for k, w in enumerate(cov.weak, start=1):
        row = {"direction": k, "eigenvalue": w.eigenvalue,
               "largest loadings": ", ".join(f"{n} {v:+.2f}" for n, v in w.loadings),
               "pair exploring it most": w.pair, "its share": f"{w.share:.1%}"}
        if r.texts is not None:
            row["text of that pair"] = _cell(" / ".join(r.texts[w.pair].values()))
        rows.append(row)
    lines += [markdown_table(rows), "", "![coverage](figures/coverage.png)", ""]
    return lines


def _direction(v: np.ndarray, names) -> str:
    """A direction on one line: all of it up to 8 entries, else its largest ones."""
    if v.size <= 8:
        return np.array2string(v, precision=3, separator=", ", max_line_width=10**6)
    big = np.argsort(-np.abs(v), kind="stable")[:5]
    return (f"v (largest entries {', '.join(f'{names[j]} {v[j]:+.3f}' for j in big)}; all "
            "of it in audit.json)")


def _fit_section(r: AuditReport) -> list[str]:
    f = r.fit
    lines = ["## 2. The DPO fit", ""]
    if f.separable:
        lines += [f"**The data are separable**: the direction "
                  f"{_direction(f.direction, r.feature_names)} ranks every pair the way "
                  "its label says, so the DPO loss decreases without bound and no finite "
                  f"fit exists. The fit below is on the ball ‖θ‖ ≤ {f.bound:.4g}"
                  + (f", the ball on which no pair's margin exceeds {SEPARABLE_MARGIN:g} "
                     "(`--bound` sets another)." if f.default_bound else " (`--bound`)."), ""]
    elif f.bound is not None:
        lines += [f"The fit is on the ball ‖θ‖ ≤ {f.bound:.4g} (multiplier "
                  f"{f.bound_multiplier:.3g}).", ""]
    lines += [f"Mean DPO loss {f.objective:.4g} at β = {r.beta:g}; {f.accuracy:.1%} of the "
              f"weight is on pairs the fit ranks as labelled; gradient norm "
              f"{f.grad_norm:.2e}.", ""]
    if f.se is None:
        lines += [f"No sandwich standard errors: {f.se_note}", ""]
    else:
        lines += ["Standard errors: the plug-in sandwich H⁻¹JH⁻¹/n (docs/theory.md §5.8); "
                  "intervals are 95% Wald intervals.", ""]
    rows = []
    for j in _coef_rows(f, r.feature_names):
        row = {"feature": r.feature_names[j], "θ̂": float(f.theta[j])}
        if f.se is not None:
            row |= {"se": float(f.se[j]), "95% interval": f"[{f.lo[j]:.3g}, {f.hi[j]:.3g}]",
                    "θ̂/se": float(f.theta[j] / f.se[j])}
        rows.append(row)
    if r.d > MAX_COEF_ROWS:
        lines += [f"The {MAX_COEF_ROWS} coefficients with the largest |θ̂/se| of {r.d} "
                  "(all of them in audit.json):", ""]
    return lines + [markdown_table(rows), "", "![fit](figures/fit.png)", ""]


def _collapse_section(r: AuditReport) -> list[str]:
    c = r.collapse
    lines = ["## 3. Collapse radii", ""]
    if c.note:
        return lines + [f"Not computed: {c.note}.", ""]
    return lines + [
        "At and beyond these radii the robust optimum is θ = 0: robust training returns "
        "the reference policy (docs/theory.md §3.2, §3.6).", "",
        markdown_table([
            {"ball": "KL", "collapse radius": f"ρ₀ = {_fmt(c.kl)}", "unit": "nats"},
            {"ball": "W1 (κ = ∞)", "collapse radius": f"ε₀ = {_fmt(c.w1)}",
             "unit": "feature units"},
            {"ball": "W2 (κ = ∞)", "collapse radius": f"ε₀ = {_fmt(c.w2)}",
             "unit": "feature units"}]), ""]


def _suggestion_section(r: AuditReport) -> list[str]:
    s = r.suggestion
    lines = ["## 4. Suggested radius and temperature", ""]
    if s is None:
        return lines + ["No suggestion (see the notes).", ""]
    frac = ""
    if r.collapse.kl is not None and np.isfinite(r.collapse.kl) and r.collapse.kl > 0:
        frac = f", {s.implied_radius / r.collapse.kl:.1%} of the collapse radius ρ₀"
    sh = s.shift
    lines += [
        f"The rule (docs/theory.md §4.3): τ is the smallest KLDPO temperature whose weights "
        f"q_i e^(l_i/τ) on the DPO fit's per-pair losses keep an effective sample fraction "
        f"of {s.min_ess:g}; KLDPO at τ is exact KL-robust DPO at the radius ρ(τ) "
        "(docs/theory.md §4.2).", "",
        f"**τ = {s.tau:.4g}** (first order: sd(l)/√(−log {s.min_ess:g}) = "
        f"{s.tau_first_order:.4g}, loss sd {s.loss_sd:.4g}), **KL radius ρ(τ) = "
        f"{s.implied_radius:.4g}**{frac}.", "",
        f"Its worst case moves {sh.total_variation:.1%} of the weight (total variation), "
        f"keeps an effective sample fraction of {sh.ess:.3g}, up-weights a pair at most "
        f"{sh.max_ratio:.3g}-fold, and raises the mean DPO loss by {sh.loss_increase:.4g}.", ""]
    if s.note:
        lines += [f"Note: {s.note}.", ""]
    return lines


def _worst_case_section(r: AuditReport, top: int) -> list[str]:
    wc = r.worst_case
    lines = ["## 5. The pairs a robust objective leans on most", ""]
    if wc is None:
        return lines + ["No worst case (see the notes).", ""]
    sh = wc.shift
    n_up = int(np.sum(wc.ratio > 1))
    lines += [
        f"The exact KL worst case at ρ = {wc.radius:.4g} ({RULES[wc.rule]}), at the robust "
        f"optimum (status {wc.status}, dual λ* = {wc.dual:.4g}, robust loss "
        f"{wc.objective:.4g}): p_i ∝ q_i e^(l_i/λ*) (docs/theory.md §3.1). It up-weights "
        f"{n_up} of {r.n} pairs, at most {sh.max_ratio:.3g}-fold; effective sample fraction "
        f"{sh.ess:.3g}; total variation {sh.total_variation:.1%}.", "",
        "The pairs with the largest p_i/q_i have the largest loss at the robust fit: the "
        "fit disagrees with their labels most. They are the first candidates for label "
        "noise. Every pair's weight is in pairs.csv.", ""]
    rows = []
    for rank, i in enumerate(wc.top(top), start=1):
        row = {"rank": rank, "pair": int(i), "p_i/q_i": float(wc.ratio[i]),
               "loss": float(wc.losses[i]), "margin": float(wc.margins[i]),
               "y": int(r.data.y[i])}
        if r.texts is not None:
            row |= {k: _cell(v) for k, v in r.texts[i].items()}
        rows.append(row)
    return lines + [markdown_table(rows), "", "![worst case](figures/worst_case.png)", ""]


def markdown(report: AuditReport, *, top: int = TOP, command: str | None = None) -> str:
    """The page ``audit.md``."""
    r = report
    lines = [f"# Preference-data audit: {r.source}", "",
             f"{r.n} pairs, {r.d} features, β = {r.beta:g}; computed in "
             f"{r.seconds:.2f} s.", ""]
    if r.notes:
        lines += [*(f"- {note}" for note in r.notes), ""]
    lines += _coverage_section(r) + _fit_section(r) + _collapse_section(r)
    lines += _suggestion_section(r) + _worst_case_section(r, top)
    if command:
        lines += [f"Regenerate: `{command}`", ""]
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        if np.isnan(v):
            return "nan"
        return v if np.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    return obj


def summary(report: AuditReport) -> dict:
    """The report's numbers as JSON values (non-finite numbers as "inf", "-inf", "nan")."""
    from dataclasses import asdict

    r = report
    out = {"source": r.source, "n": r.n, "d": r.d, "beta": r.beta,
           "feature_names": list(r.feature_names), "notes": list(r.notes),
           "seconds": r.seconds,
           "coverage": {k: v for k, v in asdict(r.coverage).items() if k != "eigvecs"},
           "fit": asdict(r.fit), "collapse": asdict(r.collapse),
           "suggestion": None if r.suggestion is None else asdict(r.suggestion)}
    if r.worst_case is not None:
        out["worst_case"] = {k: v for k, v in asdict(r.worst_case).items()
                             if k not in ("p", "ratio", "losses", "margins")}
    if r.embedding is not None:
        e = r.embedding
        out["embedding"] = {"model": e.model, "dim": e.dim, "explained": e.explained,
                            "spectrum": e.spectrum}
    return _jsonable(out)


def write_report(report: AuditReport, out_dir, *, top: int = TOP,
                 command: str | None = None) -> Path:
    """Write ``audit.md``, ``figures/*.png``, ``audit.json`` and ``pairs.csv`` into
    ``out_dir``; returns the path of ``audit.md``."""
    import pandas as pd

    if not isinstance(report, AuditReport):
        raise TypeError(f"report must be an AuditReport, got {type(report).__name__}")
    if not isinstance(top, int) or top < 0:
        raise ValueError(f"top must be an integer >= 0, got {top!r}")
    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    save_figure(plot_coverage(report.coverage, report.embedding), figures / "coverage.png")
    save_figure(plot_fit(report.fit, report.feature_names), figures / "fit.png")
    if report.worst_case is not None:
        save_figure(plot_worst_case(report.worst_case, top=top), figures / "worst_case.png")
    (out / "audit.json").write_text(json.dumps(summary(report), indent=1) + "\n")
    table = {"pair": np.arange(report.n), "q": report.data.weight, "y": report.data.y}
    wc = report.worst_case
    if wc is not None:
        table |= {"p": wc.p, "ratio": wc.ratio, "loss": wc.losses, "margin": wc.margins}
    frame = pd.DataFrame(table)
    if report.texts is not None:
        for key in report.texts[0]:
            frame[key] = [t.get(key, "") for t in report.texts]
    frame.to_csv(out / "pairs.csv", index=False)
    path = out / "audit.md"
    path.write_text(markdown(report, top=top, command=command), encoding="utf-8")
    return path
