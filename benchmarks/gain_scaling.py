"""How CYB-AP's gain over continued CE grows with the base's size and the fine-tuning budget, on two corpora (chapter 10).

Every cell is the paper's regime as `cyb-nb demo` runs it: one base pretrained with CE on the `pretrain` half of a corpus
(`cyb_nb.train.pretrained_base`: the shipped tiny base, or pretrained once and cached), then CE continued, TBYS-3 and CYB-AP
fine-tuned from it (`cyb_nb.train.finetune`, `cyb_nb.cli.DEMO_LOSSES`) for a number of epochs of the `finetune` half
(`cyb_nb.cli.budget_config`), each scored on the whole val split (`cyb_nb.train.evaluate`). Seeds change the fine-tuning (the
pause rows' init and the batch order); the base is the same for every seed.

Corpora: `text` (the bundled Python docs) and `stdlib` (the Python standard library's own source, built by
`cyb_nb.data.build_stdlib_corpus`; it depends on the Python version, which the JSON records with the corpus hash).

The JSON (default benchmarks/gain_scaling.json) is rewritten after every run; a rerun skips the runs it already holds.
Several workers can fill one document: start the same command again (e.g. twice on two cores) and each takes the first job,
in priority order, that is neither done nor held by a live worker (a job's claim is released when its run is written, and a
dead worker's claim is taken over); one worker pretrains a missing base while the others wait for it or work elsewhere.
Phases, in the order they run (`--phases`, default abcd):

    a  text, small (4x128) base, 2 epochs, seed 0          (~17 CPU-min with pretraining, ~11 without)
    b  text, tiny (2x64) base, 2 epochs, seed 0             (~4 CPU-min)
    c  text, small then tiny, 2 epochs, seeds 1 and 2       (~30 CPU-min)
    d  tiny: stdlib 2 epochs, then text and stdlib at 0.5 and 1 epoch, seed 0   (~13 CPU-min)
    f  stdlib, small base, 2 / 1 / 0.5 epochs, seed 0       (~25 CPU-min)
    g  tiny, 4 epochs, both corpora, seed 0                  (~10 CPU-min)
    e  text, base (6x256) base, 2 epochs, seed 0            (hours on one CPU core; see the JSON's cost notes)

    python benchmarks/gain_scaling.py                                  # phases abcd -> benchmarks/gain_scaling.json
    python benchmarks/gain_scaling.py --phases fg                      # more cells into the same JSON
    python benchmarks/gain_scaling.py --quick --out /tmp/gs.json       # seconds: a smoke test (tests/test_gain_scaling.py)
"""
import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from cyb_nb.cli import DEMO_FULL, DEMO_LOSSES, DEMO_RECIPES, budget_config
from cyb_nb.data import asset_path, build_stdlib_corpus, regime_splits
from cyb_nb.experiments import gain_rows
from cyb_nb.train import MODEL_SIZES, TUNED_LR, BaseConfig, FinetuneConfig, base_cache_dir, base_key, evaluate, finetune, pretrained_base

FORMAT = 1
PHASES = {  # phase -> cells (corpus, size, epochs, seeds), most important first
    "a": [("text", "small", 2.0, (0,))],
    "b": [("text", "tiny", 2.0, (0,))],
    "c": [("text", "small", 2.0, (1, 2)), ("text", "tiny", 2.0, (1, 2))],
    "d": [("stdlib", "tiny", 2.0, (0,)), ("text", "tiny", 0.5, (0,)), ("text", "tiny", 1.0, (0,)),
          ("stdlib", "tiny", 0.5, (0,)), ("stdlib", "tiny", 1.0, (0,))],
    "f": [("stdlib", "small", 2.0, (0,)), ("stdlib", "small", 1.0, (0,)), ("stdlib", "small", 0.5, (0,))],
    "g": [("text", "tiny", 4.0, (0,)), ("stdlib", "tiny", 4.0, (0,))],
    "e": [("text", "base", 2.0, (0,))],
}
QUICK_PHASES = {"a": [("text", "small", 2.0, (0, 1))], "b": [("text", "tiny", 2.0, (0,))], "d": [("stdlib", "tiny", 1.0, (0,))]}
QUICK_SIZES = {"tiny": dict(d_model=16, n_layers=1, n_heads=2), "small": dict(d_model=32, n_layers=1, n_heads=2)}
QUICK_BASE = BaseConfig(d_model=16, n_layers=1, n_heads=2, seq_len=16, steps=12, batch_size=8, warmup=2)
QUICK_ROWS = dict(n_train=24, n_val=8)  # rows of each half / of val in --quick
QUICK_STDLIB_BYTES = 30_000


