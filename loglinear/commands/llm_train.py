"""``loglinear llm-train --config FILE``: train a causal LM with DPO/IPO/WDPO/KLDPO.

Re-running the same command resumes from the last checkpoint in the config's out_dir.
"""

from __future__ import annotations

NAME = "llm-train"
HELP = "Train a causal LM on preference pairs (DPO, IPO, WDPO, KLDPO); resumes if interrupted."


def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="TOML file parsed into TrainConfig")
    p.add_argument("--out-dir", default=None, help="override the config's out_dir")
    p.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: config)")
    p.add_argument("--progress", action="store_true", help="show a tqdm progress bar")


def run(args) -> int:
    from loglinear.experiments.config import load_config

    try:
        from loglinear.torch.loop import TrainConfig, train
    except ImportError as exc:  # torch missing
        raise SystemExit(f"llm-train needs the torch extra: pip install 'loglinear[torch]' "
                         f"({exc})") from exc
    cfg = load_config(TrainConfig, args.config, out_dir=args.out_dir, max_steps=args.max_steps,
                      threads=args.threads, progress=True if args.progress else None)
    out = train(cfg)
    print(f"wrote {out / 'metrics.jsonl'} and {out / 'checkpoint'}")
    return 0
