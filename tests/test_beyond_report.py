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


def test_report_shows_dpo_baseline_and_changes(tmp_path):
    cfg = bt.TauConfig(name="t", seed=3, settings=(EnvSpec("u", n_states=4, n_actions=3,
                                                           dim=2, reward_scale=3.0),),
                       n=(300,), seeds=2, n_tau=3, max_iter=40)
    bt.main(cfg, tmp_path / "records" / "tau")
    text = report.build("beyond_loglinear", tmp_path / "records", tmp_path / "out").read_text()
    assert text.splitlines()[2].startswith("**Changes since the previous version.**")
    assert "| u | ∞ (DPO) |" in text
    # the headline says, per selector, where it loses to DPO, from paired intervals
    for name in ("the default ESS rule", "the validation split", "the sampling-noise radius"):
        assert f"**tau by {name}" in text
    assert "It loses to DPO at:" in text and "A better default?" in text
    assert "**Each selector against DPO**" in text


def test_rule_losses_by_hand():
    from loglinear.experiments.beyond import analysis

    rows = [dict(setting="a", n=100, rule_regret50=0.09, dpo_regret50=0.05),
            dict(setting="a", n=400, rule_regret50=0.04, dpo_regret50=0.05),
            dict(setting="b", n=100, rule_regret50=0.07, dpo_regret50=0.06)]
    regrets = [dict(setting="a", n=400, alpha=1.0, rule_regret=0.2, dpo_regret=0.1),
               dict(setting="a", n=400, alpha=0.5, rule_regret=0.05, dpo_regret=0.1),
               dict(setting="b", n=400, alpha=0.0, rule_regret=0.3, dpo_regret=0.2)]
    lost = analysis.rule_losses(rows, regrets)
    assert [(r["setting"], r["n"]) for r in lost["worse50"]] == [("a", 100), ("b", 100)]
    assert lost["n_cells"] == 3 and lost["n_largest"] == 400
    assert lost["by_alpha"] == {"a": [1.0], "b": [0.0]}


def test_exponent_headline_classifies_each_fit():
    from loglinear.experiments.beyond.analysis import _exponent_headline

    fit = dict(exponent_tail=-0.5, rmse_at_max_n=0.1)
    ex = [dict(fit, setting="s", arch="a", tail_lo=-0.6, tail_hi=-0.4),      # contains
          dict(fit, setting="s", arch="b", tail_lo=-0.56, tail_hi=-0.501),   # faster
          dict(fit, setting="t", arch="c", tail_lo=-0.31, tail_hi=-0.05)]    # slower
    (text,) = _exponent_headline(ex)
    assert "contains -1/2 in 1, lies below it (faster) in 1 and above it (slower) in 1" in text
    assert "Slower: t c" in text and "not for all" in text
    (text,) = _exponent_headline(ex[:1])
    assert "No fit is slower" in text
