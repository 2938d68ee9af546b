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
and uniform on [-u, u] elsewhere. With ``label_flip`` = 0 the labels are deterministic
(a^+ always preferred), so the data are separable and DPO keeps pushing, as in many epochs
on a fixed dataset. With ``label_flip`` = f > 0 each pair gets m Bradley-Terry labels from
the preference model

.. math::  P(a^+ \succ a^- \mid s) = \sigma\big(\kappa\,(r(s,a^+) - r(s,a^-))\big),
           \qquad \kappa = \tfrac12 \log\tfrac{1-f}{f},

(so that a label prefers a^- with probability f, the reward gap being 2), stored as up to
two weighted rows per pair (y = 1 with weight k, y = 0 with weight m - k, k of the m
labels preferring a^+): the data are then not separable unless k = m.

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
from scipy.special import expit

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
from .summary import gather_lm_traces

# The config classes and the records helpers lived here before the study was split into
# config / run / analysis; they stay importable from this module.
__all__ = ["SCENARIOS", "Method", "ThreeDConfig", "Thresholds", "ToyConfig", "TrainingConfig",
           "Variant", "main", "property_onsets", "read_jsonl", "run_method", "simulate",
           "toy_setting", "trajectories"]


def label_scale(label_flip: float, *, reward_gap: float = 2.0) -> float:
    """The Bradley-Terry scale kappa at which a pair with reward gap ``reward_gap`` is
    mislabelled with probability ``label_flip``: sigma(-kappa * gap) = label_flip."""
    if not 0 < label_flip < 0.5 or not reward_gap > 0:
        raise ValueError(f"need 0 < label_flip < 0.5 and reward_gap > 0, got {label_flip}, "
                         f"{reward_gap}")
    return float(np.log((1 - label_flip) / label_flip) / reward_gap)


def draw_labels(rng: np.random.Generator, prob, labels_per_pair: int) -> np.ndarray:
    """(n,) how many of ``labels_per_pair`` independent labels prefer a^+, each label
    Bernoulli(``prob``) with ``prob`` (n,) the preference model's P(a^+ preferred)."""
    prob = np.asarray(prob, dtype=float)
    if labels_per_pair < 1 or np.any((prob < 0) | (prob > 1)):
        raise ValueError("need labels_per_pair >= 1 and probabilities in [0, 1]")
    return rng.binomial(int(labels_per_pair), prob)


