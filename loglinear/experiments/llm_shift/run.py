r"""The preference-shift study (the paper's emotion experiment, rebuilt offline): config ->
records.

Pipeline, every stage cached or checkpointed under ``config.out`` so that a rerun of the same
command resumes where the last one stopped (``max_seconds`` bounds one invocation):

1. **Reward.** The emotion probe (:mod:`loglinear.experiments.llm_shift.emotion`), fitted once
   (``cache/probe.npz``).
2. **Data.** Train prompts get two completions from the reference policy, scored by the
   emotion model (``cache/generations.json``, made once); reference log-probs of every pair
   (``cache/ref_logps.json``). Per seed, Bradley-Terry labels under r(alpha_o)
   (:func:`~loglinear.experiments.llm_shift.data.bt_labels`).
3. **Training.** Per (method, seed): LoRA (or full) fine-tuning with the method's objective
   (:mod:`loglinear.experiments.llm_shift.train`), checkpointed; ``runs/METHOD/seedS/train_log.csv``
   holds the chosen/rejected log-probs over training (the 3D diagnostics).
4. **Evaluation.** Per (policy, seed): completions on held-out prompts, the reward sweep over
   alpha for both mixtures (``eval.csv``), KL to the reference and throughput (``runs.csv``).
   The reference policy itself is evaluated as method ``reference``.
5. **Summary.** Across-seed means and CIs (``summary.csv``, ``runs_summary.csv``); the report
   (:mod:`loglinear.report.llm_shift`, through :mod:`.analysis`) reads only these files.

``main(config, out=None, *, max_seconds=None, log=print)`` runs it and returns the records
directory; when ``max_seconds`` stops it first it raises :class:`StudyIncomplete` (rerun
to resume). It builds no report: ``loglinear llm-shift --report`` does that afterwards.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from loglinear.experiments.config import PROVENANCE_KEY, to_jsonable, write_resolved
from loglinear.experiments.records import RecordStore

from ...torch.sequence import PairBatch, collate_pairs, reference_logps, sequence_logps
from . import data as sd
from . import train as shift_train
from .config import TINY_MODELS, ShiftConfig, run_dirname
from .emotion import EmotionReward
from .evaluate import kl_estimate, reward_sweep, summarize, summarize_runs
from .train import add_lora, autocast, train

EVAL_COLUMNS = ["method", "seed", "kind", "alpha", "reward", "reward_se", "n"]
RUN_COLUMNS = ["method", "seed", "kl", "kl_se", "train_seconds", "train_pairs", "train_tokens",
               "steps", "pairs_per_s", "tokens_per_s", "eval_new_tokens", "label_agreement",
               "n_pairs"]
REFERENCE = "reference"


class StudyIncomplete(RuntimeError):
    """:func:`main` stopped at its time budget (``max_seconds``) with the study unfinished;
    everything done so far is checkpointed under ``out``: rerun the same call to resume."""

    def __init__(self, out):
        self.out = Path(out)
        super().__init__(f"stopped by the time budget before the study was complete; rerun "
                         f"to resume from {self.out}")


def load_base(config: ShiftConfig):
    """The reference model and tokenizer named by the config (eval mode, on its device)."""
    from ...torch.models import byte_tokenizer, load_pretrained, tiny_model

    if config.model in TINY_MODELS:
        tok = byte_tokenizer() if config.tokenizer == "byte" else _pretrained_tokenizer(config)
        model = tiny_model(config.model.split("-")[1], tokenizer=tok,
                           hidden_size=config.tiny_hidden, num_layers=config.tiny_layers,
                           num_heads=config.tiny_heads,
                           max_positions=max(128, 4 * config.max_new_tokens + 256),
                           seed=config.data_seed)
        return model.to(config.device), tok
    # eager attention everywhere: the WDPO double backward is not implemented for the fused
    # SDPA kernels, and one implementation for all methods keeps throughputs comparable
    return load_pretrained(config.model, device=config.device, attn_implementation="eager")


def _pretrained_tokenizer(config: ShiftConfig):
    """A pretrained model's tokenizer for a tiny random model (cached under ``out/cache``)."""
    from transformers import AutoTokenizer

    from ...torch.models import _gguf_location

    cache = Path(config.out) / "cache" / "tokenizer"
    if (cache / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(cache, local_files_only=True)
    else:
        folder, filename = _gguf_location(config.tokenizer)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        tok.save_pretrained(cache)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def pair_rows(pairs: PairBatch, y: np.ndarray) -> PairBatch:
    """Reorder [a; b] rows into [chosen; rejected] rows given labels y (1: a preferred)."""
    n = pairs.n_pairs
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},)")
    idx = torch.arange(n)
    yt = torch.as_tensor(y, dtype=torch.bool)
    rows = torch.cat([torch.where(yt, idx, idx + n), torch.where(yt, idx + n, idx)])
    ref = None if pairs.ref_logps is None else pairs.ref_logps[rows]
    return PairBatch(pairs.input_ids[rows], pairs.attention_mask[rows],
                     pairs.response_mask[rows], ref)


