"""``loglinear three-d``: the 3D-properties study (exact DPO dynamics in a finite toy)."""

from __future__ import annotations

from ._common import add_report_arguments, default_out

NAME = "three-d"
HELP = ("Train DPO, its remedies and robust variants on the 3D-properties toy; write records "
        "and a three_d.md report.")


def add_arguments(p) -> None:
    p.add_argument("--config", default="simulations/three_d.toml", help="study config (TOML)")
    p.add_argument("--out", default=default_out("three_d"),
                   help="records directory (the report goes to its parent)")
    add_report_arguments(p, default=True, what="three_d.md in the parent of --out")


def run(args) -> int:
    from loglinear.experiments.config import load_config
    from loglinear.experiments.three_d.config import ThreeDConfig
    from loglinear.experiments.three_d.run import main
    from loglinear.report.three_d import build

    config = load_config(ThreeDConfig, args.config)
    records = main(config, args.out)
    print(f"records written to {records}")
    if args.report:
        print(f"report written to {build(records)}")
    return 0
