r"""Small computations behind the exploration notebooks (``notebooks/``).

The notebooks only call public functions; whatever they need that the core lacks lives
here (the robust sweeps in :mod:`loglinear.experiments.explore_robust`, re-exported),
tested in ``tests/test_explore.py``. Every sweep returns tidy records (a list of
dicts, one row per measurement) that ``pandas.DataFrame`` takes as is.

Coverage identity used throughout: because a^1 and a^2 are drawn independently from
pi_o(.|s),

.. math::

    \Sigma = E[x x^\top] = 2 \sum_s \mu(s)\, \mathrm{Cov}_{a \sim \pi_o(\cdot|s)}[\psi(s, a)],

so a state contributes at most rank A - 1, and S (A - 1) < d forces lambda_min = 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ..env import LogLinearEnv
from ..estimation import coverage
from ..robust import BALLS
from .explore_robust import kl_surrogate_sweep, shrinkage_path, wasserstein_surrogate_sweep

__all__ = ["FeatureProjection", "coverage_sweep", "collapse_sweep", "eigen_paths",
           "kl_surrogate_sweep", "project_features", "random_env", "shrinkage_path",
           "sigma_from_covariances", "summarize_rates", "wasserstein_surrogate_sweep"]

# LogLinearEnv.random keywords a sweep may vary, plus derived knobs handled here.
_ENV_KEYS = {"n_states", "n_actions", "dim", "beta", "concentration", "reward_scale",
             "ref_scale", "state_dist"}
_DERIVED_KEYS = {"spectrum_decay"}
# Below this, lambda_min(Sigma) is treated as zero (a singular population) in ratios.
SINGULAR_TOL = 1e-12


def sigma_from_covariances(env: LogLinearEnv) -> np.ndarray:
    r"""Sigma = 2 sum_s mu(s) Cov_{pi_o(.|s)}[psi(s, .)] (ties a^1 = a^2 included).

    Returns:
        (d, d) the population coverage matrix, computed from per-state covariances
        instead of from the enumerated pairs.
    """
    psi, pi_o, mu = env.features, env.sampling_policy, env.state_dist
    mean = np.einsum("sa,sad->sd", pi_o, psi)
    second = np.einsum("sa,sad,sae->sde", pi_o, psi, psi)
    cov = second - mean[:, :, None] * mean[:, None, :]
    return 2.0 * np.einsum("s,sde->de", mu, cov)


def random_env(rng: np.random.Generator | int, *, spectrum_decay: float | None = None,
               **params) -> LogLinearEnv:
    r"""``LogLinearEnv.random`` with one derived knob.

    Args:
        rng: the source of randomness: a Generator or an integer seed.
        spectrum_decay: r in (0, 1]; feature coordinate j is scaled by r^j, so the last
            coordinate is the worst covered (None or 1: isotropic features).
        **params: passed to ``LogLinearEnv.random`` (n_states, n_actions, dim, beta,
            concentration, reward_scale, ref_scale, state_dist).
    """
    unknown = sorted(set(params) - _ENV_KEYS)
    if unknown:
        raise ValueError(f"unknown environment parameters {unknown}; allowed: "
                         f"{sorted(_ENV_KEYS | _DERIVED_KEYS)}")
    if spectrum_decay is not None:
        if not 0 < spectrum_decay <= 1:
            raise ValueError(f"spectrum_decay must lie in (0, 1], got {spectrum_decay}")
        dim = int(params.get("dim", 4))
        params["spectrum"] = spectrum_decay ** np.arange(dim)
    return LogLinearEnv.random(rng, **params)


def _grid(grid: Mapping[str, Sequence]) -> list[dict]:
    if not grid:
        return [{}]
    bad = sorted(set(grid) - _ENV_KEYS - _DERIVED_KEYS)
    if bad:
        raise ValueError(f"unknown grid knobs {bad}; allowed: {sorted(_ENV_KEYS | _DERIVED_KEYS)}")
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(list(grid[k]) for k in keys))]


def coverage_sweep(*, grid: Mapping[str, Sequence], base: Mapping | None = None,
                   n_values: Sequence[int] = (), replicates: int = 3, seed: int = 0
                   ) -> list[dict]:
    r"""lambda_min(Sigma) of the population (and of samples of size n) over a grid of knobs.

    Replicate r draws its environment from the same seed at every grid point (common
    random numbers): moving ``concentration`` keeps the features and the direction of the
    sampling logits fixed, so the curves show the knob's effect, not fresh noise.

    Args:
        grid: knob -> values; the Cartesian product is swept. Knobs are the keywords of
            ``LogLinearEnv.random`` plus ``spectrum_decay`` (see :func:`random_env`).
        base: fixed keywords for every environment.
        n_values: sample sizes; each adds one sampled Sigma_D per replicate.
        replicates: environments per grid point.
        seed: root seed; replicate r uses ``SeedSequence(seed).spawn(replicates)[r]``.

    Returns:
        records with the knobs, ``replicate``, ``n`` (0 for the population),
        ``lambda_min``, ``lambda_max``, ``sigma_error`` = ||Sigma_D - Sigma||_op
        (0 for the population) and ``lambda_ratio`` = lambda_min / lambda_min(Sigma)
        (NaN-free: 0 where the population itself is singular).
    """
    if replicates < 1:
        raise ValueError(f"replicates must be >= 1, got {replicates}")
    n_values = [int(n) for n in n_values]
    if any(n < 1 for n in n_values):
        raise ValueError(f"sample sizes must be positive, got {n_values}")
    base = dict(base or {})
    clash = sorted(set(base) & set(grid))
    if clash:
        raise ValueError(f"knobs {clash} appear in both grid and base")
    seqs = np.random.SeedSequence(seed).spawn(replicates)
    rows = []
    for point in _grid(grid):
        for r, ss in enumerate(seqs):
            env_ss, data_ss = ss.spawn(2)
            env = random_env(np.random.default_rng(env_ss), **base, **point)
            pop = env.coverage()
            lam = pop.lambda_min

            def ratio(v, lam=lam):
                return v / lam if lam > SINGULAR_TOL else 0.0

            rows.append({**point, "replicate": r, "n": 0, "lambda_min": lam,
                         "lambda_max": float(pop.eigvals[-1]), "sigma_error": 0.0,
                         "lambda_ratio": ratio(lam)})
            data_rng = np.random.default_rng(data_ss)
            for n in n_values:
                cov = coverage(env.sample_counts(n, data_rng))
                err = float(np.linalg.norm(cov.sigma - pop.sigma, ord=2))
                rows.append({**point, "replicate": r, "n": n, "lambda_min": cov.lambda_min,
                             "lambda_max": float(cov.eigvals[-1]), "sigma_error": err,
                             "lambda_ratio": ratio(cov.lambda_min)})
    return rows


def eigen_paths(*, concentrations: Sequence[float], base: Mapping | None = None,
                seed: int = 0) -> list[dict]:
    r"""The whole spectrum of Sigma along a concentration path (one environment).

    Returns:
        records ``concentration, k, eigval, axis`` with eigenvalues ascending (k = 0 is
        lambda_min) and ``axis`` the feature coordinate the k-th eigenvector loads most on.
    """
    base = dict(base or {})
    base.pop("concentration", None)
    rows = []
    for c in concentrations:
        env = random_env(np.random.default_rng(seed), concentration=float(c), **base)
        cov = env.coverage()
        for k, (val, vec) in enumerate(zip(cov.eigvals, cov.eigvecs.T)):
            rows.append({"concentration": float(c), "k": k, "eigval": float(val),
                         "axis": int(np.argmax(np.abs(vec)))})
    return rows


class FeatureProjection(NamedTuple):
    """Actions' features in the eigenbasis of Sigma (see :func:`project_features`)."""

    coords: np.ndarray        # (S, A, d) psi(s, a) . u_k, eigenvectors ascending
    centered: np.ndarray      # (S, A, d) (psi(s, a) - E_{pi_o}[psi(s, .)]) . u_k
    mass: np.ndarray          # (S, A) mu(s) pi_o(a|s)
    eigvals: np.ndarray       # (d,) ascending
    eigvecs: np.ndarray       # (d, d) columns u_k
    direction_variance: np.ndarray  # (S, d) 2 mu(s) Var_{pi_o}[psi . u_k] per state


