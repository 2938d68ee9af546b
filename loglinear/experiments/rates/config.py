"""Configuration of the estimation-rate study (``loglinear rates --config FILE``).

A TOML file has top-level keys (the fields of :class:`RatesConfig`), an ``[env]`` table of
defaults shared by every ``[[setting]]`` (each an :class:`EnvSpec`), and ``[[schedule]]``
tables (each a :class:`Schedule`). Read it with
``loglinear.experiments.config.load_config(RatesConfig, path)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...env import LogLinearEnv
from ..config import from_mapping, load_config
from ..estimators import ESTIMATORS, get_estimator

NO_SCHEDULE = "none"  # the ``schedule`` column of estimators without a hyperparameter


@dataclass(frozen=True)
class EnvSpec:
    """One environment ("setting") of the study; see :meth:`LogLinearEnv.random`.

    Attributes:
        name: the ``setting`` column.
        n_states, n_actions, dim, beta, reward_scale, ref_scale, state_dist: as in
            ``LogLinearEnv.random``.
        concentration: sampling-policy concentration (0 = uniform; larger = worse coverage).
        avoid: gamma of ``LogLinearEnv.avoiding``: the sampling policy avoids a random
            feature direction (0 = none; larger = worse coverage of that direction),
            with the features, reward and theta* unchanged.
        spectrum: per-coordinate feature scales (a reparametrisation: a small entry makes
            lambda_min -> 0 by shrinking the features themselves).
        env_seed: seed of the environment draw (combined with the config seed).
        geometry: the name whose environment draws this setting shares (default: its
            own name). Settings of one geometry and equal sizes have the same features,
            reward, theta* and state distribution in every draw, and differ only in how
            they sample (``concentration``, ``avoid``).
    """

    name: str
    n_states: int = 8
    n_actions: int = 6
    dim: int = 4
    beta: float = 1.0
    concentration: float = 0.0
    spectrum: tuple[float, ...] | None = None
    reward_scale: float = 1.0
    ref_scale: float = 0.0
    state_dist: str = "uniform"
    env_seed: int = 0
    avoid: float = 0.0
    geometry: str = ""

    def __post_init__(self):
        if not self.name or "," in self.name:
            raise ValueError(f"setting name must be non-empty without commas, got {self.name!r}")
        if "," in self.geometry:
            raise ValueError(f"setting {self.name}: geometry must not contain commas")
        if not self.avoid >= 0 or not self.concentration >= 0:
            raise ValueError(f"setting {self.name}: avoid and concentration must be >= 0")
        if self.spectrum is not None:
            object.__setattr__(self, "spectrum", tuple(float(v) for v in self.spectrum))
            if len(self.spectrum) != self.dim:
                raise ValueError(f"setting {self.name}: spectrum needs {self.dim} entries")
        if self.n_states < 1 or self.n_actions < 2 or self.dim < 1:
            raise ValueError(f"setting {self.name}: need n_states >= 1, n_actions >= 2, dim >= 1")
        if not self.beta > 0:
            raise ValueError(f"setting {self.name}: beta must be > 0")

    @property
    def geometry_name(self) -> str:
        """The name that seeds the environment draws (``geometry`` or the setting name)."""
        return self.geometry or self.name

    def make(self, rng) -> LogLinearEnv:
        """The environment of this setting drawn from ``rng`` (a Generator or a seed)."""
        return LogLinearEnv.random(
            rng, n_states=self.n_states, n_actions=self.n_actions, dim=self.dim,
            beta=self.beta, concentration=self.concentration, spectrum=self.spectrum,
            reward_scale=self.reward_scale, ref_scale=self.ref_scale,
            state_dist=self.state_dist, avoid=self.avoid)


@dataclass(frozen=True)
class Schedule:
    """A radius schedule: hyperparameter(n) = base * (n / reference_n)^{-exponent}.

    The base is ``collapse_fraction`` times the estimator's population collapse radius
    (the radius at which the robust optimum becomes w = 0, docs/theory.md §3.2, §3.6) when
    that is set and the estimator has one; otherwise ``scale[estimator]``. ``only`` (if
    non-empty) restricts the schedule to those estimators. A temperature (KLDPO) gets
    base * (n / reference_n)^{+exponent}. Estimators without a hyperparameter (DPO) ignore
    schedules; an estimator with neither a scale nor a collapse radius skips the schedule.
    """

    name: str
    exponent: float = 0.0
    scale: dict = field(default_factory=dict)
    collapse_fraction: float | None = None
    reference_n: float = 1.0
    only: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "only", tuple(self.only))
        if not self.name or self.name == NO_SCHEDULE:
            raise ValueError(f"schedule name must be non-empty and not {NO_SCHEDULE!r}")
        unknown = sorted((set(self.scale) | set(self.only)) - set(ESTIMATORS))
        if unknown:
            raise ValueError(f"schedule {self.name}: unknown estimators {unknown}")
        if any(not float(v) > 0 for v in self.scale.values()):
            raise ValueError(f"schedule {self.name}: scales must be positive")
        if self.collapse_fraction is not None and not self.collapse_fraction > 0:
            raise ValueError(f"schedule {self.name}: collapse_fraction must be > 0")
        if not self.reference_n > 0:
            raise ValueError(f"schedule {self.name}: reference_n must be > 0")
        object.__setattr__(self, "scale", {k: float(v) for k, v in self.scale.items()})

    def uses_collapse(self, est) -> bool:
        return self.collapse_fraction is not None and est.collapse is not None

    def applies(self, est) -> bool:
        if est.param is None or (self.only and est.name not in self.only):
            return False
        return self.uses_collapse(est) or est.name in self.scale


@dataclass(frozen=True)
class RatesConfig:
    """The study: settings x draws x n x seeds x estimators x schedules.

    Attributes:
        name: study name (written into the resolved config).
        seed: master seed; every random draw derives from it and the row key.
        n: sample sizes.
        seeds: replicates per (setting, draw, n); seed ids 0..seeds-1.
        draws: environment draws per setting; draw ids 0..draws-1 (draw 0 is the
            environment a one-draw study uses).
        estimators: registry names (see :data:`loglinear.experiments.estimators.ESTIMATORS`).
        settings: the environments.
        schedules: radius schedules for the robust estimators.
        bound: B, the radius of Theta = {||w|| <= B}: every estimator (and every target)
            is fitted on it, and the docs/theory.md §5 constants use it.
        delta: confidence level of the theory bounds.
    """

    name: str
    seed: int
    n: tuple[int, ...]
    settings: tuple[EnvSpec, ...]
    estimators: tuple[str, ...] = ("dpo",)
    schedules: tuple[Schedule, ...] = ()
    seeds: int = 50
    bound: float = 5.0
    delta: float = 0.05
    draws: int = 1

    def __post_init__(self):
        object.__setattr__(self, "n", tuple(int(v) for v in self.n))
        if not self.n or min(self.n) < 2:
            raise ValueError(f"n must be a non-empty list of sizes >= 2, got {self.n}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")
        for e in self.estimators:
            get_estimator(e)
        names = [s.name for s in self.settings]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"settings need unique names, got {names}")
        snames = [s.name for s in self.schedules]
        if len(set(snames)) != len(snames):
            raise ValueError(f"schedules need unique names, got {snames}")
        if not self.bound > 0 or not 0 < self.delta < 1:
            raise ValueError("bound must be > 0 and delta in (0, 1)")

    @classmethod
    def from_dict(cls, mapping: dict, *, where: str = "rates config") -> RatesConfig:
        """Build the config from a parsed TOML mapping (``[env]`` defaults,
        ``[[setting]]`` and ``[[schedule]]`` tables, top-level fields)."""
        raw = dict(mapping)
        defaults = raw.pop("env", {})
        settings = tuple(from_mapping(EnvSpec, {**defaults, **s}, where=f"{where} [[setting]]")
                         for s in raw.pop("setting", []))
        schedules = tuple(from_mapping(Schedule, s, where=f"{where} [[schedule]]")
                          for s in raw.pop("schedule", []))
        for k in ("n", "estimators"):
            if k in raw:
                raw[k] = tuple(raw[k])
        return from_mapping(cls, {**raw, "settings": settings, "schedules": schedules},
                            where=where)

    @classmethod
    def from_toml(cls, path) -> RatesConfig:
        """Shorthand for ``load_config(RatesConfig, path)``."""
        return load_config(cls, path)
