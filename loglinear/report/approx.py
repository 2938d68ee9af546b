"""Report of the approximation study: ``loglinear report approx reports/approximations``.

A view: :func:`build` has :func:`loglinear.experiments.approx.analysis.write_tables` write
the tables (``exponents.csv``, ``summary.csv``, ... and ``counts.json``) into the records
directory, then reads them back, formats the markdown and draws the figures
(``plot_*(table) -> Figure``). Figures go to ``<out>/approximations/figures`` and the
markdown to ``<out>/approximations.md`` (``out`` defaults to the records directory's
parent, so the default study lands in ``reports/``).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np

from .. import plots as views
from ..experiments.approx.config import DIVERGENCES
from . import COMMITTED
from ._common import markdown_table, save_figure

LABELS = {"kl": "KL", "w1": "W1 (κ = ∞)", "w2": "W2 (κ = ∞)"}
METRICS = {"rel_err": r"$\|\theta_{approx} - \theta_{exact}\|_\Sigma\ /\ "
                      r"\|\theta_{DPO}\|_\Sigma$",
           "subopt_ratio": r"$[V(\theta_{approx}) - V(\theta_{exact})]\ /\ "
                           r"[V(\theta_{DPO}) - V(\theta_{exact})]$"}
METRIC_NAMES = {"rel_err": "‖θ_approx − θ_exact‖_Σ / ‖θ_DPO‖_Σ",
                "subopt_ratio": "excess exact robust loss over DPO's"}
FLOAT_FLOOR = 1e-16   # exact agreement is drawn at the float floor, not dropped
LINESTYLES = ("-", (0, (5, 2)), (0, (1, 1.5)), (0, (3, 1.5, 1, 1.5)))
PREVIOUS = Path("previous", "summary.csv")  # the previous version's summary, beside records
STUDY_CONFIG = "simulations/approx.toml"   # the study's config, named in the report
# where `loglinear approx-study --config STUDY_CONFIG` writes its records (the committed ones)
DEFAULT_RECORDS = Path("reports", COMMITTED["approx"].records)


def plot_error_vs_radius(curves, divergence: str, metric: str = "rel_err"):
    """Log-log error against the radius fraction, one line per surrogate variant (median
    over environments; shaded: min to max over them), from the ``curves`` table of
    :func:`loglinear.experiments.approx.analysis.curves`. A variant takes its estimator's
    colour (:func:`loglinear.plots.estimator_color`); variants of one estimator differ by
    line style."""
    plt = views.pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    stats = curves[(curves["divergence"] == divergence) & (curves["metric"] == metric)]
    seen: dict = {}
    handles, values = [], []
    for variant in sorted(stats["variant"].unique()):
        s = stats[stats["variant"] == variant].sort_values("fraction")
        fam = views.estimator_family(variant)
        ls = LINESTYLES[seen.setdefault(fam, []).__len__() % len(LINESTYLES)]
        seen[fam].append(variant)
        y = np.maximum(np.abs(s["median"].to_numpy(float)), FLOAT_FLOOR)
        f = s["fraction"].to_numpy(float)
        label = variant + (" (≡ exact: float floor)" if bool(s["exact"].iloc[0]) else "")
        (line,) = ax.plot(f, y, ls=ls, marker=views.estimator_marker(variant), ms=3.5, lw=1.2,
                          color=views.estimator_color(variant), label=label)
        handles.append(line)
        lo = np.maximum(np.abs(s["min"].to_numpy(float)), FLOAT_FLOOR)
        hi = np.maximum(np.abs(s["max"].to_numpy(float)), FLOAT_FLOOR)
        ax.fill_between(f, lo, hi, alpha=0.12, color=line.get_color(), lw=0)
        values += [y, lo, hi]
    lo, hi, clipped = views.sane_limits(np.concatenate(values) if values else [1.0])
    views.note_clipped(ax, clipped)
    ax.set(xscale="log", yscale="log", ylim=(lo, hi), xlabel="radius / collapse radius",
           ylabel=METRICS.get(metric, metric), title=LABELS.get(divergence, divergence))
    ax.grid(True, which="both", alpha=0.3)
    views.legend_outside(fig, handles, ncol=2)
    fig.tight_layout()
    return fig


def _summary_rows(summary, fractions) -> list[dict]:
    """The summary table as the report prints it (the conclusions read these rows)."""
    lo, hi = fractions
    return [{
        "divergence": r["divergence"], "variant": r["variant"],
        "exponent (median [min, max])": (
            f"{r['exponent_median']:.2f} [{r['exponent_min']:.2f}, {r['exponent_max']:.2f}]"
            if r["exponents"] else "— (error at solver floor)"),
        f"rel err @{lo:g}": r[f"rel_err@{lo:g}"],
        f"rel err @{hi:g}": r[f"rel_err@{hi:g}"],
        f"subopt/DPO @{lo:g}": r[f"subopt_ratio@{lo:g}"],
        f"subopt/DPO @{hi:g}": r[f"subopt_ratio@{hi:g}"],
        f"value gap @{lo:g}": r[f"value_gap@{lo:g}"],
    } for r in summary.to_dict("records")]


def _by_regime_rows(table, fractions) -> list[dict]:
    lo, hi = fractions
    rows = []
    for (conc, data), g in table.groupby(["concentration", "data"], sort=True):
        row = {"concentration": f"{conc:g}", "data": data,
               "λ_min (median)": f"{g['lambda_min'].iloc[0]:.3g}"}
        for r in g.to_dict("records"):
            row[f"{r['divergence']}: {r['variant']}"] = (f"{r[f'rel_err@{lo:g}']:.2g} / "
                                                         f"{r[f'rel_err@{hi:g}']:.2g}")
        rows.append(row)
    return rows


def _same_dir(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _study_command(records_dir: Path) -> str:
    """The command that wrote ``records_dir``: ``--out`` is named unless the records sit
    where the study's config puts them."""
    words = ["loglinear", "approx-study", "--config", STUDY_CONFIG]
    if not _same_dir(records_dir, DEFAULT_RECORDS):
        words += ["--out", str(records_dir)]
    return shlex.join(words)


