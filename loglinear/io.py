"""Preference data from the files people have: CSV, parquet, ``.npz`` and JSON lines.

:func:`read_preferences` reads a table of pairs into a :class:`~loglinear.data.PreferenceData`
and :func:`write_preferences` writes one, choosing the format by the file's suffix. A table
is a set of named columns, one row per pair; a column holds a number per row, or an array
per row (a 2-D ``.npz`` array, a parquet list column, a JSON list, a CSV cell such as
``"[0.1, -2, 3]"``). The parts of a pair and the columns they are read from by default:

* features x (n, d): the columns ``x0 .. x{d-1}``, or one array column ``x``, ``X`` or
  ``features``; or the columns named by ``features``, as a comma list (``"a,b,c"``) or a
  pattern (``"f*"``, matched in file order);
* label y (n,): ``y``, ``label`` or ``chosen_is_first`` (0/1 or true/false, 1 when the first
  response is preferred);
* weight (n,): ``weight`` or ``w`` if present, else uniform (rescaled to sum to one unless
  ``normalize=False``);
* offset (n,): ``offset`` or ``o`` if present, else zero (the reference log-ratio);
* ``state``, ``a1``, ``a2``: kept when present (``PreferenceData.save`` writes them).

Columns not named are ignored (prompt and response text, ids). An error names the file,
says what was expected and lists the columns that were found.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import numpy as np

from .data import PreferenceData

FEATURE_ARRAYS = ("x", "X", "features")
LABELS = ("y", "label", "chosen_is_first")
WEIGHTS = ("weight", "w")
OFFSETS = ("offset", "o")
INDICES = ("state", "a1", "a2")
SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
            ".npz": "npz", ".jsonl": "jsonl", ".ndjson": "jsonl"}
FORMATS_HELP = "CSV (.csv, .tsv), parquet (.parquet), numpy (.npz) or JSON lines (.jsonl)"
_NUMBERED = re.compile(r"x(\d+)")


def _format_of(path: Path) -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown file type {path.suffix!r}; the formats read are "
                         f"{FORMATS_HELP}")
    return fmt


def _array_column(values, where: str) -> np.ndarray:
    """A column of per-row arrays (lists, arrays or JSON strings) as one (n, k) array."""
    try:
        rows = [json.loads(v) if isinstance(v, str) else v for v in values]
        out = np.array([np.asarray(r, dtype=np.float64).reshape(-1) for r in rows])
    except (TypeError, ValueError):  # JSONDecodeError is a ValueError
        out = None
    if out is None or out.ndim != 2:
        raise ValueError(f"{where}: every row must hold an array of numbers of one length")
    return out


def _from_frame(frame) -> dict[str, np.ndarray]:
    """A pandas DataFrame as columns (a column of arrays stays an object column until it
    is used, so an unused text column never has to parse)."""
    return {str(name): frame[name].to_numpy() for name in frame.columns}


def _is_array_column(arr: np.ndarray) -> bool:
    if arr.dtype != object or arr.ndim != 1:
        return False
    first = next((v for v in arr if v is not None), None)
    return isinstance(first, (list, tuple, np.ndarray)) or (
        isinstance(first, str) and first.lstrip().startswith("["))


def read_table(path) -> dict[str, np.ndarray]:
    """The columns of a preference file: ``name -> (n,)`` or ``(n, k)`` arrays.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown suffix, or a file its format cannot parse.
    """
    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if fmt == "npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable .npz archive of numeric arrays "
                             f"({exc})") from None
    import pandas as pd

    if fmt == "jsonl":  # parsed here, so that an error names the line
        rows = _json_lines(path)
        if not rows:
            raise ValueError(f"{path}: the file is empty")
        return _from_frame(pd.DataFrame(rows))
    try:
        if fmt == "csv":
            frame = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        else:
            frame = pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        if isinstance(exc, pd.errors.EmptyDataError):
            raise ValueError(f"{path}: the file is empty") from None
        raise ValueError(f"{path}: cannot be read as {fmt} ({exc})") from None
    if frame.empty:
        raise ValueError(f"{path}: no rows (columns found: {list(map(str, frame.columns))})")
    return _from_frame(frame)


def _json_lines(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {i} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {i} is not a JSON object (one pair per line)")
        rows.append(row)
    return rows


def _describe(table: dict) -> str:
    return ", ".join(f"{name} (array)" if arr.ndim == 2 or _is_array_column(arr) else name
                     for name, arr in table.items())


def _numeric(name: str, arr: np.ndarray, where: str) -> np.ndarray:
    """A column as float64, with the rows that are missing or not numbers named."""
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if _is_array_column(arr):
        arr = _array_column(arr.tolist(), f"{where}: column {name!r}")
    try:
        out = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        bad = next((v for v in arr.reshape(-1) if not _is_number(v)), arr[:3].tolist())
        raise ValueError(f"{where}: column {name!r} must hold numbers, found {bad!r}") from None
    finite = np.isfinite(out) if out.ndim == 1 else np.isfinite(out).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise ValueError(f"{where}: column {name!r} has {rows.size} missing or non-finite "
                         f"values (rows {rows[:5].tolist()}{', ...' if rows.size > 5 else ''})")
    return out


def _is_number(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def _labels(name: str, arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype == object:  # "true"/"false" as text (JSON lines, CSV with mixed cells)
        words = {"true": 1.0, "false": 0.0}
        arr = np.array([words.get(v.strip().lower(), v) if isinstance(v, str) else v
                        for v in arr], dtype=object)
    y = _numeric(name, arr, where)
    if y.ndim != 1:
        raise ValueError(f"{where}: the label column {name!r} must hold one value per row")
    bad = np.unique(y[(y != 0) & (y != 1)])
    if bad.size:
        raise ValueError(f"{where}: the label column {name!r} must hold 0/1 or true/false "
                         f"(1 when the first response is preferred), found {bad[:5].tolist()}")
    return y


def _pick(table: dict, given, defaults: tuple[str, ...], what: str, where: str,
          *, required: bool) -> str | None:
    """The column for one part of a pair: the given name, else the first default found."""
    if given is not None:
        if given not in table:
            raise ValueError(f"{where}: no {what} column {given!r}; columns found: "
                             f"{_describe(table)}")
        return given
    found = next((d for d in defaults if d in table), None)
    if found is None and required:
        raise ValueError(f"{where}: no {what} column: expected one of "
                         f"{', '.join(defaults)} (or name it); columns found: "
                         f"{_describe(table)}")
    return found


def _feature_names(table: dict, features, where: str) -> list[str]:
    """The feature columns: named, matched by a pattern, or found by the defaults."""
    if features is None:
        numbered = {int(m.group(1)): k for k in table if (m := _NUMBERED.fullmatch(k))}
        if numbered:
            d = max(numbered) + 1
            missing = [f"x{j}" for j in range(d) if j not in numbered]
            if missing:
                raise ValueError(f"{where}: feature columns x0..x{d - 1} are incomplete, "
                                 f"missing {missing}; columns found: {_describe(table)}")
            return [numbered[j] for j in range(d)]
        array = [k for k in FEATURE_ARRAYS if k in table]
        if array:
            return array[:1]
        raise ValueError(f"{where}: no feature columns: expected x0..x{{d-1}} or one array "
                         f"column named {', '.join(FEATURE_ARRAYS)} (or name them: a comma "
                         f"list 'a,b,c' or a pattern 'f*'); columns found: {_describe(table)}")
    names = [s.strip() for s in features.split(",")] if isinstance(features, str) \
        else [str(s) for s in features]
    if not names or not all(names):
        raise ValueError(f"features must name columns (a comma list 'a,b,c' or a pattern "
                         f"'f*'), got {features!r}")
    out = []
    for name in names:
        if any(c in name for c in "*?["):
            match = [k for k in table if fnmatch.fnmatchcase(k, name)]
            if not match:
                raise ValueError(f"{where}: no column matches the feature pattern {name!r}; "
                                 f"columns found: {_describe(table)}")
            out += match
        elif name in table:
            out.append(name)
        else:
            raise ValueError(f"{where}: no feature column {name!r}; columns found: "
                             f"{_describe(table)}")
    return list(dict.fromkeys(out))


def preferences_from_table(table: dict, *, features=None, label=None, weight=None,
                           offset=None, normalize: bool = True,
                           where: str = "data") -> PreferenceData:
    """A :class:`PreferenceData` from named columns (see the module docstring for the
    defaults); ``where`` names the source in error messages."""
    if not table:
        raise ValueError(f"{where}: holds no columns")
    xs = [_numeric(k, table[k], where) for k in _feature_names(table, features, where)]
    x = np.column_stack(xs)
    ycol = _pick(table, label, LABELS, "label", where, required=True)
    y = _labels(ycol, table[ycol], where)
    parts = {}
    for part, given, defaults in (("weight", weight, WEIGHTS), ("offset", offset, OFFSETS)):
        col = _pick(table, given, defaults, part, where, required=False)
        if col is not None:
            parts[part] = _numeric(col, table[col], where)
    for name in INDICES:
        if name in table:
            parts[name] = table[name]
    n = x.shape[0]
    for name, arr in (("label " + repr(ycol), y), *parts.items()):
        if len(arr) != n:
            raise ValueError(f"{where}: {name} has {len(arr)} rows, the features {n}")
    try:
        return PreferenceData(x, y, normalize=normalize, **parts)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def read_preferences(path, *, features=None, label=None, weight=None, offset=None,
                     normalize: bool = True) -> PreferenceData:
    """Read preference pairs from a CSV, TSV, parquet, ``.npz`` or JSON-lines file.

    Args:
        path: the file; its suffix picks the format (``.csv``, ``.tsv``, ``.parquet``,
            ``.npz``, ``.jsonl``).
        features: the feature columns: a comma list (``"a,b,c"``), a pattern (``"f*"``) or a
            sequence of names; default ``x0..x{d-1}``, or one array column ``x``, ``X`` or
            ``features``.
        label: the label column (1 when the first response is preferred); default ``y``,
            ``label`` or ``chosen_is_first``.
        weight: the weight column; default ``weight`` or ``w`` if present, else uniform.
        offset: the reference log-ratio column; default ``offset`` or ``o`` if present,
            else zero.
        normalize: rescale the weights to sum to one (otherwise they must already).

    Returns:
        The dataset, n = the number of rows.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown suffix, a missing column (the message lists what was
            expected and the columns found), a value that is missing or not a number, or
            data :class:`PreferenceData` refuses.
    """
    path = Path(path)
    return preferences_from_table(read_table(path), features=features, label=label,
                                  weight=weight, offset=offset, normalize=normalize,
                                  where=str(path))


def write_preferences(data: PreferenceData, path) -> Path:
    """Write ``data`` to ``path`` in the format its suffix names; returns the path.

    ``.npz`` holds the arrays of :meth:`PreferenceData.to_dict`; the tables (CSV, TSV,
    parquet, JSON lines) hold the columns ``x0..x{d-1}``, ``y``, ``offset``, ``weight`` and
    ``state``, ``a1``, ``a2`` when present. Each reads back with :func:`read_preferences`.
    """
    if not isinstance(data, PreferenceData):
        raise ValueError(f"data must be a PreferenceData, got {type(data).__name__}")
    path = Path(path)
    fmt = _format_of(path)
    if fmt == "npz":
        with open(path, "wb") as fh:  # a file object: numpy adds no second suffix
            np.savez_compressed(fh, **data.to_dict())
        return path
    cols = {f"x{j}": data.x[:, j] for j in range(data.d)}
    cols.update((k, v) for k, v in data.to_dict().items() if k != "x")
    if fmt == "jsonl":
        keys = [k for k in cols if not _NUMBERED.fullmatch(k)]
        lines = [json.dumps({"x": data.x[i].tolist(),
                             **{k: cols[k][i].item() for k in keys}}) for i in range(data.n)]
        path.write_text("\n".join(lines) + "\n")
        return path
    import pandas as pd

    frame = pd.DataFrame(cols)
    if fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, sep="\t" if path.suffix.lower() == ".tsv" else ",",
                     float_format="%.17g")
    return path


def add_data_arguments(parser, *, required: bool = True, group=None) -> None:
    """Add ``--data``, ``--features``, ``--label``, ``--weight`` and ``--offset`` to an
    argparse parser (``--data`` into ``group``, a mutually exclusive group, when given)."""
    (group or parser).add_argument(
        "--data", metavar="FILE", required=required and group is None,
        help=f"preference pairs, one per row: {FORMATS_HELP}")
    parser.add_argument(
        "--features", metavar="COLUMNS", default=None,
        help="feature columns: a comma list a,b,c or a pattern 'f*' (default: x0..x{d-1}, or "
             "one array column x, X or features)")
    parser.add_argument("--label", metavar="COLUMN", default=None,
                        help="label column, 1 when the first response is preferred (default: "
                             "y, label or chosen_is_first)")
    parser.add_argument("--weight", metavar="COLUMN", default=None,
                        help="pair weight column (default: weight or w if present, else "
                             "uniform)")
    parser.add_argument("--offset", metavar="COLUMN", default=None,
                        help="reference log-ratio column (default: offset or o if present, "
                             "else zero)")


def data_from_args(args) -> PreferenceData:
    """The dataset named by the options of :func:`add_data_arguments`."""
    return read_preferences(args.data, features=args.features, label=args.label,
                            weight=args.weight, offset=args.offset)
