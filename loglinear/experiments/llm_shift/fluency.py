r"""The reference model's likelihood of the policies' samples: a degeneracy check.

A policy that games the emotion probe can drift to text the reference model finds
implausible. For every completion stored in ``runs/METHOD/seedS/samples.json`` this scores

.. math:: \bar\ell = \frac1{|c|}\sum_{t} \log \pi_{ref}(c_t \mid \text{prompt}, c_{<t}),

the mean per-token log-likelihood under the reference (pretrained) model, and writes
``fluency.csv`` (method, seed, index, tokens, logp_per_token) next to the study's records;
:func:`loglinear.experiments.llm_shift.analysis.fluency_table` summarises it. The stored
completions are decoded text, so they are re-tokenised here (a decoded sample does not
always re-tokenise to the sampled ids; the reference policy's own samples, scored the same
way, are the yardstick). Needs torch and the ``llm`` extra; a tiny random model has no
meaningful reference likelihood and is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

FLUENCY_FILE = "fluency.csv"


def score_samples(study_dir, *, model=None, tokenizer=None) -> Path:
    """Score every stored sample of a preference-shift study under its reference model and
    write ``study_dir/fluency.csv``; returns its path.

    Args:
        study_dir: a study directory written by ``loglinear llm-shift``.
        model, tokenizer: the reference model and its tokenizer (default: loaded offline
            from the study's ``config.json`` model name).
    """
    import pandas as pd

    from loglinear.torch.text import completion_logp_per_token

    study_dir = Path(study_dir)
    cfg = json.loads((study_dir / "config.json").read_text())
    if model is None:
        if cfg["model"].startswith("tiny"):
            raise ValueError(f"{study_dir}: a tiny random model ({cfg['model']}) has no "
                             "meaningful reference likelihood; score a pretrained-model study")
        from loglinear.torch.models import load_pretrained

        model, tokenizer = load_pretrained(cfg["model"])
    paths = sorted(study_dir.glob("runs/*/seed*/samples.json"))
    if not paths:
        raise FileNotFoundError(f"no runs/*/seed*/samples.json under {study_dir}")
    rows = []
    for path in paths:
        method = path.parent.parent.name.replace("_", ":")
        seed = int(path.parent.name.removeprefix("seed"))
        for i, sample in enumerate(json.loads(path.read_text())):
            scored = completion_logp_per_token(model, tokenizer, sample["prompt"],
                                               sample["completion"])
            if scored is not None:
                rows.append({"method": method, "seed": seed, "index": i, "tokens": scored[0],
                             "logp_per_token": scored[1]})
    out = study_dir / FLUENCY_FILE
    pd.DataFrame(rows).to_csv(out, index=False)
    return out