def _chunked_logps(model, pairs: PairBatch, *, chunk: int, config, ref: bool) -> torch.Tensor:
    """Sequence log-probs of all 2B rows of ``pairs``, in chunks of pairs, without a graph."""
    out_c, out_r = [], []
    for i in range(0, pairs.n_pairs, chunk):
        sub = pairs.select(range(i, min(i + chunk, pairs.n_pairs))).to(config.device)
        with torch.no_grad(), autocast(config.device, config.dtype):
            if ref:
                lp = reference_logps(model, sub)
            else:
                lp = sequence_logps(model, sub.input_ids, sub.attention_mask, sub.response_mask)
        b = sub.n_pairs
        out_c.append(lp[:b].float().cpu())
        out_r.append(lp[b:].float().cpu())
    return torch.cat(out_c + out_r)


def _generations(config, base, tok, reward, prompts) -> dict:
    key = {"model": config.model, "tiny": [config.tiny_hidden, config.tiny_layers,
                                           config.tiny_heads],
           "prompts": sd.cache_key(p=prompts), "max_new_tokens": config.max_new_tokens,
           "temperature": config.temperature, "data_seed": config.data_seed,
           "classes": list(reward.probe.classes)}

    def make():
        t0 = time.perf_counter()
        with autocast(config.device, config.dtype):
            gen = sd.sample_completions(base, tok, prompts, n_samples=2,
                                        max_new_tokens=config.max_new_tokens,
                                        temperature=config.temperature, seed=config.data_seed,
                                        batch_size=config.gen_batch_size)
        a = [c[0] for c in gen["completions"]]
        b = [c[1] for c in gen["completions"]]
        ids = gen["completion_ids"]
        return {"prompts": prompts, "a": a, "b": b, "prompt_ids": gen["prompt_ids"],
                "a_ids": [c[0] for c in ids], "b_ids": [c[1] for c in ids],
                "scores_a": reward.scores(a).tolist(), "scores_b": reward.scores(b).tolist(),
                "new_tokens": gen["new_tokens"], "seconds": time.perf_counter() - t0}

    return sd.cached(Path(config.out) / "cache" / "generations.json", key, make), key


def _policy_eval(model, tok, prompts, reward, config, *, seed: int, ref_fn) -> tuple:
    """Sample on held-out prompts, score, sweep alpha; KL to the reference via ``ref_fn``."""
    with autocast(config.device, config.dtype):
        gen = sd.sample_completions(model, tok, prompts, n_samples=config.eval_samples,
                                    max_new_tokens=config.max_new_tokens,
                                    temperature=config.temperature, seed=seed,
                                    batch_size=config.gen_batch_size)
    flat = [c for cs in gen["completions"] for c in cs]
    rep = [p for p in prompts for _ in range(config.eval_samples)]
    rep_ids = [p for p in gen["prompt_ids"] for _ in range(config.eval_samples)]
    flat_ids = [c for cs in gen["completion_ids"] for c in cs]
    scores = reward.scores(flat)
    rows = reward_sweep(scores, classes=reward.probe.classes, pair=config.emotions,
                        alphas=config.alphas, kinds=config.kinds)
    kl = {"kl": 0.0, "kl_se": 0.0}
    if ref_fn is not None:
        # the sampled token ids themselves (as both rows of a pair; the second is unused)
        batch = collate_pairs(rep_ids, flat_ids, flat_ids, pad_token_id=_pad(tok))
        pol = _chunked_logps(model, batch, chunk=config.gen_batch_size, config=config,
                             ref=False)[: len(flat)]
        ref = ref_fn(batch)[: len(flat)]
        kl = kl_estimate(pol.numpy(), ref.numpy())
    samples = [{"prompt": p, "completion": c} for p, c in zip(rep[:8], flat[:8])]
    return rows, kl, gen["new_tokens"], samples


