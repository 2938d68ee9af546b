"""``loglinear approx-study``: the paper's surrogates against the exact robust solutions."""

from __future__ import annotations

import time

NAME = "approx-study"
HELP = ("Compare WDPO/KLDPO (paper and official forms) with the exact KL/W1/W2 robust "
        "solutions over a grid of radii; write records and reports/approximations.md.")


def add_arguments(p) -> None:
    p.add_argument("--config", default="simulations/approx.toml", help="study TOML file")
    p.add_argument("--out", default=None, help="records directory (overrides the config)")
    p.add_argument("--no-report", action="store_true", help="write records only")


def run(args) -> int:
    from loglinear.experiments.approx import ApproxStudyConfig, main
    from loglinear.experiments.config import load_config
    from loglinear.report.approx import build

    t0 = time.perf_counter()
    records = main(load_config(ApproxStudyConfig, args.config), args.out)
    print(f"records: {records / 'records.csv'}")
    if not args.no_report:
        print(f"report:  {build(records)}")
    print(f"approx-study runtime: {time.perf_counter() - t0:.1f} s")
    return 0
