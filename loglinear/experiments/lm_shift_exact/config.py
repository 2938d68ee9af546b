"""Configuration of the exact preference-shift study over real text
(``loglinear lm-shift-exact --config FILE``, docs/theory.md §10).

A TOML file holds the fields of :class:`ExactShiftConfig`; read it with
``loglinear.experiments.config.load_config(ExactShiftConfig, path)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...envs.emotion import FEATURES, REFERENCES
from ..estimators import ESTIMATORS

KINDS = ("convex", "geometric")


@dataclass(frozen=True)
class ExactShiftConfig:
    """The study's design.

    Attributes:
        name, seed: the study's name and root seed (every sample's Generator derives from
            it, the kind, n and the replicate).
        n: sample sizes (pairs); seeds: replicates per (kind, n).
        kinds: the reward mixtures whose Bradley–Terry labels train the fits.
        alpha_o: the training mixture weight; alphas: the evaluation grid.
        pair: the two emotions mixed, r(alpha) = mix(alpha; pair[0], pair[1]).
        dim, features, reference: the environment (:func:`loglinear.envs.emotion`).
        reward_scale: kappa of the labels; beta: the DPO temperature.
        estimators: the robust estimators (registry names besides ``dpo``, always fitted).
        fractions: each robust estimator's strength as a fraction of its own population
            collapse radius (KLDPO: the temperature whose implied KL radius is that
            fraction of the KL ball's).
        frontier: multipliers t of DPO's estimate (t w-hat is DPO at temperature beta / t),
            evaluated for the matched-KL comparisons; 1 must be among them.
        bound: Theta = {||w|| <= bound} for every fit and target.
        artifact: path of the environment artifact (empty: the committed one).
    """

    name: str = "lm_shift_exact"
    seed: int = 20261203
    n: list = field(default_factory=lambda: [100, 316, 1000, 3162, 10000, 31623, 100000])
    seeds: int = 100
    kinds: list = field(default_factory=lambda: ["convex", "geometric"])
    alpha_o: float = 0.1
    alphas: list = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    pair: list = field(default_factory=lambda: ["anger", "fear"])
    dim: int = 8
    features: str = "minilm"
    reference: str = "model"
    reward_scale: float = 10.0
    beta: float = 1.0
    estimators: list = field(default_factory=lambda: ["kl", "w1", "w2", "wdpo", "kldpo"])
    fractions: list = field(default_factory=lambda: [0.1, 0.3, 0.6])
    frontier: list = field(default_factory=lambda: [
        0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0])
    bound: float = 1e3
    artifact: str = ""

    def __post_init__(self):
        if not self.n or any(int(v) != v or v < 2 for v in self.n):
            raise ValueError(f"n must be a nonempty list of integers >= 2, got {self.n}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        bad = [k for k in self.kinds if k not in KINDS]
        if not self.kinds or bad:
            raise ValueError(f"kinds must be a nonempty subset of {KINDS}, got {self.kinds}")
        if not all(0.0 <= a <= 1.0 for a in [self.alpha_o, *self.alphas]):
            raise ValueError("alpha_o and alphas must lie in [0, 1]")
        if self.alpha_o not in self.alphas or 1.0 not in self.alphas:
            raise ValueError(f"alphas must contain alpha_o = {self.alpha_o} and 1.0")
        if len(self.pair) != 2 or self.pair[0] == self.pair[1]:
            raise ValueError(f"pair must name two different emotions, got {self.pair}")
        if self.features not in FEATURES or self.reference not in REFERENCES:
            raise ValueError(f"features must be one of {FEATURES} and reference one of "
                             f"{REFERENCES}, got {self.features!r}, {self.reference!r}")
        if self.dim < 1 or not self.reward_scale > 0 or not self.beta > 0:
            raise ValueError("dim must be >= 1, reward_scale and beta > 0")
        for name in self.estimators:
            if name == "dpo" or name not in ESTIMATORS:
                raise ValueError(f"estimators must be robust estimators among "
                                 f"{[e for e in ESTIMATORS if e != 'dpo']}, got {name!r}")
        if not self.fractions or not all(0.0 < f < 1.0 for f in self.fractions):
            raise ValueError(f"fractions must lie in (0, 1), got {self.fractions}")
        if 1.0 not in self.frontier or not all(t > 0 for t in self.frontier):
            raise ValueError(f"frontier multipliers must be positive and include 1, got "
                             f"{self.frontier}")
        if not self.bound > 0:
            raise ValueError(f"bound must be positive, got {self.bound}")

    def planned_fits(self) -> int:
        """Fits in the whole study: one DPO plus every robust (estimator, fraction)."""
        per = 1 + len(self.estimators) * len(self.fractions)
        return len(self.kinds) * len(self.n) * self.seeds * per
