"""Training throughput of CE (no pauses) vs CYB-AP (3 pauses) on the same real-token batches: tokens/s, model FLOPs, MFU,
peak memory, and how far a bf16-autocast loss lies from the float32 loss (the larger relative gap of two checks: at
initialisation and after the timed AdamW steps).

    python benchmarks/throughput.py --preset cpu --out benchmarks/throughput_cpu.json    # CPU, 1 thread, tiny model (~5 s)
    python benchmarks/throughput.py --device cuda --amp --out benchmarks/throughput_gpu.json  # ~100M parameters, bf16
    python benchmarks/throughput.py --preset cpu --compare-hf                            # + a same-size HF GPT-2 on CYB-AP

A training step is forward + loss (float32) + backward + AdamW step. Both models are TinyGPTs of the same size; CE reads
`B x T` real tokens, CYB-AP reads the pause stream of `B x T x W` positions (W = 4) built from the same tokens, so it does
about W times the work per real token. Rounds alternate between the rows and the median step time is reported.

Model FLOPs per step (PaLM, Chowdhery et al. 2022, App. B; attention counted over the full context, as there):

    F = 6 * P * N_matmul + 12 * n_layers * d_model * P * L

with P = B * L positions per step (L = T for CE, T * W for CYB-AP), N_matmul = n_layers * (4 d^2 + 2 d d_ff) + d * V_out
(the weight matrices every position multiplies by, LM head included, embedding look-up excluded), and the factor 6 =
2 (multiply-add) x 3 (forward + backward). MFU = F / (step time x peak FLOP/s of the device); the peak is taken from
--peak-tflops or, for known GPUs with --amp, from the bf16 dense peak in PEAK_BF16_TFLOPS (vendor data sheets).
The formula is `cyb_nb.train.train_flops` (derived in nbs/07_train.ipynb, "What to expect").
"""
import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from cyb_nb.losses import LossConfig
from cyb_nb.models import TinyGPT, forward_steps
from cyb_nb.stream import PauseVocab
from cyb_nb.train import train_flops

PRESETS = {
    "cpu": dict(d=64, layers=2, heads=4, V=512, T=32, B=4, rounds=5, steps=2),
    "gpu-100m": dict(d=768, layers=12, heads=12, V=32768, T=512, B=8, rounds=5, steps=5),  # ~110M parameters with CYB-AP
}
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets; matched in this order on the device name.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4), ("A100", 312.0),
                    ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0))


def peak_flops(dev: torch.device, amp: bool, override_tflops: float | None) -> tuple[float | None, str]:
    "(peak FLOP/s, where it comes from): --peak-tflops, else the bf16 table for a known GPU with --amp, else unknown."
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if dev.type == "cuda" and amp:
        name = torch.cuda.get_device_name(dev)
        for key, tf in PEAK_BF16_TFLOPS:
            if key in name:
                return tf * 1e12, f"bf16 dense peak of {key} (data sheet)"
    return None, "unknown (pass --peak-tflops)"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast for the forward pass (losses stay float32)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="sizes; default: cpu on CPU, gpu-100m on CUDA; explicit size flags override it")
    for k, h in (("d", "d_model"), ("layers", "layers"), ("heads", "attention heads"), ("V", "real vocabulary"),
                 ("T", "real tokens per row"), ("B", "rows per step"), ("rounds", "timed rounds (median)"),
                 ("steps", "timed steps per round")):
        ap.add_argument(f"--{k}", type=int, default=None, help=h)
    ap.add_argument("--pauses", type=int, default=3, help="pauses per real token of the CYB-AP model (W = pauses + 1)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s of the device for MFU, in TFLOP/s")
    ap.add_argument("--compare-hf", action="store_true", help="add a same-size HF GPT-2 trained with CYB-AP")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared machine more threads mostly measure oversubscription; 0 = torch's default)")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset or ("gpu-100m" if args.device.startswith("cuda") else "cpu")]
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.preset = args.preset or ("gpu-100m" if args.device.startswith("cuda") else "cpu")
    return args


class Row:
    "One benchmarked configuration: a model, its pause vocabulary, its loss and an AdamW optimizer."

    def __init__(self, name, model, pv, loss, dev, args, logits_fn=None):
        self.name, self.model, self.pv, self.loss, self.args = name, model.to(dev).train(), pv, loss, args
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, fused=dev.type == "cuda")
        self.logits_fn = logits_fn or (lambda ids: forward_steps(self.model, ids, self.pv))
        self.dev, self.times = dev, []

    def loss_value(self, ids, amp: bool) -> torch.Tensor:
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=amp):
            step_logits, stream = self.logits_fn(ids)
        return self.loss(step_logits.float(), stream.targets, step_mask=stream.step_mask)

    def step(self, ids):
        self.opt.zero_grad(set_to_none=True)
        self.loss_value(ids, self.args.amp).backward()
        self.opt.step()

    def timed(self, ids):
        sync = torch.cuda.synchronize if self.dev.type == "cuda" else (lambda: None)
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(self.args.steps):
            self.step(ids)
        sync()
        self.times.append(((time.perf_counter() - t0) / self.args.steps, (time.process_time() - c0) / self.args.steps))


