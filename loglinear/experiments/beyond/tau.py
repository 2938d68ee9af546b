r"""KLDPO temperature calibration: sweep tau on a log grid, record what each tau buys.

For every setting, sample size n and seed, draw n pairs (as multinomial counts over the
population atoms), fit DPO and, for each tau in the grid, the paper-form KLDPO solution
:math:`\theta_\tau` (Newton on :math:`\tau\log\sum q e^{l/\tau}`). Each row records

* ``implied_radius``: :math:`\rho(\tau) = KL(P^*\|q)`, the radius tau buys (the
  KLDPO = KL-DRO identity, docs/theory.md §4.2);
* ``worst_sample`` / ``worst_pop``: the exact KL worst-case loss at the fixed evaluation
  radius (``kl_value``), on the training sample and on the exact population;
* ``regret_aXX_sK``: the regret :math:`V^*(r_\alpha) - V_{\theta}(r_\alpha)` of the policy
  under the shifted rewards :math:`r_\alpha = \alpha r + (1-\alpha) r'_K` (XX = 100 alpha)
  for ``shifts`` independent shift directions :math:`r'_K` (K = 0, 1, ...), and
  ``regret_aXX`` its mean over the directions (alpha = 1 has one column: no shift);
* stability: the ESS fraction of the weights at the DPO fit (``ess_start``, where
  training from a DPO model starts) and at the solution (``ess_solution``); Algorithm 2
  run from the DPO fit with the DPO step (paper and official forms: status, smallest
  ESS on the path); the refit-then-reweight contraction factor (>= 1: that iteration
  oscillates away).

Rows with ``method = "dpo"`` hold the DPO baseline, ``method = "kldpo"`` the grid. Three
selectors choose tau without looking at the evaluation rewards (docs/theory.md §4.3):

* ``rule``: the default rule :func:`loglinear.approx.calibrate.suggest_tau` at ``min_ess``;
* ``val``: a validation split: each atom's count is thinned binomially with probability
  ``val_fraction`` into held-out pairs; DPO and every grid tau are fitted on the rest, the
  candidate (DPO included) with the smallest held-out DPO loss is chosen, and the row is
  that candidate's fit on the whole sample (``val_loss`` its held-out loss);
* ``noise``: the tau whose implied KL radius equals the sampling noise of the sample,
  :math:`\rho_n = \chi^2_{1,\text{level}}/(2n)` (``noise_level``): the radius at which
  the KL-DRO value is an asymptotically exact upper confidence bound on the expected loss
  (Duchi, Glynn and Namkoong 2021). The Algorithm-2 columns of ``val`` rows are their grid
  row's; ``noise`` rows leave them empty.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ...approx import (
    fit_kldpo,
    implied_radius_kl,
    kldpo_ess,
    loss_spread,
    refit_contraction,
    suggest_tau,
    tau_for_radius_kl,
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
    labelled_env,
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
        shifts: independent shift directions r' the mixtures are evaluated with.
        min_ess: the default rule's ESS target.
        val_fraction: expected share of the sample held out by the ``val`` selector.
        noise_level: confidence level of the ``noise`` selector's radius.
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
    shifts: int = 1
    min_ess: float = 0.9
    val_fraction: float = 0.2
    noise_level: float = 0.95
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
        if self.shifts < 1 or not (0 < self.val_fraction < 1 and 0 < self.noise_level < 1):
            raise ValueError(f"need shifts >= 1 and val_fraction, noise_level in (0, 1); got "
                             f"{self.shifts}, {self.val_fraction}, {self.noise_level}")
        if self.max_iter < 1 or (self.step is not None and not self.step > 0):
            raise ValueError("max_iter must be >= 1 and step > 0")

    @property
    def taus(self) -> np.ndarray:
        return np.logspace(np.log10(self.tau_min), np.log10(self.tau_max), self.n_tau)



def regret_columns(config: TauConfig) -> list[str]:
    """``regret_aXX`` (mean over shift directions) and, for alpha < 1, ``regret_aXX_sK``."""
    out = []
    for a in config.alphas:
        out.append(f"regret_a{round(100 * a)}")
        if a < 1:
            out += [f"regret_a{round(100 * a)}_s{k}" for k in range(config.shifts)]
    return out


def columns(config: TauConfig) -> list[str]:
    return KEY + [
        "status", "theta_norm", "implied_radius", "ess_start", "ess_solution", "worst_sample",
        "worst_pop", "pop_loss", *regret_columns(config), "val_loss", "path_status",
        "path_iters", "path_min_ess", "official_status", "official_min_ess",
        "refit_contraction", "tau_first_order", "loss_sd", "lambda_min", "collapse_radius",
        "seconds"]


def _optimum(config, spec, alpha, shift) -> float:
    return _optimum_cached(config.seed, spec, alpha, shift if alpha < 1 else 0)


@lru_cache(maxsize=256)
def _optimum_cached(seed, spec, alpha, shift) -> float:
    return kl_regularised_optimum(labelled_env(spec, seed), mixture(spec, seed, alpha, shift))


def _regrets(config, spec, env, theta) -> dict:
    row = {}
    for a in config.alphas:
        shifts = range(config.shifts) if a < 1 else [0]
        vals = [_optimum(config, spec, a, k)
                - env.value(theta, mixture(spec, config.seed, a, k)).objective for k in shifts]
        row[f"regret_a{round(100 * a)}"] = float(np.mean(vals))
        if a < 1:
            row.update({f"regret_a{round(100 * a)}_s{k}": v for k, v in zip(shifts, vals)})
    return row


def _metrics(config, spec, env, pop, data, theta, tau, theta_dpo, step, *,
             paths: bool = True) -> dict:
    beta = env.beta
    row = {"theta_norm": float(np.linalg.norm(theta - env.theta_ref)),
           "worst_sample": kl_value(theta, data, beta=beta, radius=config.eval_radius).value,
           "worst_pop": kl_value(theta, pop, beta=beta, radius=config.eval_radius).value,
           "pop_loss": kl_value(theta, pop, beta=beta, radius=0.0).value,
           **_regrets(config, spec, env, theta)}
    nan = float("nan")
    row.update(implied_radius=nan, ess_start=nan, ess_solution=nan, path_status="",
               path_iters=0, path_min_ess=nan, official_status="", official_min_ess=nan,
               refit_contraction=nan)
    if tau is not None:
        row.update(implied_radius=implied_radius_kl(tau, data, beta=beta, theta=theta),
                   ess_start=kldpo_ess(theta_dpo, data, beta=beta, tau=tau),
                   ess_solution=kldpo_ess(theta, data, beta=beta, tau=tau),
                   refit_contraction=refit_contraction(theta, data, beta=beta, tau=tau))
        for form in (("paper", "official") if paths else ()):
            prefix = "path" if form == "paper" else "official"
            p = reweighting_path(data, beta=beta, tau=tau, step=step, theta0=theta_dpo,
                                 form=form, max_iter=config.max_iter)
            row[f"{prefix}_status"] = p.status
            row[f"{prefix}_min_ess"] = p.min_ess
            if prefix == "path":
                row["path_iters"] = p.iterations
    return row


def unit_rows(config: TauConfig, spec: EnvSpec, n: int, seed: int) -> list[dict]:
    """All rows of one sample (setting, n, seed)."""
    env = labelled_env(spec, config.seed)
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
    rows.append(_val_row(config, env, data, rows, base, row_rng(config.seed, spec.name, n,
                                                                 seed, "validation")))
    rows.append(_noise_row(config, spec, env, pop, data, theta_dpo, step, base))
    return rows


def validation_split(data, n: int, val_fraction: float, rng: np.random.Generator):
    """(train, held-out) parts of a sample of n pairs in compressed form (weights are
    counts / n): each atom's count is thinned binomially with probability
    ``val_fraction``. Raises ValueError when a part would be empty."""
    counts = np.rint(np.asarray(data.weight) * n).astype(int)
    held = rng.binomial(counts, val_fraction)
    parts = []
    for c in (counts - held, held):
        if c.sum() == 0:
            raise ValueError(f"a validation split of {n} pairs at fraction {val_fraction} "
                             "left one part empty; use more pairs or another fraction")
        parts.append(data.subset(c > 0).with_weight(c[c > 0] / c.sum()))
    return parts[0], parts[1]


def _val_row(config, env, data, rows, base, rng) -> dict:
    """The ``val`` selector (module docstring): the full-sample row of the candidate with
    the smallest held-out loss."""
    t0 = _now()
    train, held = validation_split(data, base["n"], config.val_fraction, rng)
    try:
        theta = fit_dpo(train, beta=env.beta).theta
    except (SeparableDataError, FitError) as err:
        return dict(base, method="val", tau=float("nan"), status=type(err).__name__,
                    seconds=_now() - t0)
    scores = {float("inf"): kl_value(theta, held, beta=env.beta, radius=0.0).value}
    for tau in config.taus[::-1]:
        try:
            theta = fit_kldpo(train, beta=env.beta, tau=float(tau), theta0=theta).theta
        except (SeparableDataError, FitError):
            continue
        scores[float(tau)] = kl_value(theta, held, beta=env.beta, radius=0.0).value
    best = min(scores, key=scores.get)
    chosen = next(r for r in rows if r["method"] in ("dpo", "kldpo") and r["tau"] == best)
    return dict(chosen, method="val", val_loss=scores[best], seconds=_now() - t0)


def _noise_row(config, spec, env, pop, data, theta_dpo, step, base) -> dict:
    """The ``noise`` selector (module docstring)."""
    from scipy.stats import chi2

    t0 = _now()
    radius = float(chi2.ppf(config.noise_level, 1)) / (2 * base["n"])
    try:
        tau = tau_for_radius_kl(radius, data, beta=env.beta)
        fit = fit_kldpo(data, beta=env.beta, tau=tau, theta0=theta_dpo)
    except (ValueError, SeparableDataError, FitError) as err:
        return dict(base, method="noise", tau=float("nan"), status=type(err).__name__,
                    seconds=_now() - t0)
    m = _metrics(config, spec, env, pop, data, fit.theta, tau, theta_dpo, step, paths=False)
    return dict(base, method="noise", tau=tau, status=fit.status, **m, seconds=_now() - t0)


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
