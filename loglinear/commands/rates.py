"""``loglinear rates --config FILE [--out DIR]``: the estimation-rate and coverage study."""

from __future__ import annotations

from pathlib import Path

from ._common import add_progress_argument, add_report_arguments, default_out

NAME = "rates"
HELP = ("Run (or resume) the estimation-rate study: error of DPO and the robust estimators "
        "against n, seeds, radius schedules and coverage levels; records written as they finish.")


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="study TOML (e.g. simulations/rates.toml)")
    p.add_argument("--out", default=None,
                   help="records directory, resumed if it exists (default: results/CONFIG, "
                        "CONFIG the config file's name without .toml)")
    p.add_argument("--jobs", type=int, default=1,
                   help="local worker processes (joblib); -1 uses every core")
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address tcp://HOST:PORT (runs there instead of locally)")
    add_progress_argument(p)
    p.add_argument("--retry-failed", action="store_true",
                   help="recompute the targets and rows whose status records a failure")
    add_report_arguments(p, default=False,
                         what="the report (as `loglinear report rates OUT`)")


def run(args) -> int:
    from loglinear.experiments.config import load_config
    from loglinear.experiments.rates import RatesConfig, main

    if args.jobs == 0 or args.jobs < -1:
        raise ValueError(f"--jobs must be a positive count or -1, got {args.jobs}")
    config = load_config(RatesConfig, args.config)
    out = args.out or default_out(Path(args.config).stem)
    path = main(config, out, jobs=args.jobs, scheduler=args.scheduler,
                progress=args.progress, retry_failed=args.retry_failed)
    print(f"records written to {path}")
    if args.report:
        from loglinear import report

        print(f"report written to {report.build('rates', path)}")
    return 0
