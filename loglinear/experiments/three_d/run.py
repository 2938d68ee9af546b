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

``main(config, out_dir)`` writes ``config.json`` first, trains every method on every
(sharing, scenario), appends tidy records to ``records.jsonl`` after each run, converts
them at the end to ``records.parquet`` (main runs) and ``variants.parquet`` (optimizer
sensitivity runs), and builds the report. :func:`property_onsets`
turns records into the table of when each property appears (thresholds in the config).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import tomllib

from ...data import PreferenceData
from ...env import LogLinearEnv
from .dynamics import OBJECTIVES, OPTIMIZERS, PairSetting, get_objective, train

SCENARIOS = ("on-on", "on-off", "off-on", "off-off")


def toy_setting(rng: np.random.Generator, *, scenario: str, n_states: int = 4,
                n_actions: int = 10, n_on_policy: int = 4, ref_gap: float = 3.0,
                pairs_per_state: int = 2, sharing: float = 0.0,
                unseen_reward_scale: float = 0.5, beta: float = 0.5) -> PairSetting:
    """The toy environment and its fixed dataset for one scenario (module docstring).

    Args:
        rng: draws the on-policy set, the pairs and the unseen rewards of each prompt.
        scenario: "<chosen>-<rejected>" with each part "on" or "off".
        n_states, n_actions: S prompts and A responses.
        n_on_policy: responses per prompt with reference logit ``ref_gap`` (others 0).
        pairs_per_state: k pairs per prompt, 2k distinct responses.
        sharing: eta in [0, 1), the weight of the response block shared across prompts.
        unseen_reward_scale: u, rewards of responses in no pair are uniform on [-u, u].
        beta: the environment's temperature (used by ``LogLinearEnv.value``).
    """
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


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ToyConfig:
    """The toy environment (see :func:`toy_setting`); ``sharing`` is a list of eta."""

    n_states: int = 4
    n_actions: int = 10
    n_on_policy: int = 4
    ref_gap: float = 3.0
    pairs_per_state: int = 2
    sharing: tuple[float, ...] = (0.0, 0.5)
    unseen_reward_scale: float = 0.5
    scenarios: tuple[str, ...] = SCENARIOS
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "sharing", tuple(float(v) for v in self.sharing))
        object.__setattr__(self, "scenarios", tuple(self.scenarios))
        if not self.sharing or any(not 0 <= v < 1 for v in self.sharing):
            raise ValueError(f"sharing must be a nonempty list of values in [0, 1), got "
                             f"{self.sharing}")
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad or not self.scenarios:
            raise ValueError(f"scenarios must be a nonempty subset of {SCENARIOS}, got {bad}")


@dataclass(frozen=True)
class TrainingConfig:
    """Full-batch training: optimizer ("gd" | "adam"), learning rate, steps, record cadence,
    and beta, the temperature of the environment and of the reference DPO diagnostics."""

    optimizer: str = "gd"
    lr: float = 1.0
    steps: int = 2000
    record_every: int = 10
    beta: float = 0.5

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}")
        if not self.lr > 0 or self.steps < 1 or self.record_every < 1 or not self.beta > 0:
            raise ValueError("need lr > 0, steps >= 1, record_every >= 1 and beta > 0")


@dataclass(frozen=True)
class Thresholds:
    """When a property "appears" (first recorded step where it holds):

    drop: mean pi(rejected) <= drop_ratio x its initial value;
    degrade: mean pi(chosen) < degrade_ratio x its running maximum (it fell back);
    disperse: unseen mass >= its initial value + disperse_delta.
    """

    drop_ratio: float = 0.1
    degrade_ratio: float = 0.9
    disperse_delta: float = 0.05

    def __post_init__(self):
        if not (0 < self.drop_ratio < 1 and 0 < self.degrade_ratio < 1
                and 0 < self.disperse_delta < 1):
            raise ValueError("thresholds must lie in (0, 1)")


@dataclass(frozen=True)
class Method:
    """A labelled objective with its hyperparameters (names checked against the registry)."""

    label: str
    objective: str
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        spec = get_objective(self.objective)
        if set(self.params) != set(spec.params):
            raise ValueError(f"method {self.label!r}: objective {self.objective!r} takes "
                             f"{list(spec.params)}, got {sorted(self.params)}")


@dataclass(frozen=True)
class Variant:
    """A sensitivity run: the listed methods again with another optimizer and lr (the
    other training settings unchanged). Its records carry ``run = "<optimizer> lr=<lr>"``;
    the main runs carry ``run = "main"``."""

    optimizer: str
    lr: float
    methods: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(self.methods))
        if self.optimizer not in OPTIMIZERS or not self.lr > 0:
            raise ValueError(f"variant needs optimizer in {sorted(OPTIMIZERS)} and lr > 0")

    @property
    def name(self) -> str:
        return f"{self.optimizer} lr={self.lr:g}"


