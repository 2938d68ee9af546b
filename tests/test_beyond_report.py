"""The beyond-log-linear report regenerates from stored records alone (tau study here;
the torch studies in tests/torch/test_neural_report.py)."""

from __future__ import annotations

from loglinear import report
from loglinear.experiments.beyond import tau as bt
from loglinear.experiments.beyond.common import EnvSpec


def test_report_from_tau_records_only(tmp_path):
    cfg = bt.TauConfig(name="t", seed=3, settings=(EnvSpec("u", n_states=4, n_actions=3,
                                                           dim=2, reward_scale=3.0),),
                       n=(300,), seeds=2, n_tau=3, max_iter=40)
    assert bt.main(cfg, tmp_path / "records" / "tau") == tmp_path / "records" / "tau"
    md = report.build("beyond_loglinear", tmp_path / "records", tmp_path / "out")
    text = md.read_text()
    assert "## 3. KLDPO temperature calibration" in text
    assert "The default rule" in text
    assert "_No records found._" in text  # neural and stability are missing
    assert (tmp_path / "out" / "beyond_loglinear" / "tau_sweep_n300.png").stat().st_size > 0
    # regenerating gives the same markdown
    assert report.build("beyond_loglinear", tmp_path / "records",
                        tmp_path / "out").read_text() == text
