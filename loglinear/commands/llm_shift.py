"""``loglinear llm-shift --config FILE``: the preference-shift (emotion) study, resumable."""

from __future__ import annotations

from pathlib import Path

from ._common import add_report_arguments, command_line, resolve_out

NAME = "llm-shift"
HELP = ("Preference-shift study (the paper's emotion experiment, offline): DPO/WDPO/KLDPO on a "
        "causal LM, reward sweep over alpha. Resumable; rerun to continue.")

EXIT_INCOMPLETE = 75  # EX_TEMPFAIL: stopped by --max-minutes, rerun the same command


def add_arguments(p) -> None:
    p.add_argument("--config", required=True,
                   help="TOML file (e.g. simulations/llm_shift_cpu.toml)")
    p.add_argument("--out", default=None,
                   help="run directory (default: the config's 'out', else "
                        "results/llm_shift/CONFIG, CONFIG the file's name without .toml)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop (checkpointed) after this many minutes; exit code 75 means rerun")
    add_report_arguments(
        p, default=False,
        what="llm_shift.md when the study is complete: with --out, inside that directory "
             "from its records alone; otherwise beside the config's run directory, from the "
             "studies there")


def run(args) -> int:
    from loglinear.experiments.config import load_config
    from loglinear.experiments.llm_shift.config import ShiftConfig

    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ValueError(f"--max-minutes must be positive, got {args.max_minutes}")
    given_out = args.out
    out = resolve_out(args.out, args.config, ("out",), "llm_shift", Path(args.config).stem)
    config = load_config(ShiftConfig, args.config, out=out)  # before torch is imported
    from loglinear.experiments.llm_shift.run import StudyIncomplete, main

    seconds = None if args.max_minutes is None else 60.0 * args.max_minutes
    try:
        out = main(config, max_seconds=seconds)
    except StudyIncomplete:
        args.out = out  # the hint names the run directory, whatever chose it
        print(f"incomplete: rerun `{command_line(args, always=('config', 'out'))}` to resume")
        return EXIT_INCOMPLETE
    print(f"records written to {out}")
    if args.report:
        from loglinear.report.llm_shift import build

        if given_out is not None:  # this study alone, its report inside --out
            path = build(out, Path(out))
        else:  # every study beside this one (reports/llm_shift/{gpu,cpu_smollm2,cpu})
            path = build(Path(out).parent)
        print(f"report written to {path}")
    return 0
