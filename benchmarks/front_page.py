"""The front page's pictures (README / nbs/index.ipynb), drawn by code from measured data:

* `nbs/images/demo_curves.png` — validation NLL of `cyb-nb demo`'s recipes against fine-tuning steps, from `benchmarks/demo.json`;
* `nbs/images/stopping_time.png` — the stopping-time distribution Pr(S = i | d, ω) of one token under two deadlines, computed with
  `cyb_nb.stopping.log_stop_probs`.

    cyb-nb demo --out /tmp/demo && python benchmarks/front_page.py --demo /tmp/demo/results.json   # measure, compact, draw
    python benchmarks/front_page.py                                                                 # redraw from benchmarks/demo.json

`--demo` compacts a demo's results.json (hundreds of kB of per-step history) into benchmarks/demo.json: the results table, the
validation points, and the training loss averaged over windows of 50 steps.
"""
import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from cyb_nb.stopping import as_distribution, log_stop_probs

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "benchmarks" / "demo.json"
IMAGES = ROOT / "nbs" / "images"


def compact(results_json: Path, window: int = 50) -> dict:
    "The parts of a demo's results.json the front page needs."
    d = json.loads(Path(results_json).read_text())
    curves = {}
    for label, rows in d["histories"].items():
        loss = [r["loss"] for r in rows]
        curves[label] = {"val": [(r["step"], r["val_nll"]) for r in rows if "val_nll" in r],
                         "train": [(rows[i + window - 1]["step"], sum(loss[i:i + window]) / window)
                                   for i in range(0, len(loss) - window + 1, window)]}
    keep = ("model", "loss", "n_pauses", "nll", "bits", "ppl", "mean_pauses", "positions_per_token", "params", "wall_s", "steps")
    return {"config": d["config"], "wall_s": d["wall_s"], "results": [{k: r[k] for k in keep if k in r} for r in d["results"]],
            "curves": curves, "source": "cyb-nb demo (default settings), compacted by benchmarks/front_page.py"}


def draw_demo(doc: dict, path: Path):
    "Validation perplexity of each fine-tuned recipe against steps, the pretrained base as a line."
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    base = next((r for r in doc["results"] if r["loss"] == "base"), None)
    for (label, c), colour in zip(doc["curves"].items(), ("tab:blue", "tab:red", "tab:green")):
        steps, nll = zip(*c["val"])
        ax.plot(steps, [math.exp(v) for v in nll], "o-", color=colour, label=label)
    if base:
        ax.axhline(base["ppl"], color="grey", ls=":", label="pretrained base")
    ax.set_xlabel("fine-tuning steps (4 rows × 64 tokens)"); ax.set_ylabel("validation perplexity")
    ax.set_ylim(min(r["ppl"] for r in doc["results"]) * 0.97, (base["ppl"] if base else 60) * 1.12)
    ax.set_title("cyb-nb demo: one pretrained base, three fine-tuning recipes", fontsize=10); ax.legend(fontsize=8)
    fig.tight_layout(); fig.savefig(path, dpi=90); plt.close(fig)


def draw_stopping(path: Path, d=(0.7, 0.6, 0.4)):
    "Pr(S = i | d, ω) for one token with <don't know> probabilities d at steps 1..3, under no deadline and under ω = 1:1:1:1."
    d = torch.tensor(list(d) + [0.0], dtype=torch.float64)
    log_d, log_1md = d.clamp_min(1e-300).log(), (1 - d).clamp_min(1e-300).log()
    fig, axs = plt.subplots(1, 2, figsize=(7.2, 2.8), sharey=True)
    for ax, (omega, name) in zip(axs, (((0, 0, 0, 1), "no forced stop, ω = 0:0:0:1"), ((1, 1, 1, 1), "world deadline ω = 1:1:1:1"))):
        s = log_stop_probs(log_d, log_1md, as_distribution(omega, 4)).exp()
        ax.bar(range(4), s.tolist(), color="tab:purple", alpha=0.8)
        for i, v in enumerate(s.tolist()):
            ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
        ax.set_xticks(range(4), ["token", "pause 1", "pause 2", "pause 3"], fontsize=8); ax.set_title(name, fontsize=9)
    axs[0].set_ylabel("Pr(S = i)"); axs[0].set_ylim(0, 0.56)
    fig.suptitle(f"When does the model answer? d = {', '.join(f'{x:g}' for x in d[:3].tolist())} (step 4 must answer)", fontsize=10)
    fig.tight_layout(); fig.savefig(path, dpi=90); plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default=None, help="a `cyb-nb demo` results.json to compact into benchmarks/demo.json first")
    a = ap.parse_args(argv)
    if a.demo:
        DEMO.write_text(json.dumps(compact(Path(a.demo)), indent=1))
    IMAGES.mkdir(parents=True, exist_ok=True)
    draw_demo(json.loads(DEMO.read_text()), IMAGES / "demo_curves.png")
    draw_stopping(IMAGES / "stopping_time.png")
    print(f"wrote {IMAGES / 'demo_curves.png'}, {IMAGES / 'stopping_time.png'}")


if __name__ == "__main__":
    main()