def _report_command(records_dir: Path, out_dir: Path | None) -> str:
    """The command that rebuilds this page (``--out`` when it is not the default)."""
    words = ["loglinear", "report", "approx", str(records_dir)]
    return shlex.join(words + ([] if out_dir is None else ["--out", str(out_dir)]))


def build(records_dir, out_dir=None) -> Path:
    """Regenerate ``approximations.md`` and its figures from the stored records.

    Calls :func:`loglinear.experiments.approx.analysis.write_tables` (the tables beside
    the records, ``exponents.csv`` among them), then formats what
    :func:`~loglinear.experiments.approx.analysis.read_tables` reads back.
    """
    from ..experiments.approx import analysis

    records_dir = Path(records_dir)
    analysis.write_tables(records_dir)
    t = analysis.read_tables(records_dir)
    counts, fractions = t.counts, t.counts["report_fractions"]
    given_out = out_dir is not None and not _same_dir(out_dir, records_dir.parent)
    out_dir = records_dir.parent if out_dir is None else Path(out_dir)
    fig_dir = out_dir / "approximations" / "figures"
    max_frac = counts["max_fraction"]

    figs = []
    for div in [d for d in DIVERGENCES if d in set(t.curves["divergence"])]:
        for metric in METRICS:
            p = save_figure(plot_error_vs_radius(t.curves, div, metric),
                            fig_dir / f"{div}_{metric}.png")
            figs.append((div, metric, p.relative_to(out_dir), _caption(t.curves, div, metric,
                                                                      counts)))

    rows = _summary_rows(t.summary, fractions)
    env_rows = [{"env": r["env"], "concentration": float(r["concentration"]),
                 "data": ("population" if r["n_samples"] == 0
                          else f"sample, n = {int(r['n_samples'])}"),
                 "λ_min(Σ)": float(r["lambda_min"])} for r in t.environments.to_dict("records")]
    collapse = [c for c in t.environments.columns if c.startswith("collapse_")]
    lines = [
        "# The paper's approximations against the exact robust solutions",
        "",
        f"Generated by `{_study_command(records_dir)}`; regenerate this page from the stored "
        f"records with `{_report_command(records_dir, out_dir if given_out else None)}`.",
        f"Records: `{records_dir}/records.csv` ({counts['records']} rows); config: "
        f"`{records_dir}/config.json`; exponents: `{records_dir}/exponents.csv`.",
        "",
        "Each environment is an exact finite population (or a sample, if `n_samples > 0`) in "
        "the centred parameterisation w = θ − θ_ref. For each divergence the radius runs over "
        "fractions of that divergence's **collapse radius** (the radius beyond which the exact "
        "robust optimum is θ = 0). At every radius the exact problem is solved once "
        "(`loglinear.robust`), then every surrogate variant is fitted (`loglinear.approx`).",
        "",
        "Variants: `wdpo-paper` is Algorithm 1 with ρ_o = radius; `wdpo-paper@R-cal` uses "
        "ρ_o = ε / R(θ_DPO) with R = RMS σ(−m) (puts the paper's penalty on exact W1); "
        "`wdpo-official@dpo-cal` is the released code's squared penalty with "
        "ρ = ε / (2G(θ_DPO)) (first-order W2 calibration at the DPO fit); "
        "`wdpo-official@fit-cal` solves 2ρG(θ̂(ρ)) = ε at its own fit (then it must coincide "
        "with `wdpo-paper`); `kldpo-*@dual` use τ = the exact dual λ*(ρ) (the paper "
        "form must then equal the exact solution); `kldpo-paper@dpo-cal` picks τ so that the "
        "weights at the DPO fit have KL = ρ (a cheap calibration that needs no robust solve); "
        "`dpo` is the non-robust baseline.",
        "",
        "## Changes since the previous version",
        "",
        *_changes(_previous(records_dir), t.summary, counts),
        "",
        "## Environments",
        "",
        markdown_table(env_rows),
        "",
        "Collapse radii:",
        "",
        markdown_table([{"env": r["env"], **{LABELS[c.removeprefix("collapse_")]: float(r[c])
                                             for c in collapse}}
                        for r in t.environments.to_dict("records")]),
        "",
        "## Summary",
        "",
        "`rel err` is ‖θ_approx − θ_exact‖_Σ / ‖θ_DPO‖_Σ with Σ = E_q[x xᵀ] the data's "
        "coverage matrix: the RMS change of the pairs' log-ratio differences x·θ as a "
        "fraction of the DPO policy's, a scale that does not vanish at the collapse radius. "
        f"Exponent: least-squares slope of log ‖θ_approx − θ_exact‖_Σ on log radius over "
        f"fractions ≤ {max_frac:g}, per environment. `subopt/DPO` is the surrogate's excess "
        "exact robust loss divided by plain DPO's, per environment (below 1: better than not "
        "being robust at all). All entries are medians over the "
        f"{counts['environments']} environments. `value gap` is the surrogate's value minus "
        "the exact worst case at θ_exact (KLDPO: τρ + τ log Σ q e^{l/τ}, an upper bound).",
        "",
        markdown_table(rows, floatfmt=".3g"),
        "",
        "### By coverage level and data regime",
        "",
        "Median `rel err` (‖θ_approx − θ_exact‖_Σ / ‖θ_DPO‖_Σ) at 10% / 90% of the "
        "collapse radius, per sampling concentration (larger: poorer coverage, smaller "
        "λ_min) and data regime.",
        "",
        markdown_table(_by_regime_rows(t.by_regime, fractions)),
        "",
        "## Figures",
        "",
    ]
    for div, metric, p, caption in figs:
        lines += [f"![{div} {metric}]({p})", "", caption, ""]
    if t.refit is not None:
        lines += _refit_section(t.refit, counts["refit"])
    cases = counts["exact_failures"]
    if cases:
        lines += ["## Exact-solver failures", "",
                  "These cases have no exact solution (the solver raised); their rows carry "
                  "status `exact_failed` and NaN metrics and are left out of every median: "
                  + ", ".join(f"{e} {d} at fraction {f:g}" for e, d, f in cases) + ".", ""]
    lines += ["## Conclusions", "", *_conclusions(rows), ""]
    out = out_dir / "approximations.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out


