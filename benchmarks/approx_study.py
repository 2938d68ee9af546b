"""Benchmark for issue 4: the approximation study and the surrogates' cost vs exact solves.

Prints, measured side by side in one run:
* the wall time of each surrogate fit next to the exact robust solve it approximates, on one
  sampled dataset (n pairs), as ratios exact / surrogate;
* the wall time of the default approximation study (``simulations/approx.toml``, written to a
  temporary directory) against the 600 s budget.

Run: ``OMP_NUM_THREADS=1 python benchmarks/approx_study.py [--skip-study] [--n 20000]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from loglinear import LogLinearEnv
from loglinear.approx import fit_kldpo, fit_wdpo
from loglinear.robust import solve_kl, solve_wasserstein

STUDY_BUDGET_S = 600.0
REPEATS = 3


def _best(f):
    best = np.inf
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--skip-study", action="store_true")
    args = ap.parse_args()
    env = LogLinearEnv.random(np.random.default_rng(0), n_states=50, n_actions=8, dim=8,
                              beta=1.0, concentration=1.0)
    data = env.sample(args.n, np.random.default_rng(1), centered=True)
    kl = fit_kldpo(data, beta=1.0, tau=0.5)
    rho = kl.info["implied_radius"]
    pairs = [
        ("KL  (kldpo-paper vs solve_kl)", lambda: fit_kldpo(data, beta=1.0, tau=0.5),
         lambda: solve_kl(data, beta=1.0, radius=rho)),
        ("W2  (wdpo-paper vs solve_wasserstein p=2)",
         lambda: fit_wdpo(data, beta=1.0, rho=0.05),
         lambda: solve_wasserstein(data, beta=1.0, radius=0.05, p=2)),
        ("W1  (wdpo-paper vs solve_wasserstein p=1)",
         lambda: fit_wdpo(data, beta=1.0, rho=0.05),
         lambda: solve_wasserstein(data, beta=1.0, radius=0.05, p=1)),
        ("W2  (wdpo-official vs solve_wasserstein p=2)",
         lambda: fit_wdpo(data, beta=1.0, rho=0.05, form="official"),
         lambda: solve_wasserstein(data, beta=1.0, radius=0.05, p=2)),
    ]
    print(f"n = {data.n} pairs, d = {data.d}; best of {REPEATS}")
    print(f"{'problem':46s} {'surrogate s':>12s} {'exact s':>10s} {'exact/surrogate':>16s}")
    for name, surrogate, exact in pairs:
        ts = _best(surrogate)
        try:
            te = _best(exact)
        except RuntimeError as exc:   # report an exact-solver failure, do not hide it
            print(f"{name:46s} {ts:12.4f}   exact solver failed: {exc}")
            continue
        print(f"{name:46s} {ts:12.4f} {te:10.4f} {te / ts:16.2f}")
    if args.skip_study:
        return
    from loglinear.experiments.approx import ApproxStudyConfig
    from loglinear.experiments.approx import main as run_study
    from loglinear.experiments.config import load_config

    cfg = load_config(ApproxStudyConfig,
                      Path(__file__).resolve().parents[1] / "simulations" / "approx.toml")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_study(cfg, Path(tmp) / "approximations", progress=False)
        wall = time.perf_counter() - t0
    print(f"default approximation study: {wall:.1f} s = {wall / STUDY_BUDGET_S:.2f} x the "
          f"{STUDY_BUDGET_S:.0f} s budget")


if __name__ == "__main__":
    main()
