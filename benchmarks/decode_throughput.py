"""Where pauses save wall-clock: batched decoding, Recipe 1 against the adaptive mass rule, tokens/s against batch size.

    python benchmarks/decode_throughput.py --json benchmarks/decode_throughput.json --cache /tmp/dt_models   # chapter 08's runs
    python benchmarks/decode_throughput.py --quick --json /tmp/dthr.json     # seconds: exercises the code, measures nothing

`generate_batch` feeds every row one chunk per forward call: under Recipe 1 a real token and its W-1 pauses (W positions), under
the adaptive decoder one position (the row's next real token once it answered, else its next pause). So a call of Recipe 1 costs
W positions per row, an adaptive call one; adaptive decoding needs 1 + pauses calls per token where Recipe 1 needs one. At batch 1
a call costs about the same whatever its size (the per-call overhead dominates), so Recipe 1 wins; once a call's cost grows with
its positions (large batches, long contexts), the adaptive decoder should win by up to W / (1 + mean pauses).

Models:
1. the decoding chapter's trade-off pair, fine-tuned from the project's shipped CE base on the bundled text (`FinetuneConfig()`,
   seed 0): R1 = CYB-AP with Recipe 1 training, decoded with Recipe 1 (the reference); R2 = CYB-AP trained with Recipe 2's random
   pause counts (omega_train = 1:1:1:1), decoded with the mass rule at tau (default 0.05, the trade-off's setting within 1 % of
   Recipe 1's NLL). The NLL of each decoder is scored teacher-forced on the val split (`score_fixed`, `score_adaptive`).
2. a larger `TinyGPT` (`--big-size`, default 'small') with random weights, for speed only: its `<don't know>` is forced
   (`ForceDontKnow`) so that the adaptive decoder spends exactly k pauses per token (k = 0, 1), which isolates the cost of positions.
Batch sizes `--batches` (default 1 4 16 64 256), prompts of `--prompt-len` tokens from the val split, `--new-tokens` generated per
row, the median of `--repeats` timed runs after one warm-up; one thread (the CI machine has two cores, and the run must not depend on
what else runs). The JSON is rewritten atomically after every model, and a rerun with the same settings skips finished models.
"""
import argparse
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from cyb_nb.data import load_data
from cyb_nb.decode import ForceDontKnow, generate_batch, score_adaptive, score_fixed
from cyb_nb.models import grow_pause_model
from cyb_nb.train import BaseConfig, FinetuneConfig, finetune, make_model, pretrained_base


def _save(path: Path, doc: dict):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def time_batch(model, prompts, n_new: int, repeats: int, **kw) -> dict:
    "Median tokens/s (and its spread) of `generate_batch` over `repeats` runs after a warm-up; positions and pauses per token."
    generate_batch(model, prompts, n_new, seed=0, **kw)  # warm-up: allocator, kernels
    runs = [generate_batch(model, prompts, n_new, seed=r, **kw) for r in range(repeats)]
    tps = [r["tokens_per_s"] for r in runs]
    pauses = [p for r in runs for row in r["pauses"] for p in row]
    secs = [r["seconds"] for r in runs]
    return dict(tokens_per_s=statistics.median(tps), tokens_per_s_min=min(tps), tokens_per_s_max=max(tps),
                seconds_per_call=statistics.median(s / r["calls"] for s, r in zip(secs, runs)),
                positions_per_token=statistics.mean(r["positions_per_token"] for r in runs), mean_pauses=statistics.mean(pauses),
                calls=statistics.mean(r["calls"] for r in runs))


def sweep(model, prompts_all, decoders: dict, batches, n_new: int, repeats: int) -> list:
    "One row per (decoder, batch size)."
    rows = []
    for B in batches:
        prompts = [prompts_all[i % len(prompts_all)] for i in range(B)]
        for name, kw in decoders.items():
            r = time_batch(model, prompts, n_new, repeats, **kw)
            rows.append(dict(decoder=name, batch=B, load_avg_1min=os.getloadavg()[0], **r))
            print(f"  B={B:<4} {name:<24} {r['tokens_per_s']:9.0f} tok/s  {r['positions_per_token']:.2f} pos/tok  "
                  f"{r['mean_pauses']:.2f} pauses", flush=True)
    return rows


