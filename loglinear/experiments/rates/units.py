"""One sample, every estimator: the rows and the targets of the rates study.

:mod:`loglinear.experiments.rates.run` plans the study and runs these functions over
chunks of (setting, draw, n, seed) units and of targets; the seeding, the record schema
and the status rules are described there.
"""

from __future__ import annotations

import json
import time
import zlib
from functools import lru_cache

import numpy as np

from ...estimation import coverage
from ...fit import SeparableDataError, separating_direction
from ..estimators import get_estimator
from .config import EnvSpec, RatesConfig

ROW_KEY = ["setting", "draw", "estimator", "schedule", "n", "seed"]
ROW_COLUMNS = ROW_KEY + [
    "hyperparameter", "error", "error_star", "error_sigma", "policy_kl", "policy_tv",
    "policy_kl_star", "policy_tv_star", "norm_hat", "on_boundary", "at_zero", "separable",
    "atoms", "lambda_min_sample", "concentration", "avoid", "spectrum_min", "lambda_min",
    "tr_hinv", "tr_sandwich", "certificate", "status", "failure", "seconds",
]
TARGET_KEY = ["setting", "draw", "estimator", "hyperparameter"]
TARGET_COLUMNS = TARGET_KEY + [
    "theta", "norm", "on_boundary", "error_star", "policy_kl_star", "policy_tv_star",
    "tr_hinv", "tr_sandwich", "dual", "collapse_radius", "local_status", "certificate",
    "status", "failure", "seconds",
]
ZERO_TOL = 1e-7  # ||w_hat|| below this counts as collapsed to the kink w = 0
BOUNDARY_RTOL = 1e-9  # ||w_hat|| >= B (1 - this) is on the sphere; above B (1 + this): outside
COLLAPSE = "collapse"  # the hyperparameter key of the collapse-radius rows of targets.csv
REASON_CHARS = 200


# ----------------------------------------------------------------- the plan
def _stable(name: str) -> int:
    return zlib.crc32(name.encode())


@lru_cache(maxsize=64)
def _environment(spec: EnvSpec, seed: int, draw: int = 0):
    """The environment, its centered population, w* and lambda_min (cached per process)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _stable(spec.geometry_name),
                                                        draw, spec.env_seed]))
    env = spec.make(rng)
    pop = env.population(centered=True)
    w_star = env.theta_star() - env.theta_ref
    return env, pop, w_star, coverage(pop).lambda_min


def _spec(config: RatesConfig, setting: str) -> EnvSpec:
    return {s.name: s for s in config.settings}[setting]


def environment(config: RatesConfig, setting: str, draw: int = 0):
    """(env, centered population, w*, lambda_min) of a named setting's draw."""
    return _environment(_spec(config, setting), config.seed, int(draw))


def _hyper_key(value) -> str:
    return "" if value is None else repr(float(value))


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:REASON_CHARS]}"


def _judge(fit, bound: float) -> tuple[str, str]:
    """(status, failure) of a fit: ``ok`` only when certified and inside Theta."""
    if not fit.certified:
        reason = f"uncertified: {fit.status} (certificate {fit.certificate:.3g})"
        return f"failed: {reason}", reason
    if np.linalg.norm(fit.theta) > bound * (1.0 + BOUNDARY_RTOL):
        reason = f"outside Theta: ||w|| = {np.linalg.norm(fit.theta):.6g} > B = {bound:g}"
        return f"failed: {reason}", reason
    return "ok", ""


def _failure(exc: Exception) -> tuple[str, str]:
    """(status, failure) of a fit that raised."""
    if isinstance(exc, SeparableDataError):
        return "separable", _reason(exc)
    return f"failed: {_reason(exc)}", _reason(exc)


# -------------------------------------------------------------------- targets
def _target_row(config: RatesConfig, setting: str, draw: int, est_name: str,
                hyper) -> dict:
    """The exact population target of one estimator at one hyperparameter value."""
    env, pop, w_star, _ = environment(config, setting, draw)
    est = get_estimator(est_name)
    beta = env.beta
    t0 = time.perf_counter()
    row = dict(setting=setting, draw=draw, estimator=est_name, hyperparameter=_hyper_key(hyper),
               dual=np.nan, collapse_radius=np.nan, tr_hinv=np.nan, tr_sandwich=np.nan,
               local_status="", theta="", norm=np.nan, on_boundary=False, error_star=np.nan,
               policy_kl_star=np.nan, policy_tv_star=np.nan, certificate=np.nan)
    try:
        fit = est.target_fit(env, pop, beta=beta, param=hyper, bound=config.bound)
        status, failure = _judge(fit, config.bound)
    except Exception as exc:  # recorded, never silent: the report lists failures
        (status, failure), fit = _failure(exc), None
    if fit is not None:
        w = fit.theta
        star = env.divergence(env.theta_ref + w_star, env.theta_ref + w)
        row.update(theta=json.dumps([float(v) for v in w]), norm=float(np.linalg.norm(w)),
                   on_boundary=bool(np.linalg.norm(w) >= config.bound * (1 - BOUNDARY_RTOL)),
                   error_star=float(np.linalg.norm(w - w_star)), policy_kl_star=star.kl,
                   policy_tv_star=star.tv, certificate=fit.certificate)
    row.update(status=status, failure=failure)
    if status == "ok":
        row["dual"] = est.population_dual(pop, w, beta=beta, param=hyper)
        try:
            la = est.local(pop, w, beta=beta, param=hyper)
            row.update(tr_hinv=la.tr_hinv, tr_sandwich=la.tr_sandwich, local_status="ok")
        except (ValueError, np.linalg.LinAlgError) as exc:
            row["local_status"] = f"none: {str(exc)[:120]}"
    row["seconds"] = time.perf_counter() - t0
    return row


