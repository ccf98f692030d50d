"""Adaptive decoding, the whole trade-off: forward positions per real token vs NLL in the paper's regime.

    python benchmarks/decode_tradeoff.py --json benchmarks/decode_tradeoff.json --cache /tmp/dt_models   # chapter 08's runs (~16 min)
    python benchmarks/decode_tradeoff.py --quick --json /tmp/dt.json               # seconds: exercises the code, measures nothing

1. The base: the project's shared CE base (`cyb_nb.train.pretrained_base()`), pretrained on the 'pretrain' half of the bundled text.
2. Per seed, three models fine-tuned from it on the 'finetune' half with `finetune` and the project's recipe (`FinetuneConfig()`,
   the loss's `TUNED_LR`), the same batches in the same order for all three:
   - CE: cross-entropy continued, no pauses;
   - R1: CYB-AP, Recipe 1 (omega = 0:0:0:1, gamma = 1, 3 pauses after every token);
   - R2: CYB-AP, Recipe 2 (`train(..., pause_counts=omega_train)`: the world grants W ~ Cat(omega_train) steps per token,
     the last granted step is forced to respond).
3. Teacher-forced NLL per real token on the whole val split, and forward positions per real token, for every decoder:
   - `recipe1`: all 3 pauses, the mixture over the readout steps (`score_fixed`); 4 positions per token; CE: 1 position;
   - `fixed k`: always k pauses, read out at step k (`score_adaptive`, threshold 0, max_pauses k) - a non-adaptive budget;
   - `threshold tau`: adaptive, pause while d >= tau (`score_adaptive`), a sweep of tau;
   - `sample cap k`: adaptive, delta ~ Bernoulli(d) at each step, at most k pauses (`score_adaptive(halt='sample')`);
   - `mass tau`: adaptive, pause while the don't-know mass left, prod_{j<=k} d_j, is >= tau, and read out the mixture under a deadline
     at the step reached (`score_adaptive(halt='mass')`; tau = 0 is Recipe 1's mixture, tau = 1 is `fixed 0`).
   Tokens per second of generation with the KV cache (`generate`, batch 1, median of `--gen-repeats`) for each decoder.
4. Pareto points (no other point of the same seed has both fewer positions and a lower NLL), and the goal: an adaptive decoder
   with <= 40 % of Recipe 1's positions at <= 1 % worse NLL than the R1 model decoded with Recipe 1; adaptive = sampling or a
   threshold or mass rule strictly inside (0, 1) (tau = 1 never pauses, which is `fixed 0`; tau = 0 always pauses).
The JSON is rewritten atomically after every seed, and a rerun skips the seeds already in it (with the same settings).
"""
import argparse
import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from cyb_nb.data import load_data
from cyb_nb.decode import generate, score_adaptive, score_fixed
from cyb_nb.models import grow_pause_model
from cyb_nb.train import BaseConfig, FinetuneConfig, evaluate, finetune, pretrained_base

GOAL_POSITIONS, GOAL_NLL = 0.40, 0.01  # adaptive: <= 40 % of Recipe 1's positions at <= +1 % NLL


def _save(path: Path, doc: dict):
    "Write the document atomically (temp file in the same folder, then rename)."
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _tok_per_s(model, prompt, n, repeats, **kw) -> tuple[float, float]:
    "Median tokens/s of `generate` with the KV cache (after a warm-up), and the positions per token it spent."
    generate(model, prompt, 4, seed=0, **kw)
    runs = [generate(model, prompt, n, seed=r, **kw) for r in range(repeats)]
    return statistics.median(r["tokens_per_s"] for r in runs), statistics.mean(r["positions_per_token"] for r in runs)


