"""The beyond-log-linear report with all three studies, from tiny runs."""

from __future__ import annotations

from loglinear import report
from loglinear.experiments.beyond import neural as bn
from loglinear.experiments.beyond import stability as bs
from loglinear.experiments.beyond.common import EnvSpec


def test_report_with_every_study(tmp_path):
    env = EnvSpec("u", n_states=3, n_actions=3, dim=2)
    root = tmp_path / "records"
    neural = bn.NeuralConfig(name="t", seed=5, settings=(env,),
                             archs=(bn.Arch(0), bn.Arch(1, 3)), n=(200, 800, 3200), seeds=2,
                             restarts=2, max_iter=100)
    assert bn.main(neural, root / "neural") == root / "neural"
    stability = bs.StabilityConfig(name="t", seed=9, settings=(env,), archs=(bn.Arch(0),),
                                   rho=(0.1,), tau=(0.5,), n=100, batch_size=8, steps=200,
                                   every=100, n_batches=3, seeds=1)
    assert bs.main(stability, root / "stability") == root / "stability"
    md = report.build("beyond_loglinear", root, tmp_path / "out")
    text = md.read_text()
    for section in ("## 1. Neural policies", "## 2. Gradient stability", "## Conclusions",
                    "Exponents"):
        assert section in text
    for fig in ("neural_rates.png", "stability.png"):
        assert (tmp_path / "out" / "beyond_loglinear" / fig).stat().st_size > 0