def _caption(curves, div: str, metric: str, counts: dict) -> str:
    """What a figure shows, its band, and which curves hide others (from the table)."""
    st = curves[(curves["divergence"] == div) & (curves["metric"] == metric)]
    hid = st.groupby("variant")["hidden_by"].first()
    hid = hid[hid.notna() & (hid.astype(str) != "") & (hid.astype(str) != "nan")]
    txt = (f"*{LABELS.get(div, div)}, {METRIC_NAMES[metric]}.* Line: the median over the "
           f"{counts['environments']} environments (coverage levels × replicates × data "
           "regimes); shaded: the range (minimum to maximum) over them; a variant that "
           "coincides with the exact solution is drawn at the float floor 1e-16.")
    if len(hid):
        txt += " Hidden curves (medians within 2% of each other at every radius): " + "; ".join(
            f"`{a}` lies under `{b}`" for a, b in hid.items()) + "."
    return txt


def _previous(records_dir: Path):
    """The previous version's summary table (``previous/summary.csv``), or None."""
    import pandas as pd

    path = records_dir / PREVIOUS
    return pd.read_csv(path) if path.exists() else None


def _changes(prev, summary, counts: dict) -> list[str]:
    """What moved since the previous version, by how much, and why (numbers from the
    previous summary table and this run's tables)."""
    if prev is None:
        return ["No previous version of this study is on record (`previous/summary.csv`)."]
    hi = counts["fraction_max"]
    new = summary.set_index(["divergence", "variant"])
    old = prev.set_index(["divergence", "variant"])
    col = f"rel_theta_err@{hi:g}"
    # the surrogates' largest entries (DPO, the baseline, is left out)
    surrogate = old[old.index.get_level_values("variant") != "dpo"]
    worst = surrogate[col].dropna().sort_values(ascending=False).head(3)
    scale = ", ".join(f"{LABELS[d]} {v:.2g}" for d, v in counts["collapse_scale"].items())
    moved = [f"`{d}/{v}` {old.loc[(d, v), col]:.3g} → {new.loc[(d, v), f'rel_err@{hi:g}']:.3g}"
             for d, v in worst.index if (d, v) in new.index]
    both = old.index.intersection(new.index)
    diff = lambda a, b: (new.loc[both, a] - old.loc[both, b]).abs().dropna()
    lo = counts["report_fractions"][0]
    dexp = diff("exponent_median", "exponent_median")
    dsub = diff(f"subopt_ratio@{hi:g}", f"subopt_over_dpo@{hi:g}")
    dgap = diff(f"value_gap@{lo:g}", f"value_gap@{lo:g}")
    out = [
        f"- **Error metric.** The previous version divided ‖θ_approx − θ_exact‖ by "
        f"‖θ_exact‖, which at {hi:.0%} of the collapse radius is only a fraction of "
        f"‖θ_DPO‖ (median ‖θ_exact‖/‖θ_DPO‖ there: {scale}), so its relative errors near "
        "the collapse were inflated by that factor. Errors are now "
        "‖θ_approx − θ_exact‖_Σ / ‖θ_DPO‖_Σ; the previous version's three largest surrogate "
        f"entries at {hi:g} become: " + "; ".join(moved) + ".",
        "- **Figures in the table's metric.** The figures showed the absolute Euclidean error "
        "and the absolute excess loss while the tables gave relative ones; both now show "
        "the same two metrics, each shaded band is defined in its caption (minimum to "
        "maximum over the environments), and a curve that hides another is named.",
        f"- **subopt/DPO** was a ratio of medians; it is now the median of the "
        f"per-environment ratios (largest change {dsub.max():.2g}). The solutions did not "
        f"move: the value gaps at {lo:g} agree with the previous version's to "
        f"{dgap.max():.1g}.",
    ]
    if len(dexp):
        out.append(f"- **Exponents** are fitted to the Σ-norm error: the median exponents "
                   f"moved by at most {dexp.max():.2f} (`{'/'.join(dexp.idxmax())}`).")
    return out