def _same_config(path: Path, config: ShiftConfig) -> None:
    if path.exists():
        old = json.loads(path.read_text())
        new = to_jsonable(config)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                      and k not in ("label", PROVENANCE_KEY))
        # methods may be added to a study (the finished ones keep their records)
        if "methods" in diff and set(old.get("methods", [])) <= set(new.get("methods", [])):
            diff.remove("methods")
        if diff:
            raise ValueError(f"{path.parent} holds a run with a different config (fields "
                             f"{diff}); use another 'out' directory or delete it")
    write_resolved(config, path)


def main(config: ShiftConfig, out=None, *, max_seconds: float | None = None,
         log=print) -> Path:
    """Run (or resume) the study into the records directory ``out`` (default
    ``config.out``; a given ``out`` replaces the config's, also in ``config.json``) and
    return it.

    Raises:
        StudyIncomplete: ``max_seconds`` ran out first (the work is checkpointed).
    """
    if out is not None:
        config = replace(config, out=str(out))
    status = _run(config, max_seconds=max_seconds, log=log)
    if not status["complete"]:
        raise StudyIncomplete(status["out"])
    return status["out"]


def run(config: ShiftConfig, *, max_seconds: float | None = None, log=print) -> dict:
    """Deprecated: :func:`main`. Returns ``{"complete": bool, "out": Path}``."""
    warnings.warn("llm_shift.run.run is deprecated; use main(config, out, max_seconds=...), "
                  "which returns the records directory and raises StudyIncomplete when the "
                  "time budget stops it", DeprecationWarning, stacklevel=2)
    return _run(config, max_seconds=max_seconds, log=log)


