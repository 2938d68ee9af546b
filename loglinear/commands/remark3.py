"""``loglinear remark3 --config FILE [--out DIR] [--jobs J] [--report]``: the Remark 3
phase-diagram study (docs/theory.md §8)."""

from __future__ import annotations

from ._common import add_study_arguments, run_study

NAME = "remark3"
HELP = ("Run (or resume) the Remark 3 phase-diagram study: exponents against theta* and "
        "against each estimator's own target under radius schedules rho_n = c n^-a, and "
        "the certificate coverage they buy; prints its estimated and measured time.")


def add_arguments(p) -> None:
    add_study_arguments(p, example="simulations/remark3.toml", study="remark3")


def run(args) -> int:
    from loglinear.experiments.remark3 import Remark3Config, main

    return run_study(args, Remark3Config, main, "remark3")
