"""``loglinear llm-train --config FILE``: train a causal LM with DPO/IPO/WDPO/KLDPO.

Re-running the same command resumes from the last checkpoint in the output directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_progress_argument, config_value, resolve_out

NAME = "llm-train"
HELP = "Train a causal LM on preference pairs (DPO, IPO, WDPO, KLDPO); resumes if interrupted."


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="TOML file parsed into TrainConfig")
    p.add_argument("--out", default=None,
                   help="output directory: config, metrics, checkpoints (default: the "
                        "config's out_dir, else results/llm_train/CONFIG, CONFIG the file's "
                        "name without .toml)")
    p.add_argument("--out-dir", dest="out", help=argparse.SUPPRESS)  # the old spelling
    p.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: config)")
    add_progress_argument(p, default=None, help="a tqdm progress bar")


def run(args) -> int:
    from loglinear.experiments.config import load_config

    try:
        from loglinear.torch.loop import TrainConfig, train
    except ImportError as exc:  # torch missing
        raise ImportError(f"llm-train needs the torch extra: pip install 'loglinear[torch]' "
                          f"({exc})") from exc
    # out_dir sits in the [train] table or at the top level
    table = isinstance(config_value(args.config, "train"), dict)
    keys = ("train", "out_dir") if table else ("out_dir",)
    out = resolve_out(args.out, args.config, keys, "llm_train", Path(args.config).stem)
    cfg = load_config(TrainConfig, args.config, out_dir=out, max_steps=args.max_steps,
                      threads=args.threads, progress=args.progress)
    from loglinear.experiments.records import run_metadata

    out = train(cfg, provenance=run_metadata())
    print(f"wrote {out / 'metrics.jsonl'} and {out / 'checkpoint'}")
    return 0

