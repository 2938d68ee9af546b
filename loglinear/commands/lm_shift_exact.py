"""``loglinear lm-shift-exact --config FILE [--out DIR] [--jobs J] [--report]``: the paper's
preference-shift claim tested exactly in the emotion environment over real text
(docs/theory.md §10)."""

from __future__ import annotations

from pathlib import Path

from ._common import add_progress_argument, add_report_arguments, default_out

NAME = "lm-shift-exact"
HELP = ("Run (or resume) the exact preference-shift study in the emotion environment built "
        "from SmolLM2's completions: DPO, WDPO, KLDPO and the exact KL/W1/W2 optima over many "
        "seeds, evaluated exactly on held-out prompts; prints its estimated and measured time.")


def add_arguments(p) -> None:
    p.add_argument("--config", required=True,
                   help="study TOML (e.g. simulations/lm_shift_exact.toml)")
    p.add_argument("--out", default=None,
                   help="records directory, resumed if it exists (default: results/CONFIG, "
                        "CONFIG the config file's name without .toml)")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes (joblib)")
    add_progress_argument(p)
    add_report_arguments(p, default=False,
                         what="the report (as `loglinear report lm_shift_exact OUT`)")


def run(args) -> int:
    from loglinear.experiments.config import load_config
    from loglinear.experiments.lm_shift_exact import ExactShiftConfig, main

    if args.jobs < 1:
        raise ValueError(f"--jobs must be a positive number of worker processes, got "
                         f"{args.jobs}")
    config = load_config(ExactShiftConfig, args.config)
    out = args.out or default_out(Path(args.config).stem)
    path = main(config, out, jobs=args.jobs, progress=args.progress, log=print)
    print(f"records written to {path}")
    if args.report:
        from loglinear import report

        print(f"report written to {report.build('lm_shift_exact', path, Path(path).parent)}")
    return 0
