"""The language myopia gap in the continued-training regime, beside the from-scratch gap (the paper continues pretrained Pythia models).

    python benchmarks/myopia_continued.py --json benchmarks/myopia_continued.json   # the runs the notebook reads

1. A CE base: a TinyGPT trained from scratch with plain next-token cross-entropy on the bundled text (`ce_base`, cached on disk).
2. Continued: from the base weights, vanilla and each myopic cut trained for `--steps` more steps (same data order per seed); the
   continued gap is cut − vanilla.
3. From scratch: a myopic model trained exactly like the base (same seed, schedule and data order); the from-scratch gap is it − base.
NLL in nats per token on the text's validation split. Training is cyb_nb.train.train with loss 'ce' and no pauses.
"""
import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from cyb_nb.data import load_data
from cyb_nb.myopic import make_myopic
from cyb_nb.train import evaluate, make_model, train


def ce_base(data, steps: int, size: str, seed: int, lr: float, batch_size: int, cache_dir: Path) -> tuple:
    "A CE-pretrained TinyGPT state dict, cached under `cache_dir` by its settings; returns (state, its validation evaluation, seconds)."
    # When cyb_nb.train grows a shared `pretrained_base(...)`, this function becomes a call to it.
    key = hashlib.sha1(json.dumps([data.name, data.train.shape[0], steps, size, seed, lr, batch_size]).encode()).hexdigest()[:12]
    path = cache_dir / f"ce_base_{key}.pt"
    model = make_model(data, "ce", n_pauses=0, size=size, seed=seed)
    t0 = time.time()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        train(model, data, "ce", steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=False, eval_every=steps)
        cache_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.state_dict(), evaluate(model, data, "ce", batch_size=64), time.time() - t0


def train_variant(data, variant: str, steps: int, size: str, seed: int, lr: float, batch_size: int, init: dict | None = None) -> dict:
    "Train one TinyGPT ('vanilla' or a myopic cut) from `init` (or from scratch) and evaluate it on the validation split."
    model = make_model(data, "ce", n_pauses=0, size=size, seed=seed)
    if init is not None:
        model.load_state_dict(init)
    if variant != "vanilla":
        make_myopic(model, cut=variant)
    t0 = time.time()
    train(model, data, "ce", steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=False, eval_every=steps)
    return {"variant": variant, "eval": evaluate(model, data, "ce", batch_size=64), "seconds": time.time() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-steps", type=int, default=1200)
    ap.add_argument("--base-lr", type=float, default=3e-3)
    ap.add_argument("--steps", type=int, default=200, help="continued-training steps")
    ap.add_argument("--lr", type=float, default=1e-3, help="continued-training peak learning rate")
    ap.add_argument("--cuts", nargs="+", default=["hidden", "kv"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="data-order seeds of the continued runs")
    ap.add_argument("--scratch-cuts", nargs="+", default=["hidden"], help="myopic cuts also trained from scratch like the base")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=2048)
    ap.add_argument("--base-seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="benchmarks/.cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    text = load_data("text", seq_len=64, n_train=a.n_train, n_val=128)
    out = {"config": {k: v for k, v in vars(a).items() if k not in ("json", "threads", "cache_dir")}}
    state, base_eval, sec = ce_base(text, a.base_steps, a.size, a.base_seed, a.base_lr, a.batch_size, Path(a.cache_dir))
    out["base"] = {"eval": base_eval, "seconds": sec}
    print(f"CE base ({a.base_steps} steps): val NLL {base_eval['nll']:.4f}  [{sec:.0f} s]", flush=True)
    out["scratch"] = []
    for cut in a.scratch_cuts:
        r = train_variant(text, cut, a.base_steps, a.size, a.base_seed, a.base_lr, a.batch_size)
        out["scratch"].append(r)
        print(f"from scratch, {cut:7s} ({a.base_steps} steps): NLL {r['eval']['nll']:.4f}  gap vs base "
              f"{r['eval']['nll'] - base_eval['nll']:+.4f}  [{r['seconds']:.0f} s]", flush=True)
    out["continued"] = []
    for seed in a.seeds:
        for variant in ["vanilla", *a.cuts]:
            r = {"seed": seed, **train_variant(text, variant, a.steps, a.size, seed, a.lr, a.batch_size, init=state)}
            out["continued"].append(r)
            print(f"continued seed {seed} {variant:7s} (+{a.steps} steps): NLL {r['eval']['nll']:.4f}  [{r['seconds']:.0f} s]", flush=True)
            Path(a.json).write_text(json.dumps(out, indent=1, default=float))
    Path(a.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
