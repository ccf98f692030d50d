"""PonderingLM sweep on the default text data: ponder steps K at one model size vs a no-ponder model with ~2x parameters
(and a CYB-AP model of the small size). Trains every model with cyb_nb.train.train (CE loss for the ponder/no-ponder
models, identical seed, data order and schedule), scores NLL per real token on the validation split with
cyb_nb.train.evaluate, prints a markdown table and writes JSON.

    python benchmarks/ponder_sweep.py --steps 400 --out benchmarks/ponder_sweep.json
"""
import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from cyb_nb.data import load_data
from cyb_nb.ponder import format_rows, ponder_sweep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="0,1,2,3", help="comma-separated ponder steps")
    ap.add_argument("--size", default="tiny", help="TinyGPT size name of cyb_nb.train.MODEL_SIZES")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--eval-batches", type=int, default=None, help="val batches of 64 rows (default: whole val split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cyb", action="store_true", help="skip the CYB-AP row")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--out", default="benchmarks/ponder_sweep.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    data = load_data("text", seq_len=a.seq_len)
    ks = tuple(int(k) for k in a.ks.split(","))
    t0 = time.perf_counter()
    rows = ponder_sweep(data, ks=ks, size=a.size, cyb=not a.no_cyb, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                        seed=a.seed, eval_batches=a.eval_batches, progress=False)
    table = format_rows(rows)
    print(f"data: {data!r}; steps={a.steps} batch={a.batch_size} lr={a.lr} seed={a.seed}; "
          f"{time.perf_counter() - t0:.0f} s on {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(table)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump({"args": vars(a), "data": repr(data), "rows": rows}, f, indent=1)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
