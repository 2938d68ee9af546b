r"""Runner: the paper's surrogates against the exact robust solutions (issue 4).

For each environment (coverage level x replicate), divergence (KL, W1, W2) and radius
(a fraction of that divergence's collapse radius), it solves the exact robust problem
once, fits every surrogate variant registered for that divergence, and writes one tidy
row per (environment, divergence, fraction, variant):

* ``theta_err`` = ||theta_approx - theta_exact||;
* ``subopt`` = V(theta_approx) - V(theta_exact) in the **exact** robust objective V,
  next to ``subopt_dpo`` (the same for plain DPO);
* ``value_gap`` = surrogate value - V at fixed theta = theta_exact;
* the hyperparameter the variant used and its calibration.

Rows are appended as they are computed (a killed run loses at most one row and resumes
where it stopped); the resolved config is written first. :func:`fit_exponents` fits
log error against log radius over the small radii.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...approx import (
    fit_kldpo,
    fit_wdpo,
    implied_radius_kl,
    kldpo_objective,
    rho_for_w2_radius,
    w1_rescaling,
    wdpo_objective,
)
from ...data import PreferenceData
from ...env import LogLinearEnv
from ...estimation import coverage
from ...fit import SeparableDataError, fit_dpo
from ..config import from_mapping, load_toml, write_resolved
from ..records import RecordStore

DIVERGENCES = ("kl", "w1", "w2")
COLUMNS = ["env", "replicate", "concentration", "n_samples", "lambda_min", "divergence", "fraction",
           "radius", "collapse_radius", "variant", "hyper", "theta_err", "rel_theta_err",
           "subopt", "subopt_dpo", "value_gap", "exact_value", "exact_dual", "theta_norm",
           "status", "seconds"]
KEY = ["env", "divergence", "fraction", "variant"]
REFIT_COLUMNS = ["env", "concentration", "n_samples", "tau", "contraction", "status",
                 "iterations", "theta_err", "implied_radius"]
REFIT_KEY = ["env", "tau"]


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


def load_config(path) -> ApproxStudyConfig:
    """Parse ``simulations/approx.toml`` (table ``[study]``) into the config."""
    raw = load_toml(path)
    unknown = sorted(set(raw) - {"study"})
    if unknown:
        raise ValueError(f"{path}: unknown tables {unknown}; allowed: ['study']")
    return from_mapping(ApproxStudyConfig, raw.get("study", {}), where=f"{path} [study]")


# ------------------------------------------------------------- exact problems
@dataclass(frozen=True)
class Divergence:
    """An exact robust problem: solver, fixed-theta value and collapse radius."""

    name: str
    solve: Callable
    value: Callable
    collapse: Callable


def _robust():
    from ... import robust

    return robust


DIVERGENCE_SPECS = {
    "kl": Divergence(
        "kl",
        lambda d, b, r: _robust().solve_kl(d, beta=b, radius=r),
        lambda th, d, b, r: _robust().kl_value(th, d, beta=b, radius=r).value,
        lambda d, b: _robust().collapse_radius_kl(d, beta=b)),
    "w1": Divergence(
        "w1",
        lambda d, b, r: _robust().solve_wasserstein(d, beta=b, radius=r, p=1),
        lambda th, d, b, r: _robust().wasserstein_value(th, d, beta=b, radius=r, p=1).value,
        lambda d, b: _robust().collapse_radius_wasserstein(d, beta=b, p=1)),
    "w2": Divergence(
        "w2",
        lambda d, b, r: _robust().solve_wasserstein(d, beta=b, radius=r, p=2),
        lambda th, d, b, r: _robust().wasserstein_value(th, d, beta=b, radius=r, p=2).value,
        lambda d, b: _robust().collapse_radius_wasserstein(d, beta=b, p=2)),
}


# ------------------------------------------------------------------ variants
@dataclass(frozen=True)
class Fitted:
    theta: np.ndarray
    hyper: float
    value: Callable      # theta -> the surrogate's estimate of the robust value
    status: str


def _dpo(data, beta, radius, ctx):
    th = ctx["dpo"]
    return Fitted(th, 0.0, lambda t: wdpo_objective(t, data, beta=beta, rho=0.0)[0],
                  "converged")


def _wdpo(form, rho_of):
    def fit(data, beta, radius, ctx):
        rho = rho_of(data, beta, radius, ctx)
        res = fit_wdpo(data, beta=beta, rho=rho, form=form)
        return Fitted(res.theta, rho, lambda t: wdpo_objective(t, data, beta=beta, rho=rho,
                                                               form=form)[0], res.status)
    return fit


def _kldpo(form, tau_of):
    def fit(data, beta, radius, ctx):
        tau = tau_of(data, beta, radius, ctx)
        res = fit_kldpo(data, beta=beta, tau=tau, form=form)
        # KL dual bound at the surrogate's own lambda = tau: tau rho + F_tau(theta) >= V
        return Fitted(res.theta, tau, lambda t: tau * radius + kldpo_objective(
            t, data, beta=beta, tau=tau)[0], res.status)
    return fit


def _tau_at_dpo(data, beta, radius, ctx):
    """The temperature whose weights at the DPO fit have KL(P || q) = radius (cheap)."""
    from scipy.optimize import brentq

    th = ctx["dpo"]
    gap = lambda lt: implied_radius_kl(float(np.exp(lt)), data, beta=beta, theta=th) - radius
    lo, hi = -12.0, 12.0
    if gap(lo) < 0:   # radius beyond what the DPO point's losses can buy
        return float(np.exp(lo))
    return float(np.exp(brentq(gap, lo, hi, xtol=1e-12)))


VARIANTS: dict[str, dict[str, Callable]] = {
    "kl": {
        "dpo": _dpo,
        "kldpo-paper@dual": _kldpo("paper", lambda d, b, r, c: c["exact_dual"]),
        "kldpo-paper@dpo-cal": _kldpo("paper", _tau_at_dpo),
        "kldpo-official@dual": _kldpo("official", lambda d, b, r, c: c["exact_dual"]),
    },
    "w1": {
        "dpo": _dpo,
        "wdpo-paper": _wdpo("paper", lambda d, b, r, c: r),
        "wdpo-paper@R-cal": _wdpo("paper", lambda d, b, r, c: r / w1_rescaling(
            c["dpo"], d, beta=b)),
    },
    "w2": {
        "dpo": _dpo,
        "wdpo-paper": _wdpo("paper", lambda d, b, r, c: r),
        "wdpo-official@dpo-cal": _wdpo("official", lambda d, b, r, c: rho_for_w2_radius(
            r, d, beta=b, form="official", theta=c["dpo"])),
        "wdpo-official@fit-cal": _wdpo("official", lambda d, b, r, c: rho_for_w2_radius(
            r, d, beta=b, form="official", calibrate="fit")),
    },
}


# ---------------------------------------------------------------------- runner
def environments(config: ApproxStudyConfig):
    """Yield (name, replicate, concentration, data) for every environment and data regime."""
    seqs = np.random.SeedSequence(config.seed).spawn(len(config.concentrations)
                                                     * config.replicates)
    k = 0
    for conc in config.concentrations:
        for rep in range(config.replicates):
            env_seq, data_seq = seqs[k].spawn(2)
            k += 1
            env = LogLinearEnv.random(np.random.default_rng(env_seq), n_states=config.n_states,
                                      n_actions=config.n_actions, dim=config.dim,
                                      beta=config.beta, concentration=conc,
                                      reward_scale=config.reward_scale)
            for n, seq in zip(config.n_samples, data_seq.spawn(len(config.n_samples))):
                if n:
                    data = env.sample_counts(n, np.random.default_rng(seq), centered=True)
                    yield f"c{conc:g}-r{rep}-n{n}", rep, conc, data
                else:
                    yield f"c{conc:g}-r{rep}-pop", rep, conc, env.population(centered=True)


def _plain(row: dict) -> dict:
    """numpy scalars as Python numbers (their repr would leak into the CSV)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def _rows_for(name, rep, conc, data: PreferenceData, div: str, config, store):
    spec = DIVERGENCE_SPECS[div]
    beta = config.beta
    nsamp = 0 if name.endswith("-pop") else int(name.rsplit("-n", 1)[1])
    lam = coverage(data).lambda_min
    collapse = spec.collapse(data, beta)
    ctx = {"dpo": fit_dpo(data, beta=beta).theta}
    for frac in config.fractions:
        if all(store.done({"env": name, "divergence": div, "fraction": frac, "variant": v})
               for v in VARIANTS[div]):
            continue
        radius = frac * collapse
        try:
            exact = spec.solve(data, beta, radius)
        except (RuntimeError, ValueError) as exc:
            # An exact-solver failure is recorded (status, NaN metrics), not papered over.
            print(f"  warning: exact {div} solve failed for {name} at fraction {frac:g}: "
                  f"{exc}", flush=True)
            nan = float("nan")
            for vname in VARIANTS[div]:
                store.write({c: nan for c in COLUMNS} | {
                    "env": name, "replicate": rep, "concentration": conc,
                    "n_samples": nsamp, "lambda_min": lam,
                    "divergence": div, "fraction": frac, "radius": radius,
                    "collapse_radius": collapse, "variant": vname,
                    "status": "exact_failed", "seconds": 0.0})
            continue
        ctx["exact_dual"] = float(exact.dual)
        v_exact = spec.value(exact.theta, data, beta, radius)
        v_dpo = spec.value(ctx["dpo"], data, beta, radius)
        norm = float(np.linalg.norm(exact.theta))
        for vname, make in VARIANTS[div].items():
            t0 = time.perf_counter()
            fitted = make(data, beta, radius, ctx)
            err = float(np.linalg.norm(fitted.theta - exact.theta))
            store.write(_plain({
                "env": name, "replicate": rep, "concentration": conc, "n_samples": nsamp,
                "lambda_min": lam, "divergence": div, "fraction": frac, "radius": radius,
                "collapse_radius": collapse, "variant": vname, "hyper": fitted.hyper,
                "theta_err": err, "rel_theta_err": err / norm if norm > 0 else float("nan"),
                "subopt": spec.value(fitted.theta, data, beta, radius) - v_exact,
                "subopt_dpo": v_dpo - v_exact,
                "value_gap": fitted.value(exact.theta) - v_exact,
                "exact_value": v_exact, "exact_dual": float(exact.dual), "theta_norm": norm,
                "status": fitted.status, "seconds": time.perf_counter() - t0,
            }))


