"""``loglinear three-d``: the 3D-properties study (exact DPO dynamics in a finite toy)."""

from __future__ import annotations

NAME = "three-d"
HELP = ("Train DPO, its remedies and robust variants on the 3D-properties toy; write records "
        "and reports/three_d.md.")


def add_arguments(p) -> None:
    p.add_argument("--config", default="simulations/three_d.toml", help="study config (TOML)")
    p.add_argument("--out", default="reports/three_d",
                   help="records directory (the report goes to its parent)")


def run(args) -> int:
    from loglinear.experiments.config import load_config
    from loglinear.experiments.three_d.config import ThreeDConfig
    from loglinear.experiments.three_d.run import main
    from loglinear.report.three_d import build

    config = load_config(ThreeDConfig, args.config)
    path = build(main(config, args.out))
    print(f"report written to {path}")
    return 0
