"""The notebooks in notebooks/: in sync with their .py sources, and executable top to bottom.

Every notebook runs offline in a fresh kernel started with this interpreter (nbclient),
with its default (small) parameters, plus the overrides below. A failing cell fails the
test with that cell's source and traceback. Budget: about three minutes for all of them
on a 2-core CI machine.
"""

from __future__ import annotations

import time

import pytest

pytest.importorskip("jupytext")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from nbclient.exceptions import CellExecutionError  # noqa: E402

from loglinear.commands import notebooks as nbtool  # noqa: E402

NOTEBOOKS = nbtool.notebook_sources()
REPO = nbtool.DEFAULT_DIR.parent
# Per-notebook parameter overrides for the test run (the defaults are already small). The
# main run always takes the compute path, so it does not depend on what reports/ holds.
TEST_OVERRIDES: dict[str, dict] = {
    "lambda_dependence": {"PRECOMPUTED": None},
    "three_d": {"PRECOMPUTED": None},
}
# The precomputed-records path, exercised when the study records are in the checkout.
PRECOMPUTED_RUNS = {
    "lambda_dependence": (("reports/rates/records.csv", "reports/rates/records/records.csv"),
                          {"CONCENTRATIONS": [0.0, 3.0], "SHRINK_FRACTIONS": [0.0, 0.5]}),
    "three_d": (("reports/three_d/records.parquet", "reports/three_d/records.jsonl"), {}),
}
# Seconds any single cell may take before the run is declared hung.
CELL_TIMEOUT_S = 240


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {"coverage", "lambda_dependence", "approximations", "three_d"} <= names, names


def test_ipynb_are_in_sync_with_py_sources():
    problems = nbtool.out_of_sync()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_one_parameter_cell(path):
    nb = nbtool.read_notebook(path)
    tagged = [c for c in nb.cells if nbtool.PARAMETERS_TAG in c.metadata.get("tags", ())]
    assert len(tagged) == 1
    assert nbtool.parameter_names(tagged[0].source), "the parameter cell assigns nothing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path):
    start = time.perf_counter()
    try:
        nb = nbtool.execute(path, TEST_OVERRIDES.get(path.stem, {}), timeout=CELL_TIMEOUT_S)
    except CellExecutionError as exc:
        pytest.fail(f"{path.name}: a cell failed\n{exc}", pytrace=False)
    elapsed = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", ())]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} displayed no figure"
    print(f"{path.name}: {elapsed:.1f}s, {len(images)} figures")


@pytest.mark.parametrize("name", sorted(PRECOMPUTED_RUNS))
def test_notebook_reads_precomputed_records(name):
    files, overrides = PRECOMPUTED_RUNS[name]
    if not any((REPO / f).exists() for f in files):
        pytest.skip(f"no precomputed records for {name} in this checkout ({files})")
    try:
        nb = nbtool.execute(nbtool.DEFAULT_DIR / f"{name}.py", overrides,
                            timeout=CELL_TIMEOUT_S)
    except CellExecutionError as exc:
        pytest.fail(f"{name}.py on precomputed records: a cell failed\n{exc}", pytrace=False)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", ()))
    assert "reading precomputed records" in text


# ---------------------------------------------------------------- the tool itself
_GOOD = '''# %% [markdown]
# # A tiny notebook

# %% tags=["parameters"]
N = 3

# %%
total = sum(range(N))
print(total)
'''


def test_sync_then_check_round_trip(tmp_path):
    (tmp_path / "tiny.py").write_text(_GOOD)
    assert nbtool.out_of_sync(tmp_path) == ["tiny.ipynb is missing (run `loglinear notebooks "
                                            "sync`)"]
    nbtool.sync(tmp_path)
    assert nbtool.out_of_sync(tmp_path) == []
    first = (tmp_path / "tiny.ipynb").read_bytes()
    nbtool.sync(tmp_path)
    assert (tmp_path / "tiny.ipynb").read_bytes() == first  # regeneration is deterministic
    (tmp_path / "tiny.py").write_text(_GOOD.replace("N = 3", "N = 4"))
    assert nbtool.out_of_sync(tmp_path) and "differs" in nbtool.out_of_sync(tmp_path)[0]
    (tmp_path / "stray.ipynb").write_text((tmp_path / "tiny.ipynb").read_text())
    assert any("no stray.py source" in p for p in nbtool.out_of_sync(tmp_path))


def test_parameters_are_injected_and_validated(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(_GOOD)
    nb = nbtool.execute(path, {"N": 5}, timeout=60, cwd=tmp_path)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", ()))
    assert printed.strip() == str(sum(range(5)))
    with pytest.raises(ValueError, match="unknown parameters"):
        nbtool.inject_parameters(nbtool.read_notebook(path), {"M": 1})
    path.write_text(_GOOD.replace(' tags=["parameters"]', ""))
    with pytest.raises(ValueError, match="exactly one cell tagged"):
        nbtool.inject_parameters(nbtool.read_notebook(path), {})


def test_a_failing_cell_reports_its_source(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(_GOOD + "\n# %%\nvalue = 1 / (N - N)  # the broken cell\n")
    with pytest.raises(CellExecutionError) as info:
        nbtool.execute(path, timeout=60, cwd=tmp_path)
    assert "value = 1 / (N - N)  # the broken cell" in str(info.value)
    assert "ZeroDivisionError" in str(info.value)
