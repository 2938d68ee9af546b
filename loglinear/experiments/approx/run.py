r"""Runner: the paper's surrogates against the exact robust solutions (docs/theory.md §4).

For each environment (coverage level x replicate), divergence (KL, W1, W2) and radius
(a fraction of that divergence's collapse radius, docs/theory.md §3.2, §3.6), it solves the
exact robust problem once, fits every surrogate variant registered for that divergence, and
writes one tidy row per (environment, divergence, fraction, variant):

* ``theta_err`` = ||theta_approx - theta_exact|| and ``sigma_err`` = ||theta_approx -
  theta_exact||_Sigma with Sigma = E_q[x x^T] the data's coverage matrix (the RMS change of
  the pairs' margins, a metric that stays meaningful as theta_exact -> 0 at the collapse
  radius); ``dpo_norm`` and ``dpo_sigma_norm`` are ||theta_DPO|| and ||theta_DPO||_Sigma,
  the scale the analysis divides by (``rel_theta_err`` divides by ||theta_exact||, which
  vanishes at the collapse radius);
* ``subopt`` = V(theta_approx) - V(theta_exact) in the **exact** robust objective V,
  next to ``subopt_dpo`` (the same for plain DPO);
* ``value_gap`` = surrogate value - V at fixed theta = theta_exact;
* the hyperparameter the variant used and its calibration.

Rows are appended as they are computed (a killed run loses at most one row and resumes
where it stopped); the resolved config is written first. The exact problems are looked up
in :data:`DIVERGENCE_SPECS` and the surrogates in :data:`VARIANTS` (registries: the runner
never branches on a name); :mod:`.analysis` turns the records into the report's tables.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.optimize import brentq

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
from ...registry import Registry
from ...robust import (
    collapse_radius_kl,
    collapse_radius_wasserstein,
    kl_value,
    solve_kl,
    solve_wasserstein,
    wasserstein_value,
)
from ..config import write_resolved
from ..records import RecordStore
from .config import ApproxStudyConfig

COLUMNS = ["env", "replicate", "concentration", "n_samples", "lambda_min", "divergence", "fraction",
           "radius", "collapse_radius", "variant", "hyper", "theta_err", "rel_theta_err",
           "sigma_err", "dpo_norm", "dpo_sigma_norm", "subopt", "subopt_dpo", "value_gap",
           "exact_value", "exact_dual", "theta_norm", "status", "seconds"]
KEY = ["env", "divergence", "fraction", "variant"]
REFIT_COLUMNS = ["env", "concentration", "n_samples", "tau", "contraction", "status",
                 "iterations", "theta_err", "implied_radius"]
REFIT_KEY = ["env", "tau"]


# ------------------------------------------------------------- exact problems
@dataclass(frozen=True)
class Divergence:
    """An exact robust problem (docs/theory.md §3).

    Attributes:
        name: the ``divergence`` column.
        solve: ``solve(data, *, beta, radius) -> RobustResult``.
        value: ``value(theta, data, *, beta, radius) -> float``, the exact worst case at a
            fixed theta.
        collapse: ``collapse(data, *, beta) -> float``, the collapse radius.
    """

    name: str
    solve: Callable
    value: Callable
    collapse: Callable


def _kl_value(theta, data, *, beta, radius):
    return kl_value(theta, data, beta=beta, radius=radius).value


def _wasserstein_value(theta, data, *, beta, radius, p):
    return wasserstein_value(theta, data, beta=beta, radius=radius, p=p).value


DIVERGENCE_SPECS: Registry[Divergence] = Registry("divergence")
for _d in (
    Divergence("kl", solve_kl, _kl_value, collapse_radius_kl),
    *(Divergence(f"w{p}", partial(solve_wasserstein, p=p), partial(_wasserstein_value, p=p),
                 partial(collapse_radius_wasserstein, p=p)) for p in (1, 2)),
):
    DIVERGENCE_SPECS.register(_d.name, _d)
del _d


# ------------------------------------------------------------------ variants
@dataclass(frozen=True)
class Fitted:
    theta: np.ndarray
    hyper: float
    value: Callable      # theta -> the surrogate's estimate of the robust value
    status: str


def _dpo(data, *, beta, radius, ctx):
    th = ctx["dpo"]
    return Fitted(th, 0.0, lambda t: wdpo_objective(t, data, beta=beta, rho=0.0)[0],
                  "converged")


def _wdpo(form, rho_of):
    def fit(data, *, beta, radius, ctx):
        rho = rho_of(data, beta, radius, ctx)
        res = fit_wdpo(data, beta=beta, rho=rho, form=form)
        return Fitted(res.theta, rho, lambda t: wdpo_objective(t, data, beta=beta, rho=rho,
                                                               form=form)[0], res.status)
    return fit


def _kldpo(form, tau_of):
    def fit(data, *, beta, radius, ctx):
        tau = tau_of(data, beta, radius, ctx)
        res = fit_kldpo(data, beta=beta, tau=tau, form=form)
        # KL dual bound at the surrogate's own lambda = tau: tau rho + F_tau(theta) >= V
        return Fitted(res.theta, tau, lambda t: tau * radius + kldpo_objective(
            t, data, beta=beta, tau=tau)[0], res.status)
    return fit


def _tau_at_dpo(data, beta, radius, ctx):
    """The temperature whose weights at the DPO fit have KL(P || q) = radius (cheap)."""
    th = ctx["dpo"]
    gap = lambda lt: implied_radius_kl(float(np.exp(lt)), data, beta=beta, theta=th) - radius
    lo, hi = -12.0, 12.0
    if gap(lo) < 0:   # radius beyond what the DPO point's losses can buy
        return float(np.exp(lo))
    return float(np.exp(brentq(gap, lo, hi, xtol=1e-12)))


# divergence -> (variant name -> fit(data, *, beta, radius, ctx) -> Fitted)
VARIANTS: Registry[Registry[Callable]] = Registry("divergence", {
    "kl": Registry("KL surrogate variant", {
        "dpo": _dpo,
        "kldpo-paper@dual": _kldpo("paper", lambda d, b, r, c: c["exact_dual"]),
        "kldpo-paper@dpo-cal": _kldpo("paper", _tau_at_dpo),
        "kldpo-official@dual": _kldpo("official", lambda d, b, r, c: c["exact_dual"]),
    }),
    "w1": Registry("W1 surrogate variant", {
        "dpo": _dpo,
        "wdpo-paper": _wdpo("paper", lambda d, b, r, c: r),
        "wdpo-paper@R-cal": _wdpo("paper", lambda d, b, r, c: r / w1_rescaling(
            c["dpo"], d, beta=b)),
    }),
    "w2": Registry("W2 surrogate variant", {
        "dpo": _dpo,
        "wdpo-paper": _wdpo("paper", lambda d, b, r, c: r),
        "wdpo-official@dpo-cal": _wdpo("official", lambda d, b, r, c: rho_for_w2_radius(
            r, d, beta=b, form="official", theta=c["dpo"])),
        "wdpo-official@fit-cal": _wdpo("official", lambda d, b, r, c: rho_for_w2_radius(
            r, d, beta=b, form="official", calibrate="fit")),
    }),
})


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


def _n_samples(name: str) -> int:
    """The data regime of an environment name from :func:`environments` (0: population)."""
    return 0 if name.endswith("-pop") else int(name.rsplit("-n", 1)[1])


def _sigma_norm(v, sigma) -> float:
    """||v||_Sigma = sqrt(v' Sigma v) (Sigma is PSD; a rounding-level negative is 0)."""
    return float(np.sqrt(max(float(v @ sigma @ v), 0.0)))


def _rows_for(name, rep, conc, data: PreferenceData, div: str, config, store, *, warn=print):
    spec = DIVERGENCE_SPECS[div]
    variants = VARIANTS[div]
    beta = config.beta
    nsamp = _n_samples(name)
    cov = coverage(data)
    lam, sigma = cov.lambda_min, cov.sigma
    collapse = spec.collapse(data, beta=beta)
    ctx = {"dpo": fit_dpo(data, beta=beta).theta}
    dpo_norm = float(np.linalg.norm(ctx["dpo"]))
    dpo_sigma_norm = _sigma_norm(ctx["dpo"], sigma)
    for frac in config.fractions:
        if all(store.done({"env": name, "divergence": div, "fraction": frac, "variant": v})
               for v in variants):
            continue
        radius = frac * collapse
        try:
            exact = spec.solve(data, beta=beta, radius=radius)
        except (RuntimeError, ValueError) as exc:
            # An exact-solver failure is recorded (status, NaN metrics), not papered over.
            warn(f"  warning: exact {div} solve failed for {name} at fraction {frac:g}: "
                 f"{exc}")
            nan = float("nan")
            for vname in variants:
                store.write({c: nan for c in COLUMNS} | {
                    "env": name, "replicate": rep, "concentration": conc,
                    "n_samples": nsamp, "lambda_min": lam,
                    "divergence": div, "fraction": frac, "radius": radius,
                    "collapse_radius": collapse, "variant": vname,
                    "status": "exact_failed", "seconds": 0.0})
            continue
        ctx["exact_dual"] = float(exact.dual)
        v_exact = spec.value(exact.theta, data, beta=beta, radius=radius)
        v_dpo = spec.value(ctx["dpo"], data, beta=beta, radius=radius)
        norm = float(np.linalg.norm(exact.theta))
        for vname, make in variants.items():
            t0 = time.perf_counter()
            fitted = make(data, beta=beta, radius=radius, ctx=ctx)
            diff = fitted.theta - exact.theta
            err = float(np.linalg.norm(diff))
            store.write(_plain({
                "env": name, "replicate": rep, "concentration": conc, "n_samples": nsamp,
                "lambda_min": lam, "divergence": div, "fraction": frac, "radius": radius,
                "collapse_radius": collapse, "variant": vname, "hyper": fitted.hyper,
                "theta_err": err, "rel_theta_err": err / norm if norm > 0 else float("nan"),
                "sigma_err": _sigma_norm(diff, sigma), "dpo_norm": dpo_norm,
                "dpo_sigma_norm": dpo_sigma_norm,
                "subopt": spec.value(fitted.theta, data, beta=beta, radius=radius) - v_exact,
                "subopt_dpo": v_dpo - v_exact,
                "value_gap": fitted.value(exact.theta) - v_exact,
                "exact_value": v_exact, "exact_dual": float(exact.dual), "theta_norm": norm,
                "status": fitted.status, "seconds": time.perf_counter() - t0,
            }))


def _refit_rows(name, conc, data, config, store):
    """The refit-then-reweight iteration against its predicted contraction factor
    (docs/theory.md §4.2)."""
    nsamp = _n_samples(name)
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


def main(config: ApproxStudyConfig, out=None, *, progress: bool = True) -> Path:
    """Run (or resume) the study, writing records incrementally; returns the records
    directory.

    Args:
        config: the study (read a TOML file with :func:`.config.load_config`).
        out: the records directory; ``None`` uses ``config.out`` (a given ``out`` replaces
            it in the resolved config written there).
        progress: show a progress bar over the environments (count, elapsed time, ETA).
    """
    if not isinstance(config, ApproxStudyConfig):
        raise TypeError(f"main takes an ApproxStudyConfig, got {type(config).__name__}; read "
                        "a TOML file with loglinear.experiments.approx.load_config(path)")
    if out is not None:
        config = replace(config, out=str(out))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved(config, out / "config.json")
    from tqdm.auto import tqdm

    total = len(config.concentrations) * config.replicates * len(config.n_samples)
    bar = tqdm(total=total, desc="approx-study", unit="env", disable=not progress)
    with bar, RecordStore(out / "records.csv", COLUMNS, KEY) as store, \
            RecordStore(out / "refit.csv", REFIT_COLUMNS, REFIT_KEY) as refit:
        for name, rep, conc, data in environments(config):
            bar.set_postfix_str(name)
            try:
                _refit_rows(name, conc, data, config, refit)
                for div in config.divergences:
                    _rows_for(name, rep, conc, data, div, config, store, warn=bar.write)
            except SeparableDataError as exc:
                bar.write(f"  warning: {name} skipped: {exc}")
            bar.update()
    return out


