"""Training-step throughput (forward + CYB-AP loss + backward) of TinyGPT vs a same-size HF GPT-2 on the same pause stream.

    python benchmarks/throughput.py                      # CPU, 1 thread, small sizes (~20 s)
    python benchmarks/throughput.py --T 64 --B 8         # a larger CPU run
    python benchmarks/throughput.py --device cuda --amp  # GPU, bf16 autocast, larger sizes: --d 512 --layers 8 --T 512 --B 16

Both models see the identical expanded stream (real tokens + pauses, shared position ids) and the identical loss on
[B, T, W, V+1] step logits; GPT-2's δ is an extra vocabulary row, exactly as PauseLM exposes it. Rounds alternate between
the models and the median is reported, so load from other processes hits both alike.
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from cyb_nb.losses import LossConfig
from cyb_nb.models import TinyGPT
from cyb_nb.stream import PauseVocab, expand


def build(args, pv):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    tiny = TinyGPT.from_vocab(pv, d_model=args.d, n_layers=args.layers, n_heads=args.heads, max_positions=args.T)
    cfg = GPT2Config(vocab_size=pv.n_inputs + 1, n_positions=args.T, n_embd=args.d, n_layer=args.layers, n_head=args.heads,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "sdpa"
    gpt2 = GPT2LMHeadModel(cfg)
    return tiny, gpt2


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--V", type=int, default=512)
    ap.add_argument("--pauses", type=int, default=3)
    ap.add_argument("--T", type=int, default=32, help="real tokens per sequence")
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per round")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared machine more threads mostly measure oversubscription; 0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    dev = torch.device(args.device)
    pv = PauseVocab(args.V, args.pauses)
    tiny, gpt2 = (m.to(dev).train() for m in build(args, pv))
    loss_fn = LossConfig.from_name("ap")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.V, (args.B, args.T), generator=g).to(dev)
    s = expand(ids, pv.n_pauses, pv.pause_ids, vocab_size=pv.vocab_size)
    ones = torch.ones_like(s.input_ids)
    dk = pv.n_inputs  # GPT-2's δ row

    def tiny_logits():
        return tiny(s.input_ids, position_ids=s.position_ids)

    def gpt2_logits():
        z = gpt2(input_ids=s.input_ids, position_ids=s.position_ids, attention_mask=ones, use_cache=False).logits
        return torch.cat([z[..., : pv.vocab_size], z[..., dk:dk + 1]], -1)

    def step(model, logits_fn):
        model.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = loss_fn(s.steps(logits_fn()).float(), s.targets)
        loss.backward()
        return loss

    def timed(model, fn):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step(model, fn)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps, (time.process_time() - c0) / args.steps

    runs = {"TinyGPT": (tiny, tiny_logits), "HF GPT-2": (gpt2, gpt2_logits)}
    for m, fn in runs.values():  # warm-up
        step(m, fn)
        step(m, fn)
    times = {k: [] for k in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for k in order:
            times[k].append(timed(*runs[k]))

    real, pos = args.B * args.T, s.input_ids.numel()
    print(f"device={dev} amp={'bf16' if args.amp else 'off'} threads={torch.get_num_threads()}  "
          f"d={args.d} layers={args.layers} heads={args.heads} V={args.V} W_max={pv.W_max} B={args.B} T={args.T} "
          f"(stream length {s.input_ids.shape[1]})")
    print(f"{'model':<10} {'params':>10} {'ms/step':>9} {'cpu ms/step':>12} {'real tok/s':>11} {'stream pos/s':>13} {'vs GPT-2':>9}")
    med = {k: statistics.median(w for w, _ in v) for k, v in times.items()}  # wall clock
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}  # process CPU time (robust to other load)
    for k, (m, _) in runs.items():
        n = sum(p.numel() for p in m.parameters())
        print(f"{k:<10} {n:>10,} {1e3 * med[k]:>9.1f} {1e3 * cpu[k]:>12.1f} {real / med[k]:>11,.0f} {pos / med[k]:>13,.0f} "
              f"{med['HF GPT-2'] / med[k]:>8.2f}x")
    ratio = med["TinyGPT"] / med["HF GPT-2"]
    print(f"TinyGPT / GPT-2 step time: wall {ratio:.2f}, cpu {cpu['TinyGPT'] / cpu['HF GPT-2']:.2f} (goal <= 1.2): "
          f"{'OK' if ratio <= 1.2 else 'SLOWER'}")


if __name__ == "__main__":
    main()
