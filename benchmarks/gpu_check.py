"""One prepared check of the torch backend on a device: its tests, then step time per method.

    python3 benchmarks/gpu_check.py --device cuda --out "$OUT" --budget-s 300   # one GPU
    python3 benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check    # smoke test

(a) Runs tests/torch's device-aware tests (test_device_parity.py, with LOGLINEAR_TORCH_DEVICE
    set to ``--device``) and the backend's CPU tests that need neither trl nor cvxpy, in a
    pytest subprocess with a time limit; writes ``tests.xml`` (junit) and ``tests.json``.
(b) Times a full optimiser step (forward, backward, AdamW) of DPO, WDPO (paper and official
    forms) and KLDPO on Llama models built from SmolLM2's configs with random weights (the
    cost does not depend on the values; nothing is downloaded): bf16 on CUDA, 16 pairs x 256
    tokens, each method under fused SDPA attention and under eager attention. WDPO
    differentiates through its own backward; its SDPA cases are attempted and recorded as
    errors where the fused kernel has no double backward. Step time is the median over
    ``--repeats`` steps after ``--warmup`` steps (``torch.cuda.synchronize`` around each on
    CUDA); tokens/s counts the tokens of both rows of every pair; peak memory is
    ``torch.cuda.max_memory_allocated`` per case on CUDA and null on CPU (where the process's
    peak RSS, which never decreases, is recorded instead). Writes ``throughput.csv``,
    ``ratios.csv`` (each method's throughput over DPO's, under either attention),
    ``summary.json``, ``report.md`` (tables and sentences computed from those records) and
    ``log.txt``; ``config.json`` is written before anything runs. Cases that would not fit in
    ``--budget-s`` are recorded as skipped. Prints its own wall time.

Imports only the backend modules models, sequence and objectives (not trl, cvxpy or gguf).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import logging
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout where the package is not installed
    sys.path.insert(0, str(REPO))

from loglinear.torch.objectives import batch_objective  # noqa: E402
from loglinear.torch.sequence import collate_pairs, reference_logps  # noqa: E402

# SmolLM2's Llama configs (HuggingFaceTB/SmolLM2-*/config.json); rope settings are left at
# their defaults since they do not change the cost. Tiny ones are for the CPU smoke test.
SMOLLM2 = dict(vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
               rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
TINY = dict(vocab_size=512, max_position_embeddings=128, tie_word_embeddings=True)
ARCHS = {
    "smollm2-135m": dict(SMOLLM2, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3),
    "smollm2-360m": dict(SMOLLM2, hidden_size=960, intermediate_size=2560,
                         num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5),
    "smollm2-1.7b": dict(SMOLLM2, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32),
    "tiny-llama": dict(TINY, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2),
    "tiny-llama-2x": dict(TINY, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2),
}
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
FULL_TESTS = ("tests/torch/test_device_parity.py", "tests/torch/test_torch_losses.py",
              "tests/torch/test_sequence_penalty.py", "tests/torch/test_models.py",
              "tests/torch/test_train.py")
TINY_TESTS = ("tests/torch/test_device_parity.py", "-k", "losses_match_numpy or wdpo_objective")
TARGET_RATIO = 0.4  # the goal: WDPO at >= 40% of DPO's throughput


@dataclass(frozen=True)
class Case:
    """One timed configuration: ``method`` (the row label) runs ``objective`` in ``form``
    under attention ``attn``; ``double_backward`` marks objectives that differentiate
    through their own backward (WDPO's penalty)."""

    method: str
    objective: str
    form: str
    attn: str
    double_backward: bool = False


CASES = (
    Case("dpo", "dpo", "paper", "sdpa"),
    Case("dpo", "dpo", "paper", "eager"),
    Case("wdpo-paper", "wdpo", "paper", "eager", True),
    Case("wdpo-official", "wdpo", "official", "eager", True),
    Case("wdpo-paper", "wdpo", "paper", "sdpa", True),
    Case("wdpo-official", "wdpo", "official", "sdpa", True),
    Case("kldpo-paper", "kldpo", "paper", "sdpa"),
    Case("kldpo-paper", "kldpo", "paper", "eager"),
)
BASELINE = "dpo"


@dataclass(frozen=True)
class GpuCheckConfig:
    """Resolved settings of one run, written to ``config.json`` before anything runs.

    device: "cuda" or "cpu". dtype: of the benchmark models ("bfloat16" on CUDA and
    "float32" on CPU unless given). tiny: tiny models and shapes (the CPU smoke test).
    budget_s: wall-time budget of the whole run; cases that would not fit are skipped.
    models: names in ARCHS, smallest first. batch_pairs, seq_len, prompt_len: B pairs, each
    row prompt_len + response tokens = seq_len long (no padding). warmup, repeats: steps
    discarded, then timed (the median is reported). beta, rho, tau: the objectives'
    hyperparameters (the cost does not depend on them). seed: token ids and initial
    weights. tests: pytest arguments of part (a), empty to skip it. test_timeout_s: its
    time limit. threads: torch CPU threads of the benchmark (None: torch's default).
    """

    device: str
    dtype: str
    tiny: bool
    budget_s: float
    models: tuple[str, ...]
    batch_pairs: int
    seq_len: int
    prompt_len: int
    warmup: int
    repeats: int
    beta: float = 0.1
    rho: float = 1.0
    tau: float = 1.0
    seed: int = 0
    tests: tuple[str, ...] = FULL_TESTS
    test_timeout_s: float = 150.0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        unknown = [m for m in self.models if m not in ARCHS]
        if not self.models or unknown:
            raise ValueError(f"models must be names in {sorted(ARCHS)}, got {self.models}")
        for name in ("batch_pairs", "repeats", "prompt_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer")
        if self.warmup < 0 or self.seq_len <= self.prompt_len:
            raise ValueError("warmup must be >= 0 and seq_len > prompt_len")
        if self.budget_s <= 0 or self.test_timeout_s <= 0:
            raise ValueError("budget_s and test_timeout_s must be positive")


# ---------------------------------------------------------------- (a) the tests
def run_tests(cfg: GpuCheckConfig, out: Path, seconds_left: float, log) -> dict:
    """pytest on ``cfg.tests`` with LOGLINEAR_TORCH_DEVICE=cfg.device; junit + summary."""
    xml = out / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
           f"--junitxml={xml}", *cfg.tests]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "LOGLINEAR_TORCH_DEVICE": cfg.device, "PYTHONPATH": path}
    timeout = max(1.0, min(cfg.test_timeout_s, seconds_left))
    log.info("tests: %s (LOGLINEAR_TORCH_DEVICE=%s, limit %.0f s)", shlex.join(cmd[1:]),
             cfg.device, timeout)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
        status, text = f"exit {proc.returncode}", proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"timeout after {timeout:.0f} s"
        text = "".join(s.decode() if isinstance(s, bytes) else (s or "")
                       for s in (exc.stdout, exc.stderr))
    log.info("tests: %s in %.1f s\n%s", status, time.perf_counter() - t0, text.rstrip())
    cases = _junit_cases(xml) if xml.exists() else []
    counts = {k: sum(c["outcome"] == k for c in cases)
              for k in ("passed", "failed", "error", "skipped", "xfailed")}
    summary = {"status": status, "device": cfg.device, "command": shlex.join(cmd[1:]),
               "device_aware": [a for a in cfg.tests if "test_device_parity" in a],
               "wall_s": time.perf_counter() - t0, "counts": counts, "cases": cases}
    (out / "tests.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _junit_cases(xml: Path) -> list[dict]:
    rows = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                message = ((child.get("message") or "").splitlines() or [""])[0][:300]
                xfail = child.tag == "skipped" and child.get("type") == "pytest.xfail"
                outcome = "xfailed" if xfail else {"failure": "failed"}.get(child.tag, child.tag)
        rows.append({"id": f"{case.get('classname')}::{case.get('name')}",
                     "outcome": outcome, "time_s": float(case.get("time", 0)),
                     "message": message})
    return rows


# ---------------------------------------------------------------- (b) the step times
def build_model(arch: str, *, dtype: torch.dtype, device: torch.device, seed: int):
    """A Llama of ``ARCHS[arch]`` with random weights (seeded; torch's CPU RNG restored)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**ARCHS[arch])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa",
                                                 dtype=dtype)
    return model.to(device).train()


def random_batch(model, cfg: GpuCheckConfig, device: torch.device):
    """B pairs of random token ids (one prompt per pair, two different responses), each row
    exactly ``seq_len`` tokens, with the model's own reference log-probs."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    vocab, b = model.config.vocab_size, cfg.batch_pairs
    prompts = rng.integers(3, vocab, size=(b, cfg.prompt_len)).tolist()
    responses = rng.integers(3, vocab, size=(2, b, cfg.seq_len - cfg.prompt_len)).tolist()
    batch = collate_pairs(prompts, responses[0], responses[1], pad_token_id=0).to(device)
    return batch.with_ref(reference_logps(model, batch))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_case(model, batch, case: Case, cfg: GpuCheckConfig, device: torch.device) -> dict:
    """Median step time, tokens/s and peak memory of one case (or its error)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    tokens = int(batch.attention_mask.sum())
    row = {"method": case.method, "objective": case.objective, "form": case.form,
           "attn": case.attn, "tokens_per_step": tokens, "status": "ok", "error": ""}

    def step():
        out = batch_objective(model, batch, objective=case.objective, form=case.form,
                              beta=cfg.beta, rho=cfg.rho, tau=cfg.tau)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    try:
        model.set_attn_implementation(case.attn)
        for k in range(cfg.warmup + cfg.repeats):
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            if k >= cfg.warmup:
                times.append(time.perf_counter() - t0)
    except Exception as exc:  # no double backward in a fused kernel, out of memory, ...
        # one failed case must not cost the other records of a one-shot GPU run
        row.update(status="error", error=_first_line(exc))
    finally:
        opt.zero_grad(set_to_none=True)
        gc.collect()
    row["attn_used"] = model.config._attn_implementation
    median = statistics.median(times) if len(times) == cfg.repeats else None
    row.update(step_s_median=median, step_s_min=min(times, default=None),
               step_s_max=max(times, default=None),
               tokens_per_s=tokens / median if median else None)
    if device.type == "cuda":
        row.update(peak_mem_mb=torch.cuda.max_memory_allocated() / 2**20,
                   mem_source="torch.cuda.max_memory_allocated (this case)")
        torch.cuda.empty_cache()
    else:
        row.update(peak_mem_mb=None, mem_source="none on cpu; rss_peak_mb = process peak RSS")
    row["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0][:300]


def run_throughput(cfg: GpuCheckConfig, deadline: float, log, on_row) -> list[dict]:
    """Rows of every (model, case); ``on_row(rows)`` after each, so that a run killed at
    its time limit still leaves the rows measured so far."""
    device, dtype = torch.device(cfg.device), DTYPES[cfg.dtype]
    rows, spent_prev, params_prev = [], 0.0, None
    for arch in cfg.models:
        t_model = time.perf_counter()
        base = {"model": arch, "device": cfg.device, "dtype": cfg.dtype,
                "batch_pairs": cfg.batch_pairs, "seq_len": cfg.seq_len}
        # a larger model costs about (its size / the previous one's) x the previous time
        n_params = _n_params(arch)
        need = spent_prev * n_params / params_prev if params_prev else 0.0
        skip = None
        if time.perf_counter() + need > deadline:
            skip = f"time budget: about {need:.0f} s needed"
        else:
            try:
                model = build_model(arch, dtype=dtype, device=device, seed=cfg.seed)
                batch = random_batch(model, cfg, device)
            except Exception as exc:  # record it and go on to the next model
                skip = f"model or batch failed: {_first_line(exc)}"
        base["n_params"] = n_params
        if skip:
            log.info("%s: %s", arch, skip)
            rows += [dict(base, method=c.method, objective=c.objective, form=c.form,
                          attn=c.attn, status="skipped", error=skip) for c in CASES]
            on_row(rows)
            continue
        log.info("%s: %s parameters, %d pairs x %d tokens, %s on %s", arch, f"{n_params:,}",
                 cfg.batch_pairs, cfg.seq_len, cfg.dtype, cfg.device)
        slowest = {False: 0.0, True: 0.0}  # slowest median so far, without/with double backward
        for case in CASES:
            est = (cfg.warmup + cfg.repeats) * (slowest[case.double_backward]
                                                or 3 * slowest[False])
            if case.double_backward and case.attn != "eager" and device.type == "cpu":
                row = dict(status="skipped", error="CPU SDPA has no double backward "
                           "(penalty.check_double_backward switches it to eager)")
            elif time.perf_counter() + est > deadline:
                row = dict(status="skipped", error="time budget")
            else:
                row = time_case(model, batch, case, cfg, device)
                if row["step_s_median"]:
                    slowest[case.double_backward] = max(slowest[case.double_backward],
                                                        row["step_s_median"])
            row = {**base, "method": case.method, "objective": case.objective,
                   "form": case.form, "attn": case.attn, **row}
            rows.append(row)
            on_row(rows)
            log.info("  %-14s %-5s %-7s %s", case.method, case.attn, row["status"],
                     _row_text(row))
        del model, batch
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        spent_prev, params_prev = time.perf_counter() - t_model, n_params
    return rows


def _n_params(arch: str) -> int:
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**ARCHS[arch]))
    return sum(p.numel() for p in model.parameters())


def _row_text(row: dict) -> str:
    if row["status"] != "ok":
        return row.get("error", "")
    mem = f", peak {row['peak_mem_mb']:.0f} MB" if row.get("peak_mem_mb") else ""
    return (f"step {1e3 * row['step_s_median']:.1f} ms (min {1e3 * row['step_s_min']:.1f}), "
            f"{row['tokens_per_s']:.0f} tokens/s{mem}")


def ratios(rows: list[dict]) -> list[dict]:
    """Each method's throughput (and peak memory) over DPO's on the same model, against
    DPO under either attention kernel."""
    out = []
    ok = [r for r in rows if r["status"] == "ok"]
    for base in (r for r in ok if r["method"] == BASELINE):
        for r in ok:
            if r["model"] != base["model"] or r["method"] == BASELINE:
                continue
            mem = (r["peak_mem_mb"] / base["peak_mem_mb"]
                   if r.get("peak_mem_mb") and base.get("peak_mem_mb") else None)
            ratio = r["tokens_per_s"] / base["tokens_per_s"]
            out.append({"model": r["model"], "method": r["method"], "attn": r["attn"],
                        "baseline": f"{BASELINE}-{base['attn']}", "throughput_ratio": ratio,
                        "step_time_ratio": r["step_s_median"] / base["step_s_median"],
                        "peak_mem_ratio": mem, "meets_target": ratio >= TARGET_RATIO})
    return out


# ---------------------------------------------------------------- records and report
def versions(device: torch.device) -> dict:
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda,
            "platform": platform.platform(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        info.update(gpu=prop.name, gpu_memory_gb=prop.total_memory / 2**30,
                    gpu_sms=prop.multi_processor_count, cudnn=torch.backends.cudnn.version())
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, text=True,
                                            capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    return info


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["model"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def render_report(summary: dict) -> str:
    """Markdown tables and sentences computed from ``summary`` (nothing typed by hand)."""
    cfg, env, tests = summary["config"], summary["versions"], summary["tests"]
    fmt = lambda v, f: "" if v is None else format(v, f)
    lines = []
    if cfg["tiny"] or cfg["device"] != "cuda":
        lines.append(f"**Smoke test on {cfg['device']} with tiny models "
                     f"({', '.join(cfg['models'])}): it shows the script runs end to end; its "
                     "times are not a throughput claim.**\n")
    where = env.get("gpu") or f"CPU ({env['cpu_count']} cores)"
    lines.append(f"{where}; Python {env['python']}, torch {env['torch']}, transformers "
                 f"{env['transformers']}, CUDA {env['cuda'] or 'none'}; {cfg['dtype']}, "
                 f"{cfg['batch_pairs']} pairs x {cfg['seq_len']} tokens, median of "
                 f"{cfg['repeats']} steps after {cfg['warmup']} warm-up; wall time "
                 f"{summary['wall_s']:.1f} s.\n")
    if tests:
        c = tests["counts"]
        lines.append(f"Tests on {tests['device']} ({tests['status']}): {c['passed']} passed, "
                     f"{c['failed']} failed, {c['error']} errors, {c['skipped']} skipped, "
                     f"{c['xfailed']} xfailed.\n")
    lines += ["| model | method | attention (used) | step ms | tokens/s | peak MB | status |",
              "|---|---|---|---:|---:|---:|---|"]
    for r in summary["rows"]:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}"
        lines.append(f"| {r['model']} | {r['method']} | {r['attn']} ({r.get('attn_used', '')})"
                     f" | {fmt(r.get('step_s_median') and 1e3 * r['step_s_median'], '.1f')} | "
                     f"{fmt(r.get('tokens_per_s'), '.0f')} | {fmt(r.get('peak_mem_mb'), '.0f')}"
                     f" | {status} |")
    lines += ["", "| model | method | attention | vs | throughput ratio | peak-memory ratio |",
              "|---|---|---|---|---:|---:|"]
    for q in summary["ratios"]:
        lines.append(f"| {q['model']} | {q['method']} | {q['attn']} | {q['baseline']} | "
                     f"{q['throughput_ratio']:.2f} | {fmt(q['peak_mem_ratio'], '.2f')} |")
    lines.append("")
    for a in summary["answers"]:
        verdict = "meets" if a["meets_target"] else "misses"
        lines.append(f"- {a['model']}: {a['method']} ({a['attn']}) runs at "
                     f"{100 * a['throughput_ratio']:.0f}% of {a['baseline']}'s throughput: it "
                     f"{verdict} the {100 * TARGET_RATIO:.0f}% target.")
    return "\n".join(lines) + "\n"


def answers(ratio_rows: list[dict], model: str) -> list[dict]:
    """The WDPO rows of the goal's question on ``model``: WDPO against DPO with SDPA (what a
    user would otherwise run) and against DPO with eager attention (the same kernel)."""
    return [q for q in ratio_rows if q["model"] == model and q["method"].startswith("wdpo")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"),
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=os.environ.get("OUT") or "results/gpu_check")
    p.add_argument("--tiny", action="store_true", help="tiny models and shapes (CPU smoke test)")
    p.add_argument("--budget-s", type=float, default=360.0, help="wall-time budget (s)")
    p.add_argument("--models", help="comma-separated names in ARCHS, smallest first")
    p.add_argument("--dtype", choices=sorted(DTYPES))
    p.add_argument("--batch-pairs", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--tests", help="pytest arguments for part (a) instead of the default set")
    p.add_argument("--no-tests", action="store_true", help="skip part (a)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    tiny = args.tiny
    defaults = dict(models=("tiny-llama", "tiny-llama-2x") if tiny else
                    ("smollm2-135m", "smollm2-360m"),
                    batch_pairs=2 if tiny else 16, seq_len=32 if tiny else 256,
                    warmup=1 if tiny else 2, repeats=3 if tiny else 5,
                    threads=1 if tiny else None)
    given = {k: getattr(args, k) for k in ("batch_pairs", "seq_len", "warmup", "repeats",
                                           "threads") if getattr(args, k) is not None}
    if args.models:
        given["models"] = tuple(args.models.split(","))
    if args.no_tests:
        given["tests"] = ()
    elif args.tests:
        given["tests"] = tuple(shlex.split(args.tests))
    else:
        given["tests"] = TINY_TESTS if tiny else FULL_TESTS
    fields = {**defaults, **given}
    cfg = GpuCheckConfig(device=args.device, tiny=tiny, budget_s=args.budget_s,
                         dtype=args.dtype or ("bfloat16" if args.device == "cuda" else "float32"),
                         prompt_len=max(1, fields["seq_len"] // 4),
                         test_timeout_s=60.0 if tiny else 150.0, **fields)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    log = logging.getLogger("gpu_check")
    log.setLevel(logging.INFO)
    log.handlers[:] = [logging.StreamHandler(sys.stdout),
                       logging.FileHandler(out / "log.txt", mode="w")]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    deadline = t_start + cfg.budget_s
    env = versions(torch.device(cfg.device))
    log.info("gpu_check: %s", json.dumps(env))

    tests = run_tests(cfg, out, deadline - time.perf_counter(), log) if cfg.tests else None
    rows = run_throughput(cfg, deadline, log,
                          on_row=lambda rows: _write_csv(out / "throughput.csv", rows))
    ratio_rows = ratios(rows)
    _write_csv(out / "ratios.csv", ratio_rows)
    summary = {"config": dataclasses.asdict(cfg), "versions": env,
               "tests": {k: v for k, v in tests.items() if k != "cases"} if tests else None,
               "rows": rows, "ratios": ratio_rows, "answers": answers(ratio_rows, cfg.models[0]),
               "wall_s": time.perf_counter() - t_start}
    (out / "report.md").write_text(render_report(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("gpu_check: wrote %s; wall time %.1f s", out, summary["wall_s"])
    failed = tests is not None and (tests["counts"]["failed"] or tests["counts"]["error"]
                                    or not tests["status"].startswith("exit"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
