"""The command line: discovery and the quickstart job."""

import json
from pathlib import Path

import numpy as np
import pytest

from loglinear import LogLinearEnv, fit_dpo
from loglinear.cli import build_parser, main


def test_quickstart_writes_report_that_matches_an_independent_fit(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--n", "3000", "--seed", "3", "--out", str(out)]) == 0
    rec = json.loads((out / "quickstart.json").read_text())
    assert "error" in capsys.readouterr().out
    # recompute from the same seed through the public API
    seeds = np.random.SeedSequence(3).spawn(2)
    env = LogLinearEnv.random(np.random.default_rng(seeds[0]), n_states=8, n_actions=6, dim=4,
                              beta=1.0, concentration=1.0)
    data = env.sample(3000, np.random.default_rng(seeds[1]))
    fit = fit_dpo(data, beta=1.0)
    np.testing.assert_allclose(rec["theta_hat"], fit.theta, rtol=1e-12)
    assert rec["error"] == pytest.approx(np.linalg.norm(fit.theta - env.theta_star()))
    assert (out / "quickstart.md").read_text().startswith("# loglinear quickstart")


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert "quickstart" in sub.choices
    for name, p in sub.choices.items():
        assert p.description, f"subcommand {name} has no description"


def test_unknown_report_study_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "no-such-study", str(tmp_path)]) == 2
    assert "no report builder" in capsys.readouterr().err


# ------------------------------------------------------- outputs: where, and how to redo
def test_quickstart_writes_under_results_by_default_and_says_where(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["quickstart", "--n", "500", "--dim", "2"]) == 0
    assert (tmp_path / "results" / "quickstart" / "quickstart.md").exists()
    assert not (tmp_path / "reports").exists()
    out = capsys.readouterr().out
    assert "written to results/quickstart/quickstart.md" in out


def test_quickstart_regenerate_line_reproduces_the_options(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--n", "400", "--seed", "5", "--dim", "2", "--out",
                 str(out)]) == 0
    text = (out / "quickstart.md").read_text()
    line = next(s for s in text.splitlines() if s.startswith("Regenerate:"))
    command = line.split("`")[1]
    assert command == f"loglinear quickstart --n 400 --dim 2 --seed 5 --out {out}"
    # the command, run again, writes the same numbers
    again = tmp_path / "again"
    assert main([*command.split()[1:-1], str(again)]) == 0
    first, second = (json.loads((d / "quickstart.json").read_text()) for d in (out, again))
    assert first["theta_hat"] == second["theta_hat"]


def test_run_metadata_records_versions_and_the_commit(tmp_path):
    import subprocess
    from importlib import metadata

    import loglinear
    from loglinear.experiments.config import write_resolved
    from loglinear.experiments.rates.config import EnvSpec

    meta = json.loads(write_resolved(EnvSpec(name="u"), tmp_path / "config.json")
                      .read_text())["provenance"]
    assert meta["loglinear"] == loglinear.__version__
    for name in ("numpy", "scipy", "cvxpy"):
        assert meta["packages"][name] == metadata.version(name)
    root = Path(loglinear.__file__).resolve().parents[1]
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert meta["git_commit"] == head and isinstance(meta["git_dirty"], bool)


@pytest.mark.parametrize("command, argv, target, expected", [
    ("rates", ["--config", "{tmp}/rates_small.toml"], "loglinear.experiments.rates",
     "results/rates_small"),
    ("approx-study", ["--config", "{tmp}/approx_small.toml", "--no-report"],
     "loglinear.experiments.approx", "results/approx"),
    ("beyond", ["tau", "--config", "{tmp}/tau.toml"], "loglinear.experiments.beyond.tau",
     "results/beyond_loglinear/tau"),
])
def test_studies_write_under_results_by_default(command, argv, target, expected, tmp_path,
                                                monkeypatch, capsys):
    import importlib

    (tmp_path / "rates_small.toml").write_text(
        'name = "r"\nseed = 1\nn = [100]\nseeds = 2\n[[setting]]\nname = "u"\n')
    (tmp_path / "approx_small.toml").write_text("[study]\nreplicates = 1\n")
    (tmp_path / "tau.toml").write_text('name = "t"\n[[setting]]\nname = "u"\n')
    seen = {}

    def fake_main(config, out, **kwargs):
        seen["out"] = str(out)
        return Path(out)

    monkeypatch.setattr(importlib.import_module(target), "main", fake_main)
    monkeypatch.chdir(tmp_path)
    assert main([command, *(a.format(tmp=tmp_path) for a in argv)]) == 0
    assert seen["out"] == expected
    assert expected in capsys.readouterr().out


