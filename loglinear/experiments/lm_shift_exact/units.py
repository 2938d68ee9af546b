"""The work of the exact preference-shift study: environments, targets, one sample's fits and
their exact evaluation on the held-out prompts (docs/theory.md §10.2).

Every quantity here is exact: the population is enumerated, the policies are softmaxes over
the stored candidates, and the rewards are the probe's stored probabilities.
"""

from __future__ import annotations

import time
import zlib
from functools import lru_cache

import numpy as np

from ...approx.calibrate import tau_for_radius_kl
from ...envs import emotion, emotion_reward
from ..estimators import ESTIMATORS
from .config import ExactShiftConfig

ROW_KEY = ["kind", "n", "seed", "estimator", "fraction", "t"]


def reward_columns(config: ExactShiftConfig) -> list[str]:
    return [f"reward_a{a:g}" for a in config.alphas]


def row_columns(config: ExactShiftConfig) -> list[str]:
    return ROW_KEY + ["hyper", "status", "certificate", "kl_ref", "policy_kl", "target_kl",
                      "theta_err", *reward_columns(config), "theta", "seconds"]


def _env_key(config: ExactShiftConfig, kind: str) -> tuple:
    return (kind, config.dim, config.features, config.alpha_o, tuple(config.pair),
            config.reward_scale, config.beta, config.reference, config.artifact,
            tuple(config.alphas))


def environments(config: ExactShiftConfig, kind: str):
    """(training environment labelled at alpha_o, held-out environment, held-out reward
    tables per alpha in probability units); built once per process."""
    return _environments(_env_key(config, kind))


@lru_cache(maxsize=8)
def _environments(key: tuple):
    kind, dim, features, alpha_o, pair, scale, beta, reference, artifact, alphas = key
    path = artifact or None
    common = dict(dim=dim, features=features, alpha=alpha_o, kind=kind, pair=pair,
                  reward_scale=scale, beta=beta, reference=reference, path=path)
    train = emotion(split="train", **common)
    held = emotion(split="heldout", **common)
    tables = {a: emotion_reward(a, split="heldout", kind=kind, pair=pair, path=path)
              for a in alphas}
    return train, held, tables, train.population(centered=True)


def rng_for(config: ExactShiftConfig, kind: str, n: int, seed: int) -> np.random.Generator:
    """The sample's Generator: from the root seed, the kind, n and the replicate."""
    return np.random.default_rng([config.seed, zlib.crc32(kind.encode()), int(n), int(seed)])


def hyperparameter(config: ExactShiftConfig, kind: str, name: str, fraction: float) -> float:
    """An estimator's hyperparameter at ``fraction`` of its own population collapse radius
    (KLDPO: the temperature whose implied KL radius is that fraction of the KL ball's)."""
    pop = _population(config, kind)
    if name == "kldpo":
        radius = fraction * ESTIMATORS.get("kl").collapse(pop, beta=config.beta)
        return float(tau_for_radius_kl(radius, pop, beta=config.beta))
    return float(fraction * ESTIMATORS.get(name).collapse(pop, beta=config.beta))


def _population(config: ExactShiftConfig, kind: str):
    return environments(config, kind)[3]


def evaluate(config: ExactShiftConfig, kind: str, theta, *, star, target=None) -> dict:
    """Exact evaluation of pi_theta: held-out rewards at every alpha (probability units),
    KL to the reference on held-out prompts, and on the training prompts KL(pi* || pi) to the
    DPO population optimum (and to the estimator's own target), and ||theta - theta*||."""
    train, held, tables, _ = environments(config, kind)
    p = held.policy(theta)
    out = {col: float(held.state_dist @ np.sum(p * tables[a], axis=1))
           for col, a in zip(reward_columns(config), config.alphas)}
    out["kl_ref"] = held.divergence(theta, np.zeros(held.dim)).kl
    out["policy_kl"] = train.divergence(star, theta).kl
    out["target_kl"] = (np.nan if target is None else train.divergence(target, theta).kl)
    out["theta_err"] = float(np.linalg.norm(np.asarray(theta) - star))
    return out


def _theta_text(theta) -> str:
    return " ".join(repr(float(v)) for v in theta)


def parse_theta(text: str) -> np.ndarray:
    return np.array([float(v) for v in str(text).split()])


