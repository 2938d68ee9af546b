r"""KLDPO temperature calibration: sweep tau on a log grid, record what each tau buys.

For every setting, sample size n and seed, draw n pairs (as multinomial counts over the
population atoms), fit DPO and, for each tau in the grid, the paper-form KLDPO solution
:math:`\theta_\tau` (Newton on :math:`\tau\log\sum q e^{l/\tau}`). Each row records

* ``implied_radius``: :math:`\rho(\tau) = KL(P^*\|q)`, the radius tau buys (the
  KLDPO = KL-DRO identity, docs/theory.md §4.2);
* ``worst_sample`` / ``worst_pop``: the exact KL worst-case loss at the fixed evaluation
  radius (``kl_value``), on the training sample and on the exact population;
* ``regret_aXX``: the regret :math:`V^*(r_\alpha) - V_{\theta}(r_\alpha)` of the policy
  under the shifted rewards :math:`r_\alpha = \alpha r + (1-\alpha) r'` (XX = 100 alpha);
* stability: the ESS fraction of the weights at the DPO fit (``ess_start``, where
  training from a DPO model starts) and at the solution (``ess_solution``); Algorithm 2
  run from the DPO fit with the DPO step (paper and official forms: status, smallest
  ESS on the path); the refit-then-reweight contraction factor (>= 1: that iteration
  oscillates away).

Rows with ``method = "dpo"`` hold the DPO baseline; ``method = "rule"`` holds the
default rule :func:`loglinear.approx.calibrate.suggest_tau` at ``min_ess`` (docs/theory.md
§4.3).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...approx import (
    fit_kldpo,
    implied_radius_kl,
    kldpo_ess,
    loss_spread,
    refit_contraction,
    suggest_tau,
)
from ...estimation import coverage, kl_regularised_optimum
from ...fit import FitError, SeparableDataError, fit_dpo
from ...robust import collapse_radius_kl, kl_value
from ..config import write_resolved
from ..records import RecordStore
from .common import (
    EnvSpec,
    StudyConfig,
    Timer,
    as_config,
    environment,
    mixture,
    row_rng,
)
from .reweighting import reweighting_path

KEY = ["setting", "n", "seed", "method", "tau"]


@dataclass(frozen=True)
class TauConfig(StudyConfig):
    """The tau calibration study.

    Attributes:
        name: study name.
        seed: master seed (environments and samples derive from it and the row key).
        settings: environments (:class:`EnvSpec`).
        n: sample sizes.
        seeds: replicates per (setting, n).
        tau_min, tau_max, n_tau: the log grid of temperatures.
        eval_radius: the fixed KL radius at which worst-case losses are evaluated.
        alphas: weights on the training reward of the evaluation mixtures (1 = training).
        min_ess: the default rule's ESS target.
        max_iter: Algorithm 2 steps.
        step: Algorithm 2 step; default DPO's 4 / (beta^2 max||x||^2).
    """

    name: str = "beyond_tau"
    seed: int = 20261122
    settings: tuple[EnvSpec, ...] = ()
    n: tuple[int, ...] = (2000,)
    seeds: int = 6
    tau_min: float = 0.01
    tau_max: float = 10.0
    n_tau: int = 13
    eval_radius: float = 0.1
    alphas: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)
    min_ess: float = 0.9
    max_iter: int = 1000
    step: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "n", tuple(int(v) for v in self.n))
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if not self.settings:
            raise ValueError("at least one [[setting]] is needed")
        if len({s.name for s in self.settings}) != len(self.settings):
            raise ValueError("settings need unique names")
        if not self.n or min(self.n) < 2 or self.seeds < 1:
            raise ValueError("n must be sizes >= 2 and seeds >= 1")
        if not 0 < self.tau_min < self.tau_max or self.n_tau < 2:
            raise ValueError("need 0 < tau_min < tau_max and n_tau >= 2")
        if not self.eval_radius > 0 or not 0 < self.min_ess < 1:
            raise ValueError("eval_radius must be > 0 and min_ess in (0, 1)")
        if any(not 0 <= a <= 1 for a in self.alphas) or not self.alphas:
            raise ValueError("alphas must lie in [0, 1]")
        if self.max_iter < 1 or (self.step is not None and not self.step > 0):
            raise ValueError("max_iter must be >= 1 and step > 0")

    @property
    def taus(self) -> np.ndarray:
        return np.logspace(np.log10(self.tau_min), np.log10(self.tau_max), self.n_tau)



def columns(config: TauConfig) -> list[str]:
    return KEY + [
        "status", "theta_norm", "implied_radius", "ess_start", "ess_solution", "worst_sample",
        "worst_pop", "pop_loss", *[f"regret_a{round(100 * a)}" for a in config.alphas],
        "path_status", "path_iters", "path_min_ess", "official_status", "official_min_ess",
        "refit_contraction", "tau_first_order", "loss_sd", "lambda_min", "collapse_radius",
        "seconds"]


def _metrics(config, spec, env, pop, data, theta, tau, theta_dpo, step) -> dict:
    beta = env.beta
    row = {"theta_norm": float(np.linalg.norm(theta - env.theta_ref)),
           "worst_sample": kl_value(theta, data, beta=beta, radius=config.eval_radius).value,
           "worst_pop": kl_value(theta, pop, beta=beta, radius=config.eval_radius).value,
           "pop_loss": kl_value(theta, pop, beta=beta, radius=0.0).value}
    for a in config.alphas:
        r = mixture(spec, config.seed, a)
        row[f"regret_a{round(100 * a)}"] = (kl_regularised_optimum(env, r)
                                            - env.value(theta, r).objective)
    nan = float("nan")
    row.update(implied_radius=nan, ess_start=nan, ess_solution=nan, path_status="",
               path_iters=0, path_min_ess=nan, official_status="", official_min_ess=nan,
               refit_contraction=nan)
    if tau is not None:
        row.update(implied_radius=implied_radius_kl(tau, data, beta=beta, theta=theta),
                   ess_start=kldpo_ess(theta_dpo, data, beta=beta, tau=tau),
                   ess_solution=kldpo_ess(theta, data, beta=beta, tau=tau),
                   refit_contraction=refit_contraction(theta, data, beta=beta, tau=tau))
        for form, prefix in (("paper", "path"), ("official", "official")):
            p = reweighting_path(data, beta=beta, tau=tau, step=step, theta0=theta_dpo,
                                 form=form, max_iter=config.max_iter)
            row[f"{prefix}_status"] = p.status
            row[f"{prefix}_min_ess"] = p.min_ess
            if prefix == "path":
                row["path_iters"] = p.iterations
    return row


def unit_rows(config: TauConfig, spec: EnvSpec, n: int, seed: int) -> list[dict]:
    """All rows of one sample (setting, n, seed)."""
    env = environment(spec, config.seed)
    pop = env.population()
    cov = coverage(pop).lambda_min
    rho0 = collapse_radius_kl(env.population(centered=True), beta=env.beta)
    data = env.sample_counts(n, row_rng(config.seed, spec.name, n, seed))
    base = dict(setting=spec.name, n=n, seed=seed, lambda_min=cov, collapse_radius=rho0,
                tau_first_order=float("nan"), loss_sd=float("nan"))
    rows = []
    t0 = _now()
    try:
        theta_dpo = fit_dpo(data, beta=env.beta).theta
    except (SeparableDataError, FitError) as err:
        return [dict(base, method="dpo", tau=float("nan"), status=type(err).__name__,
                     seconds=_now() - t0)]
    step = config.step or 4.0 / (env.beta**2 * float(np.max(np.sum(data.x**2, axis=1))))
    sd = loss_spread(theta_dpo, data, beta=env.beta)
    base["loss_sd"] = sd
    rows.append(dict(base, method="dpo", tau=float("inf"), status="converged",
                     **_metrics(config, spec, env, pop, data, theta_dpo, None, theta_dpo,
                                step), seconds=_now() - t0))
    warm = theta_dpo
    for tau in config.taus[::-1]:  # warm starts from large tau (near DPO) downwards
        t0 = _now()
        try:
            fit = fit_kldpo(data, beta=env.beta, tau=float(tau), theta0=warm)
            warm = fit.theta
            m = _metrics(config, spec, env, pop, data, fit.theta, float(tau), theta_dpo, step)
            rows.append(dict(base, method="kldpo", tau=float(tau), status=fit.status, **m,
                             seconds=_now() - t0))
        except (SeparableDataError, FitError) as err:
            rows.append(dict(base, method="kldpo", tau=float(tau), status=type(err).__name__,
                             seconds=_now() - t0))
    t0 = _now()
    rule = suggest_tau(data, beta=env.beta, min_ess=config.min_ess)
    m = _metrics(config, spec, env, pop, data, rule.theta, rule.tau, theta_dpo, step)
    rows.append(dict(base, method="rule", tau=rule.tau, status="converged", **m,
                     tau_first_order=rule.tau_first_order, seconds=_now() - t0))
    return rows


def _now() -> float:
    import time

    return time.perf_counter()


def _complete(row: dict, cols: list[str]) -> dict:
    return {c: row.get(c, float("nan")) for c in cols}


def main(config: TauConfig, out) -> Path:
    """Run (or resume) the study into the records directory ``out`` (records.csv, after
    the resolved config.json) and return ``out``. The report is built separately
    (``loglinear report beyond_loglinear ROOT``)."""
    config = as_config(TauConfig, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved(config, out / "config.json")
    cols = columns(config)
    with Timer(f"beyond tau study ({config.name})"), \
            RecordStore(out / "records.csv", cols, KEY) as store:
        for spec in config.settings:
            for n in config.n:
                for seed in range(config.seeds):
                    if _unit_done(store, config, spec, n, seed):
                        continue
                    for row in unit_rows(config, spec, n, seed):
                        store.write(_complete(row, cols))
    return out


def _unit_done(store, config, spec, n, seed) -> bool:
    """A unit is done when its DPO row and every grid row are stored (the rule row's tau
    is data-dependent, so it is not part of the check)."""
    keys = [dict(setting=spec.name, n=n, seed=seed, method="dpo", tau=math.inf)]
    keys += [dict(setting=spec.name, n=n, seed=seed, method="kldpo", tau=float(t))
             for t in config.taus]
    return all(store.done(k) for k in keys)


def run(config: TauConfig, out) -> Path:
    """Deprecated: ``main(config, out) / "records.csv"``."""
    warnings.warn("tau.run is deprecated; use tau.main(config, out), which returns the "
                  "records directory", DeprecationWarning, stacklevel=2)
    return main(config, out) / "records.csv"
