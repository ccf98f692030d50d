"""Quality-cost curves of a two-model token cascade: standard vs cascade-aware (CAT) small model.

Trains, from scratch on the bundled text (`load_data('text')`), a large TinyGPT, a small one with plain cross-entropy, and a
small one with the CAT loss (same initial weights, batches and number of steps as the standard one), then sweeps the
deferral threshold on the validation split and prints, per small model and metric, the curve's area (trapezoid over
deferral rate in [0, 1]), the random-deferral chord, the two ends and the quality at a few deferral rates.

    python benchmarks/cascade_curves.py                       # defaults below (a few minutes on 2 CPU cores)
    python benchmarks/cascade_curves.py --steps-small 100 --steps-large 200   # quick
"""
import argparse
import time

import torch

from cyb_nb.cascade import CATWeights, cascade_experiment, curve_table
from cyb_nb.data import load_data


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", default="tiny", help="size preset of the small model (cyb_nb.train.MODEL_SIZES)")
    ap.add_argument("--large", default="small", help="size preset of the large model")
    ap.add_argument("--steps-small", type=int, default=600)
    ap.add_argument("--steps-large", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--rule", default="max_prob", choices=["max_prob", "margin", "entropy"])
    ap.add_argument("--normalize", default="kept", choices=["kept", "all"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    data = load_data("text", seq_len=a.seq_len)
    res = cascade_experiment(data, a.small, a.large, steps_small=a.steps_small, steps_large=a.steps_large,
                             weights=CATWeights.paper(), normalize=a.normalize, rule=a.rule, seed=a.seed,
                             batch_size=a.batch_size, lr=a.lr, warmup=50, eval_every=10**9, eval_batches=4, progress=False)
    n = res["n_params"]
    print(f"data: text, train {tuple(data.train.shape)}, val {tuple(data.val.shape)}; params: large {n['large']:,}, "
          f"small {n['standard']:,} ({n['large'] / n['standard']:.1f}x); steps small {a.steps_small}, large {a.steps_large}, "
          f"batch {a.batch_size}; rule {a.rule}; CAT weights {CATWeights.paper()}, normalize={a.normalize}")
    rows = curve_table(res["curves"])
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    d = {m: res["curves"]["cat"][m].area - res["curves"]["standard"][m].area for m in ("nll", "acc")}
    print(f"area difference CAT - standard: nll {d['nll']:+.4f} (negative = CAT better), acc {d['acc']:+.4f} (positive = CAT better)")
    print(f"total time {time.perf_counter() - t0:.0f} s")
    return res


if __name__ == "__main__":
    main()