def hf_gpt2_row(pv, args, dev):
    "A same-size HF GPT-2 on the CYB-AP stream; δ is an extra vocabulary row, as PauseLM exposes it."
    from transformers import GPT2Config, GPT2LMHeadModel
    from cyb_nb.stream import expand
    torch.manual_seed(0)
    L = args.T * pv.W_max
    cfg = GPT2Config(vocab_size=pv.n_inputs + 1, n_positions=L, n_embd=args.d, n_layer=args.layers, n_head=args.heads,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "sdpa"
    gpt2 = GPT2LMHeadModel(cfg)
    dk = pv.n_inputs

    def logits(ids):
        s = expand(ids, pv.n_pauses, pv.pause_ids, vocab_size=pv.vocab_size)
        z = gpt2(input_ids=s.input_ids, position_ids=s.position_ids, attention_mask=torch.ones_like(s.input_ids),
                 use_cache=False).logits
        return s.steps(torch.cat([z[..., :pv.vocab_size], z[..., dk:dk + 1]], -1)), s

    return Row("HF GPT-2 CYB-AP", gpt2, pv, LossConfig.from_name("ap"), dev, args, logits)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    rows = []
    for name, n_pauses, loss in (("CE", 0, "ce"), ("CYB-AP", args.pauses, "ap")):
        pv = PauseVocab(args.V, n_pauses)
        torch.manual_seed(0)
        model = TinyGPT.from_vocab(pv, d_model=args.d, n_layers=args.layers, n_heads=args.heads,
                                   max_positions=max(args.T, 2))
        rows.append(Row(name, model, pv, LossConfig.from_name(loss), dev, args))
    if args.compare_hf:
        rows.append(hf_gpt2_row(rows[1].pv, args, dev))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.V, (args.B, args.T), generator=g).to(dev)  # the same real tokens for every row

    def bf16_agreement(r):
        "bf16-autocast loss vs float32 loss on the same weights and batch."
        with torch.no_grad():
            f32, bf16 = float(r.loss_value(ids, False)), float(r.loss_value(ids, True))
        return {"loss_fp32": f32, "loss_bf16": bf16, "abs_diff": abs(bf16 - f32), "rel_diff": abs(bf16 - f32) / abs(f32)}

    agreement = {r.name: {"init": bf16_agreement(r)} for r in rows}

    peak_mem = {}
    for r in rows:  # warm-up (and the peak memory of a step)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        r.step(ids)
        r.step(ids)
        peak_mem[r.name] = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    for k in range(args.rounds):
        for r in (rows if k % 2 == 0 else rows[::-1]):
            r.timed(ids)

    for r in rows:  # again after the 2 + rounds x steps training steps
        agreement[r.name]["trained"] = bf16_agreement(r)
    peak, peak_src = peak_flops(dev, args.amp, args.peak_tflops)
    d_ff = 4 * args.d
    table = []
    for r in rows:
        L = args.T * r.pv.W_max
        wall = statistics.median(w for w, _ in r.times)
        cpu = statistics.median(c for _, c in r.times)
        flops = train_flops(args.B, L, args.d, args.layers, r.pv.n_outputs, d_ff)
        table.append(dict(row=r.name, params=sum(p.numel() for p in r.model.parameters()), W=r.pv.W_max, stream_len=L,
                          ms_per_step=1e3 * wall, cpu_ms_per_step=1e3 * cpu, real_tokens_per_s=args.B * args.T / wall,
                          positions_per_s=args.B * L / wall, model_flops_per_step=flops, model_tflops_per_s=flops / wall / 1e12,
                          mfu=(flops / wall / peak) if peak else None, peak_mem_gib=peak_mem[r.name],
                          bf16_rel_loss_diff=max(a["rel_diff"] for a in agreement[r.name].values())))

    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    print(f"device={dev} ({dev_name}) amp={'bf16' if args.amp else 'off'} threads={torch.get_num_threads()} preset={args.preset}  "
          f"d={args.d} layers={args.layers} heads={args.heads} V={args.V} B={args.B} T={args.T}  peak: {peak_src}")
    print(f"{'row':<16} {'params':>12} {'W':>2} {'ms/step':>9} {'real tok/s':>11} {'positions/s':>12} "
          f"{'TFLOP/s':>8} {'MFU':>6} {'mem GiB':>8} {'bf16/fp32 loss':>15}")
    for t in table:
        mfu = f"{100 * t['mfu']:.1f}%" if t["mfu"] is not None else "n/a"
        mem = f"{t['peak_mem_gib']:.2f}" if t["peak_mem_gib"] is not None else "n/a"
        print(f"{t['row']:<16} {t['params']:>12,} {t['W']:>2} {t['ms_per_step']:>9.1f} {t['real_tokens_per_s']:>11,.0f} "
              f"{t['positions_per_s']:>12,.0f} {t['model_tflops_per_s']:>8.4f} {mfu:>6} {mem:>8} {t['bf16_rel_loss_diff']:>15.1e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(args=vars(args), device=str(dev), device_name=dev_name, torch=torch.__version__,
                           threads=torch.get_num_threads(), peak_flops=peak, peak_source=peak_src,
                           bf16_agreement=agreement, rows=table), f, indent=1)
            f.write("\n")
    return table


if __name__ == "__main__":
    main()
