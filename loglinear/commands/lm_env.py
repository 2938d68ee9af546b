"""``loglinear lm-env build``: the emotion environment from a real language model's text;
``loglinear lm-env info``: what a built artifact holds."""

from __future__ import annotations

from ._common import default_out

NAME = "lm-env"
HELP = ("Build (resumable, offline, CPU) or describe the finite emotion environment: K "
        "SmolLM2 completions per story opening, their reference log-probs, MiniLM and "
        "hidden-state features, emotion-probe rewards.")


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="{build,info}")
    b = sub.add_parser("build", help="generate, score and store the artifact (resumable)")
    b.add_argument("--out", default=default_out("lm_env", "emotion.npz"),
                   help="the artifact's .npz (its manifest goes beside it as .json; "
                        "default: %(default)s; the committed one is "
                        "loglinear/resources/lm_env/emotion.npz)")
    b.add_argument("--work", default=None,
                   help="directory of finished chunks (default: OUT's name + .work)")
    b.add_argument("--model", default="smollm2-135m",
                   help="reference model: a known name or a local Hugging Face directory")
    b.add_argument("--candidates", type=int, default=8, help="K completions per prompt")
    b.add_argument("--max-new-tokens", type=int, default=16)
    b.add_argument("--train-prompts", type=int, default=None,
                   help="use the first N of the 500 training prompts (default: all)")
    b.add_argument("--heldout-prompts", type=int, default=None,
                   help="use the first N of the 120 held-out prompts (default: all)")
    b.add_argument("--seed", type=int, default=20261203)
    b.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a busy machine more threads wait on "
                        "each other)")
    b.add_argument("--no-hidden", action="store_true",
                   help="skip the reference model's mean-pooled hidden-state features")
    i = sub.add_parser("info", help="print what an artifact holds and verify its hash")
    i.add_argument("path", nargs="?", default=None,
                   help="an artifact .npz (default: the committed emotion environment)")


def run(args) -> int:
    if args.action == "info":
        return _info(args.path)
    from loglinear.experiments.lm_env.build import BuildConfig, build

    config = BuildConfig(model=args.model, candidates=args.candidates,
                         max_new_tokens=args.max_new_tokens, train_prompts=args.train_prompts,
                         heldout_prompts=args.heldout_prompts, seed=args.seed,
                         hidden_features=not args.no_hidden)
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    build(config, args.out, work=args.work, threads=args.threads)
    return 0


def _info(path) -> int:
    from loglinear.envs import load_artifact

    arrays, manifest = load_artifact(path)
    split = arrays["split"]
    print(f"hash {manifest['sha256'][:16]}... verified; version {manifest['version']}")
    print(f"prompts: {int((split == 0).sum())} train, {int((split == 1).sum())} held out; "
          f"{arrays['logp'].shape[1]} candidates each")
    for name in ("minilm", "hidden"):
        if name in arrays:
            print(f"features {name}: {arrays[name].shape[-1]}-d")
    print(f"reward classes: {', '.join(arrays['classes'])}")
    print(f"build settings: {manifest['config']}")
    return 0