def target_rows(config: ExactShiftConfig, kind: str) -> list[dict]:
    """The population optima: DPO's theta* and each robust estimator's target per fraction,
    evaluated like the sample fits (rows with n = 0)."""
    pop = _population(config, kind)
    rows, star = [], None
    for name, fraction in [("dpo", 0.0)] + [(e, f) for e in config.estimators
                                            for f in config.fractions]:
        t0 = time.perf_counter()
        hyper = None if name == "dpo" else hyperparameter(config, kind, name, fraction)
        fit = ESTIMATORS.get(name).solve(pop, beta=config.beta, param=hyper,
                                         bound=config.bound)
        if star is None:
            star = fit.theta
        rows.append(dict(kind=kind, n=0, seed=0, estimator=name, fraction=fraction, t=1.0,
                         hyper=np.nan if hyper is None else hyper, status=fit.status,
                         certificate=fit.certificate, theta=_theta_text(fit.theta),
                         **evaluate(config, kind, fit.theta, star=star, target=fit.theta),
                         seconds=time.perf_counter() - t0))
    return rows


ORACLE_COLUMNS = ["kind", "alpha", "reward", "ref_reward", "kl_ref", "status", "theta"]


def oracle_rows(config: ExactShiftConfig, kind: str) -> list[dict]:
    """For every alpha of the grid, the population DPO optimum of labels drawn at that alpha
    (the best the policy class does when trained in distribution) and the reference policy,
    both evaluated at that alpha on the held-out prompts: the normaliser of
    docs/theory.md §10.3."""
    _, held, tables, _ = environments(config, kind)
    rows = []
    for a in config.alphas:
        env = emotion(split="train", dim=config.dim, features=config.features, alpha=a,
                      kind=kind, pair=tuple(config.pair), reward_scale=config.reward_scale,
                      beta=config.beta, reference=config.reference,
                      path=config.artifact or None)
        fit = ESTIMATORS.get("dpo").solve(env.population(centered=True), beta=config.beta,
                                          param=None, bound=config.bound)
        p, p0 = held.policy(fit.theta), held.policy(np.zeros(held.dim))
        rows.append(dict(kind=kind, alpha=a, reward=float(held.state_dist @ (p * tables[a]).sum(1)),
                         ref_reward=float(held.state_dist @ (p0 * tables[a]).sum(1)),
                         kl_ref=held.divergence(fit.theta, np.zeros(held.dim)).kl,
                         status=fit.status, theta=_theta_text(fit.theta)))
    return rows


def unit_rows(config: ExactShiftConfig, kind: str, n: int, seed: int, targets: dict
              ) -> list[dict]:
    """One sample: DPO (and its frontier t w-hat) and every robust (estimator, fraction)."""
    train = environments(config, kind)[0]
    data = train.sample_counts(int(n), rng_for(config, kind, n, seed), centered=True)
    star = targets[(kind, "dpo", 0.0)][1]
    rows = []
    for name, fraction in [("dpo", 0.0)] + [(e, f) for e in config.estimators
                                            for f in config.fractions]:
        hyper, target = targets[(kind, name, fraction)]
        hyper = None if name == "dpo" else hyper
        t0 = time.perf_counter()
        try:
            fit = ESTIMATORS.get(name).solve(data, beta=config.beta, param=hyper,
                                             bound=config.bound)
            status, cert, theta = fit.status, fit.certificate, fit.theta
        except (ValueError, RuntimeError, ArithmeticError) as exc:
            status, cert, theta = f"error: {type(exc).__name__}", np.nan, None
        seconds = time.perf_counter() - t0
        base = dict(kind=kind, n=int(n), seed=int(seed), estimator=name, fraction=fraction,
                    hyper=np.nan if hyper is None else hyper, status=status, certificate=cert)
        if theta is None:
            rows.append(dict(base, t=1.0, theta="", seconds=seconds))
            continue
        scales = config.frontier if name == "dpo" else [1.0]
        for t in scales:
            th = t * np.asarray(theta, float)
            rows.append(dict(base, t=float(t), theta=_theta_text(th), seconds=seconds,
                             **evaluate(config, kind, th, star=star,
                                        target=None if name == "dpo" else target)))
    return rows


def run_chunk(config: ExactShiftConfig, units: list) -> list[dict]:
    """Rows of a chunk of units ``(kind, n, seed, targets)``."""
    return [r for kind, n, seed, targets in units
            for r in unit_rows(config, kind, n, seed, targets)]
