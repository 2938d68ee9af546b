"""Pieces the subcommands share: where outputs go by default, the ``--report`` and
``--progress`` flags, and the command line that reproduces a run."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

RESULTS = "results"  # the default home of every command's outputs (git-ignored)


def default_out(*parts: str) -> str:
    """``results/PART/...``: where a command writes when neither ``--out`` nor its config
    names a directory."""
    return str(Path(RESULTS, *parts))


def config_value(path, *keys: str):
    """The value at ``keys`` (tables, then a key) in the TOML file ``path``; ``None`` when
    the file does not set it (the file's errors are left to the config loader)."""
    from loglinear.experiments.config import load_toml

    try:
        node = load_toml(path)
    except (OSError, ValueError):
        return None
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def resolve_out(given, config_path, keys: tuple[str, ...], *default_parts: str) -> str:
    """The output directory: ``--out`` if given, else the one the config file sets at
    ``keys``, else ``results/DEFAULT_PARTS``."""
    if given is not None:
        return str(given)
    from_config = config_value(config_path, *keys)
    return str(from_config) if from_config is not None else default_out(*default_parts)


def add_progress_argument(parser, *, default: bool | None = True, help: str = "progress bars"
                          ) -> None:
    """``--progress/--no-progress``."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=default,
                        help=f"show {help}" + ("" if default is not None
                                               else " (default: as the config says)"))


class _ReportFlag(argparse.Action):
    """``--report/--no-report``; the old spelling ``--report ROOT`` still sets the report
    root (``--report-root ROOT``), with a note on stderr."""

    hide_value = True  # the help formatter prints "--report, --no-report" without [ROOT]

    def __init__(self, option_strings, dest, *, root_dest, default=False, help=None):
        super().__init__([*option_strings, "--no-report"], dest, nargs="?", default=default,
                         help=help)
        self.root_dest = root_dest

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string == "--no-report":
            if values is not None:
                parser.error(f"--no-report takes no value, got {values!r}")
            setattr(namespace, self.dest, False)
            return
        setattr(namespace, self.dest, True)
        if values is not None:
            print(f"note: `--report {values}` is deprecated; use `--report --report-root "
                  f"{values}`", file=sys.stderr)
            setattr(namespace, self.root_dest, values)


def add_report_arguments(parser, *, default: bool, what: str, root_help: str | None = None
                         ) -> None:
    """``--report/--no-report`` (build ``what`` afterwards), and ``--report-root ROOT`` when
    the report reads a root of several studies (``root_help`` says which)."""
    if root_help is None:
        parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=default,
                            help=f"afterwards build {what}")
        return
    parser.add_argument("--report", action=_ReportFlag, root_dest="report_root",
                        default=default, help=f"afterwards build {what} (default: "
                                              f"{'on' if default else 'off'})")
    parser.add_argument("--report-root", metavar="ROOT", default=None, help=root_help)


def command_line(args, *, always: tuple[str, ...] = ("out",)) -> str:
    """The ``loglinear`` command that reproduces ``args``: its positionals, every option
    that differs from its default, and the options named in ``always``."""
    parser = args._parser
    words = ["loglinear", args.command]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or action.dest in ("help", "version"):
            continue
        value = getattr(args, action.dest, None)
        if not action.option_strings:
            if value is not None:
                words += [str(v) for v in (value if isinstance(value, list) else [value])]
            continue
        if value is None or (value == action.default and action.dest not in always):
            continue
        flag = next((o for o in action.option_strings if o.startswith("--")),
                    action.option_strings[0])
        if isinstance(action, (argparse.BooleanOptionalAction, _ReportFlag)):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif action.nargs == 0:
            words.append(flag)
        elif isinstance(value, list):
            for v in value:
                words += [flag, str(v)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def add_study_arguments(parser, *, example: str, study: str) -> None:
    """``--config`` (required), ``--out``, ``--jobs``, ``--progress`` and ``--report`` of a
    study command whose records directory the report reads (``loglinear report STUDY OUT``)."""
    parser.add_argument("--config", required=True, help=f"study TOML (e.g. {example})")
    parser.add_argument("--out", default=None,
                        help="records directory, resumed if it exists (default: "
                             "results/CONFIG, CONFIG the config file's name without .toml)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="local worker processes (joblib)")
    add_progress_argument(parser)
    add_report_arguments(parser, default=False,
                         what=f"the report (as `loglinear report {study} OUT`)")


def run_study(args, config_cls, main, study: str) -> int:
    """Load ``--config`` as ``config_cls``, run ``main(config, out, jobs=, progress=,
    log=print)``, and build the report with ``--report``."""
    from loglinear.experiments.config import load_config

    if args.jobs < 1:
        raise ValueError(f"--jobs must be a positive number of worker processes, got "
                         f"{args.jobs}")
    config = load_config(config_cls, args.config)
    out = args.out or default_out(Path(args.config).stem)
    path = main(config, out, jobs=args.jobs, progress=args.progress, log=print)
    print(f"records written to {path}")
    if args.report:
        from loglinear import report

        print(f"report written to {report.build(study, path)}")
    return 0
