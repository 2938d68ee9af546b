"""Benchmark: ``loglinear.audit.audit`` on 10,000 synthetic feature-difference pairs.

Bradley-Terry pairs with x ~ N(0, I/d) and a random theta (label noise from the model
itself), for d in {16, 32}, and a separable set at the largest d (y = 1 when x . theta > 0:
the fit and the robust solve then run on a ball); prints the seconds of one audit (coverage,
DPO fit with sandwich errors, the three collapse radii, the temperature rule, the exact KL
worst case) and of writing its report, against the target of 60 s on two cores.

    python benchmarks/audit.py [--n 10000] [--dims 16 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from loglinear import PreferenceData
from loglinear.audit import audit, write_report

TARGET_SECONDS = 60.0


def make_data(n: int, d: int, rng: np.random.Generator, *, separable: bool = False
              ) -> PreferenceData:
    x = rng.standard_normal((n, d)) / np.sqrt(d)
    theta = 2.0 * rng.standard_normal(d)
    noise = 0.5 if separable else rng.random(n)
    y = (noise < 1 / (1 + np.exp(-x @ theta))).astype(float)
    return PreferenceData(x, y)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dims", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(f"{'n':>7} {'d':>4} {'data':>10} {'audit s':>9} {'report s':>9}  "
          f"target < {TARGET_SECONDS:g} s")
    cases = [(d, False) for d in args.dims] + [(max(args.dims), True)]
    for (d, separable), seed in zip(cases, np.random.SeedSequence(args.seed).spawn(len(cases))):
        data = make_data(args.n, d, np.random.default_rng(seed), separable=separable)
        t0 = time.perf_counter()
        report = audit(data, beta=1.0)
        t_audit = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            write_report(report, out)
            t_report = time.perf_counter() - t0
        flag = "ok" if t_audit + t_report < TARGET_SECONDS else "over"
        kind = "separable" if report.fit.separable else "BT sample"
        print(f"{args.n:>7} {d:>4} {kind:>10} {t_audit:>9.2f} {t_report:>9.2f}  {flag}")


if __name__ == "__main__":
    main()
