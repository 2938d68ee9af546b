r"""The 3D-properties study: the toy of Yan et al. (arXiv 2406.07327) as a log-linear policy.

The toy: S prompts, A responses; under pi_ref each prompt has ``n_on_policy`` likely
responses (logit ``ref_gap``) and A - n_on_policy unlikely ones (logit 0). Each prompt
has ``pairs_per_state`` pairs (a^+, a^-) whose chosen and rejected responses come from the
on- or off-policy pool, giving four scenarios named "<chosen>-<rejected>" (``on-on``,
``on-off``, ``off-on``, ``off-off``). Features are

.. math::  \psi(s, a) = (\sqrt{1-\eta}\, e_{(s,a)},\ \sqrt{\eta}\, e_a),

a one-hot (tabular) block plus a block shared by the same response across prompts,
with sharing eta in [0, 1): eta = 0 is the tabular policy; eta > 0 imitates the parameter
sharing of a language model. The true reward is +1 on chosen and -1 on rejected responses
and uniform on [-u, u] elsewhere. Labels are deterministic (a^+ always preferred), so
the data are separable and DPO keeps pushing, as in many epochs on a fixed dataset.

``main(config, out)`` writes ``config.json`` first, trains every method on every
(sharing, scenario), appends tidy records to ``records.jsonl`` after each run, and converts
them at the end to ``records.parquet`` (main runs) and ``variants.parquet`` (optimizer
sensitivity runs). The config lives in :mod:`.config`; :mod:`.analysis` turns the records
into the tables of the report (docs/theory.md §6 states the properties measured).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ...data import PreferenceData, as_generator
from ...env import LogLinearEnv
from ..config import PROVENANCE_KEY
from ..records import run_metadata
from .analysis import property_onsets, read_jsonl
from .config import (
    SCENARIOS,
    Method,
    ThreeDConfig,
    Thresholds,
    ToyConfig,
    TrainingConfig,
    Variant,
)
from .dynamics import PairSetting, train

# The config classes and the records helpers lived here before the study was split into
# config / run / analysis; they stay importable from this module.
__all__ = ["SCENARIOS", "Method", "ThreeDConfig", "Thresholds", "ToyConfig", "TrainingConfig",
           "Variant", "main", "property_onsets", "read_jsonl", "run_method", "simulate",
           "toy_setting", "trajectories"]


def toy_setting(rng: np.random.Generator | int, *, scenario: str, n_states: int = 4,
                n_actions: int = 10, n_on_policy: int = 4, ref_gap: float = 3.0,
                pairs_per_state: int = 2, sharing: float = 0.0,
                unseen_reward_scale: float = 0.5, beta: float = 0.5) -> PairSetting:
    """The toy environment and its fixed dataset for one scenario (module docstring).

    Args:
        rng: draws the on-policy set, the pairs and the unseen rewards of each prompt (a
            Generator or an integer seed).
        scenario: "<chosen>-<rejected>" with each part "on" or "off".
        n_states, n_actions: S prompts and A responses.
        n_on_policy: responses per prompt with reference logit ``ref_gap`` (others 0).
        pairs_per_state: k pairs per prompt, 2k distinct responses.
        sharing: eta in [0, 1), the weight of the response block shared across prompts.
        unseen_reward_scale: u, rewards of responses in no pair are uniform on [-u, u].
        beta: the environment's temperature (used by ``LogLinearEnv.value``).
    """
    rng = as_generator(rng)
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    if not 0.0 <= sharing < 1.0:
        raise ValueError(f"sharing must lie in [0, 1), got {sharing}")
    S, A, k = int(n_states), int(n_actions), int(pairs_per_state)
    if S < 1 or k < 1:
        raise ValueError("n_states and pairs_per_state must be at least 1")
    if not 0 < n_on_policy < A:
        raise ValueError(f"n_on_policy must lie in 1..{A - 1}, got {n_on_policy}")
    c_role, r_role = scenario.split("-")
    need = {"on": 0, "off": 0}
    need[c_role] += k
    need[r_role] += k
    if need["on"] > n_on_policy or need["off"] > A - n_on_policy:
        raise ValueError(f"scenario {scenario} with {k} pairs per prompt needs {need['on']} "
                         f"on-policy and {need['off']} off-policy responses; have "
                         f"{n_on_policy} and {A - n_on_policy}")
    ref_logit = np.zeros((S, A))
    reward = rng.uniform(-unseen_reward_scale, unseen_reward_scale, (S, A))
    states, a_plus, a_minus = [], [], []
    for s in range(S):
        perm = rng.permutation(A)
        pools = {"on": list(perm[:n_on_policy]), "off": list(perm[n_on_policy:])}
        ref_logit[s, pools["on"]] = ref_gap
        plus = [pools[c_role].pop() for _ in range(k)]
        minus = [pools[r_role].pop() for _ in range(k)]
        reward[s, plus], reward[s, minus] = 1.0, -1.0
        states += [s] * k
        a_plus += plus
        a_minus += minus
    d = S * A + A
    psi = np.zeros((S, A, d))
    ss, aa = np.meshgrid(np.arange(S), np.arange(A), indexing="ij")
    psi[ss, aa, ss * A + aa] = np.sqrt(1.0 - sharing)
    psi[ss, aa, S * A + aa] = np.sqrt(sharing)
    theta_ref = np.zeros(d)
    theta_ref[: S * A] = ref_logit.reshape(-1) / np.sqrt(1.0 - sharing)
    pi_ref = np.exp(ref_logit - ref_logit.max(1, keepdims=True))
    pi_ref /= pi_ref.sum(1, keepdims=True)
    env = LogLinearEnv(psi, np.full(S, 1.0 / S), pi_ref, theta_ref, beta, reward_table=reward)
    s, ap, am = (np.asarray(v) for v in (states, a_plus, a_minus))
    x = psi[s, ap] - psi[s, am]
    data = PreferenceData(x, np.ones(len(s)), x @ theta_ref, None, s, ap, am)
    return PairSetting(env, data)


# ----------------------------------------------------------------------------- runner
def run_method(setting: PairSetting, method: Method, training: TrainingConfig, *,
               tags: dict | None = None) -> list[dict]:
    """Train one method on one setting; records tagged with the method label."""
    traj = train(setting, method.objective, params=dict(method.params), lr=training.lr,
                 steps=training.steps, optimizer=training.optimizer,
                 record_every=training.record_every, dpo_beta=training.beta,
                 tags={**(tags or {}), "method": method.label})
    return list(traj.records)


def simulate(config: ThreeDConfig, *, on_record=None) -> tuple[list[dict], list[dict]]:
    """Run every (sharing, scenario, method), then every variant; returns (records, skipped).

    Every objective lives in the core, so ``skipped`` is empty; it is kept because the
    stored records (``skipped.json``) and the report read it. ``on_record(rows)`` is
    called after each run.
    """
    toy, tr = config.toy, config.training
    runs = [("main", tr, config.methods)]
    for v in config.variants:
        runs.append((v.name, replace(tr, optimizer=v.optimizer, lr=v.lr),
                     tuple(m for m in config.methods if m.label in v.methods)))
    rows, skipped = [], []
    seeds = np.random.SeedSequence(toy.seed).spawn(len(toy.scenarios))
    for eta in toy.sharing:
        for scenario, ss in zip(toy.scenarios, seeds):
            setting = toy_setting(
                np.random.default_rng(ss), scenario=scenario, n_states=toy.n_states,
                n_actions=toy.n_actions, n_on_policy=toy.n_on_policy, ref_gap=toy.ref_gap,
                pairs_per_state=toy.pairs_per_state, sharing=eta,
                unseen_reward_scale=toy.unseen_reward_scale, beta=tr.beta)
            for run, training, methods in runs:
                for method in methods:
                    tags = {"run": run, "sharing": eta, "scenario": scenario}
                    t0 = time.perf_counter()
                    out = run_method(setting, method, training, tags=tags)
                    for r in out:
                        r["seconds"] = time.perf_counter() - t0
                    rows += out
                    if on_record is not None:
                        on_record(out)
    return rows, skipped


def trajectories(config: ThreeDConfig, *, methods=None, sharing=None, scenarios=None,
                 steps: int | None = None):
    """Notebook entry point: run (a subset of) the study and return a pandas DataFrame.

    ``methods`` (labels), ``sharing`` and ``scenarios`` select a subset of the config;
    ``steps`` overrides the number of training steps. Columns: run ("main" or a variant's
    name), sharing, scenario, method, objective_name, step and the diagnostics of
    :func:`loglinear.experiments.three_d.dynamics.diagnostics`.
    """
    import pandas as pd

    labels = [m.label for m in config.methods]
    keep = set(labels if methods is None else methods)
    if keep - set(labels):
        raise ValueError(f"unknown method labels {sorted(keep - set(labels))}; config has "
                         f"{labels}")
    variants = tuple(replace(v, methods=tuple(m for m in v.methods if m in keep))
                     for v in config.variants)
    config = replace(config, methods=tuple(m for m in config.methods if m.label in keep),
                     variants=tuple(v for v in variants if v.methods))
    toy = config.toy
    if sharing is not None:
        toy = replace(toy, sharing=tuple(sharing))
    if scenarios is not None:
        toy = replace(toy, scenarios=tuple(scenarios))
    training = config.training if steps is None else replace(config.training, steps=steps)
    rows, skipped = simulate(replace(config, toy=toy, training=training))
    if skipped:
        raise ValueError(f"{len(skipped)} runs could not be evaluated: {skipped[0]['reason']}")
    return pd.DataFrame(rows)


def main(config: ThreeDConfig, out) -> Path:
    """Run the study into the records directory ``out`` (config.json, records.parquet,
    variants.parquet, skipped.json, runtime.json) and return it. ``config.json`` holds the
    config's sections and, under ``"provenance"``, what produced the run
    (:func:`~loglinear.experiments.records.run_metadata`). The runner builds no report:
    ``loglinear three-d`` then calls :func:`loglinear.report.three_d.build`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = config.to_dict() | {PROVENANCE_KEY: run_metadata()}
    (out / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    rec_path = out / "records.jsonl"
    rec_path.write_text("")
    for old in ("records.parquet", "variants.parquet"):  # never mix with an earlier run
        (out / old).unlink(missing_ok=True)
    t0 = time.perf_counter()

    def append(rows):
        with rec_path.open("a") as f:
            for r in rows:
                f.write(json.dumps(r, default=_json_default) + "\n")

    _, skipped = simulate(config, on_record=append)
    # The finished records are stored as compressed parquet (a tenth of the JSONL size).
    every = read_jsonl(rec_path)
    is_main = every["run"] == "main"
    every[is_main].to_parquet(out / "records.parquet", compression="zstd", index=False)
    if not is_main.all():
        every[~is_main].to_parquet(out / "variants.parquet", compression="zstd", index=False)
    rec_path.unlink()
    (out / "skipped.json").write_text(json.dumps(skipped, indent=2) + "\n")
    (out / "runtime.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
    return out


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"cannot serialise {type(v)}")