def decoders(n_pauses: int, thresholds, caps, masses=()) -> list:
    "Every decoder of a pause model: (name, kind, parameter, score_adaptive kwargs or None for Recipe 1, generate kwargs)."
    out = [("recipe1", "recipe1", n_pauses, None, {})]
    out += [(f"fixed {k}", "fixed", k, dict(threshold=0.0, max_pauses=k), dict(mode="adaptive", threshold=0.0, max_pauses=k))
            for k in range(n_pauses)]
    out += [(f"threshold {t:g}", "threshold", t, dict(threshold=t), dict(mode="adaptive", threshold=t)) for t in thresholds]
    out += [(f"sample cap {k}", "sample", k, dict(halt="sample", max_pauses=k), dict(mode="adaptive", halt="sample", max_pauses=k))
            for k in caps]
    out += [(f"mass {t:g}", "mass", t, dict(halt="mass", threshold=t), dict(mode="adaptive", halt="mass", threshold=t)) for t in masses]
    return out


def pareto(points: list) -> list:
    "Flags: True where no other point has positions <= and NLL <= with one of them strictly lower."
    return [not any(q["positions"] <= p["positions"] and q["nll"] <= p["nll"] and (q["positions"], q["nll"]) != (p["positions"], p["nll"])
                    for q in points) for p in points]


def adaptive(p: dict) -> bool:
    "Whether a point's decoder really adapts: sampling, or a threshold / mass rule strictly inside (0, 1) (0 always pauses, 1 never)."
    return p["kind"] == "sample" or (p["kind"] in ("threshold", "mass") and 0 < p["param"] < 1)


def goal(points: list) -> dict:
    "The goal against the R1 model decoded with Recipe 1: per pause model, the best adaptive NLL within 40 % of its positions, and the best non-adaptive one (CE, fixed k)."
    ref = next(p for p in points if p["model"] == "R1" and p["kind"] == "recipe1")
    out = {"reference": {"model": "R1", "decoder": "recipe1", "nll": ref["nll"], "positions": ref["positions"]},
           "max_positions": GOAL_POSITIONS * ref["positions"], "max_nll": (1 + GOAL_NLL) * ref["nll"]}
    for m in ("R1", "R2"):
        own = next(p for p in points if p["model"] == m and p["kind"] == "recipe1")
        ok = [p for p in points if p["model"] == m and adaptive(p) and p["positions"] <= out["max_positions"]]
        best = min(ok, key=lambda p: p["nll"]) if ok else None
        out[m] = None if best is None else {
            "decoder": best["decoder"], "nll": best["nll"], "positions": best["positions"],
            "positions_ratio": best["positions"] / ref["positions"], "nll_change": best["nll"] / ref["nll"] - 1,
            "nll_change_vs_own_recipe1": best["nll"] / own["nll"] - 1, "met": best["nll"] <= out["max_nll"]}
    fixed = [p for p in points if p["kind"] in ("ce", "fixed") and p["positions"] <= out["max_positions"]]
    out["best_non_adaptive"] = min(({"model": p["model"], "decoder": p["decoder"], "nll": p["nll"], "positions": p["positions"],
                                     "nll_change": p["nll"] / ref["nll"] - 1} for p in fixed), key=lambda p: p["nll"], default=None)
    out["met"] = any(out[m] is not None and out[m]["met"] for m in ("R1", "R2"))
    return out


def recipe1_diagnostics(sc: dict) -> dict:
    "Means over the val tokens of a Recipe 1 score: stopping distribution s, d and NLL of the readout at each step, expected pauses."
    m = sc["mask"]
    return {"s": sc["s"][m].double().mean(0).tolist(), "d": sc["d"][m].double().mean(0).tolist(),
            "step_nll": (-sc["t"][m].double().clamp_min(1e-38).log()).mean(0).tolist(), "expected_pauses": sc["mean_pauses"]}


def finish(run: dict) -> dict:
    "Mark a seed's Pareto points and store (and return) its goal verdict."
    for p, f in zip(run["points"], pareto(run["points"])):
        p["pareto"], p["adaptive"] = f, adaptive(p)
    run["goal"] = goal(run["points"])
    return run["goal"]