def _refit_rows(name, conc, data, config, store):
    """The refit-then-reweight iteration against its predicted contraction factor."""
    import warnings

    nsamp = 0 if name.endswith("-pop") else int(name.rsplit("-n", 1)[1])
    for tau in config.refit_taus:
        if store.done({"env": name, "tau": tau}):
            continue
        exact = fit_kldpo(data, beta=config.beta, tau=tau)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # the record carries it
            res = fit_kldpo(data, beta=config.beta, tau=tau, method="refit",
                            max_iter=config.refit_max_iter)
        store.write(_plain({
            "env": name, "concentration": conc, "n_samples": nsamp, "tau": tau,
            "contraction": res.info["contraction"], "status": res.status,
            "iterations": res.iterations,
            "theta_err": float(np.linalg.norm(res.theta - exact.theta)),
            "implied_radius": exact.info["implied_radius"]}))


def main(config: ApproxStudyConfig, *, progress: bool = True) -> Path:
    """Run the study, writing records incrementally; returns the records directory."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved(config, out / "config.json")
    t0 = time.perf_counter()
    with RecordStore(out / "records.csv", COLUMNS, KEY) as store, \
            RecordStore(out / "refit.csv", REFIT_COLUMNS, REFIT_KEY) as refit:
        for name, rep, conc, data in environments(config):
            try:
                _refit_rows(name, conc, data, config, refit)
            except SeparableDataError as exc:
                print(f"  warning: {name} skipped: {exc}", flush=True)
                continue
            for div in config.divergences:
                try:
                    _rows_for(name, rep, conc, data, div, config, store)
                except SeparableDataError as exc:
                    print(f"  warning: {name} skipped: {exc}", flush=True)
                    break
            if progress:
                print(f"  {name}: done ({time.perf_counter() - t0:.1f} s)", flush=True)
    return out


# ------------------------------------------------------------------- exponents
ERROR_FLOOR = 1e-9   # errors below this are solver noise and do not enter the fit


def fit_exponents(records, *, max_fraction: float, metric: str = "theta_err"):
    """Least-squares slope of log(metric) on log(radius) per (env, divergence, variant),
    over fractions <= max_fraction with metric > ERROR_FLOOR. Returns a DataFrame with
    columns env, divergence, variant, exponent, points, intercept."""
    import pandas as pd

    rows = []
    df = records[(records["fraction"] <= max_fraction + 1e-12)]
    for (env, div, var), g in df.groupby(["env", "divergence", "variant"], sort=True):
        g = g[np.abs(g[metric]) > ERROR_FLOOR]
        if len(g) < 2:
            rows.append({"env": env, "divergence": div, "variant": var,
                         "exponent": float("nan"), "points": len(g),
                         "intercept": float("nan")})
            continue
        slope, icpt = np.polyfit(np.log(g["radius"]), np.log(np.abs(g[metric])), 1)
        rows.append({"env": env, "divergence": div, "variant": var, "exponent": float(slope),
                     "points": len(g), "intercept": float(icpt)})
    return pd.DataFrame(rows)
