"""The paper's continuous pre-caching task: vanilla vs each myopic cut, per query rate p and seed, plus linear probes.

    python benchmarks/myopic_continuous.py --json benchmarks/myopic_continuous.json     # the grid the notebook reads
    python benchmarks/myopic_continuous.py --steps 50 --ps 0.3 --seeds 0 --json /tmp/x.json  # a quick look

Task (cyb_nb.myopic.make_sine_task): x_t ~ N(0,1), z_t ~ Bernoulli(p), y_t = z_t Σ_{i=1..n_terms} sin(freq·x_{t−i}) + (1 − z_t) x_t,
input (x_t, z_t), Huber loss, fresh seeded batches every step. Model (cyb_nb.myopic.SineRegressor): linear in, GPT-2 body (ReLU), linear
out. Every variant of a seed starts from the same weights and sees the same batches; only the attention gradients differ
(cyb_nb.myopic.make_myopic). The JSON is rewritten after every run, and a rerun with the same config skips the runs already in it.
`--paper-freq-check` adds one vanilla run at the paper's frequency (10) with the same budget, to show why the grid uses a lower one.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from cyb_nb.myopic import SineRegressor, make_myopic, make_sine_task, sine_losses, sine_probes, train_sine

AUTHORS = {"source": "the authors' saved runs (FutureGPT2, their public code, Wu et al. 2024), freq 10, GPT-2 body d 128, 2 layers, 2 heads",
           "p": [0.01, 0.1, 0.3], "vanilla_train_loss": [0.0, 0.01], "myopic_train_loss": [0.01, 0.10, 0.32]}


def run_one(cfg: dict, p: float, seed: int, variant: str, freq: float, eval_task, probe_task=None) -> dict:
    "Train one model (vanilla or a cut) and evaluate it; probes when `probe_task` is given."
    torch.manual_seed(seed)
    model = SineRegressor(cfg["d_model"], cfg["n_layers"], cfg["n_heads"], cfg["seq_len"])
    if variant != "vanilla":
        make_myopic(model, cut=variant)
    t0 = time.time()
    hist = train_sine(model, cfg["steps"], p, batch_size=cfg["batch_size"], lr=cfg["lr"], seed=seed, weight_decay=cfg["weight_decay"],
                      warmup=cfg["warmup"], eval_task=eval_task, eval_every=cfg["eval_every"], seq_len=cfg["seq_len"], freq=freq,
                      n_terms=cfg["n_terms"])
    out = {"p": p, "seed": seed, "variant": variant, "freq": freq, "final": hist[-1], "history": hist, "seconds": time.time() - t0}
    if probe_task is not None:
        out["probes"] = sine_probes(model, probe_task)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ps", type=float, nargs="+", default=[0.01, 0.1, 0.3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["vanilla", "hidden", "kv"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--n-heads", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--freq", type=float, default=3.0)
    ap.add_argument("--n-terms", type=int, default=10)
    ap.add_argument("--eval-rows", type=int, default=1024)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--probe-p", type=float, default=0.3)
    ap.add_argument("--probe-seed", type=int, default=0)
    ap.add_argument("--probe-rows", type=int, default=512)
    ap.add_argument("--paper-freq-check", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = {k: v for k, v in vars(a).items() if k not in ("json", "threads", "paper_freq_check")}
    path = Path(a.json)
    doc = json.loads(path.read_text()) if path.exists() else {}
    if doc.get("config") != cfg:
        doc = {"config": cfg, "authors": AUTHORS, "runs": []}
    done = {(r["p"], r["seed"], r["variant"], r["freq"]) for r in doc["runs"]}
    jobs = [(p, s, v, a.freq) for p in a.ps for s in a.seeds for v in a.variants]
    if a.paper_freq_check:
        jobs.append((a.probe_p, a.probe_seed, "vanilla", 10.0))
    for p, seed, variant, freq in jobs:
        if (p, seed, variant, freq) in done:
            continue
        eval_task = make_sine_task(a.eval_rows, a.seq_len, p, seed=10_000, freq=freq, n_terms=a.n_terms)
        probe = (p, seed, freq) == (a.probe_p, a.probe_seed, a.freq)
        probe_task = make_sine_task(a.probe_rows, a.seq_len, p, seed=20_000, freq=freq, n_terms=a.n_terms) if probe else None
        r = run_one(cfg, p, seed, variant, freq, eval_task, probe_task)
        f = r["final"]
        print(f"p={p:<5} seed={seed} {variant:8s} freq={freq:g}: loss {f['loss']:.4f}  z=1 {f['loss_z1']:.4f} (predict-0 {f['zero_z1']:.3f})"
              f"  z=0 {f['loss_z0']:.5f}  [{r['seconds']:.0f} s]", flush=True)
        doc["runs"].append(r)
        path.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
