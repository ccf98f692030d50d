"""Where does CYB-AP's gain come from?  In the paper's regime (the shipped base, grown and fine-tuned on the 'finetune' half), train:

* CE continued (no pauses) and TBYS-3 — the paper's baselines;
* CYB-AP with 1, 2 and 3 pauses (ω = one-hot at W_max, γ = 1) — the pause count;
* "pauses as context only": 3 pauses in the stream, but ω = 1:0:0:0 forces every answer at the real token, so the loss is plain CE at
  step 1 (the real token's own step) while later tokens can still attend to the pauses (the same forward positions as CYB-AP: a compute-matched CE);

and, with seed 0 only, CE and TBYS-3 fine-tuned four times as long (8 epochs) with their validation NLL every 500 steps — does
TBYS's gap to CE close with training? — and read every pause model out several ways on the validation split (`cyb_nb.experiments.readout_parts`): its own rule (CYB's mixture
over steps), each step alone, the best step per token (an oracle), and the same weights with no pauses in the context at all.
Writes a JSON document (resumable per run); chapter 10 reads it.

    python benchmarks/regime_parts.py                 # 3 seeds + the long curves, ~40 CPU-minutes
    python benchmarks/regime_parts.py --quick --out /tmp/parts.json   # seconds: exercises the code
"""
import argparse
import json
import math
import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from cyb_nb.data import load_data
from cyb_nb.experiments import readout_parts
from cyb_nb.losses import LossConfig
from cyb_nb.train import BaseConfig, FinetuneConfig, evaluate, finetune, pretrained_base

VARIANTS = {  # name -> (label, loss, pauses)
    "ce": ("CE continued", LossConfig("ce"), 0),
    "tbys": ("TBYS-3", LossConfig("tbys"), 3),
    "ap1": ("CYB-AP, 1 pause", LossConfig("ap"), 1),
    "ap2": ("CYB-AP, 2 pauses", LossConfig("ap"), 2),
    "ap": ("CYB-AP, 3 pauses", LossConfig("ap", omega=(0, 0, 0, 1)), 3),
    "ctx": ("pauses as context only (CE at step 1)", LossConfig("ap", omega=(1, 0, 0, 0)), 3),
}


def _save(out: Path, doc: dict):
    "Write the document atomically."
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/regime_parts.json")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--quick", action="store_true", help="a tiny base and 4-step runs: exercises the code, measures nothing")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.quick:
        bc, ft = BaseConfig(d_model=16, n_layers=1, n_heads=2, seq_len=16, steps=4, batch_size=4, warmup=1), FinetuneConfig(steps=4, batch_size=4, warmup=1)
        data = load_data("text", seq_len=16, n_train=64, n_val=8, train_split="finetune")
        base = pretrained_base(bc, cache_dir=Path(a.out).parent / ".cache", progress=False, log=None)
    else:
        bc, ft = BaseConfig(), FinetuneConfig()
        data = load_data("text", seq_len=bc.seq_len, train_split="finetune")
        base = pretrained_base(bc)
    out = Path(a.out)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc.setdefault("results", {})
    doc.update(format="cyb_nb.regime_parts/1", base=base.base_info, finetune=asdict(ft), data=repr(data),
               variants={k: {"label": v[0], "loss": asdict(v[1]), "pauses": v[2]} for k, v in VARIANTS.items()},
               env={"torch": torch.__version__, "python": platform.python_version(), "threads": 1})
    doc["base_eval"] = {k: v for k, v in evaluate(base, data, "ce", batch_size=64).items() if k in ("nll", "ppl")}
    long_ft = replace(ft, steps=4 * ft.steps)
    doc["long"] = {"finetune": asdict(long_ft), "eval_every": long_ft.steps // 12}
    for name in ("ce", "tbys"):
        key = f"long/{name}/s0"
        if key in doc["results"]:
            continue
        t0 = time.perf_counter()
        label, loss, k = VARIANTS[name]
        _, hist = finetune(base, data, loss, long_ft, n_pauses=k, seed=0, eval_every=long_ft.steps // 12, eval_batches=1000,
                           progress=False)
        doc["results"][key] = {"variant": name, "seed": 0, "curve": [{"step": r["step"], "val_nll": r["val_nll"]} for r in hist.evals],
                               "seconds": time.perf_counter() - t0}
        _save(out, doc)
        print(f"{key}: final val ppl {math.exp(hist.evals[-1]['val_nll']):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    for seed in seeds:
        for name, (label, loss, k) in VARIANTS.items():
            key = f"{name}/s{seed}"
            if key in doc["results"]:
                continue
            t0 = time.perf_counter()
            model, _ = finetune(base, data, loss, ft, n_pauses=k, seed=seed, eval_every=ft.steps, eval_batches=1, progress=False)
            row = {"variant": name, "seed": seed, **{m: v for m, v in evaluate(model, data, loss, batch_size=64).items()
                                                     if m in ("nll", "ppl", "mean_pauses")}}
            if k:
                row["readouts"] = readout_parts(model, data.val, loss)
            row["seconds"] = time.perf_counter() - t0
            doc["results"][key] = row
            _save(out, doc)
            print(f"{key}: ppl {row['ppl']:.3f}, pauses {row['mean_pauses']:.2f} ({row['seconds']:.0f} s)", flush=True)
    return doc


if __name__ == "__main__":
    main()
