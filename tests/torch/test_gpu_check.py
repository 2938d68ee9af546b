"""benchmarks/gpu_check.py end to end on CPU with tiny models (so the GPU script cannot rot).

One run (about 20 s on a busy 2-core machine) into a temporary folder; the tests check the
records it leaves: every file, a row for every method, positive times, and ratios that
follow from the rows.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
FILES = {"config.json", "log.txt", "tests.xml", "tests.json", "throughput.csv", "ratios.csv",
         "summary.json", "report.md"}  # the device tool brings back at most 8 files
METHODS = {"dpo", "wdpo-paper", "wdpo-official", "kldpo-paper"}
RATIO_RTOL = 1e-12  # ratios recomputed from the same float64 values written by repr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu",
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, out


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _f(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def test_runs_and_writes_every_record(run):
    proc, out = run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wall time" in proc.stdout
    assert {p.name for p in out.iterdir()} == FILES
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["device"], cfg["tiny"], cfg["dtype"]) == ("cpu", True, "float32")
    assert "wall time" in (out / "log.txt").read_text()


def test_test_summary_matches_junit(run):
    _, out = run
    summary = json.loads((out / "tests.json").read_text())
    cases = list(ET.parse(out / "tests.xml").getroot().iter("testcase"))
    assert summary["status"] == "exit 0" and summary["device"] == "cpu"
    assert summary["counts"]["passed"] == len(cases) > 0
    assert summary["counts"]["failed"] == summary["counts"]["error"] == 0


def test_every_method_has_positive_times(run):
    _, out = run
    rows = _csv(out / "throughput.csv")
    models = json.loads((out / "config.json").read_text())["models"]
    for model in models:
        ok = [r for r in rows if r["model"] == model and r["status"] == "ok"]
        assert {r["method"] for r in ok} == METHODS, model
        for r in ok:
            lo, med, hi = _f(r["step_s_min"]), _f(r["step_s_median"]), _f(r["step_s_max"])
            assert 0 < lo <= med <= hi
            np.testing.assert_allclose(_f(r["tokens_per_s"]), int(r["tokens_per_step"]) / med,
                                       rtol=RATIO_RTOL)
            assert r["attn_used"] == r["attn"]  # the kernel requested is the one timed
    # on CPU the WDPO cases under SDPA are recorded as skipped, never silently eager
    sdpa_wdpo = [r for r in rows if r["objective"] == "wdpo" and r["attn"] == "sdpa"]
    assert sdpa_wdpo and all(r["status"] == "skipped" for r in sdpa_wdpo)


def test_ratios_follow_from_rows(run):
    _, out = run
    rows = [r for r in _csv(out / "throughput.csv") if r["status"] == "ok"]
    ratios = _csv(out / "ratios.csv")
    tps = {(r["model"], r["method"], r["attn"]): _f(r["tokens_per_s"]) for r in rows}
    step = {(r["model"], r["method"], r["attn"]): _f(r["step_s_median"]) for r in rows}
    expected = {(m, meth, a, f"dpo-{b}") for (m, meth, a) in tps for (mb, methb, b) in tps
                if mb == m and methb == "dpo" and meth != "dpo"}
    assert {(q["model"], q["method"], q["attn"], q["baseline"]) for q in ratios} == expected
    for q in ratios:
        key, base = (q["model"], q["method"], q["attn"]), (q["model"], "dpo",
                                                           q["baseline"].split("-", 1)[1])
        ratio = _f(q["throughput_ratio"])
        np.testing.assert_allclose(ratio, tps[key] / tps[base], rtol=RATIO_RTOL)
        np.testing.assert_allclose(_f(q["step_time_ratio"]), step[key] / step[base],
                                   rtol=RATIO_RTOL)
        assert q["meets_target"] == str(ratio >= 0.4)
    summary = json.loads((out / "summary.json").read_text())
    first = summary["config"]["models"][0]
    assert summary["answers"] and all(a["model"] == first and a["method"].startswith("wdpo")
                                      for a in summary["answers"])


def test_report_is_labelled_a_smoke_test(run):
    _, out = run
    report = (out / "report.md").read_text()
    assert "Smoke test on cpu" in report and "not a throughput claim" in report
    summary = json.loads((out / "summary.json").read_text())
    for a in summary["answers"]:  # each answer sentence is computed from its ratio
        assert f"{100 * a['throughput_ratio']:.0f}% of {a['baseline']}'s throughput" in report
