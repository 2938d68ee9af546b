"""``loglinear approx-study``: the paper's surrogates against the exact robust solutions."""

from __future__ import annotations

import time

from ._common import add_progress_argument, add_report_arguments, resolve_out

NAME = "approx-study"
HELP = ("Compare WDPO/KLDPO (paper and official forms) with the exact KL/W1/W2 robust "
        "solutions over a grid of radii; write records and an approximations.md report.")


def add_arguments(p) -> None:
    p.add_argument("--config", default="simulations/approx.toml", help="study TOML file")
    p.add_argument("--out", default=None,
                   help="records directory (default: the config's [study] out, else "
                        "results/approx); the report goes beside it")
    add_report_arguments(p, default=True, what="approximations.md beside the records")
    add_progress_argument(p, help="a progress bar over the environments, with count and ETA")


def run(args) -> int:
    from loglinear.experiments.approx import ApproxStudyConfig, main
    from loglinear.experiments.config import load_config
    from loglinear.report.approx import build

    t0 = time.perf_counter()
    config = load_config(ApproxStudyConfig, args.config)
    out = resolve_out(args.out, args.config, ("study", "out"), "approx")
    envs = len(config.concentrations) * config.replicates * len(config.n_samples)
    print(f"approx-study: {envs} environments x {len(config.divergences)} divergences x "
          f"{len(config.fractions)} radii; records in {out}", flush=True)
    records = main(config, out, progress=args.progress)
    print(f"records: {records / 'records.csv'}")
    if args.report:
        print(f"report:  {build(records)}")
    print(f"approx-study runtime: {time.perf_counter() - t0:.1f} s")
    return 0
