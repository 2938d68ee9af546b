# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # How estimation error depends on the coverage eigenvalue λ
#
# The guarantees of Xu et al. (2025) scale with $1/\lambda$, where λ lower-bounds
# $\lambda_{min}(\Sigma)$ (docs/theory.md §5.2–5.3). Here we measure, in finite log-linear environments
# with exact population targets:
#
# 1. the estimation error of DPO and of the exact robust estimators against λ_min;
# 2. the local prediction $\sqrt{\mathrm{tr}\,V/n}$ (sandwich; $\sqrt{\mathrm{tr} H^{-1}/n}$ for
#    DPO) against the worst-case $1/\lambda$ scaling;
# 3. the paper's bound curves next to the measured errors;
# 4. the interaction with the robust radius: the collapse radius (where the robust optimum
#    becomes $\pi_{ref}$) against coverage, and how the solution shrinks toward $\pi_{ref}$.
#
# The errors come from the rates study runner (`loglinear.experiments.rates.run`). If precomputed
# records exist (`PRECOMPUTED`), they are read; otherwise a small grid is computed here in
# well under a minute. Robust radii follow the study's "fixed" schedule: a fraction of each
# estimator's population collapse radius.

# %% tags=["parameters"]
SEED = 0
PRECOMPUTED = "reports/rates"  # folder with records.csv + targets.csv (or records/ inside), or None
N_VALUES = [250, 1000, 4000]
SEEDS = 5  # replicate samples per (setting, n)
CONCENTRATIONS = [0.0, 1.5, 3.0, 4.5]
SPECTRUM_DECAYS = [1.0, 0.5]
ESTIMATORS = ["dpo", "kl", "w1", "w2", "kldpo"]
SCHEDULE = "fixed"  # the radius schedule shown (precomputed studies may hold several)
COLLAPSE_FRACTION = 0.3  # robust radius = this fraction of the population collapse radius
KLDPO_TAU = 1.0
N_STATES, N_ACTIONS, DIM, BETA, REWARD_SCALE = 6, 4, 3, 1.0, 1.5  # computed grid only
BOUND = 2.0  # B in Theta = {||theta|| <= B} (DPO fits and the section 5 constants); ||w*|| = 1.5
SHRINK_FRACTIONS = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.2]
FIGURE_DIR = None  # a folder name to also save every figure as PNG

# %%
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from loglinear import estimation, robust, stats
from loglinear import plots as views
from loglinear.experiments import explore, rates
from loglinear.experiments.records import read_records


def show(fig, name):
    """Display a figure, and save it under FIGURE_DIR when one is set."""
    if FIGURE_DIR:
        Path(FIGURE_DIR).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(FIGURE_DIR) / f"lambda_{name}.png", dpi=110, bbox_inches="tight")
    plt.show()
    plt.close(fig)


# %% [markdown]
# ## The records
# Each setting is one environment: the sampling concentration and the feature spectrum decay
# move λ_min over orders of magnitude. Every estimator sees the same samples.

# %%
# relative to the repository root, or to notebooks/ when Jupyter was started there
roots = [Path(PRECOMPUTED), Path("..") / PRECOMPUTED] if PRECOMPUTED else []
candidates = [p for r in roots for p in (r, r / "records")]
source = next((p for p in candidates if (p / "records.csv").exists()
               and (p / "targets.csv").exists()), None)
if source is not None:
    print(f"reading precomputed records from {source}")
    records = read_records(source / "records.csv")
    targets = read_records(source / "targets.csv", dtype={"hyperparameter": str},
                           keep_default_na=False)
    if (source / "config.json").exists():  # the study's own B and beta for the theory
        stored = json.loads((source / "config.json").read_text())
        BOUND = float(stored.get("bound", BOUND))
        betas = {float(st.get("beta", BETA)) for st in stored.get("settings", [])}
        BETA = betas.pop() if len(betas) == 1 else BETA
else:
    settings = tuple(
        rates.EnvSpec(name=f"g{c:g}-r{r:g}", n_states=N_STATES, n_actions=N_ACTIONS, dim=DIM,
                      beta=BETA, reward_scale=REWARD_SCALE, concentration=c,
                      spectrum=tuple(r ** np.arange(DIM)) if r != 1.0 else None)
        for c in CONCENTRATIONS for r in SPECTRUM_DECAYS)
    config = rates.RatesConfig(
        name="notebook-lambda", seed=SEED, n=tuple(N_VALUES), seeds=SEEDS,
        estimators=tuple(ESTIMATORS), settings=settings, bound=BOUND,
        schedules=(rates.Schedule(name=SCHEDULE, collapse_fraction=COLLAPSE_FRACTION,
                                  scale={"kldpo": KLDPO_TAU}),))
    print(f"computing {len(settings)} settings x {len(N_VALUES)} n x {SEEDS} seeds")
    with tempfile.TemporaryDirectory(prefix="loglinear-lambda-") as tmp:
        records = read_records(rates.main(config, tmp, progress=False) / "records.csv")
        targets = read_records(Path(tmp) / "targets.csv", dtype={"hyperparameter": str},
                               keep_default_na=False)

