"""A user's mistake costs one line: every subcommand, given malformed input, prints one line
on stderr and exits with code 2; config files are validated key by key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loglinear.cli import build_parser, main

BAD_CSV = "a,b\n1,2\n"  # no feature or label column

# one malformed input per subcommand: (argv after the command name, files to write)
MALFORMED = {
    "approx-study": (["--config", "{tmp}/c.toml", "--out", "{tmp}/o"],
                     {"c.toml": "[study]\nseed = 1.5\n"}),
    "audit": (["--data", "{tmp}/d.csv"], {"d.csv": BAD_CSV}),
    "beyond": (["tau", "--config", "{tmp}/c.toml", "--out", "{tmp}/o"],
               {"c.toml": 'name = "t"\nseed = 3\nn = [100.7]\n[[setting]]\nname = "u"\n'}),
    "lm-env": (["info", "{tmp}/missing.npz"], {}),
    "lm-shift-exact": (["--config", "{tmp}/c.toml", "--out", "{tmp}/o"],
                       {"c.toml": "seeds = 1.5\n"}),
    "llm-shift": (["--config", "{tmp}/c.toml", "--out", "{tmp}/o"], {"c.toml": "seeds = 1.5\n"}),
    "llm-train": (["--config", "{tmp}/c.toml", "--out", "{tmp}/o"],
                  {"c.toml": "[train]\nmax_steps = 1.5\n"}),
    "notebooks": (["run", "no_such_notebook"], {}),
    "quickstart": (["--n", "0", "--out", "{tmp}/o"], {}),
    "rates": (["--config", "{tmp}/c.toml", "--out", "{tmp}/o"],
              {"c.toml": 'name = "r"\nseed = 1\nn = [100.7]\n[[setting]]\nname = "u"\n'}),
    "remark3": (["--config", "{tmp}/c.toml", "--out", "{tmp}/o"], {"c.toml": "seeds = 1.5\n"}),
    "report": (["rates", "{tmp}/no_records"], {}),
    "solve": (["--data", "{tmp}/d.csv"], {"d.csv": BAD_CSV}),
    "three-d": (["--config", "{tmp}/c.toml", "--out", "{tmp}/o"],
                {"c.toml": '[toy]\nn_states = 1.5\n[[methods]]\nlabel = "a"\n'
                           'objective = "dpo"\nbeta = 0.5\n'}),
}


def _subcommands() -> list[str]:
    return sorted(next(a for a in build_parser()._actions if a.dest == "command").choices)


def test_every_subcommand_has_a_malformed_input_case():
    missing = sorted(set(_subcommands()) - set(MALFORMED))
    assert not missing, f"add a malformed-input case for {missing}"


@pytest.mark.parametrize("command", _subcommands())
def test_malformed_input_is_one_line_and_exit_code_2(command, tmp_path, capsys):
    argv, files = MALFORMED[command]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    code = main([command, *(a.format(tmp=tmp_path) for a in argv)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"loglinear {command}: error: "), err


def test_the_error_names_what_was_wrong(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('name = "r"\nseed = 1\nn = [100.7]\n[[setting]]\n'
                                     'name = "u"\n')
    assert main(["rates", "--config", str(tmp_path / "c.toml")]) == 2
    err = capsys.readouterr().err
    assert "n = [100.7]" in err and "must be an integer" in err


def test_the_installed_command_prints_no_traceback(tmp_path):
    (tmp_path / "d.csv").write_text(BAD_CSV)
    run = subprocess.run([sys.executable, "-m", "loglinear", "solve", "--data",
                          str(tmp_path / "d.csv")], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "columns found: a, b" in run.stderr


def test_bad_option_values_are_one_line_too(capsys):
    assert main(["solve", "--env", "random", "--n", "many"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid int value: 'many'" in err[0]
    assert err[0].startswith("loglinear solve: error: ")


def test_version(capsys):
    from loglinear import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"loglinear {__version__}"


def test_solver_failure_is_a_one_line_error(monkeypatch, capsys):
    from loglinear.commands import solve
    from loglinear.robust import RobustSolverError

    def fail(*args, **kwargs):
        raise RobustSolverError("Clarabel returned status 'NumericalError'\nsecond line")

    monkeypatch.setattr(solve, "_solve", fail)
    assert main(["solve", "--env", "random", "--states", "3", "--actions", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["loglinear solve: error: Clarabel returned status 'NumericalError' "
                   "second line"]


def test_a_program_fault_is_one_line_with_exit_1_and_a_traceback_on_request(
        monkeypatch, capsys):
    from loglinear.commands import quickstart

    def broken(args):
        return 1 / 0

    monkeypatch.setattr(quickstart, "run", broken)
    assert main(["quickstart"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error (ZeroDivisionError)" in err[0]
    assert "LOGLINEAR_DEBUG=1" in err[0]
    monkeypatch.setenv("LOGLINEAR_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["quickstart"])


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LOGLINEAR_DEBUG", "1")
    (tmp_path / "d.csv").write_text(BAD_CSV)
    with pytest.raises(ValueError, match="no feature columns"):
        main(["solve", "--data", str(tmp_path / "d.csv")])


# ---------------------------------------------------------------- config validation
RATES = 'name = "r"\nseed = 1\nn = [100, 200]\nseeds = 2\n[[setting]]\nname = "u"\n'


def _load_rates(tmp_path, text):
    from loglinear.experiments.config import load_config
    from loglinear.experiments.rates import RatesConfig

    path = Path(tmp_path) / "c.toml"
    path.write_text(text)
    return load_config(RatesConfig, path)


@pytest.mark.parametrize("text, expected", [
    (RATES.replace("seeds = 2", "seeds = 1.5"), r"seeds = 1.5: must be an integer"),
    (RATES.replace("n = [100, 200]", "n = [100.7]"),
     r"n = \[100.7\]: item 0 \(100.7\) must be an integer"),
    (RATES.replace("seeds = 2", 'seeds = "2"'), "seeds = '2': must be an integer"),
    (RATES.replace('name = "r"\n', ""), r"missing keys \['name'\]; required keys are"),
    (RATES + "sedes = 3\n", r"unknown keys \['sedes'\]; allowed keys are"),
    (RATES.replace('name = "u"', 'name = "u"\ndim = 2.5'),
     r"\[\[setting\]\]: dim = 2.5: must be an integer"),
])
def test_config_values_are_checked_against_their_fields(tmp_path, text, expected):
    with pytest.raises(ValueError, match=expected):
        _load_rates(tmp_path, text)


def test_a_valid_config_loads_with_its_values(tmp_path):
    cfg = _load_rates(tmp_path, RATES)
    assert cfg.n == (100, 200) and cfg.seeds == 2 and cfg.settings[0].name == "u"


def test_configs_built_by_their_own_builder_are_checked_too():
    from dataclasses import dataclass

    from loglinear.experiments.config import check_config

    @dataclass(frozen=True)
    class Inner:
        steps: int = 1

    @dataclass(frozen=True)
    class Outer:
        inner: Inner
        rate: float = 0.1
        sizes: tuple[int, ...] = ()
        cap: int | None = None

    good = Outer(Inner(3), 1, (1, 2), None)
    assert check_config(good) is good
    with pytest.raises(ValueError, match=r"inner.steps = 2.5: must be an integer"):
        check_config(Outer(Inner(2.5)))
    with pytest.raises(ValueError, match=r"sizes = \[1, 2.0\]: item 1 \(2.0\) must be an "
                                         r"integer"):
        check_config(Outer(Inner(), sizes=(1, 2.0)))
    with pytest.raises(ValueError, match=r"cap = 'x': must be an integer \(or left out\)"):
        check_config(Outer(Inner(), cap="x"))
    with pytest.raises(ValueError, match="rate = True: must be a number"):
        check_config(Outer(Inner(), rate=True))
