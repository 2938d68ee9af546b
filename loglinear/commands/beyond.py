"""``loglinear beyond STUDY [--config FILE] [--out DIR]``: the beyond-log-linear studies.

STUDY is one of ``tau`` (KLDPO temperature calibration, numpy), ``neural`` (MLP policies:
rates, Hessians, coverage; needs torch) and ``stability`` (gradient stability under a
preference shift; needs torch). Each run resumes from ``DIR`` (default
``results/beyond_loglinear/STUDY``) and prints its runtime.
"""

from __future__ import annotations

from pathlib import Path

from ._common import add_report_arguments, default_out

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
    p.add_argument("--config", default=None,
                   help="study TOML (default: simulations/beyond_STUDY.toml)")
    p.add_argument("--out", default=None,
                   help="records directory, resumed if it exists (default: "
                        "results/beyond_loglinear/STUDY)")
    add_report_arguments(
        p, default=False, what="the beyond-log-linear report from the report root",
        root_help="the folder holding tau/, neural/ and stability/ for the report "
                  "(default: the parent of --out)")


def run(args) -> int:
    from loglinear.experiments.config import load_config

    config_cls, main = studies().get(args.study)
    config_path = args.config or f"simulations/beyond_{args.study}.toml"
    out = args.out or default_out("beyond_loglinear", args.study)
    path = main(load_config(config_cls, config_path), out)
    print(f"records written to {path}")
    if args.report:
        from loglinear import report

        root = args.report_root or Path(path).parent
        print(f"report written to {report.build('beyond_loglinear', root)}")
    return 0
