"""Benchmark: measured coverage of nominal 95% plug-in intervals (loglinear.inference).

On small exact environments (every population quantity enumerable), for each estimator at
radii 0.3 and 0.6 of its population collapse radius and n in {1e3, 1e4}, it draws R
compressed samples, fits, and counts how often the 95% per-coordinate intervals, the 95%
ellipsoid and the 95% objective interval cover the estimator's own population target
theta(rho) (the same estimator fitted to the enumerated population) and its optimal value.
KLDPO uses the temperature whose implied KL radius is that fraction of the KL collapse
radius. W1 with a finite label-flip cost kappa has its population optimum on a kink (two
atoms tied at the flip threshold) for whole ranges of kappa and radius, where no interval
is valid; it runs at the first kappa of KAPPA_FRACTIONS times max_i ||x_i|| (beyond which
flips never pay) whose population optimum is smooth, shown in the estimator's name.
Samples whose optimum has no normal limit (a kink: collapsed, tied atoms) are counted in
``kinked`` and left out of the coverage; a population optimum on a kink is reported.
The binomial standard error of a coverage near 0.95 is sqrt(0.95 * 0.05 / R), 0.022 at
R = 100.

    OMP_NUM_THREADS=1 python benchmarks/inference_coverage.py [--replicates 100]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.stats import chi2  # noqa: E402

from loglinear import LogLinearEnv, fit_dpo, inference  # noqa: E402
from loglinear.approx import fit_kldpo, fit_wdpo, tau_for_radius_kl  # noqa: E402
from loglinear.fit import fit_margin  # noqa: E402
from loglinear.robust import (  # noqa: E402
    collapse_radius_kl,
    collapse_radius_wasserstein,
    solve_kl,
    solve_wasserstein,
)

BETA = 1.0
KAPPA_FRACTIONS = (0.25, 0.5, 0.75)
ENVS = {   # name -> LogLinearEnv.random keyword arguments (seeded below)
    "uniform-d2": dict(n_states=3, n_actions=3, dim=2, concentration=0.0, reward_scale=1.5),
    "peaked-d2": dict(n_states=4, n_actions=3, dim=2, concentration=2.0, reward_scale=1.5),
    "mixed-d3": dict(n_states=4, n_actions=4, dim=3, concentration=0.5, reward_scale=1.0),
}


def estimators(pop, fraction):
    """name -> data -> result at ``fraction`` of the population collapse radii (DPO and
    IPO take no radius and appear at fraction None only)."""
    if fraction is None:
        return {"dpo": lambda d: fit_dpo(d, beta=BETA),
                "ipo": lambda d: fit_margin(d, beta=BETA, loss="ipo")}
    rho = fraction * collapse_radius_kl(pop, beta=BETA)
    e1 = fraction * collapse_radius_wasserstein(pop, beta=BETA, p=1)
    e2 = fraction * collapse_radius_wasserstein(pop, beta=BETA, p=2)
    tau = tau_for_radius_kl(rho, pop, beta=BETA)
    top = float(np.linalg.norm(pop.x, axis=1).max())
    flip, kappa = "w1-kappa", KAPPA_FRACTIONS[0] * top
    for k in np.multiply(KAPPA_FRACTIONS, top):
        try:
            inference.covariance(solve_wasserstein(pop, beta=BETA, radius=e1, kappa=k), pop)
        except ValueError:
            continue
        flip, kappa = f"w1-k{k:.2f}", k
        break
    return {
        "kl": lambda d: solve_kl(d, beta=BETA, radius=rho),
        "w1": lambda d: solve_wasserstein(d, beta=BETA, radius=e1),
        flip: lambda d: solve_wasserstein(d, beta=BETA, radius=e1, kappa=kappa),
        "w2": lambda d: solve_wasserstein(d, beta=BETA, radius=e2, p=2),
        "wdpo": lambda d: fit_wdpo(d, beta=BETA, rho=e2),
        "kldpo": lambda d: fit_kldpo(d, beta=BETA, tau=tau),
    }


def coverage(env, pop, fit, n, replicates, seed):
    """(coordinate coverage, ellipsoid coverage, objective coverage, kinked, samples)."""
    target = fit(pop)
    try:
        inference.covariance(target, pop, beta=BETA)
    except ValueError:
        return None
    coords, ellipse, value, kinked = [], [], [], 0
    q95 = chi2.ppf(0.95, pop.d)
    for child in np.random.SeedSequence(seed).spawn(replicates):
        sample = env.sample_counts(n, np.random.default_rng(child), centered=True)
        res = fit(sample)
        try:
            cov = inference.covariance(res, sample, beta=BETA)
            obj = inference.objective_interval(res, sample, beta=BETA)
        except ValueError:
            kinked += 1
            continue
        gap = res.theta - target.theta
        coords.append(np.abs(gap) <= 1.959963984540054 * np.sqrt(np.diag(cov)))
        ellipse.append(gap @ np.linalg.solve(cov, gap) <= q95)
        value.append(obj.lo <= target.objective <= obj.hi)
    if not coords:
        return float("nan"), float("nan"), float("nan"), kinked, 0
    return (float(np.mean(coords)), float(np.mean(ellipse)), float(np.mean(value)), kinked,
            len(coords))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=100, help="samples per cell")
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--fractions", default="0.3,0.6", help="radii / collapse radius")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.replicates < 1:
        ap.error(f"--replicates must be >= 1, got {args.replicates}")
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    fractions = [None] + [float(f) for f in args.fractions.split(",")]
    t0 = time.perf_counter()
    print(f"{'environment':>11} {'estimator':>9} {'radius':>6} {'n':>6} {'coord':>6} "
          f"{'ellipse':>7} {'value':>6} {'kinked':>6}")
    for k, (env_name, spec) in enumerate(ENVS.items()):
        env = LogLinearEnv.random(np.random.default_rng(100 + k), beta=BETA, **spec)
        pop = env.population(centered=True)
        for fraction in fractions:
            label = "-" if fraction is None else f"{fraction:g}"
            for name, fit in estimators(pop, fraction).items():
                for n in sizes:
                    out = coverage(env, pop, fit, n, args.replicates, [args.seed, k, n])
                    if out is None:
                        print(f"{env_name:>11} {name:>9} {label:>6} {n:>6}   population "
                              "optimum on a kink: no normal limit")
                        continue
                    cov_c, cov_e, cov_v, kinked, _ = out
                    print(f"{env_name:>11} {name:>9} {label:>6} {n:>6} {cov_c:6.3f} "
                          f"{cov_e:7.3f} {cov_v:6.3f} {kinked:>6}")
    print(f"{args.replicates} replicates per cell; binomial SE at 0.95: "
          f"{np.sqrt(0.95 * 0.05 / args.replicates):.3f}; "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