def project_features(env: LogLinearEnv) -> FeatureProjection:
    r"""Project every action's feature onto the eigenvectors u_k of the population Sigma.

    u_k^T Sigma u_k = lambda_k = sum_s 2 mu(s) Var_{a ~ pi_o(.|s)}[psi(s, a) . u_k]; the
    per-state terms (``direction_variance``) say which states supply coverage in each
    direction. The centred coordinates are what the pairs x = psi(a^1) - psi(a^2) see.
    """
    cov = env.coverage()
    coords = env.features @ cov.eigvecs
    mean = np.einsum("sa,sak->sk", env.sampling_policy, coords)
    centered = coords - mean[:, None, :]
    var = np.einsum("sa,sak->sk", env.sampling_policy, centered ** 2)
    return FeatureProjection(coords, centered, env.state_dist[:, None] * env.sampling_policy,
                             cov.eigvals, cov.eigvecs, 2.0 * env.state_dist[:, None] * var)


# --------------------------------------------------------------------------------------
# lambda dependence: summaries of rate records, collapse radii and shrinkage paths
# --------------------------------------------------------------------------------------

_RATE_COLUMNS = ["setting", "estimator", "n", "error", "lambda_min", "tr_hinv", "tr_sandwich"]


def summarize_rates(records) -> list[dict]:
    r"""Per (setting, estimator, schedule, n): RMSE over seeds and its local predictions.

    .. math::  \mathrm{RMSE} = \Big(\tfrac{1}{R}\sum_r \|\hat w_r - w\|^2\Big)^{1/2},\quad
               \text{pred}_H = \sqrt{\mathrm{tr} H^{-1}/n},\quad
               \text{pred}_V = \sqrt{\mathrm{tr} V/n}

    Args:
        records: rows of the rates study (``loglinear.experiments.rates.run``), a DataFrame or
            a list of dicts with at least ``setting, estimator, n, error, lambda_min,
            tr_hinv, tr_sandwich`` (``schedule`` and ``status`` are optional).

    Returns:
        records with the group keys, ``lambda_min``, ``rmse``, ``seeds`` (rows used),
        ``failed`` (rows whose error is missing), ``pred_hinv`` and ``pred_sandwich``
        (NaN where the study has no local prediction).
    """
    import pandas as pd

    df = records if isinstance(records, pd.DataFrame) else pd.DataFrame(list(records))
    missing = [c for c in _RATE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"rate records lack columns {missing}")
    df = df.copy()
    if "schedule" not in df.columns:
        df["schedule"] = "none"
    rows = []
    for (setting, est, sched, n), g in df.groupby(["setting", "estimator", "schedule", "n"],
                                                  sort=True):
        err = g["error"].to_numpy(float)
        ok = np.isfinite(err)
        n = int(n)
        tr_h, tr_v = float(g["tr_hinv"].iloc[0]), float(g["tr_sandwich"].iloc[0])
        rows.append({"setting": setting, "estimator": est, "schedule": sched, "n": n,
                     "lambda_min": float(g["lambda_min"].iloc[0]),
                     "rmse": float(np.sqrt(np.mean(err[ok] ** 2))) if ok.any() else np.nan,
                     "seeds": int(ok.sum()), "failed": int((~ok).sum()),
                     "pred_hinv": float(np.sqrt(tr_h / n)) if tr_h >= 0 else np.nan,
                     "pred_sandwich": float(np.sqrt(tr_v / n)) if tr_v >= 0 else np.nan})
    return rows


