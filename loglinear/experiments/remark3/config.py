"""Configuration of the Remark 3 phase-diagram study (``loglinear remark3 --config FILE``).

A TOML file has top-level keys (the fields of :class:`Remark3Config`), an ``[env]`` table of
defaults shared by every ``[[setting]]`` (each a :class:`Setting`). Read it with
``loglinear.experiments.config.load_config(Remark3Config, path)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...env import LogLinearEnv
from ..config import from_mapping, load_config
from .fits import FITS, get_fit


@dataclass(frozen=True)
class Setting:
    """One small environment of the study; see :meth:`LogLinearEnv.random`.

    Attributes:
        name: the ``setting`` column (no commas).
        n_states, n_actions, dim, beta, reward_scale: as in ``LogLinearEnv.random``.
        concentration: sampling-policy concentration (0 = uniform; larger = worse coverage).
        avoid: gamma of ``LogLinearEnv.avoiding``: the sampling policy avoids a random
            feature direction (0 = none).
        env_seed: seed of the environment draw (combined with the config seed).
        geometry: the name whose environment draw this setting shares (default: its own);
            settings of one geometry have the same features, reward and theta*, and differ
            only in how they sample.
    """

    name: str
    n_states: int = 6
    n_actions: int = 4
    dim: int = 3
    beta: float = 1.0
    reward_scale: float = 1.5
    concentration: float = 0.0
    avoid: float = 0.0
    env_seed: int = 0
    geometry: str = ""

    def __post_init__(self):
        if not self.name or "," in self.name or "," in self.geometry:
            raise ValueError(f"setting name must be non-empty, and it and geometry without "
                             f"commas, got {self.name!r}, {self.geometry!r}")
        if self.n_states < 1 or self.n_actions < 2 or self.dim < 1:
            raise ValueError(f"setting {self.name}: need n_states >= 1, n_actions >= 2, "
                             f"dim >= 1")
        if not self.beta > 0 or not self.reward_scale > 0:
            raise ValueError(f"setting {self.name}: beta and reward_scale must be > 0")
        if not self.concentration >= 0 or not self.avoid >= 0:
            raise ValueError(f"setting {self.name}: concentration and avoid must be >= 0")

    @property
    def geometry_name(self) -> str:
        """The name that seeds the environment draw (``geometry`` or the setting name)."""
        return self.geometry or self.name

    def make(self, rng) -> LogLinearEnv:
        """The environment of this setting drawn from ``rng`` (a Generator or a seed)."""
        return LogLinearEnv.random(
            rng, n_states=self.n_states, n_actions=self.n_actions, dim=self.dim,
            beta=self.beta, concentration=self.concentration,
            reward_scale=self.reward_scale, avoid=self.avoid)


@dataclass(frozen=True)
class Remark3Config:
    """The study: settings x n x seeds x estimators x schedule exponents a.

    Every robust estimator runs under rho_n = c (n / n0)^-a, where c is
    ``collapse_fraction`` times its population collapse radius (KLDPO: its temperature
    runs the other way, tau_n = tau_0 (n / n0)^+a, tau_0 the temperature whose implied KL
    radius is c times the KL collapse radius; docs/theory.md §4.2). DPO runs once per
    sample, as the reference.

    Attributes:
        name: study name (written into the resolved config).
        seed: master seed; every random draw derives from it and the row key.
        n: sample sizes (count compression makes every n cost the same).
        seeds: replicates per (setting, n); seed ids 0..seeds-1.
        settings: the environments.
        exponents: the schedule exponents a (a = 0 is a fixed radius).
        estimators: names of :data:`loglinear.experiments.remark3.fits.FITS`.
        collapse_fraction: c / collapse radius at n0, in (0, 1): the schedule starts
            inside the non-collapsed regime and only shrinks from there.
        reference_n: n0, where the schedule takes the value c.
        shift_fraction: the stated population shift of certificate (ii), as a fraction of
            each ball's population collapse radius (KL(Q||P) <= that for the KL ball, a
            W1 / W2 ball of that radius for the Wasserstein balls).
        bound: B, the radius of Theta = {||w|| <= B}: every estimator and target is fitted
            on it (a separable sample gets an estimate on the sphere, not an error).
        level: the nominal level of the plug-in confidence ellipsoids and intervals.
        delta: the failure probability of DPO's finite-sample bounds (docs/theory.md §9).
        tail_n: the measured "tail" exponent fits n >= tail_n only (the predictions are
            asymptotic); the "all" exponent fits every n.
    """

    name: str
    seed: int
    n: tuple[int, ...]
    settings: tuple[Setting, ...]
    seeds: int = 50
    exponents: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
    estimators: tuple[str, ...] = ("dpo", "kl", "w1", "w2", "wdpo", "kldpo")
    collapse_fraction: float = 0.3
    reference_n: float = 100.0
    shift_fraction: float = 0.1
    bound: float = 3.0
    level: float = 0.95
    delta: float = 0.05
    tail_n: int = 10000

    def __post_init__(self):
        object.__setattr__(self, "n", tuple(int(v) for v in self.n))
        object.__setattr__(self, "exponents", tuple(float(a) for a in self.exponents))
        object.__setattr__(self, "estimators", tuple(self.estimators))
        if not self.n or min(self.n) < 2 or len(set(self.n)) != len(self.n):
            raise ValueError(f"n must be distinct sample sizes >= 2, got {list(self.n)}")
        if self.seeds < 2:
            raise ValueError(f"seeds must be >= 2 (the exponents bootstrap over seeds), "
                             f"got {self.seeds}")
        if not self.exponents or any(not a >= 0 for a in self.exponents) or \
                len(set(self.exponents)) != len(self.exponents):
            raise ValueError(f"exponents must be distinct numbers a >= 0, got "
                             f"{list(self.exponents)}")
        if not self.estimators or len(set(self.estimators)) != len(self.estimators):
            raise ValueError(f"estimators must be distinct names of {sorted(FITS)}")
        for e in self.estimators:
            get_fit(e)
        names = [s.name for s in self.settings]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"settings need unique names, got {names}")
        if not 0 < self.collapse_fraction < 1:
            raise ValueError(f"collapse_fraction must lie in (0, 1) (the schedule starts "
                             f"below collapse), got {self.collapse_fraction}")
        if not 0 < self.shift_fraction < 1:
            raise ValueError(f"shift_fraction must lie in (0, 1), got {self.shift_fraction}")
        if not self.reference_n > 0 or not self.bound > 0:
            raise ValueError("reference_n and bound must be > 0")
        if not 0 < self.level < 1 or not 0 < self.delta < 1:
            raise ValueError(f"level and delta must lie in (0, 1), got {self.level}, "
                             f"{self.delta}")
        if sum(n >= self.tail_n for n in self.n) < 2:
            raise ValueError(f"tail_n = {self.tail_n} leaves fewer than two sizes of "
                             f"{list(self.n)} for the tail exponent")

    def rows_per_sample(self) -> int:
        """Rows one (setting, n, seed) sample produces: one per schedule of every robust
        estimator and one per estimator without a hyperparameter."""
        return sum(len(self.exponents) if get_fit(e).calibrate is not None else 1
                   for e in self.estimators)

    def planned_rows(self) -> int:
        """Rows of the full study."""
        return len(self.settings) * len(self.n) * self.seeds * self.rows_per_sample()

    @classmethod
    def from_dict(cls, mapping: dict, *, where: str = "remark3 config") -> Remark3Config:
        """Build the config from a parsed TOML mapping (``[env]`` defaults, ``[[setting]]``
        tables, top-level fields)."""
        raw = dict(mapping)
        defaults = raw.pop("env", {})
        settings = tuple(from_mapping(Setting, {**defaults, **s}, where=f"{where} [[setting]]")
                         for s in raw.pop("setting", []))
        for k in ("n", "estimators", "exponents"):
            if k in raw and isinstance(raw[k], list):
                raw[k] = tuple(raw[k])
        return from_mapping(cls, {**raw, "settings": settings}, where=where)

    @classmethod
    def from_toml(cls, path) -> Remark3Config:
        """Shorthand for ``load_config(Remark3Config, path)``."""
        return load_config(cls, path)