@dataclass(frozen=True)
class ThreeDConfig:
    toy: ToyConfig = ToyConfig()
    training: TrainingConfig = TrainingConfig()
    thresholds: Thresholds = Thresholds()
    methods: tuple[Method, ...] = ()
    variants: tuple[Variant, ...] = ()

    def __post_init__(self):
        if not self.methods:
            raise ValueError(f"give at least one [[methods]]; objectives: {sorted(OBJECTIVES)}")
        labels = [m.label for m in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError(f"method labels must be unique, got {labels}")
        for v in self.variants:
            bad = set(v.methods) - set(labels)
            if bad or not v.methods:
                raise ValueError(f"variant {v.name}: methods must be a nonempty subset of "
                                 f"the [[methods]] labels, unknown {sorted(bad)}")

    @classmethod
    def from_dict(cls, raw: dict) -> ThreeDConfig:
        unknown = set(raw) - {"toy", "training", "thresholds", "methods", "variants"}
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}")
        return cls(ToyConfig(**raw.get("toy", {})), TrainingConfig(**raw.get("training", {})),
                   Thresholds(**raw.get("thresholds", {})),
                   tuple(Method(**m) for m in raw.get("methods", [])),
                   tuple(Variant(**v) for v in raw.get("variants", [])))

    @classmethod
    def from_toml(cls, path) -> ThreeDConfig:
        with open(path, "rb") as f:
            return cls.from_dict(tomllib.load(f))

    def to_dict(self) -> dict:
        return asdict(self)


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

    A method whose objective cannot be evaluated here (its module is missing) is skipped
    and listed with the reason; ``on_record(rows)`` is called after each run.
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
                    try:
                        out = run_method(setting, method, training, tags=tags)
                    except ValueError as exc:
                        if "cannot be imported" not in str(exc):
                            raise
                        skipped.append({**tags, "method": method.label, "reason": str(exc)})
                        continue
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


def property_onsets(records, thresholds: Thresholds) -> list[dict]:
    """One row per (sharing, scenario, method): the first recorded step at which each
    property holds (None if never), with the initial and final diagnostics."""
    import pandas as pd

    frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame(records)
    if "run" not in frame:
        frame = frame.assign(run="main")
    out = []
    for key, g in frame.groupby(["sharing", "scenario", "method", "run"], sort=False):
        g = g.sort_values("step")
        steps = g["step"].to_numpy()
        pc, pr, un = (g[c].to_numpy() for c in ("p_chosen", "p_rejected", "unseen_mass"))

        def first(mask, steps=steps):
            idx = np.flatnonzero(mask)
            return int(steps[idx[0]]) if idx.size else None

        out.append({
            "sharing": key[0], "scenario": key[1], "method": key[2], "run": key[3],
            "objective": g["objective_name"].iloc[0] if "objective_name" in g else None,
            "drop_step": first(pr <= thresholds.drop_ratio * pr[0]),
            "degrade_step": first(pc < thresholds.degrade_ratio * np.maximum.accumulate(pc)),
            "disperse_step": first(un >= un[0] + thresholds.disperse_delta),
            "p_chosen_0": pc[0], "p_chosen_peak": pc.max(), "p_chosen_end": pc[-1],
            "p_rejected_0": pr[0], "p_rejected_end": pr[-1],
            "log10_p_rejected_end": float(np.log10(pr[-1])) if pr[-1] > 0 else -np.inf,
            "unseen_0": un[0], "unseen_peak": un.max(), "unseen_end": un[-1],
            "reward_0": g["reward"].iloc[0], "reward_end": g["reward"].iloc[-1],
            "reward_best": g["reward"].max(), "kl_end": g["kl"].iloc[-1],
            "identity_max_err": g["identity_rel_err"].max(),
            "log10_ratio_0": g["log10_grad_ratio"].iloc[0] if "log10_grad_ratio" in g else None,
            "log10_ratio_end": g["log10_grad_ratio"].iloc[-1] if "log10_grad_ratio" in g
            else None,
        })
    return out


def main(config: ThreeDConfig, out_dir) -> Path:
    """Run the study into ``out_dir`` (config.json, records.parquet, skipped.json,
    runtime.json); returns ``out_dir``. The report is built from there by
    :func:`loglinear.report.three_d.build`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
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


def read_jsonl(path):
    """Records appended one JSON object per line, as a pandas DataFrame."""
    import pandas as pd

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path} holds no records")
    return pd.DataFrame(rows)


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"cannot serialise {type(v)}")