def collapse_sweep(*, concentrations: Sequence[float], base: Mapping | None = None,
                   replicates: int = 1, seed: int = 0) -> list[dict]:
    r"""The exact robust collapse radii against coverage along a concentration path.

    For each environment (common random numbers across concentrations, as in
    :func:`coverage_sweep`), the centred population gives lambda_min(Sigma) and the radius
    at and beyond which the robust optimum is w = 0 (pi = pi_ref), for every ball of
    ``loglinear.robust.BALLS`` (docs/theory.md §3.2, §3.6): the KL radius
    rho_0 = -min_nu log E e^{nu . z} and the Wasserstein radii for p = 1, 2.

    Returns:
        records ``concentration, replicate, lambda_min, kind, collapse_radius`` with
        kind a ball name ("kl", "w1", "w2").
    """
    base = dict(base or {})
    base.pop("concentration", None)
    seqs = np.random.SeedSequence(seed).spawn(replicates)
    rows = []
    for c in concentrations:
        for r, ss in enumerate(seqs):
            env = random_env(np.random.default_rng(ss), concentration=float(c), **base)
            pop = env.population(centered=True)
            lam = coverage(pop).lambda_min
            for kind, ball in BALLS.items():
                rad = ball.collapse_radius(pop, beta=env.beta)
                rows.append({"concentration": float(c), "replicate": r, "lambda_min": lam,
                             "kind": kind, "collapse_radius": float(rad)})
    return rows
