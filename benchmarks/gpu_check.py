"""The one-command GPU check: does the library run right, and how fast, on one CUDA GPU? About 3-6 minutes on one GPU.

    python benchmarks/gpu_check.py --out benchmarks/gpu_check.json   # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --dry-run                          # the same code on the CPU with tiny sizes (under a minute)

Five parts, each timed and written to the JSON as soon as it ends (a run cut short keeps what it finished):

1. tests     - `tests/test_device.py` on the GPU: TinyGPT and PauseLM (GPT-2, Llama) forward/backward in float32 against the CPU
               in float64, the fused `head_log_probs` backward against autograd, KV-cache decoding against recomputation, a
               checkpoint written on the GPU loaded on the CPU and back; plus `tests/test_models.py::test_cuda_matches_cpu`.
2. bf16      - bf16 autocast against float32 on the same weights and batch: the loss and the whole gradient (relative
               difference, cosine) for CE, TBYS, CYB-AP, CYB-VA and CYB-DP.
3. throughput- training-step tokens/s, model TFLOP/s and MFU (bf16 autocast; `benchmarks/throughput.py`'s timing rows) for a
               TinyGPT `base` (6 x 256) and a GPT-2-small-shaped random `transformers` model wrapped in `PauseLM`, each without
               pauses (W = 1, CE) and with 3 pauses (W = 4, CYB-AP) on the same real tokens; and the CYB-AP loss against
               `F.cross_entropy` on the same positions at V = 32k and 50k (forward + backward, ms and peak memory).
4. regime    - the paper's regime in small: a `small` (4 x 128) base pretrained with CE on the GPU, grown and fine-tuned with
               continued CE and CYB-AP (one seed, `FinetuneConfig()`), validation perplexity of each: the whole path runs on
               CUDA and CYB-AP trains.
5. decoding  - batched adaptive decoding against Recipe 1 (tokens/s), when the library has a batched decoder.

It stops at once with a clear message when no CUDA device is visible (unless --dry-run). `--dry-run` runs every part on the CPU
with tiny sizes, so that `tests/test_gpu_check.py` keeps the script from rotting. MFU uses the dense bf16 peak of known GPUs
(`benchmarks/throughput.py`, PEAK_BF16_TFLOPS) or --peak-tflops.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SIZES = {  # (GPU, dry run)
    "bf16": (dict(d_model=256, n_layers=6, n_heads=8, V=1024, B=8, T=128), dict(d_model=16, n_layers=1, n_heads=2, V=50, B=2, T=6)),
    "tinygpt": (dict(d_model=256, n_layers=6, n_heads=8, V=1024, B=32, T=256), dict(d_model=16, n_layers=1, n_heads=2, V=50, B=2, T=8)),
    "gpt2": (dict(d_model=768, n_layers=12, n_heads=12, V=50257, B=8, T=256), dict(d_model=16, n_layers=1, n_heads=2, V=60, B=2, T=8)),
    "loss": (dict(B=8, T=256, W=4, Vs=(32768, 50257)), dict(B=2, T=4, W=4, Vs=(64, 100))),
    "timing": (dict(rounds=5, steps=5), dict(rounds=1, steps=1)),
    "regime": (dict(base=dict(d_model=128, n_layers=4, n_heads=4), base_steps=2000, ft_steps=1500, eval_batches=None),
               dict(base=dict(d_model=16, n_layers=1, n_heads=2, steps=10, batch_size=4), base_steps=10, ft_steps=4,
                    eval_batches=2)),
}


def size(part: str, dry: bool) -> dict:
    return SIZES[part][1 if dry else 0]


def machine(dev: torch.device) -> dict:
    import transformers
    info = dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                cuda=torch.version.cuda, platform=platform.platform(), cpu=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), device=str(dev))
    try:
        from importlib.metadata import version
        info["cyb_nb"] = version("cyb_nb")
    except Exception:
        info["cyb_nb"] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        info["git_commit"] = None
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                    gpu_count=torch.cuda.device_count(), cudnn=torch.backends.cudnn.version())
    return info


# ---------------------------------------------------------------------------------------------------------------- 1. tests
def part_tests(dev: torch.device, dry: bool) -> dict:
    "Run the device tests in a subprocess on `dev` (the CPU in a dry run) and count the outcomes."
    targets = ["tests/test_device.py"] + ([] if dry else ["tests/test_models.py::test_cuda_matches_cpu"])
    env = dict(os.environ, CYB_NB_TEST_DEVICE="cpu" if dry else str(dev))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", r.stdout.splitlines()[-1] if r.stdout else "")}
    out = dict(targets=targets, returncode=r.returncode, seconds=time.perf_counter() - t0, **{k: counts.get(k, 0) for k in
                                                                                            ("passed", "failed", "skipped")})
    if r.returncode:
        out["tail"] = (r.stdout + r.stderr)[-3000:]
    return out


# ----------------------------------------------------------------------------------------------------------------- 2. bf16
def _tinygpt(n_pauses: int, s: dict, dev):
    from cyb_nb.models import TinyGPT
    from cyb_nb.stream import PauseVocab
    torch.manual_seed(0)
    return TinyGPT.from_vocab(PauseVocab(s["V"], n_pauses), d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"]).to(dev)


def part_bf16(dev: torch.device, dry: bool) -> dict:
    "bf16 autocast vs float32 on the same weights and batch: relative loss difference, gradient cosine and relative difference."
    from cyb_nb.losses import LossConfig
    from cyb_nb.models import forward_steps
    s = size("bf16", dry)
    ids = torch.randint(0, s["V"], (s["B"], s["T"]), generator=torch.Generator().manual_seed(0)).to(dev)
    out = {}
    for name in ("ce", "tbys", "ap", "va", "dp"):
        cfg = LossConfig.from_name(name)
        model = _tinygpt(0 if name == "ce" else 3, s, dev)
        res = []
        for amp in (False, True):
            model.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                z, st = forward_steps(model, ids, model.pause_vocab)
            loss = cfg(z.float(), st.targets, step_mask=st.step_mask)
            loss.backward()
            res.append((loss.item(), torch.cat([p.grad.reshape(-1).float() for p in model.parameters() if p.grad is not None])))
        (l32, g32), (l16, g16) = res
        out[name] = dict(loss_fp32=l32, loss_bf16=l16, loss_rel_diff=abs(l16 - l32) / abs(l32),
                         grad_cosine=float(F.cosine_similarity(g16, g32, dim=0)),
                         grad_rel_diff=float((g16 - g32).norm() / g32.norm()))
    return out


# ----------------------------------------------------------------------------------------------------------- 3. throughput
def _timed_rows(rows, ids, t: dict, dev) -> None:
    "Warm up each row twice (recording its peak memory), then alternate the rows over the timed rounds."
    for r in rows:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        r.step(ids)
        r.step(ids)
        r.peak_mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    for k in range(t["rounds"]):
        for r in (rows if k % 2 == 0 else rows[::-1]):
            r.timed(ids)


def _row_table(rows, B: int, T: int, d: int, layers: int, peak: float | None) -> list:
    from cyb_nb.train import train_flops
    table = []
    for r in rows:
        L, wall = T * r.pv.W_max, statistics.median(w for w, _ in r.times)
        flops = train_flops(B, L, d, layers, r.n_outputs, 4 * d)
        table.append(dict(row=r.name, params=sum(p.numel() for p in r.model.parameters()), W=r.pv.W_max, B=B, T=T,
                          ms_per_step=1e3 * wall, real_tokens_per_s=B * T / wall, positions_per_s=B * L / wall,
                          model_tflops_per_s=flops / wall / 1e12, mfu=flops / wall / peak if peak else None,
                          peak_mem_gib=r.peak_mem))
    return table


def _loss_vs_cross_entropy(dev, dry: bool) -> list:
    "The CYB-AP loss on [B, T, W, V+1] step logits against F.cross_entropy on the same B*T*W positions: forward + backward."
    from cyb_nb.losses import LossConfig
    s, t = size("loss", dry), size("timing", dry)
    ap, out = LossConfig.from_name("ap"), []
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for V in s["Vs"]:
        g = torch.Generator(device=dev).manual_seed(0)
        z = torch.randn(s["B"], s["T"], s["W"], V + 1, device=dev, generator=g).requires_grad_()
        tg = torch.randint(0, V, (s["B"], s["T"]), device=dev, generator=g)
        ce_z = z.detach()[..., :V].reshape(-1, V).clone().requires_grad_()
        ce_t = tg[:, :, None].expand(-1, -1, s["W"]).reshape(-1)
        fns = {"cyb_ap": lambda: ap(z, tg).backward(), "cross_entropy": lambda: F.cross_entropy(ce_z, ce_t).backward()}
        row = dict(V=V, positions=s["B"] * s["T"] * s["W"])
        for name, fn in fns.items():
            fn(); sync()  # warm-up
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            times = []
            for _ in range(t["rounds"] * t["steps"]):
                t0 = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t0)
            row[f"{name}_ms"] = 1e3 * statistics.median(times)
            row[f"{name}_peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        row["ratio"] = row["cyb_ap_ms"] / row["cross_entropy_ms"]
        out.append(row)
    return out


def part_throughput(dev: torch.device, dry: bool, peak_tflops: float | None) -> dict:
    from throughput import Row, peak_flops
    from cyb_nb.losses import LossConfig
    from cyb_nb.models import PauseLM, tiny_hf_lm
    t = size("timing", dry)
    args = SimpleNamespace(amp=True, steps=t["steps"])  # bf16 autocast forward, float32 losses (as in training)
    peak, peak_src = peak_flops(dev, True, peak_tflops)
    out = dict(peak=peak_src, amp="bf16")

    s = size("tinygpt", dry)
    rows = []
    for name, k, loss in (("TinyGPT base CE", 0, "ce"), ("TinyGPT base CYB-AP", 3, "ap")):
        m = _tinygpt(k, s, dev)
        rows.append(Row(name, m, m.pause_vocab, LossConfig.from_name(loss), dev, args))
        rows[-1].n_outputs = m.pause_vocab.n_outputs
    ids = torch.randint(0, s["V"], (s["B"], s["T"]), generator=torch.Generator().manual_seed(0)).to(dev)
    _timed_rows(rows, ids, t, dev)
    out["tinygpt"] = _row_table(rows, s["B"], s["T"], s["d_model"], s["n_layers"], peak)
    del rows

    s = size("gpt2", dry)
    words = [f"w{i}" for i in range(s["V"] - 2)]  # a word-level vocabulary of V entries (with <unk>, <pad>)
    rows = []
    for name, k, loss in (("PauseLM GPT-2 CE", 0, "ce"), ("PauseLM GPT-2 CYB-AP", 3, "ap")):
        torch.manual_seed(0)
        lm, tok = tiny_hf_lm("gpt2", words=words, d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"],
                             max_positions=max(1024, s["T"]))
        m = PauseLM(lm, tok, n_pauses=k, seed=0)
        rows.append(Row(name, m, m.pause_vocab, LossConfig.from_name(loss), dev, args))
        rows[-1].n_outputs = m.lm.get_output_embeddings().weight.shape[0]  # the LM head computes every row before PauseLM selects
    ids = torch.randint(2, s["V"], (s["B"], s["T"]), generator=torch.Generator().manual_seed(0)).to(dev)
    _timed_rows(rows, ids, t, dev)
    out["pauselm_gpt2"] = _row_table(rows, s["B"], s["T"], s["d_model"], s["n_layers"], peak)
    del rows
    out["loss_vs_cross_entropy"] = _loss_vs_cross_entropy(dev, dry)
    return out


# --------------------------------------------------------------------------------------------------------------- 4. regime
def part_regime(dev: torch.device, dry: bool) -> dict:
    "A `small` base pretrained with CE on the device, then continued CE and CYB-AP fine-tuned from it: validation perplexity."
    from cyb_nb.data import load_data
    from cyb_nb.train import BaseConfig, FinetuneConfig, evaluate, finetune, pretrain_base
    s = size("regime", dry)
    cfg = BaseConfig(**{**s["base"], "steps": s["base_steps"]})
    t0 = time.perf_counter()
    base = pretrain_base(cfg, progress=False, device=dev)
    out = dict(base=dict(config=s["base"], steps=s["base_steps"], val_ppl=base.base_info["val_ppl"],
                         seconds=time.perf_counter() - t0))
    data = load_data("text", seq_len=cfg.seq_len, train_split="finetune")
    for loss in ("ce", "ap"):
        t0 = time.perf_counter()
        model, hist = finetune(base, data, loss, FinetuneConfig(steps=s["ft_steps"]), seed=0, device=dev, progress=False,
                               eval_every=s["ft_steps"], eval_batches=1)
        ev = evaluate(model, data, loss, batch_size=64, max_batches=s["eval_batches"], device=dev)
        out[loss] = dict(val_ppl=ev["ppl"], val_nll=ev["nll"], tokens=ev.get("tokens"), mean_pauses=ev.get("mean_pauses"),
                         steps=s["ft_steps"], seconds=time.perf_counter() - t0)
    out["ap_vs_ce_percent"] = 100 * (out["ap"]["val_ppl"] / out["ce"]["val_ppl"] - 1)
    return out


# ------------------------------------------------------------------------------------------------------------- 5. decoding
def part_decoding(dev: torch.device, dry: bool) -> dict:
    "Batched adaptive decoding against Recipe 1, from benchmarks/decode_throughput.py's `run`, when the library has it."
    try:
        import decode_throughput
    except ImportError:
        return dict(skipped="benchmarks/decode_throughput.py is not in this checkout")
    return decode_throughput.gpu_check_line(dev, dry)


PARTS = ("tests", "bf16", "throughput", "regime", "decoding")


def _print_summary(res: dict) -> None:
    print("\n== GPU check:", res["machine"].get("gpu") or res["machine"]["device"], f"({res['total_seconds']:.0f} s)")
    for name in PARTS:
        p = res["parts"].get(name)
        if p is None:
            continue
        if "error" in p:
            print(f"{name:<11} ERROR {p['error']}")
            continue
        r = p["result"]
        if name == "tests":
            print(f"{name:<11} {r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped ({p['seconds']:.0f} s)")
        elif name == "bf16":
            for k, v in r.items():
                print(f"{name:<11} {k:<5} loss rel diff {v['loss_rel_diff']:.1e}  grad cosine {v['grad_cosine']:.5f}  "
                      f"grad rel diff {v['grad_rel_diff']:.1e}")
        elif name == "throughput":
            for t in r["tinygpt"] + r["pauselm_gpt2"]:
                mfu = f"{100 * t['mfu']:.1f}%" if t["mfu"] is not None else "n/a"
                print(f"{name:<11} {t['row']:<22} W={t['W']} {t['ms_per_step']:8.1f} ms/step {t['real_tokens_per_s']:>12,.0f} "
                      f"real tok/s {t['model_tflops_per_s']:8.2f} TFLOP/s  MFU {mfu}")
            for t in r["loss_vs_cross_entropy"]:
                print(f"{name:<11} loss V={t['V']:<6} CYB-AP {t['cyb_ap_ms']:.2f} ms  cross_entropy {t['cross_entropy_ms']:.2f} ms  "
                      f"(x{t['ratio']:.2f})")
        elif name == "regime":
            print(f"{name:<11} base val ppl {r['base']['val_ppl']:.2f}; CE {r['ce']['val_ppl']:.2f}, CYB-AP {r['ap']['val_ppl']:.2f} "
                  f"({r['ap_vs_ce_percent']:+.1f} %) ({p['seconds']:.0f} s)")
        else:
            print(f"{name:<11} {json.dumps(r)[:300]}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="run every part on the CPU with tiny sizes (a test of the script)")
    ap.add_argument("--device", default="cuda", help="the CUDA device (default cuda)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak FLOP/s for MFU, TFLOP/s")
    ap.add_argument("--out", default=None, help="write every figure to this JSON (after each part)")
    a = ap.parse_args(argv)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    if bad := [p for p in parts if p not in PARTS]:
        ap.error(f"--parts: unknown {bad}; choose from {','.join(PARTS)}")
    if a.dry_run:
        dev = torch.device("cpu")
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); nothing was run. "
                     "Run it on a machine with a GPU, or use --dry-run to exercise the script on the CPU.")
        dev = torch.device(a.device)
    res = dict(dry_run=a.dry_run, machine=machine(dev), parts={})
    t_all = time.perf_counter()

    def save():
        res["total_seconds"] = time.perf_counter() - t_all
        if a.out:
            tmp = Path(a.out).with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=1))
            os.replace(tmp, a.out)

    for name in parts:
        t0 = time.perf_counter()
        print(f"-- {name} ...", flush=True)
        try:
            fn = {"tests": part_tests, "bf16": part_bf16, "regime": part_regime, "decoding": part_decoding}.get(name)
            result = fn(dev, a.dry_run) if fn else part_throughput(dev, a.dry_run, a.peak_tflops)
            res["parts"][name] = dict(result=result, seconds=time.perf_counter() - t0)
        except Exception as e:  # keep the other parts' figures; the error is reported and fails the run at the end
            import traceback
            res["parts"][name] = dict(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:],
                                      seconds=time.perf_counter() - t0)
        print(f"   {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        save()
    _print_summary(res)
    failed = [n for n, p in res["parts"].items() if "error" in p or (n == "tests" and p["result"]["returncode"])]
    if failed:
        sys.exit(f"gpu_check: failed parts: {', '.join(failed)}")
    return res


if __name__ == "__main__":
    main()
