"""PonderingLM learning curves at a budget where the comparison means something (issue: companion chapters in their setting).

From scratch on the bundled text: PonderLM with K = 0, 1, 3 and a no-ponder model with ~2x the parameters, each scored on the
whole validation split every `eval_every` steps (same seed, batches and schedule for every model of a seed). Then pondering
as fine-tuning: K extra passes added to the shared CE-pretrained base (`cyb_nb.train.pretrained_base`), trained on the
'finetune' half of the text with CE. Runs the (seed, model) jobs in parallel processes, biggest first, and writes the rows
(one per evaluation) as JSON for nbs/11_pondering.ipynb, after every job: a run stopped midway resumes when started again with
the same arguments, and more seeds can be added to a finished file (`--seeds 1,2`), since jobs already in `--out` are skipped.

    python benchmarks/ponder_curves.py --preset cpu --jobs 2            # the chapter's numbers (~25 min on 2 cores)
    python benchmarks/ponder_curves.py --preset test --out /tmp/pc.json  # seconds
    python benchmarks/ponder_curves.py --preset cpu --jobs 2 --scale-embeds --no-finetune --out benchmarks/ponder_curves_scaled.json
    python benchmarks/ponder_curves.py --preset cpu --no-finetune --lr 1e-3 --seeds 0 --out benchmarks/ponder_curves_lr1e-3.json
    python benchmarks/ponder_curves.py --preset cpu --jobs 2 --authors --no-finetune --seeds 0 --out benchmarks/ponder_curves_authors.json
    python benchmarks/ponder_curves.py --preset gpu                      # a larger setting, ready for a GPU machine (not run)
"""
import argparse
import dataclasses
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from cyb_nb.ponder import PONDER_PRESETS, gap_closed, ponder_run


