"""The command line: discovery and the quickstart job."""

import json

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
