"""``loglinear lm-shift-exact --config FILE [--out DIR] [--jobs J] [--report]``: the paper's
preference-shift claim tested exactly in the emotion environment over real text
(docs/theory.md §10)."""

from __future__ import annotations

from ._common import add_study_arguments, run_study

NAME = "lm-shift-exact"
HELP = ("Run (or resume) the exact preference-shift study in the emotion environment built "
        "from SmolLM2's completions: DPO, WDPO, KLDPO and the exact KL/W1/W2 optima over many "
        "seeds, evaluated exactly on held-out prompts; prints its estimated and measured time.")


def add_arguments(p) -> None:
    add_study_arguments(p, example="simulations/lm_shift_exact.toml", study="lm_shift_exact")


def run(args) -> int:
    from loglinear.experiments.lm_shift_exact import ExactShiftConfig, main

    return run_study(args, ExactShiftConfig, main, "lm_shift_exact")
