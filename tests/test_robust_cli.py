"""``loglinear solve``: the printed result matches an independent call of the library."""

import json

import numpy as np
import pytest

from loglinear import PreferenceData
from loglinear.cli import main
from loglinear.robust import solve_kl, solve_wasserstein


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


# ---------------------------------------------------------------- data files and output
def _solve_json(capsys, *argv):
    assert main(["solve", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_solve_reads_csv_with_named_columns(tmp_path, capsys):
    import pandas as pd

    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (50, 2))
    y = (rng.random(50) < 0.7).astype(float)
    pd.DataFrame({"fa": x[:, 0], "fb": x[:, 1], "pref": y}).to_csv(tmp_path / "d.csv",
                                                                   index=False)
    out = _solve_json(capsys, "--data", str(tmp_path / "d.csv"), "--features", "f*",
                      "--label", "pref", "--ball", "kl", "--radius", "0.05")
    ref = solve_kl(PreferenceData(x, y), beta=1.0, radius=0.05)
    np.testing.assert_allclose(out["theta"], ref.theta, atol=1e-9)
    assert out["n"] == 50 and out["source"] == "file"


def test_solve_reads_npz_with_keys_X_y(tmp_path, capsys):
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, (40, 3))
    y = (rng.random(40) < 0.7).astype(float)
    np.savez(tmp_path / "d.npz", X=x, y=y)
    out = _solve_json(capsys, "--data", str(tmp_path / "d.npz"), "--ball", "w1",
                      "--radius", "0.01")
    ref = solve_wasserstein(PreferenceData(x, y), beta=1.0, radius=0.01)
    assert out["objective"] == pytest.approx(ref.objective, rel=1e-12)


def test_solve_json_is_strict_json_with_inf_as_a_string(capsys):
    # at radius 0 the KL dual multiplier is inf, and kappa is inf: plain json.dumps writes
    # both as Infinity, which JSON does not have
    assert main(["solve", "--env", "random", "--ball", "kl", "--states", "3", "--actions",
                 "3", "--dim", "2", "--radius", "0", "--json"]) == 0
    text = capsys.readouterr().out
    out = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert out["kappa"] == "inf" and out["dual"] == "inf"


def test_kl_worst_case_lists_the_pairs_with_the_largest_weight_ratio(capsys):
    from loglinear import LogLinearEnv

    out = _solve_json(capsys, "--env", "random", "--ball", "kl", "--n", "300", "--states",
                      "3", "--actions", "3", "--dim", "2", "--top", "4")
    # the same environment and sample, solved through the library
    env_rng, data_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(0).spawn(2))
    env = LogLinearEnv.random(env_rng, n_states=3, n_actions=3, dim=2, beta=1.0)
    data = env.sample(300, data_rng, centered=True)
    res = solve_kl(data, beta=1.0, radius=out["radius"])
    ratio = np.asarray(res.worst_case) / data.weight
    top = out["worst_case"]["top"]
    assert len(top) == 4
    assert [r["ratio"] for r in top] == pytest.approx(np.sort(ratio)[::-1][:4], rel=1e-9)
    for r in top:
        assert r["p"] == pytest.approx(res.worst_case[r["index"]], rel=1e-9)
    # n is the number of sampled pairs
    assert out["n"] == 300 and out["source"] == "sample"


def test_w2_prints_the_budget_apart_from_the_radius_and_the_transport(capsys):
    assert main(["solve", "--env", "random", "--ball", "w2", "--states", "3", "--actions",
                 "3", "--dim", "2", "--radius", "0.1"]) == 0
    text = capsys.readouterr().out
    assert "radius eps = 0.1" in text and "transport budget eps^2 = 0.01" in text
    assert "<= budget eps^2 = 0.01" in text
    assert "worst case: moves mass" in text and "atoms spending most budget" in text


def test_w2_worst_case_summary_matches_the_transport(capsys):
    from loglinear import LogLinearEnv

    out = _solve_json(capsys, "--env", "random", "--ball", "w2", "--states", "3",
                      "--actions", "3", "--dim", "2", "--radius", "0.1")
    env_rng, _ = (np.random.default_rng(s) for s in np.random.SeedSequence(0).spawn(2))
    env = LogLinearEnv.random(env_rng, n_states=3, n_actions=3, dim=2, beta=1.0)
    data = env.population(exclude_ties=True, centered=True)
    wc = solve_wasserstein(data, beta=1.0, radius=0.1, p=2).worst_case
    dist = np.linalg.norm(wc.x - data.x[wc.source], axis=1)
    summary = out["worst_case"]
    assert summary["budget"] == pytest.approx(0.01)
    assert summary["cost"] == pytest.approx(float(wc.weight @ dist**2), rel=1e-9)
    assert summary["mean_shift"] == pytest.approx(float(wc.weight @ dist), rel=1e-9)
    assert out["n"] is None and out["source"] == "population" and out["atoms"] == data.n


def test_compare_on_a_ball_without_a_cvxpy_form_is_an_error(capsys):
    assert main(["solve", "--env", "random", "--ball", "w2", "--states", "3", "--actions",
                 "3", "--dim", "2", "--compare"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ball w2 has no cvxpy form" in err


def test_separable_data_error_names_the_bound_flag(tmp_path, capsys):
    x = np.array([[1.0, 0.0], [2.0, 0.5], [-1.0, 0.2]])
    y = np.array([1.0, 1.0, 0.0])  # separated by theta = (1, 0)
    np.savez(tmp_path / "sep.npz", x=x, y=y)
    assert main(["solve", "--data", str(tmp_path / "sep.npz"), "--ball", "kl",
                 "--radius", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--bound B" in err and "bound=B" not in err


def test_solve_help_shows_formats_and_defaults():
    from loglinear.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["solve"]
    text = " ".join(sub.format_help().split())
    assert "CSV" in text and "parquet" in text and ".npz" in text and "JSON lines" in text
    assert "(default: 0.5)" in text and "(default: kl)" in text


def test_intervals_cover_the_population_optimum_and_say_why_at_collapse(capsys):
    """--intervals: Wald intervals from the plug-in sandwich. Reference: the exact
    population optimum of the same environment at the same radius lies inside (a 99.9%
    interval: fails with probability 1e-3 per coordinate on a fixed seed), and the
    standard errors shrink like 1/sqrt(n) between n = 2000 and n = 32000."""
    from loglinear import LogLinearEnv

    out = {}
    for n in (2000, 32000):
        assert main(["solve", "--env", "random", "--n", str(n), "--ball", "kl", "--radius",
                     "0.02", "--seed", "3", "--intervals", "0.999", "--json"]) == 0
        out[n] = json.loads(capsys.readouterr().out)
    env_rng = np.random.default_rng(np.random.SeedSequence(3).spawn(2)[0])
    env = LogLinearEnv.random(env_rng, n_states=6, n_actions=5, dim=4, beta=1.0)
    target = solve_kl(env.population(exclude_ties=True, centered=True), beta=1.0,
                      radius=0.02).theta
    for n in out:
        iv = out[n]["intervals"]
        assert iv["available"]
        assert np.all((np.array(iv["lo"]) <= target) & (target <= np.array(iv["hi"])))
    ratio = np.array(out[2000]["intervals"]["se"]) / np.array(out[32000]["intervals"]["se"])
    np.testing.assert_allclose(ratio, 4.0, rtol=0.25)
    assert main(["solve", "--env", "random", "--ball", "kl", "--fraction", "1.5",
                 "--intervals"]) == 0
    text = capsys.readouterr().out
    assert "intervals (95%): none" in text and "collapsed" in text