def run_seed(base, data, ft: FinetuneConfig, seed: int, a) -> dict:
    "Fine-tune CE, R1 and R2 from `base` with `seed`, score every decoder, time generation."
    val, prompt = data.val[: a.n_val] if a.n_val else data.val, data.val[-1, :8]
    n_gen = min(a.gen_tokens, data.val.shape[1] - prompt.shape[0] + 1)
    kw = dict(seed=seed, progress=False, eval_every=ft.steps, eval_batches=1)
    models, secs = {}, {}
    for name, loss, extra in (("CE", "ce", {}), ("R1", "ap", {}), ("R2", "ap", {"pause_counts": a.omega_train})):
        t0 = time.perf_counter()
        cached = Path(a.cache) / f"{a.key}-s{seed}-{name}.pt" if a.cache else None
        if cached is not None and cached.is_file():  # the same settings' weights: skip the fine-tuning
            models[name] = grow_pause_model(base, 0 if loss == "ce" else 3)
            models[name].load_state_dict(torch.load(cached, weights_only=True))
        else:
            models[name] = finetune(base, data, loss, ft, **kw, **extra)[0]
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save(models[name].state_dict(), cached)
        models[name].eval()
        secs[f"train_{name}"] = time.perf_counter() - t0
        print(f"  seed {seed}: fine-tuned {name} ({ft.steps} steps) in {secs[f'train_{name}']:.0f} s", flush=True)
    t0 = time.perf_counter()
    points, diagnostics = [], {}
    sf = score_fixed(models["CE"], val)
    tps, gpos = _tok_per_s(models["CE"], prompt, n_gen, a.gen_repeats)
    points.append(dict(model="CE", decoder="no pauses", kind="ce", param=0, nll=sf["mean_nll"], positions=sf["positions_per_token"],
                       pauses=0.0, tokens_per_s=tps, gen_positions=gpos))
    for m in ("R1", "R2"):
        for name, kind, param, skw, gkw in decoders(3, a.thresholds, a.caps, a.masses):
            sc = score_fixed(models[m], val) if skw is None else score_adaptive(models[m], val, seed=seed, **skw)
            if skw is None:
                diagnostics[m] = recipe1_diagnostics(sc)
            tps, gpos = _tok_per_s(models[m], prompt, n_gen, a.gen_repeats, **gkw)
            points.append(dict(model=m, decoder=name, kind=kind, param=param, nll=sc["mean_nll"], positions=sc["positions_per_token"],
                               pauses=sc["mean_pauses"], tokens_per_s=tps, gen_positions=gpos))
    secs["score"] = time.perf_counter() - t0
    base_nll = evaluate(base, data, "ce", batch_size=64)["nll"]
    return {"points": points, "recipe1": diagnostics, "seconds": secs, "base_nll": base_nll,
            "n_tokens": int(val.shape[0] * (val.shape[1] - 1)), "gen_tokens": n_gen}


def summary(runs: dict) -> list:
    "Per (model, decoder): mean and spread over seeds of NLL, positions and tokens/s, Pareto flags of the means."
    keys = [(p["model"], p["decoder"]) for p in next(iter(runs.values()))["points"]]
    rows = []
    for k in keys:
        ps = [next(p for p in r["points"] if (p["model"], p["decoder"]) == k) for r in runs.values()]
        row = {f: ps[0][f] for f in ("model", "decoder", "kind", "param", "adaptive")}
        for f in ("nll", "positions", "pauses", "tokens_per_s"):
            v = [p[f] for p in ps]
            row[f], row[f + "_sd"] = statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)
        row["pareto_seeds"] = sum(p["pareto"] for p in ps)
        rows.append(row)
    for r, f in zip(rows, pareto(rows)):
        r["pareto"] = f
    return rows


