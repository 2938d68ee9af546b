"""``loglinear notebooks``: regenerate, check and execute the jupytext notebooks.

The notebooks live in ``notebooks/`` as jupytext "percent" ``.py`` files (the source of
truth); the paired ``.ipynb`` files are generated from them, without outputs, and never
edited by hand.

* ``loglinear notebooks sync``: rewrite every ``.ipynb`` from its ``.py``.
* ``loglinear notebooks check``: exit 1 if an ``.ipynb`` is missing or out of sync.
* ``loglinear notebooks run [NAME ...] [--set KEY=VALUE ...] [--out DIR]``: execute
  notebooks top to bottom in a fresh kernel of this Python (parameters overridden after
  the cell tagged ``parameters``, as papermill does) and optionally save the executed copies.

jupytext, nbformat and nbclient come from the ``notebooks`` extra and are imported lazily,
so the CLI works without them.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import tempfile
from pathlib import Path

NAME = "notebooks"
HELP = "Regenerate (sync), check or execute the jupytext notebooks in notebooks/."

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "notebooks"
# Notebook metadata written into every generated .ipynb; jupytext pairs the two files.
_KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
_KERNEL_NAME = "loglinear-python"
_INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def notebook_sources(directory=DEFAULT_DIR) -> list[Path]:
    """The jupytext ``.py`` notebooks in ``directory``, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"notebook directory {directory} does not exist")
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))


def read_notebook(path):
    """Read a percent-format ``.py`` notebook into an nbformat NotebookNode."""
    import jupytext

    nb = jupytext.read(Path(path), fmt="py:percent")
    nb.metadata["kernelspec"] = dict(_KERNELSPEC)
    nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    return nb


def _cell_signature(nb) -> list[tuple]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ())))
            for c in nb.cells]


def sync(directory=DEFAULT_DIR) -> list[Path]:
    """Write ``NAME.ipynb`` (no outputs) next to every ``NAME.py``; return the paths."""
    import jupytext

    written = []
    for src in notebook_sources(directory):
        dst = src.with_suffix(".ipynb")
        nb = read_notebook(src)
        for i, cell in enumerate(nb.cells):  # stable ids: regenerating changes nothing
            cell["id"] = f"cell-{i}"
        jupytext.write(nb, dst, fmt="ipynb")
        written.append(dst)
    return written


def out_of_sync(directory=DEFAULT_DIR) -> list[str]:
    """Problems found comparing every ``.ipynb`` with its ``.py`` (empty when in sync).

    Cells are compared by type, source and tags, so jupytext's version stamps and the
    JSON layout do not matter.
    """
    import nbformat

    problems = []
    for src in notebook_sources(directory):
        dst = src.with_suffix(".ipynb")
        if not dst.exists():
            problems.append(f"{dst.name} is missing (run `loglinear notebooks sync`)")
            continue
        want = _cell_signature(read_notebook(src))
        have = _cell_signature(nbformat.read(dst, as_version=4))
        if want != have:
            problems.append(f"{dst.name} differs from {src.name} "
                            "(run `loglinear notebooks sync`; never edit the .ipynb by hand)")
    directory = Path(directory)
    for dst in sorted(directory.glob("*.ipynb")):
        if not dst.with_suffix(".py").exists():
            problems.append(f"{dst.name} has no {dst.stem}.py source")
    return problems


def inject_parameters(nb, overrides: dict):
    """Insert a cell assigning ``overrides`` right after the cell tagged ``parameters``.

    Raises:
        ValueError: if the notebook has no (or several) ``parameters`` cells, or an
            override names a variable the parameter cell does not define.
    """
    import nbformat

    idx = [i for i, c in enumerate(nb.cells) if PARAMETERS_TAG in c.metadata.get("tags", ())]
    if len(idx) != 1:
        raise ValueError(f"a notebook needs exactly one cell tagged {PARAMETERS_TAG!r}, "
                         f"found {len(idx)}")
    if not overrides:
        return nb
    defined = parameter_names(nb.cells[idx[0]].source)
    unknown = sorted(set(overrides) - defined)
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; the parameter cell defines "
                         f"{sorted(defined)}")
    source = "# Parameters injected for this run\n" + "\n".join(
        f"{k} = {v!r}" for k, v in overrides.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
    nb.cells.insert(idx[0] + 1, cell)
    return nb


def parameter_names(source: str) -> set[str]:
    """Names assigned at top level in a parameter cell's source."""
    names = set()
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _kernel_manager(workdir: Path):
    """A kernel manager that starts ipykernel with *this* interpreter.

    The stock ``python3`` kernelspec runs whatever ``python`` is first on PATH, which in
    a fresh CI virtualenv need not be the venv's; a private spec pinned to sys.executable
    avoids that.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = workdir / "kernels" / _KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "loglinear (this Python)", "language": "python",
    }))
    ksm = KernelSpecManager(kernel_dirs=[str(workdir / "kernels")])
    return KernelManager(kernel_name=_KERNEL_NAME, kernel_spec_manager=ksm)


def execute(path, overrides: dict | None = None, *, timeout: int = 600, cwd=None):
    """Execute a ``.py`` notebook top to bottom in a fresh kernel; return the notebook.

    The kernel runs with the inline matplotlib backend (whatever ``MPLBACKEND`` says
    outside, so figures land in the outputs) and single-threaded BLAS, in ``cwd`` (default:
    the repository root, so notebooks find ``reports/``).

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed; its message holds the
            cell's source and the traceback.
    """
    from nbclient import NotebookClient

    nb = inject_parameters(read_notebook(path), dict(overrides or {}))
    cwd = Path(cwd) if cwd is not None else Path(path).resolve().parents[1]
    env_keys = {"MPLBACKEND": _INLINE_BACKEND, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    saved = {k: os.environ.get(k) for k in env_keys}
    os.environ.update(env_keys)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            client = NotebookClient(nb, timeout=timeout, km=_kernel_manager(Path(tmp)),
                                    resources={"metadata": {"path": str(cwd)}},
                                    allow_errors=False)
            client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _parse_set(items) -> dict:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--set expects KEY=VALUE with a Python literal value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def add_arguments(p) -> None:
    p.add_argument("action", choices=["sync", "check", "run"])
    p.add_argument("names", nargs="*", help="notebooks to run (stems, e.g. coverage); "
                   "default all")
    p.add_argument("--dir", default=str(DEFAULT_DIR), help="notebook directory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a parameter (Python literal), e.g. --set SEED=3")
    p.add_argument("--out", default=None, help="(run) save executed .ipynb copies here")
    p.add_argument("--timeout", type=int, default=600, help="(run) seconds per cell")


def run(args) -> int:
    directory = Path(args.dir)
    if args.action == "sync":
        for path in sync(directory):
            print(f"wrote {path}")
        return 0
    if args.action == "check":
        problems = out_of_sync(directory)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    sources = notebook_sources(directory)
    if args.names:
        by_name = {p.stem: p for p in sources}
        missing = sorted(set(args.names) - set(by_name))
        if missing:
            raise ValueError(f"unknown notebooks {missing}; available: {sorted(by_name)}")
        sources = [by_name[n] for n in args.names]
    overrides = _parse_set(args.set)
    import nbformat  # the notebooks extra, once the arguments are known to be good

    for src in sources:
        nb = execute(src, overrides, timeout=args.timeout)
        print(f"ran {src.name}")
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out / f"{src.stem}.ipynb")
    return 0
