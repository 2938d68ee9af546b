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
# # The 3D-properties of DPO: chosen, rejected and unseen mass during training
#
# Yan et al. (2025, arXiv 2406.07327) describe three properties of DPO trained for many
# epochs on a fixed dataset (docs/theory.md §6):
#
# 1. **Drastic drop** of the rejected response's probability;
# 2. **Degradation** of the chosen response's probability (it rises, then falls back);
# 3. **Dispersion** of mass onto responses that appear in no pair ("unseen").
#
# Their cause is the gradient ratio $\frac{\partial\ell/\partial\pi^-}{\partial\ell/\partial\pi^+}
# = -\pi^+/\pi^-$: as π⁻ → 0 the push on the rejected response dominates. In a finite
# log-linear policy all three quantities are exact. The toy (`loglinear.experiments.three_d.run`)
# has prompts with a few likely ("on-policy") and many unlikely ("off-policy") responses under
# π_ref; each scenario "⟨chosen⟩-⟨rejected⟩" draws the pairs from those pools, and the
# *sharing* η makes a response's features partly shared across prompts, as in a language model.
# Training runs through `loglinear.experiments.three_d.dynamics.train`. Precomputed study records are read when
# they exist (`PRECOMPUTED`), otherwise a short run is computed here.

# %% tags=["parameters"]
PRECOMPUTED = "reports/three_d"  # a folder with records.parquet or records.jsonl, or None
SEED = 0
SHARING = [0.0, 0.5]
STEPS = 400
RECORD_EVERY = 10
LR = 1.0
BETA = 0.5
FIGURE_DIR = None  # a folder name to also save every figure as PNG

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from loglinear import plots as views
from loglinear.experiments import three_d as td


def show(fig, name):
    """Display a figure, and save it under FIGURE_DIR when one is set."""
    if FIGURE_DIR:
        Path(FIGURE_DIR).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(FIGURE_DIR) / f"three_d_{name}.png", dpi=110, bbox_inches="tight")
    plt.show()
    plt.close(fig)


DPO = "DPO"
METHODS = (
    td.Method(DPO, "dpo", {"beta": BETA}),
    td.Method("Flex-DPO (b-=0.1)", "flex-dpo", {"beta_plus": BETA, "beta_minus": 0.1}),
    td.Method("DPO+SFT (c=0.2)", "dpo-sft", {"beta": BETA, "sft_weight": 0.2}),
    td.Method("KLDPO paper (tau=1)", "kldpo-paper", {"beta": BETA, "tau": 1.0}),
)

# relative to the repository root, or to notebooks/ when Jupyter was started there
roots = [Path(PRECOMPUTED), Path("..") / PRECOMPUTED] if PRECOMPUTED else []
stored = [p for r in roots for p in (r / "records.parquet", r / "records.jsonl")
          if p.exists()]
if stored:
    print(f"reading precomputed records from {stored[0]}")
    records = (pd.read_parquet(stored[0]) if stored[0].suffix == ".parquet"
               else pd.read_json(stored[0], lines=True))
    thresholds = td.Thresholds()
else:
    config = td.ThreeDConfig(
        toy=td.ToyConfig(sharing=tuple(SHARING), seed=SEED),
        training=td.TrainingConfig(steps=STEPS, record_every=RECORD_EVERY, lr=LR, beta=BETA),
        methods=METHODS)
    thresholds = config.thresholds
    rows, skipped = td.simulate(config)
    records = pd.DataFrame(rows)
    print(f"computed {len(records)} records; skipped: {skipped or 'none'}")
print("methods:", sorted(records.method.unique()))
print("scenarios:", list(dict.fromkeys(records.scenario)), " sharing:",
      sorted(records.sharing.unique()))

# %% [markdown]
# ## 1. DPO in the four scenarios
# Solid: tabular features (η = 0); dashed: features shared across prompts. π(rejected)
# collapses everywhere. When the chosen responses are off-policy, mass flows to responses no
# pair mentions: the unseen mass grows while π(chosen) stays low.

# %%
dpo = records[records.method == DPO]
show(views.plot_mass_dynamics(dpo, title="DPO on a fixed dataset: chosen, rejected and "
                                         "unseen mass (exact)"), "dpo_scenarios")

# %% [markdown]
# ## 2. The gradient ratio
# $\log_{10}|\partial\ell/\partial\pi^-| / |\partial\ell/\partial\pi^+| = \log_{10}(\pi^+/\pi^-)$
# (median over pairs, finite differences of the loss in the probabilities; the identity's
# relative error is printed). It grows as the rejected response vanishes.

# %%
show(views.plot_lines(dpo.assign(curve=dpo.scenario + ", η = " + dpo.sharing.astype(str)),
                      x="step", y="log10_grad_ratio", hue="curve", hue_format=str, band=False,
                      title="DPO: rejected-vs-chosen gradient ratio during training",
                      xlabel="training step",
                      ylabel="log10 |∂ℓ/∂π⁻| / |∂ℓ/∂π⁺| (median)"), "grad_ratio")
print(f"max relative error of ∂ℓ/∂π⁻ ÷ ∂ℓ/∂π⁺ = −π⁺/π⁻ over all records: "
      f"{records.identity_rel_err.max():.1e}")

# %% [markdown]
# ## 3. Remedies
# The same dataset trained with separate β⁺/β⁻ (Flex-DPO), an SFT term on the chosen
# response, and KLDPO's reweighting, in the scenario with off-policy chosen responses.
# KLDPO's curves coincide with DPO's (hidden underneath): by the toy's symmetry every pair has
# the same loss at every step, so the weights $e^{l_i/\tau}$ stay uniform.

# %%
scenario = "off-on" if "off-on" in set(records.scenario) else records.scenario.iloc[0]
eta = min(records.sharing.unique())
sub = records[(records.scenario == scenario) & (records.sharing == eta)
              & records.method.isin([m.label for m in METHODS])]
palette = {m: plt.cm.tab10(i) for i, m in enumerate(sorted(sub.method.unique()))}
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
for ax, (col, label) in zip(axes, [("p_chosen", "π(chosen)"), ("p_rejected", "π(rejected)"),
                                   ("unseen_mass", "mass on unseen responses")]):
    views.plot_lines(sub, x="step", y=col, hue="method", hue_format=str, band=False,
                     palette=palette, ax=ax, title=label, xlabel="training step",
                     ylabel=label)
fig.suptitle(f"Remedies in scenario {scenario} (η = {eta:g})")
fig.tight_layout()
show(fig, "remedies")

# %% [markdown]
# ## 4. When each property appears
# First recorded step at which the rejected mass has dropped below 10% of its start
# (drop), the chosen mass fell below 90% of its running peak (degrade), and the unseen mass
# rose by 0.05 (disperse); empty where it never happened within the run.

# %%
onsets = pd.DataFrame(td.property_onsets(records, thresholds))
with pd.option_context("display.max_rows", 500):
    display(onsets[["sharing", "scenario", "method", "drop_step", "degrade_step", "disperse_step",
                    "p_chosen_end", "unseen_end", "reward_end"]].round(3))
