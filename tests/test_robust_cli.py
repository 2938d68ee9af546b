"""``loglinear solve``: the printed result matches an independent call of the library."""

import json

import numpy as np
import pytest

from loglinear import PreferenceData
from loglinear.cli import main
from loglinear.robust import solve_wasserstein


def test_solve_file_json_matches_library(tmp_path, capsys):
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (60, 3))
    data = PreferenceData(x, (rng.random(60) < 0.7).astype(float))
    path = data.save(tmp_path / "d.npz")
    assert main(["solve", "--data", str(path), "--ball", "w1", "--radius", "0.02",
                 "--kappa", "0.4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = solve_wasserstein(PreferenceData.load(path), beta=1.0, radius=0.02, kappa=0.4)
    np.testing.assert_allclose(out["theta"], ref.theta, atol=1e-9)
    assert out["objective"] == pytest.approx(ref.objective, rel=1e-12)
    assert out["verify"]["ok"]


@pytest.mark.parametrize("ball", ["kl", "w2"])
def test_solve_environment_prints_certificate(ball, capsys):
    assert main(["solve", "--env", "random", "--ball", ball, "--states", "3", "--actions", "3",
                 "--dim", "2", "--fraction", "0.4"]) == 0
    text = capsys.readouterr().out
    assert "certificate" in text and "verify: ok" in text


@pytest.mark.parametrize("ball, flags, refused", [
    ("kl", ["--kappa", "0.4"], "--kappa"),
    ("w2", ["--kappa", "0.4"], "--kappa"),
    ("w2", ["--method", "cvxpy"], "--method cvxpy"),
])
def test_an_option_a_ball_does_not_take_is_refused(ball, flags, refused, capsys):
    assert main(["solve", "--env", "random", "--ball", ball, "--states", "3", "--actions", "3",
                 "--dim", "2", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--ball {ball} does not take {refused}" in err


def test_solve_w1_text_reports_kappa(capsys):
    assert main(["solve", "--env", "random", "--ball", "w1", "--states", "3", "--actions", "3",
                 "--dim", "2", "--fraction", "0.4"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# robust DPO: W1 ball") and ", kappa=inf" in text
    assert "verify: ok" in text
