"""The core must not import torch (STYLE rule 4)."""

import subprocess
import sys


def test_import_loglinear_does_not_import_torch():
    code = ("import sys, loglinear, loglinear.losses, loglinear.env, loglinear.fit; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_lazy_names_resolve_or_raise_attribute_error():
    import loglinear

    assert set(loglinear.__all__) >= {"PreferenceData", "LogLinearEnv", "fit_dpo"}
    try:
        loglinear.definitely_not_a_name  # noqa: B018
    except AttributeError as exc:
        assert "definitely_not_a_name" in str(exc)
    else:
        raise AssertionError("unknown attribute did not raise")