def _conclusions(rows) -> list[str]:
    """Plain-language conclusions; every number is read from the summary rows."""
    get = {(r["divergence"], r["variant"]): r for r in rows}
    out = []

    def r(div, var):
        return get.get((div, var))

    if r("w2", "wdpo-paper"):
        a = r("w2", "wdpo-paper")
        out.append(
            f"- **WDPO (paper form) is a good W2 surrogate at small radii.** Its parameter error "
            f"shrinks like radius^{a['exponent (median [min, max])'].split()[0]} (first-order "
            "theory: radius²), and its excess exact W2 loss is a fraction "
            f"{a['subopt/DPO @0.1']:.2g} of DPO's at 10% of the collapse radius, "
            f"{a['subopt/DPO @0.9']:.2g} at 90%. At fixed θ it always *under*-states the "
            "worst case, by at most β²‖θ‖²ε²/8 (tested): 0 ≤ V_W2 − (L + εG) ≤ β²‖θ‖²ε²/8.")
    if r("w1", "wdpo-paper"):
        a, b = r("w1", "wdpo-paper"), r("w1", "wdpo-paper@R-cal")
        out.append(
            "- **Read as a W1 method, the paper's penalty is too weak by the factor R = RMS "
            f"σ(−m) < 1.** Uncalibrated, its rel err is {a['rel err @0.1']:.2g} "
            f"already at 10% of the collapse radius and does not vanish faster than the radius "
            f"(exponent {a['exponent (median [min, max])'].split()[0]}). Rescaling ρ by 1/R "
            f"measured at the DPO fit cuts it to {b['rel err @0.1']:.2g} "
            f"(exponent {b['exponent (median [min, max])'].split()[0]}).")
    if r("w2", "wdpo-official@dpo-cal"):
        a = r("w2", "wdpo-official@dpo-cal")
        out.append(
            "- **The official squared penalty is a different regulariser.** Even calibrated to "
            "the W2 radius to first order at the DPO fit, its rel err is "
            f"{a['rel err @0.1']:.2g} at 10% and {a['rel err @0.9']:.2g} at 90% of the "
            "collapse radius: it behaves like ridge (penalty ∝ ‖θ‖²), it never collapses to "
            "θ = 0, and its ρ has no fixed meaning as a radius (the exact map is ε = 2ρG(θ̂)).")
    if r("w2", "wdpo-official@fit-cal"):
        a = r("w2", "wdpo-official@fit-cal")
        out.append(
            "- **With the self-consistent map ε = 2ρG(θ̂(ρ)) the official form is the paper "
            f"form** (median rel err to the exact solution {a['rel err @0.1']:.2g}"
            " at 10%, identical to `wdpo-paper`): the two penalties share their stationary "
            "points, so the official ρ is a θ-dependent radius, and it can only reach radii "
            "below the W2 collapse radius.")
    if r("kl", "kldpo-paper@dual"):
        a, c = r("kl", "kldpo-paper@dual"), r("kl", "kldpo-official@dual")
        b = r("kl", "kldpo-paper@dpo-cal")
        out.append(
            "- **KLDPO (paper form) is exact, not approximate:** with τ = λ*(ρ) it reproduces "
            f"the exact KL-DRO solution (median rel err {a['rel err @0.1']:.1g} at 10%,"
            f" {a['rel err @0.9']:.1g} at 90%). The difficulty is only the map τ ↔ ρ.")
        if c:
            out.append(
                "- **The official cap (10) did not bind** at any of these solutions "
                f"(median rel err {c['rel err @0.1']:.1g}): (l_i − l̄)/τ stayed below "
                "log 10 because the loss spread shrinks with θ as the radius grows. "
                "The cap matters "
                "when some pairs have losses θ cannot reduce (see "
                "`test_cap_changes_the_fixed_point_by_example`: θ 1.32 → 0.61).")
        if b:
            out.append(
                "- **Calibrating τ at the DPO fit is poor:** choosing τ so that the weights at "
                f"θ_DPO have KL = ρ gives rel errs {b['rel err @0.1']:.2g} at 10% and "
                f"{b['rel err @0.9']:.2g} at 90% (exponent "
                f"{b['exponent (median [min, max])'].split()[0]}): the losses at θ_DPO are "
                "more spread than at the robust solution, so the same KL needs a larger τ and "
                "the surrogate is not robust enough. Use "
                "`tau_for_radius_kl`, which inverts the exact implied radius.")
    out.append(
        "- **Where KLDPO's own iteration fails.** The paper's gradient iteration is gradient "
        "descent on the convex τ log Σ q e^{l/τ} and converges with step 1/L, L = β² max‖x‖² "
        "(1/4 + 1/τ). The 'refit with frozen weights, then reweight' iteration instead has "
        "Jacobian −H_W^{-1} Σ ∇l ∇Wᵀ at its fixed point; for a well-specified Bradley–Terry "
        "population it equals −I/τ exactly (and θ_KLDPO = θ* τ/(1+τ)), so it converges only "
        "for τ > 1 and oscillates for τ ≤ 1 (tested; `fit_kldpo(method='refit')` warns).")
    return out


