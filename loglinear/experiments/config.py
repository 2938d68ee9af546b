"""TOML -> frozen dataclass helpers shared by the study runners.

A study config is a frozen dataclass whose fields are documented and validated in
``__post_init__``; :func:`from_mapping` builds one from a parsed TOML table, refusing
unknown keys with a message that lists the allowed ones (a typo never passes silently).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

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
            return cls.from_dict(mapping)
        return from_mapping(cls, mapping, where=str(path))
    except (TypeError, ValueError) as exc:
        # name the file once, whichever builder raised
        msg = str(exc)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def from_mapping(cls, mapping: dict, *, where: str = "config"):
    """Build the frozen dataclass ``cls`` from ``mapping`` (unknown keys are errors)."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed keys are {sorted(names)}")
    return cls(**mapping)


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
    """Write the resolved config as JSON next to the results (before the run starts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(config), indent=2, sort_keys=True) + "\n")
    return path
