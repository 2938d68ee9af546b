"""One sample, every estimator and schedule: the rows, targets and environment constants of
the Remark 3 study. :mod:`loglinear.experiments.remark3.run` plans the study and runs these
functions; the seeding, the record schema and the status rules are described there."""

from __future__ import annotations

import json
import time
import zlib
from functools import lru_cache

import numpy as np
from scipy.stats import norm as normal

from ... import inference
from ...estimation import coverage
from ...fit import SeparableDataError
from .config import Remark3Config, Setting
from .fits import BOUNDARY_RTOL, FITS, certificate, get_fit, shift_radius

ROW_KEY = ["setting", "estimator", "a", "n", "seed"]
ROW_COLUMNS = ROW_KEY + [
    "hyperparameter", "shrinking", "error_star", "error_target", "norm_hat", "on_boundary",
    "value_sample", "risk_pop", "worst_shift", "cert_true", "cert_shift", "ellipse_target",
    "ellipse_star", "coord_target", "coord_star", "interval", "local_bound", "paper_bound",
    "status", "failure", "seconds",
]
TARGET_KEY = ["setting", "estimator", "hyperparameter"]
TARGET_COLUMNS = TARGET_KEY + ["theta", "norm", "bias", "status", "failure", "seconds"]
ENV_KEY = ["setting", "kind", "name"]
ENV_COLUMNS = ENV_KEY + ["value"]
REASON_CHARS = 160


def _stable(name: str) -> int:
    return zlib.crc32(name.encode())


def hyper_key(value) -> str:
    """The ``hyperparameter`` key of a target: repr of the float, "" for none."""
    return "" if value is None else repr(float(value))


@lru_cache(maxsize=32)
def _environment(spec: Setting, seed: int):
    rng = np.random.default_rng(np.random.SeedSequence([seed, _stable(spec.geometry_name),
                                                        spec.env_seed]))
    env = spec.make(rng)
    return env, env.population(centered=True), env.theta_star() - env.theta_ref


def environment(config: Remark3Config, setting: str):
    """(env, centred population, w* = theta* - theta_ref) of a named setting, drawn from
    ``SeedSequence([config.seed, crc32(geometry), env_seed])`` (cached per process)."""
    spec = {s.name: s for s in config.settings}[setting]
    return _environment(spec, config.seed)


def sample(config: Remark3Config, setting: str, n: int, seed: int):
    """The compressed sample of row (setting, n, seed), from ``SeedSequence([config.seed,
    crc32(setting), n, seed])``: every estimator and schedule sees the same sample."""
    env, _, _ = environment(config, setting)
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _stable(setting), n,
                                                        seed]))
    return env.sample_counts(n, rng, centered=True)


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:REASON_CHARS]}"


def _fit(fit, data, *, beta, hyper, bound):
    """(result or None, status, failure): ``ok`` only when certified and inside Theta."""
    try:
        res = fit.solve(data, beta=beta, hyper=hyper, bound=bound)
    except SeparableDataError as exc:
        return None, "separable", _reason(exc)
    except Exception as exc:  # recorded with its reason, never silent
        return None, f"failed: {_reason(exc)}", _reason(exc)
    status, failure = fit.judge(res)
    norm = float(np.linalg.norm(res.theta))
    if status == "ok" and norm > bound * (1.0 + BOUNDARY_RTOL):
        failure = f"outside Theta: ||w|| = {norm:.6g} > B = {bound:g}"
        status = f"failed: {failure}"
    return res, status, failure


# -------------------------------------------------------------- environments
def environment_rows(config: Remark3Config, setting: str) -> list[dict]:
    """The constants of a setting: the hyperparameter at n0 of every estimator (kind
    ``base``), the stated shift of every ball (``shift``), and the population's atoms,
    lambda_min and ||w*|| (``env``)."""
    env, pop, w_star = environment(config, setting)
    rows = [dict(setting=setting, kind="env", name=k, value=float(v)) for k, v in (
        ("atoms", pop.n), ("lambda_min", coverage(pop).lambda_min),
        ("norm_star", np.linalg.norm(w_star)), ("dim", pop.d))]
    for name in config.estimators:
        fit = get_fit(name)
        if fit.calibrate is not None:
            base = fit.calibrate(pop, beta=env.beta, fraction=config.collapse_fraction)
            rows.append(dict(setting=setting, kind="base", name=name, value=float(base)))
    for ball in sorted({get_fit(e).ball for e in config.estimators}):
        rows.append(dict(setting=setting, kind="shift", name=ball, value=shift_radius(
            ball, pop, beta=env.beta, fraction=config.shift_fraction)))
    return rows