def _collapse_row(config, setting, draw, est_name) -> dict:
    env, pop, _, _ = environment(config, setting, draw)
    t0 = time.perf_counter()
    try:
        r = get_estimator(est_name).collapse(pop, beta=env.beta)
        status = "ok"
        failure = ""
    except Exception as exc:
        r, status, failure = np.nan, f"failed: {_reason(exc)}", _reason(exc)
    return dict(setting=setting, draw=draw, estimator=est_name, hyperparameter=COLLAPSE,
                theta="", norm=np.nan, on_boundary=False, error_star=np.nan,
                policy_kl_star=np.nan, policy_tv_star=np.nan, tr_hinv=np.nan,
                tr_sandwich=np.nan, dual=np.nan, collapse_radius=r, local_status="",
                certificate=np.nan, status=status, failure=failure,
                seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------ rows
def _unit_rows(config: RatesConfig, setting: str, draw: int, n: int, seed: int,
               jobs: list) -> list[dict]:
    """Fit every pending (estimator, schedule, hyperparameter, target) job on one sample."""
    env, pop, w_star, lam_min = environment(config, setting, draw)
    spec = _spec(config, setting)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _stable(setting), draw,
                                                        n, seed]))
    data = env.sample_counts(n, rng, centered=True)
    cov = coverage(data)
    separable = separating_direction(data) is not None
    ref, bound = env.theta_ref, config.bound
    rows = []
    for est_name, sched_name, hyper, target, tr_hinv, tr_sand in jobs:
        est = get_estimator(est_name)
        t0 = time.perf_counter()
        row = dict(setting=setting, draw=draw, estimator=est_name, schedule=sched_name, n=n,
                   seed=seed, hyperparameter=np.nan if hyper is None else float(hyper),
                   atoms=data.n, separable=separable, lambda_min_sample=cov.lambda_min,
                   concentration=spec.concentration, avoid=spec.avoid,
                   spectrum_min=min(spec.spectrum) if spec.spectrum else 1.0,
                   lambda_min=lam_min, tr_hinv=tr_hinv, tr_sandwich=tr_sand)
        nan = dict(error=np.nan, error_star=np.nan, error_sigma=np.nan, policy_kl=np.nan,
                   policy_tv=np.nan, policy_kl_star=np.nan, policy_tv_star=np.nan,
                   norm_hat=np.nan, on_boundary=False, at_zero=False, certificate=np.nan)
        row.update(nan)
        try:
            fit = est.solve(data, beta=env.beta, param=hyper, bound=bound)
            status, failure = _judge(fit, bound)
        except Exception as exc:  # recorded with its reason; errors left NaN on purpose
            (status, failure), fit = _failure(exc), None
        if fit is not None:
            w = fit.theta
            norm = float(np.linalg.norm(w))
            row.update(norm_hat=norm, on_boundary=bool(norm >= bound * (1 - BOUNDARY_RTOL)),
                       at_zero=bool(norm < ZERO_TOL), certificate=fit.certificate)
        if status == "ok":
            diff = w - target
            own = env.divergence(ref + target, ref + w)
            star = env.divergence(ref + w_star, ref + w)
            row.update(error=float(np.linalg.norm(diff)),
                       error_star=float(np.linalg.norm(w - w_star)),
                       error_sigma=float(np.sqrt(max(diff @ cov.sigma @ diff, 0.0))),
                       policy_kl=own.kl, policy_tv=own.tv, policy_kl_star=star.kl,
                       policy_tv_star=star.tv)
        row.update(status=status, failure=failure, seconds=time.perf_counter() - t0)
        rows.append(row)
    return rows


def _run_chunk(config: RatesConfig, units: list) -> list[dict]:
    out = []
    for setting, draw, n, seed, jobs in units:
        out.extend(_unit_rows(config, setting, draw, n, seed, jobs))
    return out


def _target_chunk(config: RatesConfig, items: list) -> list[dict]:
    out = []
    for kind, setting, draw, est_name, hyper in items:
        out.append(_collapse_row(config, setting, draw, est_name) if kind == COLLAPSE
                   else _target_row(config, setting, draw, est_name, hyper))
    return out