def _refit_section(refit, counts: dict) -> list[str]:
    """The refit-then-reweight KLDPO iteration: predicted contraction vs what happened."""
    tol = counts["reached_tol"]
    rows = [{"data": r["data"], "τ": float(r["tau"]), "contraction (median [min, max])":
             f"{r['contraction_median']:.3g} [{r['contraction_min']:.3g}, "
             f"{r['contraction_max']:.3g}]",
             "reached θ_KLDPO": f"{int(r['reached'])}/{int(r['runs'])}",
             "median ‖θ − θ_KLDPO‖ after the run": float(r["theta_err_median"])}
            for r in refit.to_dict("records")]
    return [
        "## The refit-then-reweight KLDPO iteration",
        "",
        "`fit_kldpo(method='refit')` refits DPO with the weights frozen, then reweights. At "
        "its fixed point the map has Jacobian J = −H_W⁻¹ Σ_i ∇l_i ∇W_iᵀ; the *contraction* is "
        "its spectral radius ρ(J) (`refit_contraction`), and the iteration can converge only "
        "if ρ(J) < 1. For a well-specified Bradley–Terry population J = −I/τ exactly. "
        f"Prediction (ρ(J) < 1 ⇔ within {tol:g} of θ_KLDPO after the iteration cap) "
        f"matched in {counts['agree']} of {counts['runs']} runs. At τ = 1 on a population the "
        "iteration cycles with period 2 (J = −I).",
        "",
        markdown_table(rows, floatfmt=".3g"),
        "",
    ]
