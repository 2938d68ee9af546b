"""``loglinear report STUDY DIR`` / ``loglinear report all``: regenerate reports from their
stored records."""

from __future__ import annotations

NAME = "report"
HELP = ("Regenerate a study's report (markdown + figures) from stored records; "
        "'report all' rebuilds every committed report in place.")


def add_arguments(p) -> None:
    p.add_argument("study", help="study name (rates, approx, three-d, beyond_loglinear, "
                                 "llm_shift) or 'all'")
    p.add_argument("records", nargs="?", default=None,
                   help="directory holding the study's records (with 'all': the reports "
                        "folder, default reports)")
    p.add_argument("--out", default=None, help="report directory (default: the study's own)")


def run(args) -> int:
    from loglinear import report

    if args.study == "all":
        if args.out is not None:
            raise ValueError("'report all' rebuilds in place; --out is not allowed with it")
        report.build_all(args.records or "reports",
                         on_built=lambda study, path: print(f"{study}: {path}"))
        return 0
    if args.records is None:
        raise ValueError(f"'report {args.study}' needs the records directory")
    path = report.build(args.study, args.records, args.out)
    print(f"report written to {path}")
    return 0