# ------------------------------------------------------------------- targets
def target_row(config: Remark3Config, setting: str, est_name: str, hyper) -> dict:
    """The exact population target theta(rho) of one estimator at one hyperparameter: the
    estimator fitted to the enumerated population on the same Theta as the samples."""
    env, pop, w_star = environment(config, setting)
    t0 = time.perf_counter()
    res, status, failure = _fit(get_fit(est_name), pop, beta=env.beta, hyper=hyper,
                                bound=config.bound)
    row = dict(setting=setting, estimator=est_name, hyperparameter=hyper_key(hyper),
               theta="", norm=np.nan, bias=np.nan, status=status, failure=failure)
    if status == "ok":
        w = np.asarray(res.theta, float)
        row.update(theta=json.dumps([float(v) for v in w]), norm=float(np.linalg.norm(w)),
                   bias=float(np.linalg.norm(w - w_star)))
    row["seconds"] = time.perf_counter() - t0
    return row


def target_chunk(config: Remark3Config, items: list) -> list[dict]:
    return [target_row(config, *item) for item in items]


# ---------------------------------------------------------------------- rows
def _intervals(res, data, *, beta, n, level, theta, target, w_star) -> dict:
    """Whether the plug-in Wald ellipsoid and per-coordinate intervals at ``level``
    (:func:`loglinear.inference.ellipsoid`, docs/theory.md §5.8) cover the target theta(rho)
    and theta*; ``interval`` says why there are none where the estimator has no normal
    limit (collapsed, on the sphere, a kink)."""
    try:
        region = inference.ellipsoid(res, data, level, beta=beta, n=n)
        half = normal.ppf(0.5 + 0.5 * level) * np.sqrt(np.diag(region.shape))  # = intervals()
        out = dict(interval="ok")
        for tag, ref in (("target", target), ("star", w_star)):
            out[f"ellipse_{tag}"] = region.contains(ref)
            out[f"coord_{tag}"] = float(np.mean(np.abs(theta - ref) <= half))
        return out
    except (ValueError, np.linalg.LinAlgError) as exc:
        return dict(interval=f"none: {str(exc)[:REASON_CHARS]}")


def unit_rows(config: Remark3Config, setting: str, n: int, seed: int, jobs: list,
              shifts: dict) -> list[dict]:
    """Fit every pending (estimator, a, hyperparameter, target) job on one sample.

    ``shifts``: ball -> the stated shift radius of certificate (ii).
    """
    env, pop, w_star = environment(config, setting)
    data = sample(config, setting, n, seed)
    beta, bound = env.beta, config.bound
    rows = []
    for est_name, a, hyper, target in jobs:
        fit = FITS.get(est_name)
        t0 = time.perf_counter()
        row = {c: np.nan for c in ROW_COLUMNS}
        row.update(setting=setting, estimator=est_name, a=a, n=n, seed=seed,
                   hyperparameter=np.nan if hyper is None else float(hyper),
                   shrinking=fit.shrinking(hyper), on_boundary=False, cert_true=False,
                   cert_shift=False, ellipse_target=False, ellipse_star=False, interval="")
        res, status, failure = _fit(fit, data, beta=beta, hyper=hyper, bound=bound)
        if status == "ok":
            w = np.asarray(res.theta, float)
            norm = float(np.linalg.norm(w))
            target = np.asarray(target, float)
            row.update(error_star=float(np.linalg.norm(w - w_star)),
                       error_target=float(np.linalg.norm(w - target)), norm_hat=norm,
                       on_boundary=bool(norm >= bound * (1 - BOUNDARY_RTOL)))
            row.update(certificate(fit, w, data, pop, beta=beta, hyper=hyper,
                                   ball_radius=shifts[fit.ball]))
            row.update(_intervals(res, data, beta=beta, n=n, level=config.level, theta=w,
                                  target=target, w_star=w_star))
            if fit.bounds is not None:
                # the robust bounds hold at a fixed radius: computed for a = 0 only
                row.update(fit.bounds(res, data, beta=beta, n=n, bound=bound,
                                      delta=config.delta, a=a))
        row.update(status=status, failure=failure, seconds=time.perf_counter() - t0)
        rows.append(row)
    return rows


def run_chunk(config: Remark3Config, units: list) -> list[dict]:
    out = []
    for setting, n, seed, jobs, shifts in units:
        out.extend(unit_rows(config, setting, n, seed, jobs, shifts))
    return out