summary = pd.DataFrame(explore.summarize_rates(records))
# one radius schedule (DPO has none); other schedules live in the rates report
summary = summary[summary.schedule.isin([SCHEDULE, "none"])]
print(f"{len(records)} rows; failed fits: {int(summary.failed.sum())}")
print(f"RMSE at n = {summary.n.max()} (schedule {SCHEDULE!r}):")
display(summary[summary.n == summary.n.max()].pivot_table(
    index=["setting", "lambda_min"], columns="estimator", values="rmse").round(4))

# %% [markdown]
# ## 1. Error against λ_min
# Markers: the measured RMSE over seeds; dashed: the local prediction $\sqrt{\mathrm{tr}V/n}$
# from the exact population target (`loglinear.estimation.local_asymptotics`). Poorer coverage
# means larger error for every estimator; the robust estimators are compared against their
# own population optimum, which is shrunk toward $\pi_{ref}$, so their errors are smaller.

# %%
show(views.plot_error_vs_lambda(summary, title="Estimation error against coverage λ_min"),
     "error_vs_lambda")

# %% [markdown]
# ## 2. The local prediction against the worst-case 1/λ
# The measured RMSE follows $\sqrt{\mathrm{tr}V/n}$ closely, except where a sample is nearly
# separable in a poorly covered direction (there DPO is held by the ball $\|\theta\| \le B$,
# while unbounded fits can overshoot). The trace grows with $1/\lambda_{min}$; the fitted
# elasticity $d\log \mathrm{tr}H^{-1}/d\log\lambda$ is printed next to the worst-case
# exponent −1, and the paper's level $d/(\gamma\lambda)$ is printed for comparison.

# %%
show(views.plot_prediction_scatter(summary, title="Measured RMSE against √(tr V / n)"),
     "prediction_scatter")

# %%
tr = targets[(targets.hyperparameter != "collapse") & (targets.status == "ok")].copy()
# the targets of the schedule shown above only (a shrinking schedule has one per n)
shown = records[records.schedule.isin([SCHEDULE, "none"])]
keep = {(r.setting, r.estimator,
         "" if pd.isna(r.hyperparameter) else repr(float(r.hyperparameter)))
        for r in shown[["setting", "estimator", "hyperparameter"]].drop_duplicates().itertuples()}
tr = tr[[k in keep for k in zip(tr.setting, tr.estimator, tr.hyperparameter)]]
lam_of = summary.groupby("setting").lambda_min.first()
tr["lambda_min"] = tr.setting.map(lam_of)
tr = tr[np.isfinite(tr.tr_hinv.astype(float)) & tr.lambda_min.notna()]
tr["tr_hinv"] = tr.tr_hinv.astype(float)
for est, sub in tr.groupby("estimator"):
    if sub.lambda_min.nunique() >= 2:
        e = stats.elasticity(sub.lambda_min.to_numpy(), sub.tr_hinv.to_numpy())
        print(f"{est:6s}: tr H^-1 ∝ λ_min^{e.slope:+.2f}  (R² = {e.r2:.2f}; worst case: −1)")
dpo_tr = tr[tr.estimator == "dpo"].sort_values("lambda_min")
lam_grid = np.geomspace(tr.lambda_min.min(), tr.lambda_min.max(), 20)
anchor = dpo_tr.iloc[-1]
d = len(json.loads(dpo_tr.theta.iloc[0]))
gamma = estimation.theory_constants(beta=BETA, bound=BOUND).gamma
show(views.plot_against_lambda(
    tr, y="tr_hinv", hue="estimator", ylabel="tr H⁻¹ at the population optimum",
    title="tr H⁻¹ against λ_min (dashed: a 1/λ line through DPO's best-covered setting)",
    references={"∝ 1/λ (worst-case scaling)": (lam_grid,
                                                anchor.tr_hinv * anchor.lambda_min / lam_grid)}),
    "trace_vs_lambda")
print(f"the paper's constant: d/(γλ) with γ = {gamma:.3g} (β = {BETA:g}, B = {BOUND:g}) is "
      f"{d / (gamma * tr.lambda_min.max()):.3g} at the best-covered setting")

# %% [markdown]
# ## 3. The paper's bounds next to the measured errors
# For the best- and worst-covered settings: Proposition 1 (DPO, converted from the $\Sigma_D$
# norm to the Euclidean norm by $1/\sqrt{\lambda_{min}}$, constant C = 1), Theorem 1 (the
# Wasserstein estimators, $O(n^{-1/4})$) and Theorem 2 (KL, with the population dual λ* for
# both λ_lo and λ_hi), with δ = 0.05. The constants are reconstructions (docs/theory.md §5.1, §5.3).
# With γ = β²e^{4βB}/(1+e^{4βB})² the bounds sit orders of magnitude above the measured
# errors, and Theorems 1–2 decay like $n^{-1/4}$ where the errors decay like $n^{-1/2}$.

