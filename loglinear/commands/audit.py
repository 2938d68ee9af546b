"""``loglinear audit``: audit a preference dataset and write a one-page report.

The pairs come from a file of feature differences (``--data FILE``, read by
:func:`loglinear.io.read_preferences`, with ``--features/--label/--weight/--offset`` naming
the columns), from prompt/chosen/rejected text (``--text FILE``, embedded by the shipped
all-MiniLM-L6-v2 or the local causal LM at ``--model PATH``, offline, on the CPU), or from
the shipped example (``--example``: its text, or ``--example features``). The report
(:mod:`loglinear.audit`): the coverage spectrum and the directions the data barely explore,
the DPO fit with sandwich standard errors, the collapse radii, a suggested KL radius and
KLDPO temperature, and the exact KL worst-case weight of every pair.
"""

from __future__ import annotations

from pathlib import Path

from ._common import add_progress_argument, command_line, default_out

NAME = "audit"
HELP = ("Audit preference data (feature differences, or prompt/chosen/rejected text to "
        "embed): coverage, DPO fit and errors, collapse radii, a suggested radius, and the "
        "pairs a KL-robust objective leans on most; writes a report.")

DATA_ONLY = ("features", "label", "offset")      # column flags of a --data file
TEXT_ONLY = ("prompt", "chosen", "rejected", "model", "dim")


def add_arguments(p) -> None:
    from loglinear.audit.example import EXAMPLES
    from loglinear.audit.text import DEFAULT_DIM
    from loglinear.io import add_data_arguments

    src = p.add_mutually_exclusive_group(required=True)
    add_data_arguments(p, group=src)
    src.add_argument("--text", metavar="FILE",
                     help="prompt/chosen/rejected text, one pair per row: CSV (.csv, .tsv), "
                          "parquet (.parquet) or JSON lines (.jsonl)")
    src.add_argument("--example", nargs="?", const="text", choices=sorted(EXAMPLES),
                     help="the shipped example: its text (default) or its feature "
                          "differences (--example features)")
    text = p.add_argument_group("text input (--text, --example)")
    text.add_argument("--prompt", metavar="COLUMN", default=None,
                      help="prompt column (default: prompt, or no prompt if there is none)")
    text.add_argument("--chosen", metavar="COLUMN", default=None,
                      help="preferred-response column (default: chosen)")
    text.add_argument("--rejected", metavar="COLUMN", default=None,
                      help="other-response column (default: rejected)")
    text.add_argument("--model", metavar="PATH", default=None,
                      help="a local Hugging Face causal LM directory to embed with (mean-"
                           "pooled last hidden state; default: the shipped all-MiniLM-L6-v2)")
    text.add_argument("--dim", type=int, default=None,
                      help=f"principal directions of the embedding differences to keep "
                           f"(default: {DEFAULT_DIM}; 0 keeps all, which with fewer pairs "
                           "than dimensions makes the data separable)")
    p.add_argument("--beta", type=float, default=1.0, help="DPO temperature")
    p.add_argument("--radius", type=float, default=None,
                   help="KL radius of the listed worst case (default: the suggested radius "
                        "rho(tau))")
    p.add_argument("--bound", type=float, default=None,
                   help="fit on the ball ||theta|| <= B (default: none; on separable data "
                        "the ball where no margin exceeds 10)")
    p.add_argument("--min-ess", type=float, default=0.9,
                   help="effective sample fraction of the temperature rule")
    p.add_argument("--top", type=int, default=10, help="pairs to list")
    p.add_argument("--out", default=default_out("audit"),
                   help="output directory (git-ignored under results/)")
    add_progress_argument(p, help="a progress bar while embedding text")


def _given(args, names) -> list[str]:
    return [f"--{n}" for n in names if getattr(args, n) is not None]


def _options(args) -> dict:
    return dict(beta=args.beta, radius=args.radius, bound=args.bound, min_ess=args.min_ess)


