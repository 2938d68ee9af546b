"""``loglinear beyond STUDY --config FILE --out DIR``: the beyond-log-linear studies.

STUDY is one of ``tau`` (KLDPO temperature calibration, numpy), ``neural`` (MLP policies:
rates, Hessians, coverage; needs torch) and ``stability`` (gradient stability under a
preference shift; needs torch). Each run resumes from ``DIR`` and prints its runtime.
"""

from __future__ import annotations

NAME = "beyond"
HELP = ("Run (or resume) a beyond-log-linear study: tau (KLDPO temperature calibration), "
        "neural (MLP policies) or stability (gradient stability under preference shift).")

STUDIES = {
    "tau": "loglinear.experiments.beyond.tau",
    "neural": "loglinear.experiments.beyond.neural",
    "stability": "loglinear.experiments.beyond.stability",
}


def add_arguments(p) -> None:
    p.add_argument("study", choices=sorted(STUDIES), help="which study to run")
    p.add_argument("--config", required=True,
                   help="study TOML (simulations/beyond_{tau,neural,stability}.toml)")
    p.add_argument("--out", required=True, help="records directory (resumed if it exists)")
    p.add_argument("--report", default=None, metavar="RECORDS_ROOT",
                   help="afterwards rebuild the report from this root (holding tau/, neural/, "
                        "stability/), as `loglinear report beyond_loglinear RECORDS_ROOT`")


def run(args) -> int:
    import importlib

    module = importlib.import_module(STUDIES[args.study])
    path = module.main(args.config, args.out)
    print(f"records written to {path}")
    if args.report:
        from loglinear import report

        print(f"report written to {report.build('beyond_loglinear', args.report)}")
    return 0
