"""Benchmark of the rates study: rows per second, and the speed-ups from count compression
and from parallel workers, measured side by side in one run.

    python benchmarks/rates_study.py [--config simulations/rates.toml] [--rows 600]

Prints: (1) the time to draw and fit one DPO sample at n = 1e4, 1e5, 1e6 as n expanded rows
(``env.sample``) and as multinomial counts over atoms (``env.sample_counts``), with their
ratio; (2) rows/second of a slice of the study with 1 and with 2 local workers, the ratio,
and the projected wall time of the whole study. The machine is shared: run it when idle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import replace

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def compression(config):
    from loglinear import fit_dpo
    from loglinear.experiments.rates import run as rates

    env, _, _, _ = rates.environment(config, config.settings[0].name)
    print("count compression (DPO, one sample: draw + fit):")
    print(f"{'n':>9} {'expanded s':>11} {'counts s':>9} {'speed-up':>9} {'atoms':>6}")
    for n in (10_000, 100_000, 1_000_000):
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        full = env.sample(n, rng, centered=True)
        fit_dpo(full, beta=env.beta, bound=config.bound)
        t_full = time.perf_counter() - t0
        t0 = time.perf_counter()
        reps = 20
        for _ in range(reps):
            data = env.sample_counts(n, rng, centered=True)
            fit_dpo(data, beta=env.beta, bound=config.bound)
        t_counts = (time.perf_counter() - t0) / reps
        print(f"{n:>9} {t_full:>11.4f} {t_counts:>9.4f} {t_full / t_counts:>9.1f} {data.n:>6}")


def throughput(config, rows, jobs):
    from loglinear.experiments.rates import run as rates

    out = tempfile.mkdtemp(prefix="rates_bench_")
    try:
        # targets first (not timed), then a slice of rows
        rates.main(replace(config, seeds=1, n=config.n[:1]), out, jobs=2, progress=False)
        t0 = time.perf_counter()
        rates.main(config, out, jobs=jobs, progress=False, max_rows=rows)
        dt = time.perf_counter() - t0
        from loglinear.experiments.records import read_records

        done = len(read_records(f"{out}/records.csv"))
        total = count_rows(config)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return done, dt, total


def count_rows(config):
    """Rows of the whole study: (estimator, schedule) pairs x settings x draws x n x seeds."""
    from loglinear.experiments.rates import run as rates

    draws = getattr(config, "draws", 1)
    return (len(rates._combos(config)) * len(config.settings) * draws * len(config.n)
            * config.seeds)


def main():
    from loglinear.experiments.config import load_config
    from loglinear.experiments.rates import RatesConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="simulations/rates.toml")
    ap.add_argument("--rows", type=int, default=600)
    args = ap.parse_args()
    config = load_config(RatesConfig, args.config)
    compression(config)
    print("\nthroughput on a slice of", args.config)
    res = {}
    for jobs in (1, 2):
        done, dt, total = throughput(config, args.rows, jobs)
        res[jobs] = done / dt
        print(f"jobs={jobs}: {done} rows in {dt:.1f} s = {done / dt:.1f} rows/s; whole study "
              f"({total} rows) projected {total / (done / dt) / 60:.1f} min")
    print(f"parallel speed-up (2 workers vs 1): {res[2] / res[1]:.2f}x on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