def _run(config: ShiftConfig, *, max_seconds: float | None, log) -> dict:
    """Run (or resume) the study. Returns ``{"complete": bool, "out": Path}``."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _same_config(out / "config.json", config)
    deadline = None if max_seconds is None else shift_train.wall_clock() + max_seconds
    torch.set_num_threads(config.threads)
    reward = EmotionReward.default(cache=out / "cache" / "probe.npz", device=config.device)
    base, tok = load_base(config)
    base.requires_grad_(False)
    prompts = sd.load_prompts()
    prng = np.random.default_rng(config.data_seed)
    train_prompts = sd.select_prompts(prompts["train"], config.n_train_prompts, rng=prng)
    eval_prompts = sd.select_prompts(prompts["heldout"], config.n_eval_prompts, rng=prng)
    gen, key = _generations(config, base, tok, reward, train_prompts)
    log(f"data: {len(gen['a'])} prompt pairs ({gen['new_tokens']} generated tokens)")
    pairs_ab = collate_pairs(gen["prompt_ids"], gen["a_ids"], gen["b_ids"],
                             pad_token_id=_pad(tok))
    ref = sd.cached(out / "cache" / "ref_logps.json", key, lambda: _chunked_logps(
        base, pairs_ab, chunk=config.gen_batch_size, config=config, ref=True).tolist())
    pairs_ab = pairs_ab.with_ref(torch.tensor(ref, dtype=torch.float32))
    sa, sb = np.array(gen["scores_a"]), np.array(gen["scores_b"])
    mix = lambda s, a: reward.mixture(s, a, pair=config.emotions, kind=config.label_kind)

    evals = RecordStore(out / "eval.csv", EVAL_COLUMNS, ["method", "seed", "kind", "alpha"])
    runs = RecordStore(out / "runs.csv", RUN_COLUMNS, ["method", "seed"])
    complete = True
    with evals, runs:
        for seed in config.seeds:
            label_ss, eval_ss = np.random.SeedSequence([config.data_seed, seed]).spawn(2)
            ra, rb = mix(sa, config.alpha_o), mix(sb, config.alpha_o)
            y = sd.bt_labels(ra, rb, scale=config.reward_scale,
                             rng=np.random.default_rng(label_ss))
            agree = float(np.mean((ra > rb) == (y == 1)))
            pairs = pair_rows(pairs_ab, y)
            eval_seed = int(eval_ss.generate_state(1)[0])
            policies = [(REFERENCE, None)] + [(m.name, m) for m in config.method_specs]
            for name, method in policies:
                if runs.done({"method": name, "seed": seed}):
                    continue
                if deadline is not None and shift_train.wall_clock() > deadline:
                    complete = False
                    break
                log(f"seed {seed} {name}: training" if method else f"seed {seed} {name}")
                stats = {"seconds": 0.0, "pairs": 0, "tokens": 0, "steps": 0}
                run_dir = out / "runs" / run_dirname(name) / f"seed{seed}"
                if method is None:
                    model, ref_fn = base, None
                else:
                    model, ref_fn = _policy(base, config, seed)
                    beta = config.beta if method.beta is None else method.beta
                    stats = train(model, pairs, method=method, beta=beta, lr=config.lr,
                                  batch_size=config.batch_size, epochs=config.epochs,
                                  seed=seed, run_dir=run_dir,
                                  checkpoint_every=config.checkpoint_every,
                                  log_every=config.log_every, device=config.device,
                                  dtype=config.dtype, deadline=deadline)
                    if not stats["done"]:
                        complete = False
                        log(f"  stopped at step {stats['step']} (time budget); rerun with "
                            f"the records directory {out} to resume")
                        break
                rows, kl, new_tokens, samples = _policy_eval(
                    model, tok, eval_prompts, reward, config, seed=eval_seed, ref_fn=ref_fn)
                evals.write_many({"method": name, "seed": seed, **r} for r in rows)
                sec = stats["seconds"]
                runs.write({"method": name, "seed": seed, **kl, "train_seconds": sec,
                            "train_pairs": stats["pairs"], "train_tokens": stats["tokens"],
                            "steps": stats["steps"],
                            "pairs_per_s": stats["pairs"] / sec if sec else "",
                            "tokens_per_s": stats["tokens"] / sec if sec else "",
                            "eval_new_tokens": new_tokens, "label_agreement": agree,
                            "n_pairs": pairs.n_pairs})
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "samples.json").write_text(json.dumps(samples, indent=1))
                log(f"  KL {kl['kl']:.4g}; reward at alpha_o "
                    f"{next(r['reward'] for r in rows if r['alpha'] == config.alpha_o):.4g}")
            if not complete:
                break
    if complete:
        _write_summaries(out, config)
        log(f"complete: records in {out}")
    return {"complete": complete, "out": out}


def _pad(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def _policy(base, config: ShiftConfig, seed: int):
    """A trainable copy of the reference and a function giving reference log-probs."""
    model = copy.deepcopy(base)
    lora_seed = int(np.random.SeedSequence([config.data_seed, seed, 1]).generate_state(1)[0])
    if config.lora:
        model = add_lora(model, r=config.lora_r, alpha=config.lora_alpha,
                         targets=config.lora_targets, seed=lora_seed)

        def ref_fn(batch):
            with model.disable_adapter():
                return _chunked_logps(model, batch, chunk=config.gen_batch_size, config=config,
                                      ref=True)
    else:
        model.requires_grad_(True)

        def ref_fn(batch):
            return _chunked_logps(base, batch, chunk=config.gen_batch_size, config=config,
                                  ref=True)
    return model, ref_fn


def _write_summaries(out: Path, config: ShiftConfig) -> None:
    import csv

    from loglinear.experiments.records import read_records

    ev = read_records(out / "eval.csv").to_dict("records")
    rn = read_records(out / "runs.csv").to_dict("records")
    for name, rows in (("summary.csv", summarize(ev, level=config.ci_level)),
                       ("runs_summary.csv", summarize_runs(
                           rn, ["kl", "pairs_per_s", "tokens_per_s", "train_seconds"],
                           level=config.ci_level))):
        cols = list(dict.fromkeys(k for r in rows for k in r))
        with open(out / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, cols, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
