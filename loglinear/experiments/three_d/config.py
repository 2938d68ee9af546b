"""Configuration of the 3D-properties study (``loglinear three-d --config FILE``).

A TOML file has the sections ``[toy]``, ``[training]``, ``[thresholds]``, ``[[methods]]``
and ``[[variants]]``; each becomes one frozen dataclass below, validated in
``__post_init__``. Read it with
``loglinear.experiments.config.load_config(ThreeDConfig, path)``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

from ..config import load_config
from .dynamics import OBJECTIVES, OPTIMIZERS, get_objective

SCENARIOS = ("on-on", "on-off", "off-on", "off-off")
SECTIONS = ("toy", "training", "thresholds", "methods", "variants")


@dataclass(frozen=True)
class ToyConfig:
    """The toy environment (see :func:`loglinear.experiments.three_d.run.toy_setting`);
    ``sharing`` is a list of eta, ``scenarios`` a subset of :data:`SCENARIOS`."""

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
    """When a property "appears" (first recorded step where it holds; docs/theory.md §6.2):

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
    """The whole study: the toy, the training, the onset thresholds, the methods (unique
    labels) and the optimizer-sensitivity variants (subsets of the methods)."""

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
        """The config from a parsed TOML (or ``config.json``) mapping of sections."""
        unknown = set(raw) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}")
        return cls(ToyConfig(**raw.get("toy", {})), TrainingConfig(**raw.get("training", {})),
                   Thresholds(**raw.get("thresholds", {})),
                   tuple(Method(**m) for m in raw.get("methods", [])),
                   tuple(Variant(**v) for v in raw.get("variants", [])))

    @classmethod
    def from_toml(cls, path) -> ThreeDConfig:
        """Deprecated: use ``loglinear.experiments.config.load_config(ThreeDConfig, path)``."""
        warnings.warn("ThreeDConfig.from_toml is deprecated; use loglinear.experiments.config"
                      ".load_config(ThreeDConfig, path)", DeprecationWarning, stacklevel=2)
        return load_config(cls, path)

    def to_dict(self) -> dict:
        return asdict(self)
