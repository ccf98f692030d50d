"""Tune fine-tuning in the paper's regime: one shared pretrained base, grown and fine-tuned with CE (continued), TBYS-3 and CYB-AP.

One axis at a time around a centre (one epoch of the fine-tuning half at lr 1e-3: lr, steps, pause-row init, the <don't know>
prior ψ'), seed 0, plus the centre with more seeds; then the chosen configuration — the default `FinetuneConfig`, whose per-loss
learning rates `TUNED_LR` and length were read off this sweep — with three seeds ("chosen/..." keys). Every run starts from the same base (`pretrained_base()`, shipped with the package) and sees
the same batches for a given seed. Results go to a JSON document (resumable: runs already in it are skipped); chapter 10 reads it.

    python benchmarks/regime_sweep.py                    # the sweep + 3 seeds of the chosen config (~45 CPU-minutes on 1 core)
    python benchmarks/regime_sweep.py --quick            # seconds: a tiny run of every code path (used by the tests)
"""
import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from cyb_nb.data import load_data
from cyb_nb.losses import LossConfig
from cyb_nb.models import rare_token_ids
from cyb_nb.train import BaseConfig, FinetuneConfig, evaluate, finetune, pretrained_base

RECIPES = {"ce": LossConfig("ce"), "tbys": LossConfig("tbys"), "ap": LossConfig("ap", omega=(0, 0, 0, 1))}
AXES = {  # axis -> values; every other setting stays at its default
    "lr": (3e-4, 1e-3, 3e-3),
    "steps": (375, 750, 1500),  # half, one and two epochs of the fine-tuning half
    "pause_init": ("mean", "copy", "random"),
    "dk_prior": (0.5, 0.9, 0.99),
}
AXIS_RECIPES = {"lr": ("ce", "tbys", "ap"), "steps": ("ce", "tbys", "ap"), "pause_init": ("tbys", "ap"), "dk_prior": ("ap",)}


CENTRE = FinetuneConfig(steps=750, lr=1e-3)  # one epoch of the fine-tuning half, one learning rate for every recipe


def run_specs(seeds, default: FinetuneConfig, chosen: FinetuneConfig):
    "key -> (recipe, FinetuneConfig, dk_prior, seed): the one-axis sweep (seed 0), the centre's extra seeds, the chosen config's seeds."
    specs = {}
    for axis, values in AXES.items():
        for v in values:
            for r in AXIS_RECIPES[axis]:
                ft, dk = default, 0.9
                if axis == "dk_prior":
                    dk = v
                else:
                    ft = replace(default, **{axis: v})
                key = f"{r}/lr{ft.lr:g}/steps{ft.steps}/{ft.pause_init}/dk{dk:g}/s0"
                specs[key] = (r, ft, dk, 0)
    for s in seeds:
        for r in RECIPES:
            key = f"{r}/lr{default.lr:g}/steps{default.steps}/{default.pause_init}/dk0.9/s{s}"
            specs[key] = (r, default, 0.9, s)
            specs[f"chosen/{r}/s{s}"] = (r, chosen, 0.9, s)
    return specs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/regime_sweep.json")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the default configuration")
    p.add_argument("--quick", action="store_true", help="a tiny base and 4-step runs: exercises the code, measures nothing")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.quick:
        base_cfg = BaseConfig(d_model=16, n_layers=1, n_heads=2, seq_len=16, steps=4, batch_size=4, warmup=1)
        default, chosen = FinetuneConfig(steps=4, batch_size=4, warmup=1, lr=1e-3), FinetuneConfig(steps=2, batch_size=4, warmup=1)
        AXES.update(lr=(1e-3,), steps=(4,), pause_init=("mean", "copy"), dk_prior=(0.9,))
        data = load_data("text", seq_len=16, n_train=64, n_val=8, train_split="finetune")
        base = pretrained_base(base_cfg, cache_dir=os.environ.get("CYB_NB_CACHE") or Path(a.out).parent / ".cache", progress=False,
                               log=None)
        seeds = seeds[:1]
    else:
        base_cfg, default, chosen = BaseConfig(), CENTRE, FinetuneConfig()
        data = load_data("text", seq_len=base_cfg.seq_len, train_split="finetune")
        base = pretrained_base(base_cfg)
    V = data.vocab_size
    copy_rows = rare_token_ids(load_data("text", seq_len=base_cfg.seq_len, train_split="pretrain").train, V, 3)
    out = Path(a.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc.setdefault("results", {})
    doc.update(format="cyb_nb.regime_sweep/1", base=base.base_info, default=asdict(default), chosen=asdict(chosen), axes=AXES,
               axis_recipes=AXIS_RECIPES, copy_rows=copy_rows, data=repr(data),
               env={"torch": torch.__version__, "python": platform.python_version(), "threads": 1})
    base_eval = evaluate(base, data, "ce", batch_size=64)
    doc["base_eval"] = {k: base_eval[k] for k in ("nll", "ppl", "n_tokens")}
    for key, (r, ft, dk, seed) in run_specs(seeds, default, chosen).items():
        if key in doc["results"]:
            continue
        loss = replace(RECIPES[r], dk_prior=dk) if r == "ap" else RECIPES[r]
        t0 = time.perf_counter()
        model, hist = finetune(base, data, loss, ft, seed=seed, copy_rows=copy_rows if ft.pause_init == "copy" else None,
                               eval_every=ft.steps, eval_batches=1, progress=False)
        ev = evaluate(model, data, loss, batch_size=64)
        doc["results"][key] = {"recipe": r, "lr": ft.lr_for(loss), "steps": ft.steps, "pause_init": ft.pause_init, "dk_prior": dk,
                               "seed": seed, "nll": ev["nll"], "ppl": ev["ppl"], "mean_pauses": ev["mean_pauses"],
                               "final_train_loss": hist[-1]["loss"], "seconds": time.perf_counter() - t0}
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, out)
        print(f"{key}: ppl {ev['ppl']:.3f} pauses {ev['mean_pauses']:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return doc


if __name__ == "__main__":
    main()
