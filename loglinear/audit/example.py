"""The shipped audit example: preference pairs built from the project's own text, with a
known fraction of flipped labels.

Construction (seeded, reproducible, offline; :func:`example_pairs`):

* prompt: a story opening drawn from the training half of ``resources/emotion/prompts.json``;
* two responses: sentences of two different emotion classes, the classes drawn uniformly
  from anger, fear, joy, sadness and neutral and each sentence from the training half of
  that class in ``resources/emotion/sentences.json``;
* the preference of a rater with the fixed ranking joy > neutral > sadness > fear > anger:
  the higher-ranked sentence is chosen, except in a ``noise`` fraction of the pairs (drawn
  independently), whose preference is flipped. The column ``noisy`` records which: the
  audit never reads it; it says which pairs a label-noise detector should find.

Two files ship in ``loglinear/resources/examples/`` (:func:`write_example`):

* ``preferences.jsonl``: ``prompt, chosen, rejected, chosen_emotion, rejected_emotion,
  noisy`` (the text input of ``loglinear audit --text``);
* ``features.csv``: the same pairs as feature differences ``x0..x{k-1}, y, noisy``: the
  MiniLM differences e(prompt + chosen) - e(prompt + rejected) in their ``k`` principal
  directions (:func:`loglinear.audit.text.principal_projection`), each pair in a random
  order (y = 1 when the first response is the chosen one) so that both labels occur.

Rebuild both with ``python -m loglinear.audit.example`` (it needs the MiniLM encoder).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

EXAMPLE_SEED = 20250318
EXAMPLE_PAIRS = 240
EXAMPLE_NOISE = 0.1
EXAMPLE_DIM = 8
RANKING = ("joy", "neutral", "sadness", "fear", "anger")   # most preferred first
EXAMPLES = {"text": "preferences.jsonl", "features": "features.csv"}


def example_path(kind: str = "text") -> Path:
    """The shipped example file of ``kind`` (``"text"`` or ``"features"``)."""
    if kind not in EXAMPLES:
        raise ValueError(f"unknown example {kind!r}; the examples are {', '.join(EXAMPLES)}")
    return Path(str(resources.files("loglinear") / "resources" / "examples" / EXAMPLES[kind]))


def example_pairs(*, seed: int = EXAMPLE_SEED, n: int = EXAMPLE_PAIRS,
                  noise: float = EXAMPLE_NOISE) -> list[dict]:
    """The example's rows (see the module docstring); the same for the same arguments."""
    from ..experiments.llm_shift.data import load_prompts
    from ..experiments.llm_shift.emotion import load_bank

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"noise must lie in [0, 0.5), got {noise}")
    rng = np.random.default_rng(seed)
    prompts = load_prompts()["train"]
    bank = load_bank()["train"]
    rows = []
    for _ in range(n):
        a, b = sorted(rng.choice(len(RANKING), size=2, replace=False))  # a ranks higher
        good, bad = RANKING[a], RANKING[b]
        noisy = bool(rng.random() < noise)
        if noisy:
            good, bad = bad, good
        rows.append({
            "prompt": prompts[rng.integers(len(prompts))],
            "chosen": bank[good][rng.integers(len(bank[good]))],
            "rejected": bank[bad][rng.integers(len(bank[bad]))],
            "chosen_emotion": good, "rejected_emotion": bad, "noisy": noisy})
    return rows


def write_example(out_dir=None, *, seed: int = EXAMPLE_SEED, n: int = EXAMPLE_PAIRS,
                  noise: float = EXAMPLE_NOISE, dim: int = EXAMPLE_DIM,
                  progress: bool = True) -> tuple[Path, Path]:
    """Write ``preferences.jsonl`` and ``features.csv`` into ``out_dir`` (default: the
    package's ``resources/examples``); returns their paths."""
    import pandas as pd

    from .text import TextPairs, pair_differences, principal_projection

    out = Path(out_dir) if out_dir is not None else example_path("text").parent
    out.mkdir(parents=True, exist_ok=True)
    rows = example_pairs(seed=seed, n=n, noise=noise)
    text = out / EXAMPLES["text"]
    text.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    pairs = TextPairs(*(tuple(r[k] for r in rows) for k in ("prompt", "chosen", "rejected")))
    diff = pair_differences(pairs, progress=progress)
    x = principal_projection(diff, dim=dim, model="all-MiniLM-L6-v2").apply(diff)
    first = np.random.default_rng([seed, 1]).random(n) < 0.5   # chosen shown first
    sign = np.where(first, 1.0, -1.0)
    frame = pd.DataFrame({f"x{j}": sign * x[:, j] for j in range(x.shape[1])})
    frame["y"] = first.astype(int)
    frame["noisy"] = [int(r["noisy"]) for r in rows]
    features = out / EXAMPLES["features"]
    frame.to_csv(features, index=False, float_format="%.8g")
    return text, features


def main() -> None:
    for path in write_example():
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
