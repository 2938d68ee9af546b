"""The stored environment artifacts: content hash, manifest, verified loading
(docs/theory.md §10.1).

An artifact is one ``.npz`` of named arrays beside a JSON manifest (same name, ``.json``)
that records the build settings and the SHA-256 of the arrays' content: every array's name,
dtype, shape and bytes, in name order. The hash is of the content rather than of the file
(a zip records write times), so a rebuild with equal arrays has the same hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

ARTIFACT_VERSION = 1


def content_hash(arrays: dict) -> str:
    """SHA-256 over (name, dtype, shape, C-order bytes) of every array, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def manifest_path(npz) -> Path:
    """The manifest beside ``npz``: the same name with ``.json``."""
    return Path(npz).with_suffix(".json")


def default_path(name: str = "emotion") -> Path:
    """The committed artifact ``loglinear/resources/lm_env/NAME.npz``."""
    return Path(str(resources.files("loglinear") / "resources" / "lm_env" / f"{name}.npz"))


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> tuple[dict, dict]:
    p = Path(path)
    mpath = manifest_path(p)
    if not p.exists() or not mpath.exists():
        raise FileNotFoundError(f"no artifact at {p} (with its manifest {mpath.name}); build "
                                "one with `loglinear lm-env build --out PATH`")
    manifest = json.loads(mpath.read_text())
    with np.load(p, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    digest = content_hash(arrays)
    if digest != manifest.get("sha256"):
        raise ValueError(f"{p} does not match its manifest: content hash {digest[:12]}..., "
                         f"manifest {str(manifest.get('sha256'))[:12]}...; the file was "
                         "changed or truncated, rebuild it")
    if manifest.get("version") != ARTIFACT_VERSION:
        raise ValueError(f"{p} is artifact version {manifest.get('version')}; this loglinear "
                         f"reads version {ARTIFACT_VERSION}: rebuild it")
    for a in arrays.values():
        a.setflags(write=False)
    return arrays, manifest


def load_artifact(path=None) -> tuple[dict, dict]:
    """``(arrays, manifest)`` of the artifact at ``path`` (default: the committed emotion
    environment), after checking its content hash and version. Cached per file."""
    p = Path(path) if path is not None else default_path()
    return _load(str(p.resolve()), p.stat().st_mtime if p.exists() else 0.0)


def write_artifact(arrays: dict, out, *, config: dict, **extra) -> Path:
    """Write ``arrays`` to ``out`` (compressed ``.npz``, atomically) and its manifest beside
    it (version, content hash, ``config`` and any ``extra`` fields); returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    manifest = {"file": out.name, "version": ARTIFACT_VERSION, "sha256": content_hash(arrays),
                "config": config, "bytes": out.stat().st_size, **extra}
    manifest_path(out).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out
