"""TOML -> frozen dataclass helpers shared by the study runners.

A study config is a frozen dataclass whose fields are documented and validated in
``__post_init__``; :func:`from_mapping` builds one from a parsed TOML table, refusing
unknown keys with a message that lists the allowed ones (a typo never passes silently).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import sys
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np

from .records import run_metadata

PROVENANCE_KEY = "provenance"  # the key of run_metadata() in a written config.json

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def load_toml(path) -> dict:
    """Parse a TOML file; a clear error names the file on a syntax error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from None


def load_config(cls, path, **overrides):
    """The one way a study reads its TOML file into its frozen config dataclass ``cls``.

    ``overrides`` (command-line options; ``None`` values are ignored) replace top-level
    keys. ``cls.from_dict(mapping)`` builds nested configs where the class defines it;
    otherwise :func:`from_mapping` does.
    """
    mapping = dict(load_toml(path)) | {k: v for k, v in overrides.items() if v is not None}
    try:
        if hasattr(cls, "from_dict"):
            # a class's own builder may not check types: check what it built
            return check_config(cls.from_dict(mapping))
        return from_mapping(cls, mapping, where=str(path))
    except (TypeError, ValueError) as exc:
        # name the file once, whichever builder raised
        msg = str(exc)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def from_mapping(cls, mapping: dict, *, where: str = "config"):
    """Build the frozen dataclass ``cls`` from ``mapping``.

    Unknown and missing keys are errors that list the allowed ones, and every value is
    checked against its field's annotation (:func:`check_value`): an ``int`` field takes
    an integer only (``1.5`` is refused, never truncated), a ``float`` field any number, a
    ``tuple[int, ...]`` field a list of integers.
    """
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in fields}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed keys are {sorted(names)}")
    required = [f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in mapping]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}; required keys are {required}")
    hints = _type_hints(cls)
    for key, value in mapping.items():
        problem = check_value(value, hints.get(key))
        if problem:
            raise ValueError(f"{where}: {key} = {_shown(value)}: {problem}")
    try:
        return cls(**mapping)
    except TypeError:
        # a bare ``tuple`` field given one value, which the class then fails to iterate
        for key, value in mapping.items():
            if hints.get(key) in (tuple, list) and not isinstance(value, (list, tuple)):
                raise ValueError(f"{where}: {key} = {_shown(value)}: must be a list") from None
        raise


def check_config(config, *, where: str = ""):
    """Check every field of a built config (nested configs too) against its annotation
    with :func:`check_value`; returns ``config``. For configs whose ``from_dict`` builds
    the dataclasses itself."""
    hints = _type_hints(type(config))
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            check_config(value, where=f"{name}.")
            continue
        if isinstance(value, tuple) and value and all(map(dataclasses.is_dataclass, value)):
            for i, item in enumerate(value):
                check_config(item, where=f"{name}[{i}].")
            continue
        problem = check_value(value, hints.get(f.name))
        if problem:
            raise ValueError(f"{name} = {_shown(value)}: {problem}")
    return config


def _shown(value) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


def _type_hints(cls) -> dict:
    """The fields' annotations, resolved; a field whose annotation does not resolve (a
    name local to a function) is left out, and so left unchecked."""
    try:
        return typing.get_type_hints(cls)
    except Exception:
        pass
    namespace = dict(vars(sys.modules[cls.__module__])) if cls.__module__ in sys.modules \
        else {}
    hints = {}
    for f in dataclasses.fields(cls):
        try:
            hints[f.name] = eval(f.type, namespace) if isinstance(f.type, str) else f.type
        except Exception:
            continue
    return hints


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_value(value, hint) -> str | None:
    """What is wrong with ``value`` for a field annotated ``hint`` (``None`` if nothing).

    Checked: ``int`` (an integer, not a bool), ``float`` (a number), ``bool``, ``str``,
    ``X | None``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]`` (a list of such values)
    and ``Literal``; any other annotation (a bare ``tuple``, a nested config class) is left
    to the class's own validation.
    """
    if hint is None or hint is typing.Any:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _KINDS:
        ok = {int: lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
              float: lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
              bool: lambda v: isinstance(v, (bool, np.bool_)),
              str: lambda v: isinstance(v, str)}[hint](value)
        return None if ok else f"must be {_KINDS[hint]}" + (
            " (a fractional value is not truncated)" if hint is int
            and isinstance(value, numbers.Real) else "")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [check_value(value, a) for a in args if a is not type(None)]
        if any(p is None for p in problems):
            return None
        return problems[0] + (" (or left out)" if type(None) in args else "")
    if origin is typing.Literal:
        return None if value in args else f"must be one of {list(args)}"
    if origin in (tuple, list):  # a bare ``tuple`` is left to the class (it may convert)
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"must be a list of {len(args)} values"
            items = zip(value, args)
        else:
            items = ((v, args[0] if args else None) for v in value)
        for i, (item, arg) in enumerate(items):
            problem = check_value(item, arg)
            if problem:
                return f"item {i} ({item!r}) {problem}"
    return None


def to_jsonable(obj: Any):
    """A dataclass (nested, with tuples/mappings) as plain JSON-able Python."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "item"):
        return obj.item()
    return obj


def write_resolved(config, path) -> Path:
    """Write the resolved config as JSON next to the results (before the run starts), with
    what produced the run under the key ``"provenance"``
    (:func:`~loglinear.experiments.records.run_metadata`: package versions, git commit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    resolved = to_jsonable(config) | {PROVENANCE_KEY: run_metadata()}
    path.write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    return path


def start_study(config, cls, out, *, jobs, check_resume) -> tuple[Path, str, float]:
    """The opening of a study's ``main``: check the config's type and ``jobs``, create
    ``out``, refuse a directory of another design (``check_resume(config, out)``) and write
    ``out/config.json``. Returns ``(out, started, t_start)``: the directory, the UTC start
    time (ISO) and the ``time.perf_counter()`` reading at the start."""
    import time
    from datetime import datetime, timezone

    if not isinstance(config, cls):
        raise TypeError(f"main takes a {cls.__name__}, got {type(config).__name__}; read a "
                        f"TOML file with loglinear.experiments.config.load_config("
                        f"{cls.__name__}, path)")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive number of worker processes, got {jobs}")
    t_start, started = time.perf_counter(), datetime.now(timezone.utc).isoformat()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_resume(config, out)
    write_resolved(config, out / "config.json")
    return out, started, t_start