def crossover(rows: list, ref: str, other: str) -> dict:
    "Speed-up of `other` over `ref` per batch size, and the first batch size at which it is >= 1 and >= 2."
    by = {(r["decoder"], r["batch"]): r for r in rows}
    ratio = {B: by[(other, B)]["tokens_per_s"] / by[(ref, B)]["tokens_per_s"] for (d, B) in by if d == ref and (other, B) in by}
    first = lambda x: next((B for B in sorted(ratio) if ratio[B] >= x), None)  # noqa: E731
    return dict(ref=ref, other=other, speedup={str(B): v for B, v in sorted(ratio.items())}, wins_from=first(1.0), twice_from=first(2.0))


def call_cost(rows: list, one: str, ref: str = "recipe1") -> dict:
    """Per batch size, the measured cost of one adaptive call (one position per row) over one Recipe-1 call (W positions per row).
    If a call's cost were proportional to its positions this would be 1/W; the nearer it is to 1, the more a call costs whatever
    it carries, and the less the positions saved turn into time saved."""
    by = {(r["decoder"], r["batch"]): r for r in rows}
    return {str(B): by[(one, B)]["seconds_per_call"] / by[(ref, B)]["seconds_per_call"] for (d, B) in by if d == ref and (one, B) in by}


def gpu_check_line(dev: torch.device, dry: bool) -> dict:
    "For benchmarks/gpu_check.py: Recipe 1 vs forced-k adaptive on a random `small` TinyGPT on `dev`, batch 1 and 64 (dry: tiny, 1 and 4)."
    size, batches, n_new = ("tiny", (1, 4), 4) if dry else ("small", (1, 64), 32)
    model = make_model(256, "ap", n_pauses=3, size=size, seed=0, max_positions=512).to(dev)
    prompts = [torch.randint(0, 256, (16,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(8)]
    rows = sweep(ForceDontKnow(model, 1e4), prompts, {"recipe1": dict(mode="fixed", temperature=0),
                 "adaptive k=1": dict(mode="adaptive", halt="threshold", max_pauses=1, temperature=0)}, batches, n_new, 1)
    return dict(rows=rows, crossover=crossover(rows, "recipe1", "adaptive k=1"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    ap.add_argument("--tau", type=float, default=0.05, help="the mass rule's threshold (pause while the don't-know mass left >= tau)")
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--big-size", default="small", help="size preset of the random-weight TinyGPT (make_model's size)")
    ap.add_argument("--cache", default="", help="folder for the fine-tuned weights (a rerun skips training)")
    ap.add_argument("--quick", action="store_true", help="a few fine-tuning steps, batches 1 and 4: exercises the code, measures nothing")
    ap.add_argument("--json", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.quick:
        a.batches, a.new_tokens, a.repeats, a.big_size = [1, 4], 4, 1, "tiny"
    bc = BaseConfig()
    base = pretrained_base(bc, log=None)
    data = load_data("text", seq_len=bc.seq_len, train_split="finetune", **(dict(n_train=64, n_val=8) if a.quick else {}))
    ft = FinetuneConfig(steps=3, warmup=1) if a.quick else FinetuneConfig()
    settings = dict(base=base.base_info["key"], finetune=asdict(ft), tau=a.tau, batches=a.batches, prompt_len=a.prompt_len,
                    new_tokens=a.new_tokens, repeats=a.repeats, big_size=a.big_size, quick=a.quick)
    key = hashlib.sha256(json.dumps({k: settings[k] for k in ("base", "finetune")}, sort_keys=True).encode()).hexdigest()[:12]  # the weights
    path = Path(a.json)
    doc = json.loads(path.read_text()) if path.exists() else {}
    if doc.get("settings") != settings:
        doc = {"settings": settings, "models": {}}
    doc["machine"] = dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), threads=torch.get_num_threads(),
                          torch=torch.__version__)
    prompts = [row[: a.prompt_len].tolist() for row in data.val]

    if "trained" not in doc["models"]:
        t0 = time.perf_counter()
        models = {}
        for name, extra in (("R1", {}), ("R2", {"pause_counts": [1, 1, 1, 1]})):
            cached = Path(a.cache) / f"{key}-{name}.pt" if a.cache else None
            if cached is not None and cached.is_file():
                models[name] = grow_pause_model(base, 3)
                models[name].load_state_dict(torch.load(cached, weights_only=True))
            else:
                models[name] = finetune(base, data, "ap", ft, seed=0, progress=False, eval_every=ft.steps, eval_batches=1, **extra)[0]
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    torch.save(models[name].state_dict(), cached)
            models[name].eval()
        train_s = time.perf_counter() - t0
        val = data.val
        nll = dict(recipe1=score_fixed(models["R1"], val), mass=score_adaptive(models["R2"], val, halt="mass", threshold=a.tau, seed=0))
        print(f"fine-tuned R1, R2 in {train_s:.0f} s; teacher-forced NLL: R1 + Recipe 1 {nll['recipe1']['mean_nll']:.4f}, "
              f"R2 + mass {a.tau} {nll['mass']['mean_nll']:.4f} ({nll['mass']['positions_per_token']:.2f} positions/token)", flush=True)
        decoders = {"recipe1": (models["R1"], dict(mode="fixed", temperature=1.0)),
                    f"mass {a.tau}": (models["R2"], dict(mode="adaptive", halt="mass", threshold=a.tau, temperature=1.0))}
        rows = []
        for B in a.batches:  # the two decoders run on different models, so sweep them one at a time
            for name, (m, kw) in decoders.items():
                rows += [dict(r, decoder=name) for r in sweep(m, prompts, {name: kw}, [B], a.new_tokens, a.repeats)]
        doc["models"]["trained"] = dict(
            rows=rows, train_seconds=train_s, crossover=crossover(rows, "recipe1", f"mass {a.tau}"),
            nll={k: dict(mean_nll=v["mean_nll"], positions_per_token=v["positions_per_token"]) for k, v in nll.items()},
            nll_change=nll["mass"]["mean_nll"] / nll["recipe1"]["mean_nll"] - 1, call_cost=call_cost(rows, f"mass {a.tau}"), n_params=sum(p.numel() for p in models["R1"].parameters()))
        _save(path, doc)

    if "big" not in doc["models"]:
        V = data.vocab_size
        big = make_model(V, "ap", n_pauses=3, size=a.big_size, seed=0, max_positions=max(256, a.prompt_len + a.new_tokens)).eval()
        forced = ForceDontKnow(big, 1e4)  # d = 1 everywhere: the adaptive decoder pauses exactly max_pauses times
        decoders = {"recipe1": dict(mode="fixed", temperature=1.0),
                    **{f"adaptive k={k}": dict(mode="adaptive", halt="threshold", threshold=0.5, max_pauses=k, temperature=1.0)
                       for k in (0, 1)}}
        print(f"random TinyGPT '{a.big_size}' ({sum(p.numel() for p in big.parameters())} parameters):", flush=True)
        rows = sweep(forced, prompts, decoders, a.batches, a.new_tokens, a.repeats)
        doc["models"]["big"] = dict(rows=rows, size=a.big_size, n_params=sum(p.numel() for p in big.parameters()),
                                    call_cost=call_cost(rows, "adaptive k=0"),
                                    crossover={f"k={k}": crossover(rows, "recipe1", f"adaptive k={k}") for k in (0, 1)})
        _save(path, doc)

    tr = doc["models"]["trained"]
    c = tr["crossover"]
    doc["goal"] = dict(nll_change=tr["nll_change"], within_1pct=tr["nll_change"] <= 0.01, twice_from=c["twice_from"],
                       met=tr["nll_change"] <= 0.01 and c["twice_from"] is not None)
    _save(path, doc)
    print(f"\ntrained pair: mass rule {100 * tr['nll_change']:+.2f} % NLL vs Recipe 1; speed-up by batch: "
          + ", ".join(f"{B}: {v:.2f}x" for B, v in c["speedup"].items())
          + f"; wins from batch {c['wins_from']}, 2x from {c['twice_from']}; goal {'MET' if doc['goal']['met'] else 'not met'}")
    print("cost of a one-position call / a Recipe-1 call (W positions), by batch: trained "
          + ", ".join(f"{B}: {v:.2f}" for B, v in tr["call_cost"].items()) + "; random "
          + ", ".join(f"{B}: {v:.2f}" for B, v in doc["models"]["big"]["call_cost"].items()))
    for k, cc in doc["models"]["big"]["crossover"].items():
        print(f"random {doc['models']['big']['size']}, adaptive {k}: " + ", ".join(f"{B}: {v:.2f}x" for B, v in cc["speedup"].items()))


if __name__ == "__main__":
    main()
