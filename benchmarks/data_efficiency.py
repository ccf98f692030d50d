"""Reproduce the shape of CYB's comparisons at small scale (chapter 10): Fig. 6 data efficiency (CE, TBYS 1/2/3 pauses, CYB-AP
at 1x/2x/3x data, several seeds), the Fig. 5 sweep with Fig. 7 latencies and Fig. 10 calibration, Table 3 on the text, and
(from scratch) pauses against true difficulty on the synthetic task. The `cpu` and `gpu` presets are the paper's regime: every
model is grown from the pretrained base and fine-tuned on the 'finetune' half of the text; `cpu_scratch` trains from random
weights instead (the earlier contrast, benchmarks/data_efficiency.json).

Writes a JSON document (resumable: runs already in it with the same configuration are kept) and PNG plots, and prints
the tables that nbs/10_experiments.ipynb shows.

    python benchmarks/data_efficiency.py --preset cpu                # the regime: benchmarks/regime_experiments.json (~30 CPU-min)
    python benchmarks/data_efficiency.py --preset cpu_scratch --jobs 2   # from scratch: benchmarks/data_efficiency.json (~50 min)
    python benchmarks/data_efficiency.py --preset gpu --out benchmarks/regime_experiments_gpu.json   # on a GPU
    python benchmarks/data_efficiency.py --preset test --out /tmp/de.json     # seconds: a smoke test
"""
import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from cyb_nb.experiments import PRESETS, preset, report, run_experiment, save_plots


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--parts", default=None, help="comma-separated subset of fig6,sweep,difficulty (default: fig6,sweep in the "
                    "regime, where the difficulty study is chapter 14's; all three from scratch)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's)")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained in parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    ap.add_argument("--out", default=None, help="JSON document (default: benchmarks/regime_experiments.json in the regime, "
                    "benchmarks/data_efficiency.json from scratch)")
    ap.add_argument("--plots", default=None, help="folder for PNGs (default: next to --out, named after it)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    over = {} if a.seeds is None else {"seeds": tuple(int(s) for s in a.seeds.split(","))}
    cfg = preset(a.preset, **over)
    scratch = cfg.start == "scratch"
    a.parts = a.parts or ("fig6,sweep,difficulty" if scratch else "fig6,sweep")
    a.out = a.out or f"benchmarks/{'data_efficiency' if scratch else 'regime_experiments'}.json"
    t0 = time.perf_counter()
    doc = run_experiment(cfg, parts=tuple(a.parts.split(",")), out=a.out, jobs=a.jobs, threads=a.threads, device=a.device,
                         preset_name=a.preset)
    print(f"{len(doc['results'])} runs, {time.perf_counter() - t0:.0f} s this call ({doc['seconds']:.0f} s in all), env {doc['env']}")
    print(report(doc))
    plots = Path(a.plots) if a.plots else Path(a.out).with_suffix("")
    for p in save_plots(doc, plots):
        print("wrote", p)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