def toy_setting(rng: np.random.Generator | int, *, scenario: str, n_states: int = 4,
                n_actions: int = 10, n_on_policy: int = 4, ref_gap: float = 3.0,
                pairs_per_state: int = 2, sharing: float = 0.0,
                unseen_reward_scale: float = 0.5, beta: float = 0.5,
                label_flip: float = 0.0, labels_per_pair: int = 20) -> PairSetting:
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
        label_flip: 0 for deterministic labels; otherwise the probability that a
            Bradley-Terry label prefers a^- (module docstring). The labels are drawn after
            everything else, so the environment does not depend on ``label_flip``.
        labels_per_pair: m, the labels drawn per pair when ``label_flip`` > 0.
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
    y, weight = np.ones(len(s)), None
    if label_flip:
        prob = expit(label_scale(label_flip) * (reward[s, ap] - reward[s, am]))
        k = draw_labels(rng, prob, labels_per_pair)
        # each pair as a y = 1 row of weight k and a y = 0 row of weight m - k (empty rows
        # dropped); a1 stays a^+ in both, the response the preference model favours
        keep = np.r_[k > 0, k < labels_per_pair]
        s, ap, am = (np.r_[v, v][keep] for v in (s, ap, am))
        y = np.r_[np.ones(len(k)), np.zeros(len(k))][keep]
        weight = np.r_[k, labels_per_pair - k][keep].astype(float)
    x = psi[s, ap] - psi[s, am]
    data = PreferenceData(x, y, x @ theta_ref, weight, s, ap, am, normalize=weight is not None)
    return PairSetting(env, data, truth_first=True)


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
    """Run every (sharing, setting, method), then every variant; returns (records, skipped).

    The settings are the scenarios and then the extras of ``config.toy``; each is drawn
    from its own child of ``SeedSequence(toy.seed)`` (so adding an extra leaves the others
    unchanged), and a label-noise variant relabels the same draw. Every record carries
    ``run``, ``sharing``, ``scenario`` (the setting's name) and ``label_flip``. Every
    objective lives in the core, so ``skipped`` is empty; it is kept because the stored
    records (``skipped.json``) and the report read it. ``on_record(rows)`` is called after
    each run.
    """
    toy, tr = config.toy, config.training
    runs = [("main", tr, config.methods, 0.0)]
    for v in config.variants:
        runs.append((v.name, replace(tr, optimizer=v.optimizer or tr.optimizer,
                                     lr=tr.lr if v.lr is None else v.lr),
                     tuple(m for m in config.methods if m.label in v.methods), v.label_flip))
    rows, skipped = [], []
    settings = toy.settings()
    seeds = np.random.SeedSequence(toy.seed).spawn(len(settings))
    base = dict(n_states=toy.n_states, n_actions=toy.n_actions, n_on_policy=toy.n_on_policy,
                ref_gap=toy.ref_gap, pairs_per_state=toy.pairs_per_state,
                unseen_reward_scale=toy.unseen_reward_scale, beta=tr.beta,
                labels_per_pair=toy.labels_per_pair)
    for eta in toy.sharing:
        for (name, scenario, overrides), ss in zip(settings, seeds):
            made = {}
            for run, training, methods, flip in runs:
                if flip not in made:
                    made[flip] = toy_setting(np.random.default_rng(ss), scenario=scenario,
                                             sharing=eta, label_flip=flip,
                                             **{**base, **overrides})
                for method in methods:
                    tags = {"run": run, "sharing": eta, "scenario": name, "label_flip": flip}
                    t0 = time.perf_counter()
                    out = run_method(made[flip], method, training, tags=tags)
                    for r in out:
                        r["seconds"] = time.perf_counter() - t0
                    rows += out
                    if on_record is not None:
                        on_record(out)
    return rows, skipped


def trajectories(config: ThreeDConfig, *, methods=None, sharing=None, scenarios=None,
                 steps: int | None = None):
    """Notebook entry point: run (a subset of) the study and return a pandas DataFrame.

    ``methods`` (labels), ``sharing`` and ``scenarios`` (scenario or extra-setting names)
    select a subset of the config;
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
        # a scenario name, or the name of one of the toy's extra settings
        toy = replace(toy, scenarios=tuple(sc for sc in scenarios if sc in SCENARIOS),
                      extra=tuple(e for e in toy.extra if e["name"] in scenarios))
    training = config.training if steps is None else replace(config.training, steps=steps)
    rows, skipped = simulate(replace(config, toy=toy, training=training))
    if skipped:
        raise ValueError(f"{len(skipped)} runs could not be evaluated: {skipped[0]['reason']}")
    return pd.DataFrame(rows)


def main(config: ThreeDConfig, out) -> Path:
    """Run the study into the records directory ``out`` (config.json, records.parquet,
    variants.parquet, skipped.json, runtime.json; lm_traces.csv when ``config.lm.traces``
    names a preference-shift study) and return it. ``config.json`` holds the
    config's sections and, under ``"provenance"``, what produced the run
    (:func:`~loglinear.experiments.records.run_metadata`). The runner builds no report:
    ``loglinear three-d`` then calls :func:`loglinear.report.three_d.build`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = config.to_dict() | {PROVENANCE_KEY: run_metadata()}
    (out / "config.json").write_text(json.dumps(written, indent=2) + "\n")
    rec_path = out / "records.jsonl"
    rec_path.write_text("")
    for old in ("records.parquet", "variants.parquet", "lm_traces.csv"):  # never mix runs
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
    if config.lm.traces:
        gather_lm_traces(config.lm.traces).to_csv(out / "lm_traces.csv", index=False)
    (out / "skipped.json").write_text(json.dumps(skipped, indent=2) + "\n")
    (out / "runtime.json").write_text(json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
    return out


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"cannot serialise {type(v)}")
