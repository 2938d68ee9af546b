r"""Neural policies in the finite environments: estimation error in policy space against n.

For every setting and architecture (depth x width; depth 0 is log-linear):

1. **Population optimum** (``targets.csv``): ``restarts`` L-BFGS runs from random inits on
   the exact population (weights = atom probabilities). The best objective defines
   :math:`\pi^\star_{arch}`; each restart row records its objective gap to the best, its
   TV distance to the best policy (restart agreement), the Hessian spectrum at its
   solution, and the best policy's TV distance to the log-linear :math:`\pi_{\theta^*}`.
2. **Sample fits** (``records.csv``): for each n and seed, n pairs drawn as multinomial
   counts (the same sample for every architecture), DPO fitted by L-BFGS in two ways:

   * the **local** estimator (columns ``error``, ``kl``, ``tv``, ``objective``), started
     from the population optimum's parameters: the sample optimum next to pi*, which
     side-steps the label-switching symmetries of MLPs but tests no optimisation;
   * the **random-init** estimator (columns ``*_random``): ``sample_restarts`` fits from
     random initialisations (``init_scale``), keeping the best sample objective. Each row
     records ``init_tv`` (the smallest TV distance between a restart's initial policy and
     pi*: the fits do not start at the optimum), ``restarts_reached`` (how many restarts
     reached the sample optimum: objective within ``reach_gap`` of the local fit's, or
     below it, and policy within TV ``reach_tv`` of the local fit's) and
     ``tv_random_to_local`` (the best restart's TV to the local fit).

   Both give ``error = sqrt(KL(pi* || pi_hat))`` and ``tv`` averaged over states; the local
   fit also gives the Hessian spectrum (``hess_min``, ``hess_min_pos``: smallest eigenvalue
   above ``NULL_RTOL * hess_max``, ``hess_null``: count below it) and the sample's coverage.

The exponent of the error in n (with seed-bootstrap CIs, :mod:`loglinear.stats`) is
computed from these records by :func:`loglinear.experiments.beyond.analysis.neural_exponents`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...estimation import coverage
from ..config import write_resolved
from ..records import RecordStore, read_records
from .common import (
    EnvSpec,
    StudyConfig,
    Timer,
    as_config,
    environment,
    row_rng,
)

NULL_RTOL = 1e-6
TARGET_KEY = ["setting", "arch", "restart"]
TARGET_COLUMNS = TARGET_KEY + [
    "depth", "width", "n_params", "objective", "objective_gap", "tv_to_best", "kl_to_best",
    "tv_best_to_loglinear", "grad_norm", "iterations", "status", "hess_min", "hess_min_pos",
    "hess_null", "hess_max", "lambda_min", "seconds"]
KEY = ["setting", "arch", "n", "seed"]
COLUMNS = KEY + [
    "depth", "width", "n_params", "error", "kl", "tv", "objective", "grad_norm", "iterations",
    "status", "hess_min", "hess_min_pos", "hess_null", "hess_max", "lambda_min",
    "lambda_min_sample", "error_random", "kl_random", "tv_random", "objective_random",
    "init_tv", "restarts_reached", "sample_restarts", "tv_random_to_local", "seconds"]


@dataclass(frozen=True)
class Arch:
    """One architecture: ``depth`` hidden layers of ``width`` units (depth 0: log-linear)."""

    depth: int
    width: int = 16
    activation: str = "tanh"

    def __post_init__(self):
        if self.depth < 0 or self.width < 1:
            raise ValueError(f"arch needs depth >= 0 and width >= 1, got {self}")

    @property
    def name(self) -> str:
        return "loglinear" if self.depth == 0 else f"mlp{self.depth}x{self.width}"


@dataclass(frozen=True)
class NeuralConfig(StudyConfig):
    """The neural-policy study.

    Attributes:
        name: study name.
        seed: master seed.
        settings: environments (coverage varies with ``concentration``).
        archs: architectures (``[[arch]]`` tables with depth, width, activation).
        n: sample sizes.
        seeds: replicates per (setting, n).
        restarts: random restarts on the exact population.
        sample_restarts: random-init restarts per sample fit (0: local fits only).
        reach_tv, reach_gap: a restart reaches the sample optimum when its policy is within
            TV ``reach_tv`` of the local fit's and its objective at most ``reach_gap``
            above the local fit's.
        init_scale: scale of the random initialisation.
        max_iter: L-BFGS iterations per fit.
        gtol: gradient tolerance.
    """

    name: str = "beyond_neural"
    seed: int = 20261122
    settings: tuple[EnvSpec, ...] = ()
    archs: tuple[Arch, ...] = (Arch(0), Arch(1, 16), Arch(2, 8))
    n: tuple[int, ...] = (300, 1000, 3000, 10000, 30000)
    seeds: int = 5
    restarts: int = 4
    sample_restarts: int = 4
    reach_tv: float = 1e-3
    reach_gap: float = 1e-6
    init_scale: float = 1.0
    max_iter: int = 1000
    gtol: float = 1e-8

    def __post_init__(self):
        object.__setattr__(self, "n", tuple(int(v) for v in self.n))
        object.__setattr__(self, "archs", tuple(a if isinstance(a, Arch) else Arch(**a)
                                                for a in self.archs))
        if not self.settings or len({s.name for s in self.settings}) != len(self.settings):
            raise ValueError("need at least one setting, with unique names")
        if not self.archs or len({a.name for a in self.archs}) != len(self.archs):
            raise ValueError("need at least one arch, with unique (depth, width)")
        if len(self.n) < 2 or min(self.n) < 2 or self.seeds < 2 or self.restarts < 1:
            raise ValueError("need >= 2 sample sizes >= 2, seeds >= 2 and restarts >= 1")
        if not self.init_scale > 0 or self.max_iter < 1 or not self.gtol > 0:
            raise ValueError("init_scale, max_iter and gtol must be positive")
        if self.sample_restarts < 0 or not (self.reach_tv > 0 and self.reach_gap >= 0):
            raise ValueError(f"need sample_restarts >= 0, reach_tv > 0 and reach_gap >= 0, "
                             f"got {self.sample_restarts}, {self.reach_tv}, {self.reach_gap}")



def _hess(eigs) -> dict:
    top = float(np.max(np.abs(eigs)))
    thr = NULL_RTOL * max(top, 1e-300)
    pos = eigs[eigs > thr]
    return dict(hess_min=float(eigs[0]), hess_max=float(eigs[-1]),
                hess_min_pos=float(pos[0]) if pos.size else float("nan"),
                hess_null=int(np.sum(np.abs(eigs) <= thr)))


def _policy(arch: Arch, dim: int):
    from ...torch.neural import NeuralPolicy

    return NeuralPolicy(dim, depth=arch.depth, width=arch.width, activation=arch.activation)


def population_targets(config: NeuralConfig, spec: EnvSpec, arch: Arch):
    """Restart rows for (setting, arch) and the best parameters."""
    from ...torch import neural as nn

    env = environment(spec, config.seed)
    pop = env.population()
    pairs = nn.PairTensors.from_data(pop, env.features)
    pol = _policy(arch, env.dim)
    lam = coverage(pop).lambda_min
    fits, rows = [], []
    for r in range(config.restarts):
        t0 = time.perf_counter()
        p0 = pol.init(row_rng(config.seed, spec.name, arch.name, "restart", r),
                      scale=config.init_scale)
        f = nn.fit(pol, pairs, beta=env.beta, params0=p0, max_iter=config.max_iter,
                   gtol=config.gtol)
        eigs = nn.hessian_eigs(pol, f.params, pairs, beta=env.beta)
        fits.append(f)
        rows.append(dict(setting=spec.name, arch=arch.name, restart=r, depth=arch.depth,
                         width=arch.width * (arch.depth > 0), n_params=pol.n_params,
                         objective=f.objective,
                         grad_norm=f.grad_norm, iterations=f.iterations, status=f.status,
                         lambda_min=lam, **_hess(eigs), seconds=time.perf_counter() - t0))
    best = min(range(len(fits)), key=lambda i: fits[i].objective)
    pi_best = pol.policy(fits[best].params, env.features)
    tv_ll = nn.policy_divergence(env.policy(env.theta_star()), pi_best, env.state_dist)[1]
    for f, row in zip(fits, rows):
        kl, tv = nn.policy_divergence(pi_best, pol.policy(f.params, env.features),
                                      env.state_dist)
        row.update(objective_gap=f.objective - fits[best].objective, tv_to_best=tv,
                   kl_to_best=kl, tv_best_to_loglinear=tv_ll)
    return rows, fits[best].params


def sample_row(config: NeuralConfig, spec: EnvSpec, arch: Arch, n: int, seed: int,
               params_star) -> dict:
    """One sample fit (the sample depends on (setting, n, seed) only, not on the arch)."""
    from ...torch import neural as nn

    t0 = time.perf_counter()
    env = environment(spec, config.seed)
    pol = _policy(arch, env.dim)
    data = env.sample_counts(n, row_rng(config.seed, spec.name, n, seed))
    pairs = nn.PairTensors.from_data(data, env.features)
    f = nn.fit(pol, pairs, beta=env.beta, params0=params_star, max_iter=config.max_iter,
               gtol=config.gtol)
    pi_star = pol.policy(params_star, env.features)
    pi_local = pol.policy(f.params, env.features)
    kl, tv = nn.policy_divergence(pi_star, pi_local, env.state_dist)
    eigs = nn.hessian_eigs(pol, f.params, pairs, beta=env.beta)
    return dict(setting=spec.name, arch=arch.name, n=n, seed=seed, depth=arch.depth,
                width=arch.width * (arch.depth > 0), n_params=pol.n_params,
                error=float(np.sqrt(kl)), kl=kl,
                tv=tv, objective=f.objective, grad_norm=f.grad_norm, iterations=f.iterations,
                status=f.status, **_hess(eigs), lambda_min=coverage(env.population()).lambda_min,
                lambda_min_sample=coverage(data).lambda_min,
                **random_init_fits(config, spec, arch, n, seed, pairs, pi_star, pi_local,
                                   f.objective),
                seconds=time.perf_counter() - t0)


def random_init_fits(config: NeuralConfig, spec: EnvSpec, arch: Arch, n: int, seed: int,
                     pairs, pi_star, pi_local, objective_local: float) -> dict:
    """The random-init estimator of one sample: ``config.sample_restarts`` L-BFGS fits from
    random parameters (generator keyed by the row and the restart), the best objective
    kept; the ``*_random`` columns of the module docstring (NaN when there are none)."""
    from ...torch import neural as nn

    env = environment(spec, config.seed)
    pol = _policy(arch, env.dim)
    nan = float("nan")
    out = dict(error_random=nan, kl_random=nan, tv_random=nan, objective_random=nan,
               init_tv=nan, restarts_reached=0, sample_restarts=config.sample_restarts,
               tv_random_to_local=nan)
    best, init_tv = None, []
    for r in range(config.sample_restarts):
        p0 = pol.init(row_rng(config.seed, spec.name, arch.name, n, seed, "sample-init", r),
                      scale=config.init_scale)
        init_tv.append(nn.policy_divergence(pi_star, pol.policy(p0, env.features),
                                            env.state_dist)[1])
        fit = nn.fit(pol, pairs, beta=env.beta, params0=p0, max_iter=config.max_iter,
                     gtol=config.gtol)
        pi = pol.policy(fit.params, env.features)
        to_local = nn.policy_divergence(pi_local, pi, env.state_dist)[1]
        out["restarts_reached"] += int(fit.objective <= objective_local + config.reach_gap
                                       and to_local <= config.reach_tv)
        if best is None or fit.objective < best[0].objective:
            best = (fit, pi, to_local)
    if best is not None:
        fit, pi, to_local = best
        kl, tv = nn.policy_divergence(pi_star, pi, env.state_dist)
        out.update(error_random=float(np.sqrt(kl)), kl_random=kl, tv_random=tv,
                   objective_random=fit.objective, init_tv=float(min(init_tv)),
                   tv_random_to_local=to_local)
    return out


def main(config: NeuralConfig, out) -> Path:
    """Run (or resume) the study into the records directory ``out`` (records.csv: sample
    fits; targets.csv and optimum_*.npy: population restarts; after the resolved
    config.json) and return ``out``. The report is built separately
    (``loglinear report beyond_loglinear ROOT``)."""
    config = as_config(NeuralConfig, config)
    from .sgd import use_threads

    use_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved(config, out / "config.json")
    with Timer(f"beyond neural study ({config.name})"):
        with RecordStore(out / "targets.csv", TARGET_COLUMNS, TARGET_KEY) as targets, \
                RecordStore(out / "records.csv", COLUMNS, KEY) as store:
            for spec in config.settings:
                for arch in config.archs:
                    npz = out / f"optimum_{spec.name}_{arch.name}.npy"
                    if npz.exists() and all(targets.done(dict(setting=spec.name,
                                                              arch=arch.name, restart=r))
                                            for r in range(config.restarts)):
                        params_star = np.load(npz)
                    else:
                        rows, params_star = population_targets(config, spec, arch)
                        np.save(npz, params_star)
                        targets.write_many(rows)
                    for n in config.n:
                        for seed in range(config.seeds):
                            key = dict(setting=spec.name, arch=arch.name, n=n, seed=seed)
                            if not store.done(key):
                                store.write(sample_row(config, spec, arch, n, seed,
                                                       params_star))
    return out


def run(config: NeuralConfig, out) -> Path:
    """Deprecated: ``main(config, out) / "records.csv"``."""
    warnings.warn("neural.run is deprecated; use neural.main(config, out), which returns the "
                  "records directory", DeprecationWarning, stacklevel=2)
    return main(config, out) / "records.csv"


def read(out):
    """(records, targets) DataFrames of a finished or partial run."""
    out = Path(out)
    return read_records(out / "records.csv"), read_records(out / "targets.csv")