def print_table(rows: list, ref: dict):
    print(f"\n{'model':<5} {'decoder':<16} {'NLL/token':>10} {'±sd':>7} {'pos/token':>9} {'pauses':>7} {'tok/s':>7} "
          f"{'pos vs R1':>9} {'NLL vs R1':>9} pareto")
    for r in rows:
        print(f"{r['model']:<5} {r['decoder']:<16} {r['nll']:10.4f} {r['nll_sd']:7.4f} {r['positions']:9.3f} {r['pauses']:7.3f} "
              f"{r['tokens_per_s']:7.0f} {100 * r['positions'] / ref['positions']:8.0f}% {100 * (r['nll'] / ref['nll'] - 1):+8.2f}% "
              f"{'*' if r['pareto'] else ''} ({r['pareto_seeds']} seeds)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds (data order, pause-row noise, R2 counts)")
    ap.add_argument("--steps", type=int, default=FinetuneConfig().steps, help="fine-tuning steps (default: FinetuneConfig's)")
    ap.add_argument("--omega-train", type=float, nargs="+", default=[1, 1, 1, 1], help="R2's pause_counts (weights of 0..3 pauses)")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0])
    ap.add_argument("--caps", type=int, nargs="+", default=[1, 2, 3], help="max pauses of the sampling decoder")
    ap.add_argument("--masses", type=float, nargs="+", default=[0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01],
                    help="thresholds of the mass rule (pause while the don't-know mass left is >= tau)")
    ap.add_argument("--n-val", type=int, default=0, help="val rows scored (0: all)")
    ap.add_argument("--gen-tokens", type=int, default=57)
    ap.add_argument("--gen-repeats", type=int, default=3)
    ap.add_argument("--cache", default="", help="folder for the fine-tuned weights (a rerun with the same settings skips training)")
    ap.add_argument("--quick", action="store_true", help="a tiny base and a few steps: exercises the code, measures nothing")
    ap.add_argument("--json", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    bc = BaseConfig()
    base = pretrained_base(bc, log=None)  # the shipped base: no training
    small = dict(n_train=64, n_val=8) if a.quick else {}  # --quick: the same base, 3 steps on 64 rows, 8 val rows, 3 thresholds
    data = load_data("text", seq_len=bc.seq_len, train_split="finetune", **small)
    ft = FinetuneConfig(steps=3, warmup=1) if a.quick else FinetuneConfig(steps=a.steps)
    if a.quick:
        a.thresholds, a.masses, a.gen_repeats, a.gen_tokens = [0.0, 0.5, 1.0], [0.0, 0.1, 1.0], 1, 16
    settings = dict(base=base.base_info["key"], finetune=asdict(ft), lr={"ce": ft.lr_for("ce"), "ap": ft.lr_for("ap")},
                    omega_train=a.omega_train, thresholds=a.thresholds, caps=a.caps, masses=a.masses, n_val=a.n_val, gen_tokens=a.gen_tokens,
                    gen_repeats=a.gen_repeats, quick=a.quick, goal={"positions": GOAL_POSITIONS, "nll": GOAL_NLL})
    a.key = hashlib.sha256(json.dumps({k: settings[k] for k in ("base", "finetune", "lr", "omega_train")}, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(a.json)
    doc = json.loads(path.read_text()) if path.exists() else {}
    if doc.get("settings") != settings:
        doc = {"settings": settings, "runs": {}}
    doc["torch"], doc["threads"] = torch.__version__, torch.get_num_threads()
    for seed in a.seeds:
        if str(seed) in doc["runs"]:
            continue
        t0 = time.perf_counter()
        r = run_seed(base, data, ft, seed, a)
        r["seconds"]["total"] = time.perf_counter() - t0
        g = finish(r)
        doc["runs"][str(seed)] = r
        doc["summary"] = summary(doc["runs"])
        _save(path, doc)
        print(f"seed {seed} in {r['seconds']['total']:.0f} s; goal {'MET' if g['met'] else 'not met'}: " + "; ".join(
            f"{m} best within {100 * GOAL_POSITIONS:.0f}% positions: " + ("none" if g[m] is None else
            f"{g[m]['decoder']} {100 * g[m]['positions_ratio']:.0f}% positions, NLL {100 * g[m]['nll_change']:+.2f}%")
            for m in ("R1", "R2")), flush=True)
    for r in doc["runs"].values():  # flags and verdicts from the stored points, so a rerun applies the current definitions
        finish(r)
    doc["summary"] = summary(doc["runs"])
    _save(path, doc)
    rows = doc["summary"]
    ref = next(r for r in rows if r["model"] == "R1" and r["kind"] == "recipe1")
    print_table(rows, ref)
    print(f"\nseeds: {sorted(doc['runs'], key=int)}; goal per seed: " +
          ", ".join(f"{s}: {'MET' if r['goal']['met'] else 'not met'}" for s, r in doc["runs"].items()))


if __name__ == "__main__":
    main()