def test_approx_study_announces_its_size(tmp_path, monkeypatch, capsys):
    import loglinear.experiments.approx as approx

    (tmp_path / "a.toml").write_text("[study]\nreplicates = 2\nconcentrations = [0.0, 1.0]\n"
                                     "n_samples = [0, 100, 200]\nfractions = [0.1, 0.5]\n")
    monkeypatch.setattr(approx, "main", lambda config, out, **kw: Path(out))
    assert main(["approx-study", "--config", str(tmp_path / "a.toml"), "--out",
                 str(tmp_path / "o"), "--no-report", "--no-progress"]) == 0
    # 2 concentrations x 2 replicates x 3 data regimes
    assert "12 environments x 3 divergences x 2 radii" in capsys.readouterr().out


# ------------------------------------------------------------- llm-shift --out and resume
@pytest.fixture
def shift_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import loglinear.experiments.llm_shift.run as shift
    import loglinear.report.llm_shift as view

    calls = {}

    def build(records, out=None):
        calls["build"] = (Path(records), out)
        return Path(out or records) / "llm_shift.md"

    monkeypatch.setattr(view, "build", build)
    (tmp_path / "c.toml").write_text('out = "reports/llm_shift/cpu"\n')
    return shift, calls


def test_llm_shift_report_stays_inside_out(shift_run, tmp_path, monkeypatch, capsys):
    shift, calls = shift_run
    out = tmp_path / "mine"
    monkeypatch.setattr(shift, "main", lambda config, **kw: Path(config.out))
    assert main(["llm-shift", "--config", str(tmp_path / "c.toml"), "--out", str(out),
                 "--report"]) == 0
    records, report_dir = calls["build"]
    assert records == out and Path(report_dir) == out  # scans DIR only, writes inside it


def test_llm_shift_resume_hint_keeps_out(shift_run, tmp_path, monkeypatch, capsys):
    shift, _ = shift_run
    out = tmp_path / "mine"

    def stop(config, **kw):
        raise shift.StudyIncomplete(config.out)

    monkeypatch.setattr(shift, "main", stop)
    assert main(["llm-shift", "--config", str(tmp_path / "c.toml"), "--out", str(out),
                 "--max-minutes", "9"]) == 75
    text = capsys.readouterr().out
    hint = text.split("`")[1]
    assert hint == (f"loglinear llm-shift --config {tmp_path / 'c.toml'} --out {out} "
                    "--max-minutes 9.0")


# ---------------------------------------------------------------- one flag style
def _subparsers():
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def test_one_flag_style_for_reports_and_progress():
    for name, parser in _subparsers().items():
        flags = set(parser._option_string_actions)
        for flag in ("--report", "--progress"):
            if flag in flags:
                assert f"--no-{flag[2:]}" in flags, f"{name} has {flag} without --no-{flag[2:]}"
        assert "--no-progress" not in flags or "--progress" in flags


@pytest.mark.parametrize("argv, expected", [
    (["rates", "--config", "c"], {"progress": True, "report": False}),
    (["rates", "--config", "c", "--no-progress", "--report"], {"progress": False,
                                                                "report": True}),
    (["approx-study", "--no-report"], {"report": False, "progress": True}),
    (["three-d", "--no-report"], {"report": False}),
    (["beyond", "tau", "--report"], {"report": True, "report_root": None}),
    (["beyond", "tau", "--report", "old/root"], {"report": True, "report_root": "old/root"}),
    (["beyond", "tau", "--report", "--report-root", "r"], {"report": True,
                                                           "report_root": "r"}),
    (["llm-train", "--config", "c", "--out-dir", "o"], {"out": "o", "progress": None}),
    (["llm-train", "--config", "c", "--no-progress"], {"progress": False}),
    (["llm-shift", "--config", "c", "--no-report"], {"report": False}),
])
def test_flags_and_their_old_spellings_parse(argv, expected):
    args = build_parser().parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected


def test_version_option(capsys):
    from loglinear import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"loglinear {__version__}\n"