# %%
def bound_curves(setting):
    lam = float(lam_of[setting])
    ns = np.geomspace(summary.n.min(), summary.n.max(), 20)
    curves = {"Prop. 1 / √λ (DPO)": estimation.proposition1_bound(
        ns, beta=BETA, bound=BOUND, dim=d) / np.sqrt(lam),
        "Thm 1 (WDPO, W₁, W₂)": estimation.theorem1_bound(ns, beta=BETA, bound=BOUND, lam=lam)}
    kl_t = targets[(targets.setting == setting) & (targets.estimator == "kl")
                   & (targets.hyperparameter != "collapse")]
    if len(kl_t) and np.isfinite(float(kl_t.dual.iloc[0])) and float(kl_t.dual.iloc[0]) > 0:
        dual = float(kl_t.dual.iloc[0])
        curves[f"Thm 2 (KL, λ* = {dual:.3g})"] = estimation.theorem2_bound(
            ns, beta=BETA, bound=BOUND, lam=lam, dual_lo=dual, dual_hi=dual)
    return ns, curves


fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
for ax, setting in zip(axes, [lam_of.idxmax(), lam_of.idxmin()]):
    ns, curves = bound_curves(setting)
    sub = summary[summary.setting == setting]
    views.plot_bound_curves(sub, {k: (ns, v) for k, v in curves.items()}, ax=ax,
                            title=f"setting {setting}: λ_min = {lam_of[setting]:.3g}")
fig.suptitle(f"The paper's bounds (black; reconstructed constants, B = {BOUND:g}) "
             "against measured errors")
fig.tight_layout()
show(fig, "bounds")

# %% [markdown]
# ## 4. The robust radius: collapse and shrinkage toward π_ref
# With zero offsets every loss equals log 2 at $w = 0$ ($\pi = \pi_{ref}$), and beyond a
# finite **collapse radius** the robust optimum is exactly $\pi_{ref}$. Poor coverage makes
# that radius small: a sparsely covered direction is cheap for the adversary to erase.

# %%
collapse = pd.DataFrame(explore.collapse_sweep(
    concentrations=CONCENTRATIONS + [6.0],
    base={"n_states": N_STATES, "n_actions": N_ACTIONS, "dim": DIM, "beta": BETA,
          "reward_scale": REWARD_SCALE},
    replicates=3, seed=SEED))
show(views.plot_against_lambda(collapse.rename(columns={"replicate": "environment"}),
                               y="collapse_radius", hue="kind", style="environment",
                               title="Collapse radius against coverage (3 environments, "
                                     "concentration path)",
                               ylabel="radius at which the robust optimum is π_ref"),
     "collapse_vs_lambda")

# %% [markdown]
# Below the collapse radius the exact robust solution shrinks continuously toward $\pi_{ref}$:
# $\|w_\rho\|/\|w^*\|$ and $KL(\pi_\theta\|\pi_{ref})$ fall to zero as ρ reaches it. The same
# environment with concentrated sampling (smaller λ_min) collapses at a smaller radius.
#
# For KL with a linear Bradley–Terry reward the shrinkage is exactly radial:
# $w_\rho = \frac{\lambda^*}{1+\lambda^*} w^*$, with λ* the dual variable (the two labels of
# every pair balance under the tilted weights $q_y e^{l_y/\lambda}$); the check is printed.

# %%
shrink_frames = []
for gamma_c in (CONCENTRATIONS[0], CONCENTRATIONS[-1]):
    env = explore.random_env(np.random.default_rng(SEED), n_states=N_STATES,
                             n_actions=N_ACTIONS, dim=DIM, beta=BETA,
                             reward_scale=REWARD_SCALE, concentration=gamma_c)
    kinds = ["kl"] + (["w1", "w2"] if hasattr(robust, "solve_wasserstein") else [])
    for kind in kinds:
        rows = explore.shrinkage_path(env, fractions=SHRINK_FRACTIONS, kind=kind)
        shrink_frames.append(pd.DataFrame(rows).assign(
            curve=f"{kind}, γ = {gamma_c:g} (λ_min = {env.coverage().lambda_min:.2g})"))
shrink = pd.concat(shrink_frames, ignore_index=True)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
views.plot_lines(shrink, x="radius", y="norm_ratio", hue="curve", ax=axes[0],
                 hue_format=str, title="Shrinkage of the exact robust optimum",
                 xlabel="radius ρ", ylabel="‖w_ρ‖ / ‖w*‖  (0 = π_ref)")
views.plot_lines(shrink, x="radius", y="kl_to_ref", hue="curve", ax=axes[1],
                 hue_format=str, title="Distance of the robust policy from π_ref",
                 xlabel="radius ρ", ylabel="KL(π_θ ‖ π_ref)")
show(fig, "shrinkage")
kl_rows = shrink[(shrink.kind == "kl") & np.isfinite(shrink.dual)]
radial = np.abs(kl_rows.norm_ratio - kl_rows.dual / (1 + kl_rows.dual)).max()
print(f"KL: max |‖w_ρ‖/‖w*‖ − λ*/(1+λ*)| = {radial:.1e}; "
      f"min cos(w_ρ, w*) where w_ρ ≠ 0 = {kl_rows[kl_rows.norm_ratio > 0].cosine.min():.12f}")
