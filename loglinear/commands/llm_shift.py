"""``loglinear llm-shift --config FILE``: the preference-shift (emotion) study, resumable."""

from __future__ import annotations

NAME = "llm-shift"
HELP = ("Preference-shift study (the paper's emotion experiment, offline): DPO/WDPO/KLDPO on a "
        "causal LM, reward sweep over alpha. Resumable; rerun to continue.")

EXIT_INCOMPLETE = 75  # EX_TEMPFAIL: stopped by --max-minutes, rerun the same command


def add_arguments(p) -> None:
    p.add_argument("--config", required=True,
                   help="TOML file (e.g. simulations/llm_shift_cpu.toml)")
    p.add_argument("--out", default=None, help="run directory (overrides the config's 'out')")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (checkpointed) after this many minutes; exit code 75 means rerun")
    p.add_argument("--report", action="store_true",
                   help="when the study is complete, rebuild the report from its records and "
                        "those of the studies beside it")


def run(args) -> int:
    from loglinear.experiments.config import load_config
    from loglinear.experiments.llm_shift.config import ShiftConfig
    from loglinear.experiments.llm_shift.run import StudyIncomplete, main

    config = load_config(ShiftConfig, args.config, out=args.out)
    seconds = None if args.max_minutes is None else 60.0 * args.max_minutes
    try:
        out = main(config, max_seconds=seconds)
    except StudyIncomplete:
        print(f"incomplete: rerun `loglinear llm-shift --config {args.config}` to resume")
        return EXIT_INCOMPLETE
    if args.report:
        from loglinear.report.llm_shift import build

        # every study beside this one (e.g. reports/llm_shift/{gpu,cpu_smollm2,cpu}) goes
        # into the one report
        print(f"report written to {build(out.parent)}")
    return 0
