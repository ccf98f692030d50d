"""The language myopia gap in the continued-training regime, beside the from-scratch gap (the paper continues pretrained Pythia models).

    python benchmarks/myopia_continued.py --json benchmarks/myopia_continued.json   # the runs chapter 12 reads (~15 CPU-minutes)
    python benchmarks/myopia_continued.py --quick --json /tmp/mc.json                # seconds: exercises the code

1. The base: the project's shared CE base (`cyb_nb.train.pretrained_base()`, a TinyGPT pretrained with next-token cross-entropy on
   the 'pretrain' half of the bundled text and shipped with the package).
2. Continued: from the base's weights, vanilla and each myopic cut trained further on the 'finetune' half — the text the base has
   not seen — with the fine-tuning recipe of chapter 07 (`FinetuneConfig()`, CE's learning rate), the same batches for every variant
   of a seed; the continued gap is cut − vanilla.
3. From scratch: a myopic model trained exactly as the base was (same `BaseConfig`: seed, schedule, data order); the from-scratch
   gap is it − base.
NLL in nats per token on the text's validation split. Training is cyb_nb.train.train with loss 'ce' and no pauses. The JSON is
rewritten after every run, and a rerun skips the runs already in it.
"""
import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from cyb_nb.data import load_data
from cyb_nb.models import grow_pause_model
from cyb_nb.myopic import make_myopic
from cyb_nb.train import BaseConfig, FinetuneConfig, base_data, evaluate, make_model, pretrained_base, train


def _save(path: Path, doc: dict):
    "Write the document atomically."
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float))
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuts", nargs="+", default=["hidden", "kv"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data-order seeds of the continued runs")
    ap.add_argument("--quick", action="store_true", help="a tiny base and a few steps: exercises the code, measures nothing")
    ap.add_argument("--json", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.quick:
        bc = BaseConfig(d_model=16, n_layers=1, n_heads=2, seq_len=16, steps=4, batch_size=4, warmup=1)
        ft = FinetuneConfig(steps=3, batch_size=4, warmup=1)
        base = pretrained_base(bc, cache_dir=Path(a.json).parent / ".cache", progress=False, log=None)
        data = load_data("text", seq_len=bc.seq_len, n_train=64, n_val=8, train_split="finetune")
        pre = load_data("text", seq_len=bc.seq_len, n_train=64, n_val=8, train_split="pretrain")
    else:
        bc, ft = BaseConfig(), FinetuneConfig()
        base, data, pre = pretrained_base(bc, log=None), load_data("text", seq_len=bc.seq_len, train_split="finetune"), base_data(bc)
    path = Path(a.json)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc.update(base=base.base_info, finetune=asdict(ft), lr=ft.lr_for("ce"), cuts=a.cuts, seeds=a.seeds,
               base_eval={k: v for k, v in evaluate(base, data, "ce", batch_size=64).items() if k in ("nll", "ppl")})
    doc.setdefault("scratch", {})
    doc.setdefault("continued", {})
    for cut in a.cuts:  # the base's own recipe, made myopic
        if cut in doc["scratch"]:
            continue
        t0 = time.time()
        model = make_model(pre, "ce", n_pauses=0, size=bc.size, seed=bc.seed)
        make_myopic(model, cut=cut)
        train(model, pre, "ce", steps=bc.steps, batch_size=bc.batch_size, lr=bc.lr, warmup=bc.warmup, weight_decay=bc.weight_decay,
              min_lr_ratio=bc.min_lr_ratio, eval_every=bc.steps, eval_batches=1, seed=bc.seed, progress=False)
        doc["scratch"][cut] = {"nll": evaluate(model, data, "ce", batch_size=64)["nll"], "seconds": time.time() - t0}
        _save(path, doc)
        print(f"from scratch, {cut}: NLL {doc['scratch'][cut]['nll']:.4f} (base {doc['base_eval']['nll']:.4f})", flush=True)
    for seed in a.seeds:
        for variant in ["vanilla", *a.cuts]:
            key = f"{variant}/s{seed}"
            if key in doc["continued"]:
                continue
            t0 = time.time()
            model = grow_pause_model(base, 0)  # a copy of the base
            if variant != "vanilla":
                make_myopic(model, cut=variant)
            train(model, data, "ce", steps=ft.steps, batch_size=ft.batch_size, lr=ft.lr_for("ce"), warmup=ft.warmup,
                  weight_decay=ft.weight_decay, min_lr_ratio=ft.min_lr_ratio, eval_every=ft.steps, eval_batches=1, seed=seed,
                  progress=False)
            doc["continued"][key] = {"variant": variant, "seed": seed, "nll": evaluate(model, data, "ce", batch_size=64)["nll"],
                                     "seconds": time.time() - t0}
            _save(path, doc)
            print(f"continued {key}: NLL {doc['continued'][key]['nll']:.4f} ({time.time() - t0:.0f} s)", flush=True)
    return doc


if __name__ == "__main__":
    main()
