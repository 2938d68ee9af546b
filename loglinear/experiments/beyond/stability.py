r"""Gradient stability of DPO, WDPO and KLDPO under a controlled preference shift.

Training pairs are labelled by the reward :math:`r_\alpha = \alpha r + (1-\alpha) r'`
(``conditions``: alpha = 1 is the clean training reward, alpha = 0.5 the paper-style
50/50 mixture with a shifted reward r'). Each (setting, condition, arch, method, seed)
trains a neural policy (:mod:`loglinear.torch.neural`; depth 0 = log-linear) by plain
minibatch SGD from the same initialisation, with the method's minibatch objective:

* ``dpo``: mean loss; ``wdpo``: mean loss + rho (mean g_i)^{1/2} (paper form, g_i the
  squared input gradient; docs/theory.md §4.1); ``kldpo``: tau log mean e^{l/tau}, whose
  gradient is Algorithm 2's with weights normalised over the minibatch (§4.2).

Every ``every`` steps it records, at the current parameters:

* ``grad_norm``: the full-data gradient norm of the method's objective;
* ``grad_var``: the total variance :math:`E\|\hat g_B - E\hat g_B\|^2` of the minibatch
  gradient, estimated from ``n_batches`` fresh minibatches
  (:func:`loglinear.stats.empirical_variance`); with plain SGD the update variance is
  lr^2 grad_var. ``grad_var_rel`` divides by the squared norm of the mean minibatch gradient;
* ``penalty``: the method's own penalty on the full data (WDPO: rho G; KLDPO: the robust
  premium :math:`\tau\log\sum q e^{l/\tau} - \sum q l \ge 0`; DPO: 0) and ``grad_x_rms``
  :math:`G/\rho = (\sum_i q_i\|\nabla_x l_i\|^2)^{1/2}` for every method;
* ``loss``: the full-data DPO loss and ``ess``: the ESS fraction of the KLDPO weights;
* ``kl_ref``: the policy's KL divergence to the reference policy,
  :math:`\sum_s\mu(s)KL(\pi(\cdot|s)\|\pi_{ref}(\cdot|s))` (nats): the strength of the
  update, at which the methods are compared (matched strength,
  :mod:`loglinear.experiments.beyond.analysis_stability`); ``clean_loss``: the
  population DPO loss under the clean reward (alpha = 1), the in-distribution loss.

A WDPO or KLDPO run whose final full-data loss is within ``collapse_tol`` of log 2 has
collapsed to a policy that no longer separates the pairs; the analysis counts and excludes
such runs from its headline comparisons.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import write_resolved
from ..records import RecordStore
from .common import (
    EnvSpec,
    StudyConfig,
    Timer,
    as_config,
    environment,
    labelled_env,
    row_rng,
)
from .neural import Arch

KEY = ["setting", "alpha", "arch", "method", "hyper", "seed", "step"]
COLUMNS = KEY + ["lr", "batch_size", "loss", "objective", "grad_norm", "grad_var",
                 "grad_var_rel", "mb_grad_norm", "penalty", "grad_x_rms", "ess",
                 "kl_ref", "clean_loss", "seconds"]
METHODS = ("dpo", "wdpo", "kldpo")


@dataclass(frozen=True)
class StabilityConfig(StudyConfig):
    """The gradient-stability study.

    Attributes:
        name, seed: study name and master seed.
        settings: environments.
        archs: architectures (depth 0 = log-linear).
        alphas: label-reward mixtures (1 = clean, 0.5 = 50/50 shift).
        methods: subset of ``("dpo", "wdpo", "kldpo")``.
        rho: WDPO penalty weights (paper form); tau: KLDPO temperatures (one run each).
        n: training pairs; batch_size: minibatch size (drawn with replacement).
        steps: SGD steps; every: record every this many steps; lr: SGD step size.
        n_batches: minibatches per variance estimate.
        init_scale: random init scale of MLPs (depth 0 starts at theta_ref).
        collapse_tol: a run whose final loss is within this of log 2 has collapsed.
        match_rtol: relative tolerance on KL to the reference within which a method's
            strength counts as matched to DPO's.
    """

    name: str = "beyond_stability"
    seed: int = 20261122
    settings: tuple[EnvSpec, ...] = ()
    archs: tuple[Arch, ...] = (Arch(0), Arch(1, 16))
    alphas: tuple[float, ...] = (1.0, 0.5)
    methods: tuple[str, ...] = METHODS
    rho: tuple[float, ...] = (0.05, 0.2)
    tau: tuple[float, ...] = (1.0, 0.1)
    n: int = 2000
    batch_size: int = 32
    steps: int = 300
    every: int = 50
    lr: float = 0.5
    n_batches: int = 24
    seeds: int = 2
    init_scale: float = 0.5
    collapse_tol: float = 0.01
    match_rtol: float = 0.25

    def __post_init__(self):
        object.__setattr__(self, "archs", tuple(a if isinstance(a, Arch) else Arch(**a)
                                                for a in self.archs))
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        object.__setattr__(self, "rho", tuple(float(v) for v in np.atleast_1d(self.rho)))
        object.__setattr__(self, "tau", tuple(float(v) for v in np.atleast_1d(self.tau)))
        if not self.settings or len({s.name for s in self.settings}) != len(self.settings):
            raise ValueError("need at least one setting, with unique names")
        bad = sorted(set(self.methods) - set(METHODS))
        if bad or not self.methods:
            raise ValueError(f"unknown methods {bad}; allowed: {list(METHODS)}")
        if any(not 0 <= a <= 1 for a in self.alphas) or not self.alphas:
            raise ValueError("alphas must lie in [0, 1]")
        if not (min(self.rho) >= 0 and min(self.tau) > 0 and self.lr > 0
                and self.init_scale > 0):
            raise ValueError("need rho >= 0, tau > 0, lr > 0 and init_scale > 0")
        if self.n < 2 or not 1 <= self.batch_size <= self.n or self.n_batches < 2:
            raise ValueError("need n >= 2, 1 <= batch_size <= n and n_batches >= 2")
        if self.steps < 1 or not 1 <= self.every <= self.steps or self.seeds < 1:
            raise ValueError("need steps >= 1, 1 <= every <= steps and seeds >= 1")
        if not (self.collapse_tol > 0 and self.match_rtol > 0):
            raise ValueError(f"collapse_tol and match_rtol must be > 0, got "
                             f"{self.collapse_tol}, {self.match_rtol}")

    def hypers(self, method: str) -> tuple[float, ...]:
        return {"dpo": (0.0,), "wdpo": self.rho, "kldpo": self.tau}[method]



def train_rows(config: StabilityConfig, spec: EnvSpec, alpha: float, arch: Arch,
               method: str, hyper: float, seed: int) -> list[dict]:
    """One SGD run with its diagnostics every ``every`` steps (step 0 included)."""
    from ...torch import neural as nn
    from . import sgd

    env = environment(spec, config.seed)
    env_a = labelled_env(spec, config.seed, alpha)
    data = env_a.sample(config.n, row_rng(config.seed, spec.name, "data", round(1000 * alpha),
                                          seed))
    pairs = nn.PairTensors.from_data(data, env.features)
    pol = nn.NeuralPolicy(env.dim, depth=arch.depth, width=arch.width,
                          activation=arch.activation)
    if arch.depth == 0:
        p0 = env.theta_ref.copy()
    else:
        p0 = pol.init(row_rng(config.seed, spec.name, arch.name, seed), scale=config.init_scale)
    # common random numbers: every method sees the same minibatch indices
    train_rng = row_rng(config.seed, spec.name, "batches", round(1000 * alpha), seed)
    diag_rng = row_rng(config.seed, spec.name, "diag", round(1000 * alpha), seed)
    clean = nn.PairTensors.from_data(env.population(), env.features)
    pi_ref = env.policy(env.theta_ref)

    def strength(params) -> dict:
        import torch

        pi = pol.policy(params, env.features)
        with torch.no_grad():
            loss, _ = nn.pair_losses(pol, torch.tensor(params, dtype=torch.float64), clean,
                                     beta=env.beta)
        return dict(kl_ref=nn.policy_divergence(pi, pi_ref, env.state_dist)[0],
                    clean_loss=float((clean.weight * loss).sum()))

    rows, t0 = [], time.perf_counter()
    base = dict(setting=spec.name, alpha=alpha, arch=arch.name, method=method, hyper=hyper,
                seed=seed, lr=config.lr, batch_size=config.batch_size)
    # the record column "hyper" holds each method's one hyperparameter (rho for WDPO, tau
    # for KLDPO); the call passes it under its own name
    for step, diag in sgd.sgd(pol, p0, pairs, beta=env.beta, method=method,
                              **nn.OBJECTIVES[method].kwargs(hyper),
                              lr=config.lr, batch_size=config.batch_size, steps=config.steps,
                              every=config.every, ess_tau=config.tau[0],
                              n_batches=config.n_batches, train_rng=train_rng,
                              diag_rng=diag_rng, extra=strength):
        diag = {"objective": float("nan")} if diag is None else diag   # diverged
        rows.append(dict(base, step=step, **diag, seconds=time.perf_counter() - t0))
    return rows


def _complete(row: dict) -> dict:
    return {c: row.get(c, float("nan")) for c in COLUMNS}


def main(config: StabilityConfig, out) -> Path:
    """Run (or resume) the study into the records directory ``out`` (records.csv, after
    the resolved config.json) and return ``out``. The report is built separately
    (``loglinear report beyond_loglinear ROOT``)."""
    config = as_config(StabilityConfig, config)
    from .sgd import use_threads

    use_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_resolved(config, out / "config.json")
    with Timer(f"beyond stability study ({config.name})"), \
            RecordStore(out / "records.csv", COLUMNS, KEY) as store:
        for spec in config.settings:
            for alpha in config.alphas:
                for arch in config.archs:
                    for method in config.methods:
                        for hyper in config.hypers(method):
                            for seed in range(config.seeds):
                                last = dict(setting=spec.name, alpha=alpha, arch=arch.name,
                                            method=method, hyper=hyper, seed=seed,
                                            step=config.steps - config.steps % config.every)
                                if store.done(last):
                                    continue
                                for row in train_rows(config, spec, alpha, arch, method,
                                                      hyper, seed):
                                    store.write(_complete(row))
    return out


def run(config: StabilityConfig, out) -> Path:
    """Deprecated: ``main(config, out) / "records.csv"``."""
    warnings.warn("stability.run is deprecated; use stability.main(config, out), which returns the "
                  "records directory", DeprecationWarning, stacklevel=2)
    return main(config, out) / "records.csv"
