"""``loglinear report STUDY DIR``: regenerate a study's report from its stored records."""

from __future__ import annotations

NAME = "report"
HELP = "Regenerate a study's report (markdown + figures) from stored records."


def add_arguments(p) -> None:
    p.add_argument("study", help="study name (rates, approx, three-d, ...)")
    p.add_argument("records", help="directory holding the study's records")
    p.add_argument("--out", default=None, help="report directory (default: the study's own)")


def run(args) -> int:
    from loglinear import report

    path = report.build(args.study, args.records, args.out)
    print(f"report written to {path}")
    return 0