def job(cfg, regime, name, seed, threads):
    "Train one model; return its rows and wall seconds."
    torch.set_num_threads(threads)
    base = None
    if regime == "finetune":
        from cyb_nb.train import pretrained_base
        base = pretrained_base(progress=False, log=None)
    t0 = time.perf_counter()
    rows = ponder_run(cfg, regime, name, seed, base=base)
    return rows, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu", choices=sorted(PONDER_PRESETS))
    ap.add_argument("--jobs", type=int, default=2, help="models trained in parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning runs")
    ap.add_argument("--scale-embeds", action="store_true", help="scale e0 and E by sqrt(d) in every model (the authors' setting)")
    ap.add_argument("--init", default=None, choices=("gpt2", "ponder"),
                    help="TinyGPT init of the from-scratch models (default: the preset's; 'ponder' = the authors' small init, ÷√(2L(K+1)))")
    ap.add_argument("--authors", action="store_true", help="the PonderingLM authors' setting: --init ponder --scale-embeds")
    ap.add_argument("--lr", type=float, default=None, help="from-scratch peak learning rate (default: the preset's)")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's)")
    ap.add_argument("--ks", default=None, help="comma-separated ponder steps (default: the preset's)")
    ap.add_argument("--only", default=None,
                    help="comma-separated models to train, in this order, one after another (e.g. K=3,K=0,big); default: all, biggest first")
    ap.add_argument("--out", default="benchmarks/ponder_curves.json")
    a = ap.parse_args(argv)
    cfg = PONDER_PRESETS[a.preset]
    if a.scale_embeds or a.authors:
        cfg = dataclasses.replace(cfg, scale_embeds=True)
    if a.init or a.authors:
        cfg = dataclasses.replace(cfg, init=a.init or "ponder")
    if a.lr:
        cfg = dataclasses.replace(cfg, lr=a.lr)
    if a.seeds:
        cfg = dataclasses.replace(cfg, seeds=tuple(int(x) for x in a.seeds.split(",")))
    if a.ks:
        cfg = dataclasses.replace(cfg, ks=tuple(int(x) for x in a.ks.split(",")))
    cost = {"big": 2.5, **{f"K={k}": k + 1 for k in cfg.ks}}
    jobs = [("scratch", n, s) for s in cfg.seeds for n in [*(f"K={k}" for k in cfg.ks), "big"]]
    if not a.no_finetune:
        jobs += [("finetune", f"K={k}", s) for s in cfg.seeds for k in cfg.ks]
    jobs.sort(key=lambda j: -cost[j[1]] * (cfg.steps * cfg.batch_size if j[0] == "scratch" else cfg.finetune_steps * cfg.finetune_batch_size))
    if a.only:
        order = [x.strip() for x in a.only.split(",")]
        jobs = sorted((j for j in jobs if j[1] in order), key=lambda j: (order.index(j[1]), j[0], j[2]))
    t0, rows, secs = time.perf_counter(), [], {}
    done = _load_partial(a.out, a.preset, cfg)  # resume: the jobs of an earlier, interrupted run of this configuration
    if done:
        rows, secs = done["rows"], done["job_seconds"]
        cfg = dataclasses.replace(cfg, seeds=tuple(sorted(set(cfg.seeds) | set(done["config"]["seeds"]))))
        jobs = [j for j in jobs if f"{j[0]} {j[1]} seed {j[2]}" not in secs]
        print(f"resuming {a.out}: {len(secs)} jobs done, {len(jobs)} to run", flush=True)
    with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as ex:
        futs = {ex.submit(job, cfg, r, n, s, a.threads): (r, n, s) for r, n, s in jobs}
        for f in as_completed(futs):
            r, n, s = futs[f]
            out, sec = f.result()
            rows += out
            secs[f"{r} {n} seed {s}"] = round(sec, 1)
            print(f"{r:8s} {n:4s} seed {s}: final val NLL {out[-1]['val_nll']:.4f} ({sec:.0f} s)", flush=True)
            _write(a.out, a.preset, cfg, rows, time.perf_counter() - t0, secs, complete=False)
    rows.sort(key=lambda r: (r["regime"], r["model"], r["seed"], r["step"]))
    seconds = time.perf_counter() - t0
    print("| regime | model | params | passes | " + " | ".join(f"seed {s}" for s in cfg.seeds) + " |")
    for reg in ("scratch", "finetune"):
        for name in dict.fromkeys(r["model"] for r in rows if r["regime"] == reg):
            fin = {r["seed"]: r for r in rows if r["regime"] == reg and r["model"] == name}  # last row per seed (sorted by step)
            r0 = next(iter(fin.values()))
            print(f"| {reg} | {name} | {r0['params']:,} | {r0['passes']} | " + " | ".join(f"{fin[s]['val_nll']:.4f}" for s in cfg.seeds) + " |")
    for k in cfg.ks:
        if k and 0 in cfg.ks:
            g = [r for r in gap_closed(rows, k) if r["step"] == cfg.steps]
            print(f"K={k} closes of the K=0 -> 2x gap at the end: " + ", ".join(f"seed {r['seed']}: {r['closed']:+.2f}" for r in g))
    print(f"total time {seconds:.0f} s")
    _write(a.out, a.preset, cfg, rows, seconds, secs, complete=True)
    return rows


def _write(out, preset, cfg, rows, seconds, secs, complete):
    "Write the rows so far (atomically); `complete` is False while jobs remain."
    if not out:
        return
    rows = sorted(rows, key=lambda r: (r["regime"], r["model"], r["seed"], r["step"]))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps({"preset": preset, "config": asdict(cfg), "rows": rows, "seconds": seconds, "job_seconds": secs,
                               "complete": complete}, indent=1))
    os.replace(tmp, out)
    if complete:
        print("wrote", out)


def _load_partial(out, preset, cfg):
    "The contents of `out` when it holds a run of the same preset and configuration (seeds aside: more may be added), else None."
    if not out or not Path(out).exists():
        return None
    d = json.loads(Path(out).read_text())
    drop = lambda c: {k: v for k, v in c.items() if k != "seeds"}
    if d.get("preset") != preset or drop(d.get("config", {})) != drop(json.loads(json.dumps(asdict(cfg)))):
        return None
    return d


if __name__ == "__main__":
    main()
