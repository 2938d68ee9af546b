"""``loglinear remark3 --config FILE [--out DIR] [--jobs J] [--report]``: the Remark 3
phase-diagram study (docs/theory.md §8)."""

from __future__ import annotations

from pathlib import Path

from ._common import add_progress_argument, add_report_arguments, default_out

NAME = "remark3"
HELP = ("Run (or resume) the Remark 3 phase-diagram study: exponents against theta* and "
        "against each estimator's own target under radius schedules rho_n = c n^-a, and "
        "the certificate coverage they buy; prints its estimated and measured time.")


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="study TOML (e.g. simulations/remark3.toml)")
    p.add_argument("--out", default=None,
                   help="records directory, resumed if it exists (default: results/CONFIG, "
                        "CONFIG the config file's name without .toml)")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes (joblib)")
    add_progress_argument(p)
    add_report_arguments(p, default=False,
                         what="the report (as `loglinear report remark3 OUT`)")


def run(args) -> int:
    from loglinear.experiments.config import load_config
    from loglinear.experiments.remark3 import Remark3Config, main

    if args.jobs < 1:
        raise ValueError(f"--jobs must be a positive number of worker processes, got "
                         f"{args.jobs}")
    config = load_config(Remark3Config, args.config)
    out = args.out or default_out(Path(args.config).stem)
    path = main(config, out, jobs=args.jobs, progress=args.progress, log=print)
    print(f"records written to {path}")
    if args.report:
        from loglinear import report

        print(f"report written to {report.build('remark3', path)}")
    return 0
