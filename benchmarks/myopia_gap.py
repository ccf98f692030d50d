"""Myopia gap (myopic − vanilla NLL, nats/token) on the pre-caching task and on the default text data, plus probe accuracies.

    python benchmarks/myopia_gap.py                       # defaults below (CPU, a few minutes on a free machine)
    python benchmarks/myopia_gap.py --steps-pre 1500 --steps-text 600 --json out.json

Both models of a pair share the seed, the initial weights and the data order; only the attention gradients differ
(cyb_nb.myopic.make_myopic with `--cut`; the stored benchmarks/myopia_gap.json predates the option and was measured with what is now
cut 'kv'). Training is cyb_nb.train.train with the plain CE loss. The continued-training regime is benchmarks/myopia_continued.py.
"""
import argparse
import json
import time

import torch

from cyb_nb.data import load_data
from cyb_nb.myopic import compare_myopic, load_precache, probe_baselines, probe_layers


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps-pre", type=int, default=1200)
    ap.add_argument("--steps-text", type=int, default=400)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-values", type=int, default=4)
    ap.add_argument("--block", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cut", default="hidden", help="myopic cut: hidden (the authors'), kv or bigram")
    ap.add_argument("--skip-text", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = {"args": vars(a)}
    t0 = time.time()
    pre = load_precache(n_train=4096, n_val=256, seq_len=48, seed=a.seed, n_values=a.n_values, block=a.block)
    r = compare_myopic(pre, steps=a.steps_pre, size=a.size, seed=a.seed, batch_size=a.batch_size, lr=a.lr, cut=a.cut,
                       eval_every=max(1, a.steps_pre // 4))
    probes = {k: probe_layers(m, pre.val, pre.feature_val.clamp(min=0), pre.feature_val >= 0) for k, m in r.models.items()}
    base = probe_baselines(pre.val, pre.feature_val, a.n_values)
    out["precache"] = {"vanilla": r.vanilla, "myopic": r.myopic, "gap": r.gap, "gap_hard": r.gap_hard, "probes": probes,
                       "probe_baselines": base, "seconds": time.time() - t0}
    print(f"== pre-caching task (blocks of {a.block} values in [0,{a.n_values}), answer = #ascents), {a.steps_pre} steps, size {a.size}")
    print(r.table())
    print("probe accuracy for [x_t > x_{t-1}] by layer (embed, block1, ...):")
    for k, v in probes.items():
        print(f"  {k:8s} " + " ".join(f"{x:.3f}" for x in v))
    print("  baselines " + ", ".join(f"{k}: {v:.3f}" for k, v in base.items()))
    if not a.skip_text:
        t1 = time.time()
        text = load_data("text", seq_len=64, n_train=2048, n_val=128)
        rt = compare_myopic(text, steps=a.steps_text, size=a.size, seed=a.seed, batch_size=a.batch_size, lr=3e-3, cut=a.cut,
                            eval_every=max(1, a.steps_text // 4))
        out["text"] = {"vanilla": rt.vanilla, "myopic": rt.myopic, "gap": rt.gap, "seconds": time.time() - t1}
        print(f"== default text data, {a.steps_text} steps, size {a.size}")
        print(rt.table())
    print(f"total {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    main()