def _report(args):
    """(report, description of the input) for the source the arguments name."""
    from loglinear.audit import audit, audit_text, example_path, read_text_pairs
    from loglinear.audit.text import DEFAULT_DIM
    from loglinear.io import data_from_args

    if args.data is not None:
        wrong = _given(args, TEXT_ONLY)
        if wrong:
            raise ValueError(f"{', '.join(wrong)} apply to text input (--text, --example), "
                             "not to --data")
        data = data_from_args(args)
        return audit(data, source=Path(args.data).name, **_options(args))
    wrong = _given(args, DATA_ONLY + (("weight",) if args.example else ()))
    if wrong:
        raise ValueError(f"{', '.join(wrong)} name columns of a --data file (--text takes "
                         "--prompt, --chosen, --rejected and --weight)")
    if args.example == "features":
        wrong = _given(args, TEXT_ONLY)
        if wrong:
            raise ValueError(f"{', '.join(wrong)} apply to text input, not to --example "
                             "features (feature differences)")
        from loglinear.io import read_preferences

        path = example_path("features")
        return audit(read_preferences(path), source=f"example {path.name}", **_options(args))
    path = example_path("text") if args.example else Path(args.text)
    pairs = read_text_pairs(path, prompt=args.prompt, chosen=args.chosen or "chosen",
                            rejected=args.rejected or "rejected", weight=args.weight)
    dim = DEFAULT_DIM if args.dim is None else args.dim
    source = f"example {path.name}" if args.example else path.name
    return audit_text(pairs, model=args.model, dim=dim, progress=args.progress, source=source,
                      **_options(args))


def _summary_lines(r) -> list[str]:
    c, f = r.coverage, r.fit
    lines = [f"# audit of {r.source}: {r.n} pairs, {r.d} features, beta={r.beta:g}",
             f"coverage: lambda_min {c.lambda_min:.4g}, lambda_max {c.lambda_max:.4g}, "
             f"effective dimension {c.effective_dimension:.3g} of {r.d}",
             f"DPO fit: mean loss {f.objective:.4g}, {f.accuracy:.1%} ranked as labelled"
             + (f"; SEPARABLE, fitted on ||theta|| <= {f.bound:.4g}" if f.separable else "")
             + ("" if f.se is not None else "; no standard errors")]
    k = r.collapse
    if k.note is None:
        lines.append(f"collapse radii: rho_0 (KL) {k.kl:.4g}, eps_0 W1 {k.w1:.4g}, "
                     f"W2 {k.w2:.4g}")
    s = r.suggestion
    if s is not None:
        lines.append(f"suggested: KLDPO tau {s.tau:.4g}, KL radius rho(tau) "
                     f"{s.implied_radius:.4g} (worst case moves "
                     f"{s.shift.total_variation:.1%} of the weight)")
    wc = r.worst_case
    if wc is not None:
        top = ", ".join(f"{i} ({wc.ratio[i]:.3g}x)" for i in wc.top(5))
        lines.append(f"worst case at rho {wc.radius:.4g}: leans most on pairs {top}")
    return lines + [f"note: {n}" for n in r.notes]


def run(args) -> int:
    from loglinear.audit import write_report
    from loglinear.audit.core import check_options

    # checked before anything is read or embedded
    check_options(**_options(args))
    if args.top < 0:
        raise ValueError(f"--top must be >= 0, got {args.top}")
    if args.dim is not None and args.dim < 0:
        raise ValueError(f"--dim must be >= 0 (0 keeps every embedding dimension), got "
                         f"{args.dim}")
    report = _report(args)
    path = write_report(report, args.out, top=args.top, command=command_line(args))
    print("\n".join(_summary_lines(report)))
    print(f"wrote {path} (figures in {path.parent / 'figures'}, numbers in "
          f"{path.parent / 'audit.json'}, every pair in {path.parent / 'pairs.csv'})")
    return 0
