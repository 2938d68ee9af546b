"""Configuration of the approximation study (``loglinear approx-study --config FILE``).

A TOML file has one table, ``[study]``, whose keys are the fields of
:class:`ApproxStudyConfig`. Read it with
``loglinear.experiments.config.load_config(ApproxStudyConfig, path)`` (or :func:`load_config`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import from_mapping
from ..config import load_config as _load_config

DIVERGENCES = ("kl", "w1", "w2")


@dataclass(frozen=True)
class ApproxStudyConfig:
    """The comparison study.

    Attributes:
        seed: root seed; environment k uses SeedSequence(seed).spawn(...)[k].
        beta: DPO temperature.
        fractions: radii as fractions of each divergence's collapse radius, in (0, 1).
        divergences: subset of ("kl", "w1", "w2").
        concentrations: sampling-policy concentrations (0 = uniform, best coverage).
        replicates: environments per concentration.
        n_states, n_actions, dim: environment sizes.
        n_samples: data regimes: 0 is the exact population, N > 0 a multinomial sample of
            N pairs (each environment is run in every regime).
        reward_scale: ||omega||.
        exponent_max_fraction: radii up to this fraction enter the exponent fit.
        refit_taus: temperatures at which the "refit with frozen weights, then reweight"
            KLDPO iteration is run and its contraction factor recorded (empty: skip).
        refit_max_iter: outer iterations allowed to that iteration.
        out: records directory (the report goes to its parent).
    """

    seed: int = 0
    beta: float = 1.0
    fractions: tuple = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.9)
    divergences: tuple = DIVERGENCES
    concentrations: tuple = (0.0, 3.0)
    replicates: int = 3
    n_states: int = 6
    n_actions: int = 5
    dim: int = 4
    n_samples: tuple = (0,)
    reward_scale: float = 2.0
    exponent_max_fraction: float = 0.2
    refit_taus: tuple = (0.25, 0.5, 0.7, 1.0, 1.5, 2.0, 4.0)
    refit_max_iter: int = 100
    out: str = "reports/approximations"

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        object.__setattr__(self, "divergences", tuple(self.divergences))
        object.__setattr__(self, "refit_taus", tuple(float(t) for t in self.refit_taus))
        if any(not (np.isfinite(t) and t > 0) for t in self.refit_taus):
            raise ValueError(f"refit_taus must be positive, got {self.refit_taus}")
        if int(self.refit_max_iter) < 1:
            raise ValueError("refit_max_iter must be >= 1")
        ns = self.n_samples if isinstance(self.n_samples, (list, tuple)) else (self.n_samples,)
        object.__setattr__(self, "n_samples", tuple(int(n) for n in ns))
        object.__setattr__(self, "concentrations", tuple(float(c) for c in
                                                         self.concentrations))
        if not self.fractions or not all(0 < f < 1 for f in self.fractions):
            raise ValueError(f"fractions must be a nonempty list in (0, 1), got "
                             f"{self.fractions}")
        bad = sorted(set(self.divergences) - set(DIVERGENCES))
        if bad or not self.divergences:
            raise ValueError(f"divergences must be a nonempty subset of {DIVERGENCES}, got "
                             f"{self.divergences}")
        if not (np.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not self.concentrations or any(c < 0 for c in self.concentrations):
            raise ValueError("concentrations must be a nonempty list of numbers >= 0")
        for name in ("replicates", "n_states", "dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.n_actions < 2:
            raise ValueError("n_actions must be >= 2")
        if not self.n_samples or any(n < 0 for n in self.n_samples):
            raise ValueError("n_samples must list 0 (population) and/or positive sizes")
        if not 0 < self.exponent_max_fraction < 1:
            raise ValueError("exponent_max_fraction must lie in (0, 1)")

    @classmethod
    def from_dict(cls, mapping: dict, *, where: str = "approx config") -> ApproxStudyConfig:
        """Build the config from a parsed TOML mapping: its one table ``[study]``."""
        unknown = sorted(set(mapping) - {"study"})
        if unknown:
            raise ValueError(f"{where}: unknown tables {unknown}; allowed: ['study']")
        return from_mapping(cls, mapping.get("study", {}), where=f"{where} [study]")


def load_config(path) -> ApproxStudyConfig:
    """Parse ``simulations/approx.toml`` (table ``[study]``) into the config."""
    return _load_config(ApproxStudyConfig, path)
