"""The one command-line entry point: ``loglinear <subcommand> ...``.

Each subcommand is a module in ``loglinear/commands/`` that defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; modules are discovered, so adding a
subcommand never edits this file.

A user's mistake (a bad option, a file that is missing or malformed, a config value that is
not allowed, data a solver refuses) prints one line, ``loglinear CMD: error: ...``, and exits
with code 2. Any other exception is a fault of the program: it prints one line naming the
exception and exits with code 1. ``LOGLINEAR_DEBUG=1`` shows the traceback of either.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import __version__, commands

DEBUG_VARIABLE = "LOGLINEAR_DEBUG"
EXIT_USAGE = 2     # a user's mistake (argparse's own code for bad options)
EXIT_INTERNAL = 1  # a fault of the program


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that report a user's mistake (one line, exit code 2): bad values and
    configs, missing files, unknown names, a missing optional dependency, and the
    project's own solver failures (data a solver cannot handle)."""
    from .fit import FitError
    from .robust import RobustSolverError

    return (ValueError, KeyError, OSError, ImportError, FitError, RobustSolverError)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None or off) or the help
    text already states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)

    # an action with ``hide_value`` (a deprecated optional value) shows as a plain flag
    def _format_args(self, action, default_metavar):
        if getattr(action, "hide_value", False):
            return ""
        return super()._format_args(action, default_metavar)

    def _format_action_invocation(self, action):
        if getattr(action, "hide_value", False):
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``PROG: error: MESSAGE``."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _load_commands():
    mods = []
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{commands.__name__}.{info.name}"))
    return mods


EPILOG = (f"Errors print one line and exit with code 2 (a user's mistake) or 1 (a fault of "
          f"the program); set {DEBUG_VARIABLE}=1 to see the full traceback.")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="loglinear",
        description="Distributionally robust DPO on log-linear policies and language models.",
        epilog=EPILOG, formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"loglinear {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in _load_commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP, epilog=EPILOG,
                           formatter_class=_HelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _parser=p)
    return parser


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and type(exc).__str__ is KeyError.__str__:
        text = f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run ``loglinear ARGV``; returns the exit code (0 on success, 2 on a user's mistake,
    1 on a fault of the program)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and option errors (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    debug = os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"loglinear {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, user_errors()):
            print(f"loglinear {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"loglinear {args.command}: internal error ({type(exc).__name__}): "
              f"{_one_line(exc)}; rerun with {DEBUG_VARIABLE}=1 for the traceback",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
