"""The package's architecture, checked from its source (docs/architecture.md).

Imports are read with ``ast`` (module level and inside functions alike), so a lazy import
counts as much as an eager one. The layers, lowest first; a module may import its own layer
and the layers below, never a layer above, and the import graph has no cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "loglinear"

LAYERS = [
    ("foundation", ("loglinear._compat", "loglinear._checks", "loglinear.rewards",
                    "loglinear.registry", "loglinear.data", "loglinear.io")),
    ("math", ("loglinear.losses", "loglinear.newton", "loglinear.stats")),
    ("fit", ("loglinear.fit", "loglinear.estimation", "loglinear._local_extra")),
    ("env", ("loglinear.env", "loglinear.envs")),
    ("robust", ("loglinear.robust",)),
    ("approx", ("loglinear.approx",)),
    ("inference", ("loglinear.inference", "loglinear.bounds", "loglinear._robust_bounds",
                   "loglinear.remark3")),
    ("backend", ("loglinear.torch",)),
    ("experiments", ("loglinear.experiments",)),
    ("views", ("loglinear.plots", "loglinear.report")),
    ("audit", ("loglinear.audit",)),
    ("commands", ("loglinear.commands", "loglinear.cli", "loglinear.__main__")),
]
FACADES = {"loglinear"}    # the package __init__ re-exports the public API from below
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules) -> set[str]:
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("loglinear"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("loglinear"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    found.discard(name)
    return found


def _layer(name: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS and to "
                         "docs/architecture.md")


GRAPH = {name: _imports(name, path, _modules()) for name, path in _modules().items()}


def test_every_module_has_a_layer():
    for name in GRAPH:
        if name not in FACADES:
            _layer(name)


def test_no_upward_import():
    upward = [f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
              for a, targets in GRAPH.items() if a not in FACADES
              for b in targets if b not in FACADES and _layer(b) > _layer(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    state, cycles = {}, []

    def visit(u, stack):
        state[u] = 1
        stack.append(u)
        for v in GRAPH.get(u, ()):
            if state.get(v) == 1:
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif v in GRAPH and not state.get(v):
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for u in GRAPH:
        if not state.get(u):
            visit(u, [])
    assert not cycles, "\n".join(cycles)


def test_backend_imports_only_the_core():
    bad = [f"{a} imports {b}" for a, targets in GRAPH.items() if a.startswith("loglinear.torch")
           for b in targets if _layer(b) > _layer("loglinear.torch")]
    assert not bad, "\n".join(bad)


def test_modules_stay_small():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("module", ["loglinear", "loglinear.experiments", "loglinear.report",
                                    "loglinear.robust", "loglinear.approx",
                                    "loglinear.experiments.rates", "loglinear.report.rates"])
def test_core_and_views_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_old_module_paths_still_import_with_a_warning():
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    import loglinear.dynamics\nexcept DeprecationWarning as w:\n"
            "    print('warned', w)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "warned" in out.stdout and "loglinear.experiments.three_d.dynamics" in out.stdout
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import loglinear.dynamics as old
        from loglinear.stability import suggest_tau

        import loglinear.experiments.three_d.dynamics as new
        from loglinear.approx.calibrate import suggest_tau as new_rule
    assert old is new and suggest_tau is new_rule
