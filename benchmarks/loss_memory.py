"""Peak extra memory and time of chunked vs naive sampled-token log-probs (+ entropy), forward + backward.

The learner's hot spot: hidden states [N, H] times an lm_head [V, H] at Qwen's vocabulary (151,657).
Naive = full fp32 logits, log_softmax, gather, entropy, backward through autograd. Chunked =
reopold_agents.logprobs.chunked_logprobs. Each variant runs in a fresh subprocess; on CPU its peak
extra memory is the peak RSS (getrusage ru_maxrss) minus the RSS once its inputs exist; on CUDA it is
torch.cuda.max_memory_allocated minus the allocated bytes before the call.

    python benchmarks/loss_memory.py                 # CPU defaults, well under 2 minutes
    python benchmarks/loss_memory.py --device cuda --tokens 8192 --hidden 1536

The last line is the memory ratio (target: chunked <= 0.25x naive).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

QWEN_VOCAB = 151_657


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(variant: str, tokens: int, hidden: int, vocab: int, chunk: int, device: str) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    g = torch.Generator(device="cpu").manual_seed(0)
    h = (torch.randn(tokens, hidden, generator=g) * 0.5).to(device).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * 0.05).to(device).requires_grad_()
    t = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    upstream = torch.randn(tokens, generator=g).to(device)
    from reopold_agents.logprobs import chunked_logprobs

    # warm-up on a tiny problem so library initialisation is not counted
    small = chunked_logprobs(h[:2].detach().requires_grad_(), w[:8].detach().requires_grad_(), t[:2] % 8, chunk_size=1)[0]
    small.sum().backward()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    start = time.perf_counter()
    if variant == "naive":
        logits = h @ w.t()
        logp = torch.log_softmax(logits.float(), dim=-1)
        lp = logp.gather(1, t[:, None])[:, 0]
        with torch.no_grad():
            ent = -(logp.exp() * logp).sum(-1)
    else:
        lp, ent = chunked_logprobs(h, w, t, chunk_size=chunk, with_entropy=True)
    (lp * upstream).sum().backward()
    checksum = float(lp.detach().sum()) + float(ent.sum()) + float(h.grad.sum()) + float(w.grad.sum())
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "peak_extra_bytes": max(peak, 0), "seconds": seconds, "checksum": checksum}


def _run(variant: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--tokens", str(args.tokens), "--hidden", str(args.hidden),
           "--vocab", str(args.vocab), "--chunk", str(args.chunk), "--device", args.device]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--vocab", type=int, default=QWEN_VOCAB)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.tokens, args.hidden, args.vocab, args.chunk, args.device)))
        return
    mib = 1024 * 1024
    fp32_logits = args.tokens * args.vocab * 4 / mib
    print(f"tokens={args.tokens} hidden={args.hidden} vocab={args.vocab} chunk={args.chunk} device={args.device}")
    print(f"one fp32 [tokens x vocab] tensor: {fp32_logits:.0f} MiB")
    res = {v: _run(v, args) for v in ("naive", "chunked")}
    for v, r in res.items():
        print(f"{v:8s} peak extra {r['peak_extra_bytes'] / mib:8.1f} MiB   time {r['seconds']:6.2f} s")
    rel = abs(res["naive"]["checksum"] - res["chunked"]["checksum"]) / max(1.0, abs(res["naive"]["checksum"]))
    print(f"checksum relative difference: {rel:.2e}")
    print(f"time ratio chunked/naive: {res['chunked']['seconds'] / res['naive']['seconds']:.2f}x")
    ratio = res["chunked"]["peak_extra_bytes"] / max(1, res["naive"]["peak_extra_bytes"])
    print(f"memory ratio chunked/naive: {ratio:.3f}x (target <= 0.25x)")


if __name__ == "__main__":
    main()