def machine() -> dict:
    "What the runs ran on."
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def sha256_of(path) -> str:
    "SHA-256 of a file's bytes."
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_json(path: Path, doc: dict):
    "Write `doc` atomically (a reader never sees half a file), with the summary and the total seconds recomputed from the runs."
    doc["summary"] = gain_rows(doc)
    doc["seconds"] = sum(r["wall_s"] + r["eval_s"] for r in doc["runs"].values())
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def update(path: Path, change) -> tuple:
    "Read the document, apply `change(doc) -> result` and write it back, all under an exclusive lock: workers share one file."
    with open(path.with_suffix(path.suffix + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            doc = json.loads(path.read_text())
            result = change(doc)
            write_json(path, doc)
            return doc, result
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def alive(claim: dict) -> bool:
    "Whether the worker that made `claim` is still running (same machine, live pid)."
    if claim.get("host") != platform.node():
        return True  # another machine's worker: trust it
    try:
        os.kill(claim["pid"], 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def claim(key: str):
    "A `change` for `update`: take the job `key` unless it is done or another live worker holds it; True when taken."
    def change(doc):
        held = doc["claims"].get(key)
        if key in doc["runs"] or (held and held["pid"] != os.getpid() and alive(held)):
            return False
        doc["claims"][key] = {"pid": os.getpid(), "host": platform.node(), "since": time.strftime("%H:%M:%S")}
        return True
    return change


class Corpora:
    "The (pretrain, finetune) halves of each corpus, built and loaded once."

    def __init__(self, quick: bool, corpus_dir: Path, seq_len: int):
        self.quick, self.dir, self.seq_len, self.cache, self.info = quick, corpus_dir, seq_len, {}, {}

    def get(self, name: str) -> tuple:
        if name not in self.cache:
            kw = QUICK_ROWS if self.quick else {}
            if name == "text":
                self.info[name] = {"source": "bundled Python docs (cyb_nb/assets/pydocs.jsonl.gz)",
                                   "sha256": sha256_of(asset_path("pydocs.jsonl.gz")), "tokenizer": "bundled BPE (1024)"}
                halves = regime_splits("text", self.seq_len, **kw)
            elif name == "stdlib":
                info = build_stdlib_corpus(self.dir, max_bytes=QUICK_STDLIB_BYTES if self.quick else 660_000)
                self.info[name] = {"source": "Python standard library source (cyb_nb.data.build_stdlib_corpus)",
                                   "tokenizer": "bundled BPE (1024)", **{k: v for k, v in info.items() if k != "path"}}
                halves = regime_splits("text", self.seq_len, corpus=info["path"], **kw)
            else:
                raise ValueError(f"unknown corpus {name!r}")
            pre, ft = halves
            self.info[name].update(pretrain_rows=pre.train.shape[0], finetune_rows=ft.train.shape[0], val_rows=ft.val.shape[0],
                                   seq_len=self.seq_len)
            self.cache[name] = halves
        return self.cache[name]


def base_config(size: str, quick: bool, pretrain_steps: int | None) -> BaseConfig:
    "The demo's base config at `size` (the quick ones shrunk); `pretrain_steps` overrides its budget."
    cfg = dataclasses.replace(QUICK_BASE, **QUICK_SIZES[size]) if quick else dataclasses.replace(DEMO_FULL["base"], **MODEL_SIZES[size])
    return cfg if pretrain_steps is None else dataclasses.replace(cfg, steps=pretrain_steps)


def run_key(corpus: str, size: str, epochs: float, seed: int, loss: str) -> str:
    return f"{corpus}/{size}/{epochs:g}ep/s{seed}/{loss}"


def cached_base(cfg: BaseConfig, pre, cache_dir) -> bool:
    "Whether `pretrained_base(cfg, pre, cache_dir)` would load the base (shipped or cached) rather than pretrain it."
    name = f"base-{base_key(cfg, pre)}.pt"
    return any((d / name).is_file() for d in (asset_path(), base_cache_dir(cache_dir)))


def describe_base(cfg: BaseConfig, pre, base) -> dict:
    "What the JSON says about a base: size, pretraining budget, its val ppl, and its ppl on as many rows of its own pretraining half."
    info = base.base_info
    own = dataclasses.replace(pre, val=pre.train[: pre.val.shape[0]])  # memorised or not: the rows it was trained on
    return {"params": sum(p.numel() for p in base.parameters()), "d_model": cfg.d_model, "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads, "pretrain_steps": cfg.steps, "batch_size": cfg.batch_size,
            "pretrain_tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
            "pretrain_epochs": cfg.steps * cfg.batch_size / pre.train.shape[0], "val_nll": info["val_nll"],
            "val_ppl": info["val_ppl"], "train_ppl": evaluate(base, own, "ce", batch_size=64)["ppl"],
            "pretrain_seconds": info["seconds"], "key": info["key"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phases", default="abcd", help=f"phases to run, in this order (default abcd; known: {''.join(PHASES)})")
    ap.add_argument("--out", default="benchmarks/gain_scaling.json")
    ap.add_argument("--quick", action="store_true", help="seconds: shrunk bases and data (a smoke test of this script)")
    ap.add_argument("--pretrain-steps", type=int, default=None, help="override the bases' pretraining steps (default: the demo's, 2000)")
    ap.add_argument("--corpus-dir", default=None, help="where the stdlib corpus is built (default: a folder in the user cache)")
    ap.add_argument("--cache-dir", default=None, help="where bases are cached (default: the user cache; --quick: a temp folder)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fresh", action="store_true", help="discard the runs in --out")
    ap.add_argument("--bases-only", action="store_true", help="train nothing: (re)describe the cached bases of the cells in --phases")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    phases = QUICK_PHASES if a.quick else PHASES
    unknown = set(a.phases) - set(PHASES)
    if unknown:
        ap.error(f"unknown phases {sorted(unknown)}; choose from {''.join(PHASES)}")
    tmp = Path(tempfile.mkdtemp(prefix="gain_scaling_")) if a.quick else None
    cache_dir = a.cache_dir or (tmp / "bases" if a.quick else None)
    corpus_dir = Path(a.corpus_dir) if a.corpus_dir else (tmp / "stdlib" if a.quick else
                                                           Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cyb_nb" / "stdlib")
    out = Path(a.out)
    settings = {"quick": a.quick, "pretrain_steps": a.pretrain_steps, "finetune": dataclasses.asdict(DEMO_FULL["finetune"]),
                "recipes": {name: label for label, name in DEMO_RECIPES}}
    session = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "pid": os.getpid(),
               "argv": sys.argv[1:] if argv is None else list(argv), "machine": machine()}
    with open(out.with_suffix(out.suffix + ".lock"), "a") as lock:  # create or check the document, once
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(out.read_text()) if out.exists() and not a.fresh else {}
        if doc and (doc.get("format") != FORMAT or doc.get("settings") != settings):
            ap.error(f"{out} holds runs of other settings ({doc.get('settings')}); use another --out or --fresh")
        doc = doc or {"format": FORMAT, "settings": settings, "corpora": {}, "bases": {}, "runs": {}, "sessions": []}
        doc.setdefault("claims", {})
        doc["sessions"].append(session)
        write_json(out, doc)
        fcntl.flock(lock, fcntl.LOCK_UN)
    corpora = Corpora(a.quick, corpus_dir, base_config("tiny", a.quick, None).seq_len)
    # the jobs in priority order: each cell's base, then its runs seed by seed
    jobs = []
    for phase in a.phases:
        for corpus, size, epochs, seeds in phases.get(phase, []):
            jobs += [(phase, corpus, size, epochs, seed, name) for seed in seeds for _, name in DEMO_RECIPES]
    t_session = time.perf_counter()
    ran = 0
    if a.bases_only:
        for corpus, size in dict.fromkeys((j[1], j[2]) for j in jobs):
            pre, _ = corpora.get(corpus)
            cfg = base_config(size, a.quick, a.pretrain_steps)
            if cached_base(cfg, pre, cache_dir):
                binfo = describe_base(cfg, pre, pretrained_base(cfg, data=pre, cache_dir=cache_dir, progress=False))
                update(out, lambda d: (d["bases"].__setitem__(f"{corpus}/{size}", binfo), d["corpora"].__setitem__(corpus, corpora.info[corpus])))
                print(f"{corpus}/{size}: val ppl {binfo['val_ppl']:.2f}, ppl on its own pretraining rows {binfo['train_ppl']:.2f}")
        jobs = []
    while jobs:  # take the first job that is neither done nor held by another worker; start over after each one
        busy = False
        for phase, corpus, size, epochs, seed, name in jobs:
            key = run_key(corpus, size, epochs, seed, name)
            doc = json.loads(out.read_text())
            if key in doc["runs"]:
                continue
            pre, data = corpora.get(corpus)
            cfg = base_config(size, a.quick, a.pretrain_steps)
            bkey = f"base:{corpus}/{size}/{base_key(cfg, pre)}"
            if not cached_base(cfg, pre, cache_dir):  # pretrain it (one worker only), or wait for the worker that does
                if not update(out, claim(bkey))[1]:
                    busy = True
                    continue
                print(f"[{phase}] {corpus}/{size}: pretraining its base ({cfg.steps} steps)", flush=True)
                pretrained_base(cfg, data=pre, cache_dir=cache_dir, progress=False)
                update(out, lambda d: d["claims"].pop(bkey, None))
                break
            if not update(out, claim(key))[1]:
                busy = True
                continue
            base = pretrained_base(cfg, data=pre, cache_dir=cache_dir, progress=False)
            info = base.base_info
            binfo = describe_base(cfg, pre, base)
            ft = budget_config(DEMO_FULL["finetune"] if not a.quick else FinetuneConfig(batch_size=4, warmup=2),
                               data.train.shape[0], epochs=epochs)
            loss = DEMO_LOSSES[name]
            # every base here, tiny and small, fine-tunes at the package's TUNED_LR, as the stored document measured; named
            # explicitly because `finetune` alone would scale it by 64/d for the small base (chapter 07's rule for other bases)
            ft = dataclasses.replace(ft, lr=TUNED_LR[name])
            t0 = time.perf_counter()
            model, _ = finetune(base, data, loss, ft, seed=seed, eval_every=ft.steps, eval_batches=1, progress=False)
            wall = time.perf_counter() - t0
            t0 = time.perf_counter()
            ev = evaluate(model, data, loss, batch_size=64)
            run = {"corpus": corpus, "size": size, "epochs": epochs, "seed": seed, "loss": name, "steps": ft.steps,
                   "batch_size": ft.batch_size, "warmup": ft.warmup, "lr": ft.lr_for(loss), "n_rows": data.train.shape[0],
                   "ppl": ev["ppl"], "nll": ev["nll"], "bits": ev["bits"], "mean_pauses": ev["mean_pauses"],
                   "params": sum(p.numel() for p in model.parameters()), "base_params": binfo["params"], "wall_s": wall,
                   "eval_s": time.perf_counter() - t0, "base_key": info["key"], "pid": os.getpid()}

            def record(d):
                d["runs"][key] = run
                d["bases"][f"{corpus}/{size}"] = binfo
                d["corpora"][corpus] = corpora.info[corpus]
                d["claims"].pop(key, None)
            update(out, record)
            ran += 1
            print(f"[{phase}] {key}: ppl {ev['ppl']:.3f}, {ft.steps} steps, {wall:.0f} s", flush=True)
            break
        else:
            if not busy:
                break
            time.sleep(1 if a.quick else 20)  # every job left is held by another worker: wait for it

    def close(d):
        for s in d["sessions"]:
            if s.get("pid") == os.getpid() and s["started"] == session["started"]:
                s["seconds"], s["runs"] = time.perf_counter() - t_session, ran
    doc, _ = update(out, close)
    for r in doc["summary"]:
        print(f"{r['corpus']:>7} {r['size']:>6} {r['epochs']:>4g} ep {r['label']:>7}: {r['mean']:+.2f} % ± {r['sd']:.2f} "
              f"(n={r['n']}: {', '.join(f'{c:+.2f}' for c in r['changes'])})")
    print("wrote", out)
    return doc


if __name__ == "__main__":
    main()
