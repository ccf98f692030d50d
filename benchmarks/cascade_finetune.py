"""Cascade-aware training in its paper's setting: small and large models pretrained with CE, then the small one fine-tuned.

The small model is the shared CE-pretrained base (`cyb_nb.train.pretrained_base()`, 2 layers x 64); the large one, 4 layers x 128, is
pretrained with CE on all the train text (cached under ~/.cache/cyb_nb after the first run). From the same small weights, each seed
fine-tunes one copy with plain CE and one per CAT reading (same steps, batches and learning rate) on the 'finetune' half of
the text, and scores the cascade (small defers to the frozen large by max-prob confidence) on the validation split. The
pretrained small model without fine-tuning is scored too. Writes rows and curve points as JSON for nbs/13_cascade.ipynb.

    python benchmarks/cascade_finetune.py --jobs 2                  # the chapter's numbers (3 seeds; some minutes on 2 cores)
    python benchmarks/cascade_finetune.py --steps 20 --seeds 0 --out /tmp/cf.json   # quick
"""
import argparse
import dataclasses
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from cyb_nb.cascade import CascadeFinetuneConfig, cascade_finetune
from cyb_nb.data import load_data
from cyb_nb.ponder import n_params
from cyb_nb.train import pretrained_base


def job(cfg, variant, seed, threads):
    "Fine-tune and score one small model; return its rows, curve points and wall seconds."
    torch.set_num_threads(threads)
    small, large = pretrained_base(cfg.small, progress=False, log=None), pretrained_base(cfg.large, progress=False, log=None)
    data = load_data("text", seq_len=cfg.small.seq_len, train_split="finetune")
    t0 = time.perf_counter()
    out = cascade_finetune(small, large, data, variant, cfg, seed=seed)
    return out["rows"], out["points"], time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the config's)")
    ap.add_argument("--readings", default="defer,hopeless")
    ap.add_argument("--normalize", default="kept", choices=["kept", "all"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/cascade_finetune.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = CascadeFinetuneConfig(readings=tuple(a.readings.split(",")), normalize=a.normalize, seeds=tuple(int(s) for s in a.seeds.split(",")))
    if a.steps:
        cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, steps=a.steps))
    t0 = time.perf_counter()
    small, large = pretrained_base(cfg.small), pretrained_base(cfg.large)  # pretrains and caches the large model once
    info = {k: {"params": n_params(m), "val_ppl": m.base_info["val_ppl"], "key": m.base_info["key"]} for k, m in (("small", small), ("large", large))}
    print(f"small {info['small']['params']:,} params (val ppl {info['small']['val_ppl']:.2f}), "
          f"large {info['large']['params']:,} (val ppl {info['large']['val_ppl']:.2f})", flush=True)
    variants = ["pretrained", "standard", *(f"cat:{r}" for r in cfg.readings)]
    jobs = [(v, s) for s in cfg.seeds for v in variants if not (v == "pretrained" and s != cfg.seeds[0])]
    jobs.sort(key=lambda j: not j[0].startswith("cat"))  # CAT jobs (they run the large model too) first
    rows, points, secs = [], {}, {}
    with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as ex:
        futs = {ex.submit(job, cfg, v, s, a.threads): (v, s) for v, s in jobs}
        for f in as_completed(futs):
            v, s = futs[f]
            rs, pts, sec = f.result()
            rows += rs
            points[f"{v}|{s}"] = pts
            secs[f"{v} seed {s}"] = round(sec, 1)
            acc = next(r for r in rs if r["metric"] == "acc")
            nll = next(r for r in rs if r["metric"] == "nll")
            print(f"{v:13s} seed {s}: area acc {acc['area']:.4f} nll {nll['area']:.4f}; small alone acc {acc['small_only']:.4f} "
                  f"nll {nll['small_only']:.4f} ({sec:.0f} s)", flush=True)
    rows.sort(key=lambda r: (variants.index(r["model"]), r["seed"], r["metric"]))
    area = {(r["model"], r["metric"], r["seed"]): r for r in rows}
    for v in variants[2:]:
        for m in ("acc", "nll"):
            d = [area[(v, m, s)]["area"] - area[("standard", m, s)]["area"] for s in cfg.seeds]
            c = [area[(v, m, s)]["small_only"] - area[("standard", m, s)]["small_only"] for s in cfg.seeds]
            print(f"{v} - standard: area of {m} " + ", ".join(f"{x:+.4f}" for x in d) + "; small alone " + ", ".join(f"{x:+.4f}" for x in c))
    seconds = time.perf_counter() - t0
    print(f"total time {seconds:.0f} s")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(a.out + ".tmp")
        tmp.write_text(json.dumps({"args": vars(a), "config": dataclasses.asdict(cfg), "models": info, "rows": rows,
                                   "points": points, "seconds": seconds, "job_seconds": secs}, indent=1))
        os.replace(tmp, a.out)
        print("wrote", a.out)
    return rows


if __name__ == "__main__":
    main()
