"""Shared pieces of the "beyond log-linear" runners: environments, shifted rewards, seeds.

Every study draws its environments from an :class:`~loglinear.experiments.rates.run.EnvSpec`
(same fields and validation as the rates study) and a shifted reward: a second linear
reward :math:`\\omega'` of the same norm, drawn from the same seed. The evaluation rewards
are the paper's convex mixtures :math:`r(\\alpha) = \\alpha r + (1-\\alpha) r'`
(docs/theory.md §5.7), so alpha = 1 is the training reward and alpha = 0 the shifted one.
"""

from __future__ import annotations

import os
import time
import warnings
import zlib
from functools import lru_cache

import numpy as np

from ...env import LogLinearEnv
from ...rewards import mix_rewards
from ..config import from_mapping, load_config
from ..rates.run import EnvSpec

__all__ = ["EnvSpec", "Timer", "environment", "labelled_env", "mixture", "parse_settings",
           "row_rng", "shifted_reward", "study_config"]


def _stable(name: str) -> int:
    return zlib.crc32(name.encode())


@lru_cache(maxsize=32)
def environment(spec: EnvSpec, seed: int) -> LogLinearEnv:
    """The environment of a setting, deterministic in (seed, env_seed).

    The setting's name is not part of the seed: settings that differ only in coverage
    (``concentration``, ``spectrum``) share the same random draws (common random
    environments), so their differences come from coverage alone.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, spec.env_seed]))
    return LogLinearEnv.random(
        rng, n_states=spec.n_states, n_actions=spec.n_actions, dim=spec.dim, beta=spec.beta,
        concentration=spec.concentration, spectrum=spec.spectrum,
        reward_scale=spec.reward_scale, ref_scale=spec.ref_scale, state_dist=spec.state_dist)


@lru_cache(maxsize=64)
def shifted_reward(spec: EnvSpec, seed: int, shift: int = 0) -> np.ndarray:
    """(S, A) a second linear reward of the same norm as the training one: the direction
    number ``shift`` (independent draws; direction 0 is the one every study used first)."""
    env = environment(spec, seed)
    key = [seed, spec.env_seed, 1] + ([int(shift)] if shift else [])
    v = np.random.default_rng(np.random.SeedSequence(key)).standard_normal(env.dim)
    omega2 = v / np.linalg.norm(v) * spec.reward_scale
    return env.features @ omega2


def mixture(spec: EnvSpec, seed: int, alpha: float, shift: int = 0) -> np.ndarray:
    """r(alpha) = alpha r_train + (1 - alpha) r_shift, an (S, A) table (shift direction
    number ``shift``)."""
    return mix_rewards(environment(spec, seed).reward, shifted_reward(spec, seed, shift),
                       alpha)


def labelled_env(spec: EnvSpec, seed: int, alpha: float = 1.0,
                 shift: int = 0) -> LogLinearEnv:
    """The one environment builder of the studies: the setting's environment with its
    preference labels drawn from r(alpha) (:func:`mixture`; alpha = 1 is the environment
    itself). Features, reference policy and sampling policy are those of
    :func:`environment`, so every alpha and shift shares them."""
    env = environment(spec, seed)
    return env if alpha == 1.0 else env.with_reward(mixture(spec, seed, alpha, shift))


def row_rng(seed: int, *parts) -> np.random.Generator:
    """A generator for one record row: independent of execution order."""
    key = [int(seed)] + [(_stable(p) if isinstance(p, str) else int(p)) for p in parts]
    return np.random.default_rng(np.random.SeedSequence(key))


def parse_settings(raw: dict, path) -> tuple[dict, tuple[EnvSpec, ...]]:
    """Split a parsed TOML into (remaining keys, settings from [env] + [[setting]])."""
    raw = dict(raw)
    defaults = raw.pop("env", {})
    settings = tuple(from_mapping(EnvSpec, {**defaults, **s}, where=f"{path} [[setting]]")
                     for s in raw.pop("setting", []))
    return raw, settings


def study_config(cls, raw: dict, *, where: str = "config"):
    """A study config (frozen dataclass with a ``settings`` field) from a parsed TOML
    mapping: ``[env]`` defaults, ``[[setting]]`` tables, and the study's own keys (lists
    become tuples). The configs' ``from_dict``, used by
    :func:`loglinear.experiments.config.load_config`."""
    raw, settings = parse_settings(raw, where)
    raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return from_mapping(cls, {**raw, "settings": settings}, where=where)


def load(cls, path):
    """A study config from TOML: ``load_config(cls, path)`` (kept for old callers)."""
    return load_config(cls, path)


def as_config(cls, config):
    """``config`` itself, or (deprecated) the config read from a TOML path: the studies'
    ``main`` took a path before it took a config object."""
    if isinstance(config, (str, os.PathLike)):
        warnings.warn(f"passing a config path to main is deprecated; pass "
                      f"load_config({cls.__name__}, path)", DeprecationWarning, stacklevel=3)
        return load_config(cls, config)
    return config


def deprecated_from_toml(cls, path):
    """The shared body of the configs' deprecated ``from_toml``."""
    warnings.warn(f"{cls.__name__}.from_toml is deprecated; use loglinear.experiments.config"
                  f".load_config({cls.__name__}, path)", DeprecationWarning, stacklevel=3)
    return load_config(cls, path)


class StudyConfig:
    """Mixin of the beyond studies' frozen configs: ``from_dict`` (what
    :func:`loglinear.experiments.config.load_config` calls) and the deprecated
    ``from_toml``."""

    @classmethod
    def from_dict(cls, raw: dict):
        """The config from a parsed TOML mapping (``[env]`` defaults, ``[[setting]]``
        tables, the study's fields); read a file with ``load_config(cls, path)``."""
        return study_config(cls, raw)

    @classmethod
    def from_toml(cls, path):
        """Deprecated: use ``load_config(cls, path)``."""
        return deprecated_from_toml(cls, path)


class Timer:
    """Wall-clock timer that prints the study's runtime when it stops."""

    def __init__(self, label: str):
        self.label = label

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        print(f"{self.label}: runtime {self.seconds:.1f} s", flush=True)
