"""Configuration of the 3D-properties study (``loglinear three-d --config FILE``).

A TOML file has the sections ``[toy]``, ``[training]``, ``[thresholds]``, ``[[methods]]``,
``[[variants]]`` and ``[lm]``; each becomes one frozen dataclass below, validated in
``__post_init__``. Read it with
``loglinear.experiments.config.load_config(ThreeDConfig, path)``.

A ``[[methods]]`` entry may carry ``sweep = {name = [v1, v2, ...]}``: it then stands for one
method per value, its label formatted with the hyperparameters
(``label = "KLDPO paper (tau={tau:g})"``), the swept name left out of ``params``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

from ..config import load_config
from .dynamics import OBJECTIVES, OPTIMIZERS, get_objective

SCENARIOS = ("on-on", "on-off", "off-on", "off-off")
SECTIONS = ("toy", "training", "thresholds", "methods", "variants", "lm")
# what an extra scenario of [[toy.extra]] may set besides its name and scenario
EXTRA_KEYS = ("n_states", "n_actions", "n_on_policy", "ref_gap", "pairs_per_state")


@dataclass(frozen=True)
class ToyConfig:
    """The toy environment (see :func:`loglinear.experiments.three_d.run.toy_setting`);
    ``sharing`` is a list of eta, ``scenarios`` a subset of :data:`SCENARIOS`.

    ``labels_per_pair``: with label noise (a variant's ``label_flip`` > 0) each pair gets
    this many Bradley-Terry labels. ``extra``: further settings, each a mapping with a
    ``name`` (its records' scenario tag), a ``scenario`` of :data:`SCENARIOS` and overrides
    of :data:`EXTRA_KEYS` (e.g. an off-off scenario whose unseen mass starts well below 1).
    """

    n_states: int = 4
    n_actions: int = 10
    n_on_policy: int = 4
    ref_gap: float = 3.0
    pairs_per_state: int = 2
    sharing: tuple[float, ...] = (0.0, 0.5)
    unseen_reward_scale: float = 0.5
    scenarios: tuple[str, ...] = SCENARIOS
    seed: int = 0
    labels_per_pair: int = 20
    extra: tuple[dict, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "sharing", tuple(float(v) for v in self.sharing))
        object.__setattr__(self, "scenarios", tuple(self.scenarios))
        object.__setattr__(self, "extra", tuple(dict(e) for e in self.extra))
        if not self.sharing or any(not 0 <= v < 1 for v in self.sharing):
            raise ValueError(f"sharing must be a nonempty list of values in [0, 1), got "
                             f"{self.sharing}")
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad or not (self.scenarios or self.extra):
            raise ValueError(f"scenarios must be a subset of {SCENARIOS} (nonempty unless "
                             f"extra settings are given), got {bad}")
        if self.labels_per_pair < 1:
            raise ValueError(f"labels_per_pair must be >= 1, got {self.labels_per_pair}")
        names = [e.get("name") for e in self.extra]
        for e in self.extra:
            unknown = set(e) - {"name", "scenario", *EXTRA_KEYS}
            if unknown or e.get("scenario") not in SCENARIOS or not e.get("name"):
                raise ValueError(f"each [[toy.extra]] needs a name and a scenario in "
                                 f"{SCENARIOS} and may set {EXTRA_KEYS}; got {e}")
        if len(set(names)) != len(names) or set(names) & set(SCENARIOS):
            raise ValueError(f"extra scenario names must be unique and differ from "
                             f"{SCENARIOS}, got {names}")

    def settings(self) -> list[tuple[str, str, dict]]:
        """(records tag, scenario, toy overrides) of every setting: the scenarios, then
        the extras."""
        return ([(sc, sc, {}) for sc in self.scenarios]
                + [(e["name"], e["scenario"], {k: e[k] for k in EXTRA_KEYS if k in e})
                   for e in self.extra])


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
    """When a property "appears" (first recorded step where it holds; docs/theory.md §6.2):

    drop: mean pi(rejected) <= drop_ratio x its initial value;
    degrade: mean pi(chosen) < degrade_ratio x its running maximum (it fell back);
    disperse: the unseen mass gained at least disperse_share of its headroom,
    (U_t - U_0) / (1 - U_0) >= disperse_share (relative to where it started, so that a
    setting whose unseen mass starts near 1 is not judged against a ceiling);
    disperse_delta: the earlier absolute rule U_t >= U_0 + disperse_delta, still reported.
    """

    drop_ratio: float = 0.1
    degrade_ratio: float = 0.9
    disperse_delta: float = 0.05
    disperse_share: float = 0.1

    def __post_init__(self):
        if not (0 < self.drop_ratio < 1 and 0 < self.degrade_ratio < 1
                and 0 < self.disperse_delta < 1 and 0 < self.disperse_share < 1):
            raise ValueError("thresholds must lie in (0, 1)")


@dataclass(frozen=True)
class Method:
    """A labelled objective with its hyperparameters, keyed by their names (beta, rho, tau,
    radius, ...; checked against the objective's registered names)."""

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
    """A sensitivity run: the listed methods again with another optimizer and lr, or with
    Bradley-Terry label noise (``label_flip``: the probability that a label prefers the
    worse response; 0 keeps the deterministic labels), the other settings unchanged. An
    omitted optimizer or lr is the main run's. Its records carry ``run`` = :attr:`name`
    (``"adam lr=0.02"``, ``"label flip 0.1"``); the main runs carry ``run = "main"``."""

    optimizer: str | None = None
    lr: float | None = None
    methods: tuple[str, ...] = ()
    label_flip: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(self.methods))
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"variant optimizer must be one of {sorted(OPTIMIZERS)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"variant lr must be > 0, got {self.lr}")
        if not 0 <= self.label_flip < 0.5:
            raise ValueError(f"label_flip must lie in [0, 0.5), got {self.label_flip}")
        if self.optimizer is None and self.lr is None and self.label_flip == 0:
            raise ValueError("a variant changes the optimizer, the lr or the label noise")

    @property
    def name(self) -> str:
        parts = []
        if self.optimizer is not None or self.lr is not None:
            parts.append(" ".join(p for p in (self.optimizer, None if self.lr is None
                                               else f"lr={self.lr:g}") if p))
        if self.label_flip:
            parts.append(f"label flip {self.label_flip:g}")
        return ", ".join(parts)


@dataclass(frozen=True)
class LMConfig:
    """Where the language-model evidence comes from: ``traces``, a preference-shift study
    directory (``loglinear llm-shift``) whose ``runs/*/seed*/train_log.csv`` the study
    copies into its records as ``lm_traces.csv`` (empty: none)."""

    traces: str = ""


def expand_sweep(entry: dict) -> list[Method]:
    """The methods of one ``[[methods]]`` mapping: itself, or one per value of its
    ``sweep`` (module docstring)."""
    entry = dict(entry)
    sweep = entry.pop("sweep", None)
    if not sweep:
        return [Method(**entry)]
    if len(sweep) != 1:
        raise ValueError(f"method {entry.get('label')!r}: sweep one hyperparameter, got "
                         f"{sorted(sweep)}")
    (name, values), = sweep.items()
    out = []
    for v in values:
        params = {**entry.get("params", {}), name: v}
        try:
            label = entry["label"].format(**params)
        except (KeyError, IndexError) as err:
            raise ValueError(f"method label {entry['label']!r} names an unknown "
                             f"hyperparameter: {err}") from None
        out.append(Method(label, entry["objective"], params))
    return out


@dataclass(frozen=True)
class ThreeDConfig:
    """The whole study: the toy, the training, the onset thresholds, the methods (unique
    labels) and the optimizer-sensitivity variants (subsets of the methods)."""

    toy: ToyConfig = ToyConfig()
    training: TrainingConfig = TrainingConfig()
    thresholds: Thresholds = Thresholds()
    methods: tuple[Method, ...] = ()
    variants: tuple[Variant, ...] = ()
    lm: LMConfig = LMConfig()

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
        """The config from a parsed TOML (or ``config.json``) mapping of sections."""
        unknown = set(raw) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}")
        return cls(ToyConfig(**raw.get("toy", {})), TrainingConfig(**raw.get("training", {})),
                   Thresholds(**raw.get("thresholds", {})),
                   tuple(m for entry in raw.get("methods", []) for m in expand_sweep(entry)),
                   tuple(Variant(**v) for v in raw.get("variants", [])),
                   LMConfig(**raw.get("lm", {})))

    @classmethod
    def from_toml(cls, path) -> ThreeDConfig:
        """Deprecated: use ``loglinear.experiments.config.load_config(ThreeDConfig, path)``."""
        warnings.warn("ThreeDConfig.from_toml is deprecated; use loglinear.experiments.config"
                      ".load_config(ThreeDConfig, path)", DeprecationWarning, stacklevel=2)
        return load_config(cls, path)

    def to_dict(self) -> dict:
        return asdict(self)
