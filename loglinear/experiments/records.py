"""A resumable, append-only store of tidy records (one CSV file, one row per result).

Runners write each finished row as soon as it exists, with one ``write`` of a whole line
followed by a flush, so a killed run leaves at most one torn line at the end of the
file. :meth:`RecordStore.open` drops a torn tail (and any line with the wrong number of
fields), rewrites the file cleanly, and exposes the keys already present so a rerun of
the same study skips them: nothing is lost and nothing is duplicated.

The store is generic: a study names its columns and which of them form the row key.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

METADATA_PACKAGES = ("numpy", "scipy", "cvxpy", "pandas", "torch", "transformers", "trl")
FLOAT_REPR = repr  # shortest round-trip repr: reread floats are bit-identical


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return FLOAT_REPR(value)
    if hasattr(value, "item"):  # numpy scalar
        return _format(value.item())
    return str(value)


class RecordStore:
    """Append-only CSV records keyed by a tuple of columns.

    Args:
        path: the CSV file (created with a header if missing).
        columns: every column, in file order.
        key: the columns that identify a row; a key is written at most once.
    """

    def __init__(self, path, columns: list[str], key: list[str]):
        self.path = Path(path)
        self.columns = list(columns)
        self.key = list(key)
        missing = [k for k in self.key if k not in self.columns]
        if missing:
            raise ValueError(f"key columns {missing} are not among the columns {self.columns}")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"duplicate column names in {self.columns}")
        self._done: set[tuple[str, ...]] = set()
        self._fh = None
        self.dropped_lines = 0

    # ----------------------------------------------------------------- reading
    def _key_of(self, row: dict) -> tuple[str, ...]:
        return tuple(_format(row[k]) for k in self.key)

    def open(self, *, drop=None) -> RecordStore:
        """Read what is there (repairing a torn tail), then open for appending.

        ``drop``: an optional predicate on a stored row (a dict of strings); the rows it
        selects are removed from the file and count as not done, so that they are computed
        again (for example rows whose status says a solver failed, after a fix).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        good: list[list[str]] = []
        if self.path.exists():
            raw = self.path.read_text()
            complete = raw if raw.endswith("\n") or not raw else raw[: raw.rfind("\n") + 1]
            self.dropped_lines = int(complete != raw)
            lines = list(csv.reader(io.StringIO(complete)))
            if lines:
                if lines[0] != self.columns:
                    raise ValueError(
                        f"{self.path} has columns {lines[0]}, expected {self.columns}; "
                        "write to a fresh directory or delete the old records")
                seen = set()
                for fields in lines[1:]:
                    if len(fields) != len(self.columns):
                        self.dropped_lines += 1
                        continue
                    row = dict(zip(self.columns, fields))
                    k = self._key_of(row)
                    if k in seen:  # never written by this store, but keep the file clean
                        self.dropped_lines += 1
                        continue
                    if drop is not None and drop(row):
                        self.dropped_lines += 1
                        continue
                    seen.add(k)
                    good.append(fields)
                self._done = seen
            if self.dropped_lines or not lines:
                self._rewrite(good)
        else:
            self._rewrite([])
        self._fh = open(self.path, "a", newline="")
        return self

    def _rewrite(self, rows: list[list[str]]) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(self.columns)
            w.writerows(rows)
        os.replace(tmp, self.path)

    def done(self, row_key: dict) -> bool:
        """Whether the row with these key values is already stored."""
        return self._key_of(row_key) in self._done

    def __len__(self) -> int:
        return len(self._done)

    # ----------------------------------------------------------------- writing
    def write(self, row: dict) -> bool:
        """Append one row (all columns required); returns False if its key is stored."""
        if self._fh is None:
            raise RuntimeError("call open() before write()")
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise ValueError(f"row lacks columns {missing}")
        k = self._key_of(row)
        if k in self._done:
            return False
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_format(row[c]) for c in self.columns])
        self._fh.write(buf.getvalue())  # one write per line: a kill tears at most the last
        self._fh.flush()
        self._done.add(k)
        return True

    def write_many(self, rows: Iterable[dict]) -> int:
        return sum(self.write(r) for r in rows)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RecordStore:
        return self.open() if self._fh is None else self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(path, **read_csv_kwargs):
    """The stored rows as a pandas DataFrame (a torn last line is ignored)."""
    import pandas as pd

    path = Path(path)
    if path.suffix == ".gz":  # an archived (committed) copy of a finished study
        import gzip

        raw = gzip.decompress(path.read_bytes()).decode()
    else:
        raw = path.read_text()
    if raw and not raw.endswith("\n"):
        raw = raw[: raw.rfind("\n") + 1]
    return pd.read_csv(io.StringIO(raw), **read_csv_kwargs)


def write_table(frame, path) -> Path:
    """Write an analysis table (a DataFrame) as CSV beside the records: floats in their
    shortest round-trip form (they read back bit-identical), NaN as an empty field."""
    path = Path(path)
    frame.to_csv(path, index=False)
    return path


def read_table(path, *, text: tuple[str, ...] = ()):
    """An analysis table written by :func:`write_table` (an empty table reads as an empty
    DataFrame). ``text``: columns read as strings whatever they look like; only an empty
    field is missing (so a label such as "n/a" stays a string)."""
    import pandas as pd

    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""],
                           dtype={c: str for c in text})
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def run_metadata() -> dict:
    """What produced a run: the loglinear, Python and package versions, the platform, the
    git commit of the checkout (``None`` outside one; ``git_dirty`` when it has
    uncommitted changes) and the UTC time. Written into every study's ``config.json``.

    Package versions come from the installed distributions' metadata, so nothing is
    imported (torch is listed when installed, never loaded); an absent package is left out.
    """
    from importlib import metadata

    from loglinear import __version__

    packages = {}
    for name in METADATA_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    commit, dirty = _git_state(Path(__file__).resolve().parents[2])
    return {"loglinear": __version__, "python": platform.python_version(),
            "platform": platform.platform(), "packages": packages, "git_commit": commit,
            "git_dirty": dirty,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _git_state(root: Path) -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the checkout at ``root``; (None, None) when
    it is not one or git is missing."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    if not (root / ".git").exists():
        return None, None
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, dirty

