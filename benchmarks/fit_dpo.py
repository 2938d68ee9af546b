"""Benchmark: fit_dpo against one memory pass ``x @ theta``.

For n in {1e3, 1e4, 1e5} and d in {4, 16, 64} it prints the fit time, the time of one
matrix-vector pass over the data, and their ratio: the number of passes a full fit costs
(target: at most 30). Both are measured in the same run, best of ``--repeat``.

    python benchmarks/fit_dpo.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from loglinear import PreferenceData, fit_dpo

TARGET_PASSES = 30


def _best(fn, repeat):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def make_data(n: int, d: int, rng: np.random.Generator) -> PreferenceData:
    x = rng.standard_normal((n, d)) / np.sqrt(d)
    theta = rng.standard_normal(d)
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ theta))).astype(float)
    return PreferenceData(x, y)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(f"{'n':>8} {'d':>4} {'fit ms':>9} {'pass ms':>9} {'passes':>8} {'iters':>6}  "
          f"target<={TARGET_PASSES}")
    for n in (10**3, 10**4, 10**5):
        for d in (4, 16, 64):
            data = make_data(n, d, rng)
            theta = rng.standard_normal(d)
            t_pass = _best(lambda data=data, theta=theta: data.x @ theta, max(args.repeat, 20))
            fit = fit_dpo(data, beta=1.0)
            t_fit = _best(lambda data=data: fit_dpo(data, beta=1.0), args.repeat)
            ratio = t_fit / t_pass
            flag = "ok" if ratio <= TARGET_PASSES else "over"
            print(f"{n:>8} {d:>4} {1e3 * t_fit:>9.2f} {1e3 * t_pass:>9.3f} {ratio:>8.1f} "
                  f"{fit.iterations:>6}  {flag}")


if __name__ == "__main__":
    main()
