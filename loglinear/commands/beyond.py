"""``loglinear beyond STUDY --config FILE --out DIR``: the beyond-log-linear studies.

STUDY is one of ``tau`` (KLDPO temperature calibration, numpy), ``neural`` (MLP policies:
rates, Hessians, coverage; needs torch) and ``stability`` (gradient stability under a
preference shift; needs torch). Each run resumes from ``DIR`` and prints its runtime.
"""

from __future__ import annotations

NAME = "beyond"
HELP = ("Run (or resume) a beyond-log-linear study: tau (KLDPO temperature calibration), "
        "neural (MLP policies) or stability (gradient stability under preference shift).")

STUDIES = ("neural", "stability", "tau")


def studies():
    """The studies as a registry ``name -> (config class, main)`` (imported on use: the
    study modules import torch only inside their functions, but the CLI starts faster)."""
    from loglinear.experiments.beyond import neural, stability, tau
    from loglinear.registry import Registry

    return Registry("beyond study", {"neural": (neural.NeuralConfig, neural.main),
                                     "stability": (stability.StabilityConfig, stability.main),
                                     "tau": (tau.TauConfig, tau.main)})


def add_arguments(p) -> None:
    p.add_argument("study", choices=STUDIES, help="which study to run")
    p.add_argument("--config", required=True,
                   help="study TOML (simulations/beyond_{tau,neural,stability}.toml)")
    p.add_argument("--out", required=True, help="records directory (resumed if it exists)")
    p.add_argument("--report", default=None, metavar="RECORDS_ROOT",
                   help="afterwards rebuild the report from this root (holding tau/, neural/, "
                        "stability/), as `loglinear report beyond_loglinear RECORDS_ROOT`")


def run(args) -> int:
    from loglinear.experiments.config import load_config

    config_cls, main = studies().get(args.study)
    path = main(load_config(config_cls, args.config), args.out)
    print(f"records written to {path}")
    if args.report:
        from loglinear import report

        print(f"report written to {report.build('beyond_loglinear', args.report)}")
    return 0
