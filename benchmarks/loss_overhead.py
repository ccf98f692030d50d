"""Time of the CYB head + loss (forward + backward) against plain `F.cross_entropy` on the same step logits.

    python benchmarks/loss_overhead.py [--quick] [--device cpu|cuda] [--dtype float32|bfloat16]

Rows = B·T·W logit vectors of width V+1 (δ last). CE is `F.cross_entropy(logits.view(-1, V+1), targets)` — one logsumexp per
row, the unavoidable part of any loss on these logits. "naive" is the same CYB loss with the head written with plain autograd
ops (logsumexp over a slice, gather, index), to show what the fused head (`losses._Head`) saves. Goal: CYB / CE <= 1.3.
The three are timed in turn in every round and the ratio columns are medians of per-round ratios, so that a shared,
busy machine affects them alike.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from cyb_nb.losses import LossConfig, cyb_nll, dk_shift


def naive_cyb(logits, targets, dk_prior=0.9):
    "ℓ_CYB with an unfused autograd head (reference for the speed-up of the fused one)."
    z = logits.float()
    V = z.shape[-1] - 1
    z_dk = z[..., V] + dk_shift(V, dk_prior)
    lse_v = torch.logsumexp(z[..., :V], -1)
    lse = torch.logaddexp(lse_v, z_dk)
    log_t = z.gather(-1, targets[..., None, None].clamp(min=0).expand(*z.shape[:-1], 1)).squeeze(-1) - lse_v
    nll, _ = cyb_nll(z_dk - lse, lse_v - lse, log_t)
    return nll.mean()


def once(fn, logits, sync):
    "Seconds of one forward + backward of `fn(logits)`."
    logits.grad = None
    sync()
    t0 = time.perf_counter()
    fn(logits).backward()
    sync()
    return time.perf_counter() - t0


def interleaved(fns, logits, reps, sync):
    "Per function: median seconds over `reps` rounds, the functions timed in turn in every round (fair under varying load)."
    for f in fns:  # warm-up
        once(f, logits, sync)
    ts = [[once(f, logits, sync) for f in fns] for _ in range(reps)]
    med = lambda xs: sorted(xs)[len(xs) // 2]
    return [med([r[k] for r in ts]) for k in range(len(fns))], [med([r[k] / r[0] for r in ts]) for k in range(len(fns))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--quick", action="store_true", help="two small sizes only")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--sizes", default="", help="rows:V pairs, e.g. 8192:512,32768:2048 (overrides the default list)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev, dt = torch.device(a.device), getattr(torch, a.dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    W = 4
    sizes = [(8192, 512), (8192, 2048)] if a.quick else [(8192, 512), (8192, 2048), (8192, 8192), (32768, 512), (32768, 2048)]
    if dev.type == "cuda" and not a.quick:
        sizes += [(32768, 8192), (131072, 8192), (32768, 32768)]
    if a.sizes:
        sizes = [tuple(int(v) for v in p.split(":")) for p in a.sizes.split(",")]
    cyb = LossConfig.from_name("ap")
    print(f"device={dev} dtype={a.dtype} threads={torch.get_num_threads()} W={W}")
    print(f"{'rows B*T*W':>11} {'V':>6} | {'CE ms':>8} {'CYB ms':>8} {'naive ms':>9} | {'CYB/CE':>6} {'naive/CE':>8}")
    for rows, V in sizes:
        torch.manual_seed(0)
        B, T = 1, rows // W
        logits = torch.randn(B, T, W, V + 1, device=dev).to(dt).requires_grad_()
        targets = torch.randint(0, V, (B, T), device=dev)
        tgt_rows = targets[..., None].expand(B, T, W).reshape(-1)
        (t_ce, t_cyb, t_naive), (_, r_cyb, r_naive) = interleaved(
            [lambda x: F.cross_entropy(x.view(-1, V + 1), tgt_rows), lambda x: cyb(x, targets),
             lambda x: naive_cyb(x, targets)], logits, a.reps, sync)
        print(f"{rows:>11} {V:>6} | {1e3 * t_ce:8.2f} {1e3 * t_cyb:8.2f} {1e3 * t_naive:9.2f} | "
              f"{r_cyb:6.2f} {r_naive:8.2f}", flush=True)
        del logits


if __name__ == "__main__":
    main()
