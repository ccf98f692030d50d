"""Why does a CYB-AP model (γ ≡ 1, no deadline) pause on only some of its tokens, and what does the δ prior do?  Chapter 02 reads this.

Grows the shipped base (`pretrained_base()`) into a 3-pause model and fine-tunes it with CYB-AP (ω = 0:0:0:1, γ ≡ 1) for the
standard `FinetuneConfig` (1500 steps), once with the δ prior ψ′ = 0.9 (`dk_prior=0.9`, the default) and once without it
(`dk_prior=None`).  For each run, on the whole validation split, teacher-forced, it records:

* at initialisation (the grown model before any step): mean d_i, mean s_i, the share of the loss gradient that reaches the pause
  steps (Σ_{i≥2} of the posterior responsibilities r_i = s_i t_i / Σ_j s_j t_j, which is −∂ℓ/∂log t_i summed over the pause steps);
* after fine-tuning: the mixture NLL, the fraction of tokens with E[pauses] > 0.5, a histogram of E[S] = 1 + E[pauses], mean s_i,
  t_i and r_i per step, and the responsibility test: does the model wait at step 1 (d_1 > 1/2) exactly where the continuation value
  C_1 = Σ_{i≥2} (Π_{1<j<i} d_j)(1 − d_i) t_i beats t_1?
* adaptive decoding (`score_adaptive`, answer at the first step with d < 1/2): positions per token and its NLL.

    python benchmarks/ap_pauses.py              # ~6 CPU-minutes (two fine-tunes of 1500 steps)
    python benchmarks/ap_pauses.py --quick --out /tmp/ap.json   # seconds: exercises the code
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch

from cyb_nb.data import load_data
from cyb_nb.decode import score_adaptive, spearman
from cyb_nb.losses import LossConfig, head_log_probs
from cyb_nb.models import forward_steps, grow_pause_model
from cyb_nb.stopping import log_stop_probs
from cyb_nb.stream import IGNORE_INDEX
from cyb_nb.train import FinetuneConfig, evaluate, finetune, pretrained_base

HIST_EDGES = [1.0 + 0.25 * k for k in range(13)]  # E[S] from 1 to 4 in bins of a quarter step


@torch.no_grad()
def profile(model, ids, dk_prior, batch_size: int = 64) -> dict:
    "Teacher-forced per-token statistics of a 3-pause model on `ids [B, T]` (see the module docstring)."
    was = model.training
    model.eval()
    cols = {k: [] for k in ("s", "t", "d1", "c1", "r", "ep", "nll")}
    for i in range(0, ids.shape[0], batch_size):
        logits, stream = forward_steps(model, ids[i:i + batch_size], model.pause_vocab)
        keep = stream.targets != IGNORE_INDEX
        log_d, log_1md, log_t = head_log_probs(logits.double(), stream.targets.clamp(min=0)[..., None], dk_prior)
        log_s = log_stop_probs(log_d, log_1md)
        log_mix = torch.logsumexp(log_s + log_t, -1)
        log_c1 = torch.logsumexp(log_stop_probs(log_d[..., 1:], log_1md[..., 1:]) + log_t[..., 1:], -1)  # continuation value
        s = log_s.exp()
        cols["s"].append(s[keep]); cols["t"].append(log_t.exp()[keep]); cols["d1"].append(log_d[..., 0].exp()[keep])
        cols["c1"].append(log_c1.exp()[keep]); cols["r"].append((log_s + log_t - log_mix[..., None]).exp()[keep])
        cols["ep"].append((s * torch.arange(s.shape[-1], dtype=s.dtype)).sum(-1)[keep]); cols["nll"].append(-log_mix[keep])
    model.train(was)
    c = {k: torch.cat(v) for k, v in cols.items()}
    wait, better = c["d1"] > 0.5, c["c1"] > c["t"][:, 0]
    hist = torch.histogram(1 + c["ep"], torch.tensor(HIST_EDGES, dtype=torch.float64))[0]
    return {
        "tokens": int(c["nll"].numel()), "nll": float(c["nll"].mean()), "ppl": float(c["nll"].mean().exp()),
        "mean_pauses": float(c["ep"].mean()), "frac_pauses_gt_half": float((c["ep"] > 0.5).double().mean()),
        "E_S_hist": {"edges": HIST_EDGES, "counts": hist.tolist()},
        "mean_s": c["s"].mean(0).tolist(), "mean_t": c["t"].mean(0).tolist(), "mean_r": c["r"].mean(0).tolist(),
        "mean_d1": float(c["d1"].mean()), "pause_responsibility": float(c["r"][:, 1:].sum(-1).mean()),
        "frac_wait": float(wait.double().mean()), "frac_later_better": float(better.double().mean()),
        "agreement_wait_vs_later_better": float((wait == better).double().mean()),
        "spearman_d1_vs_gain": spearman(c["d1"], c["c1"] - c["t"][:, 0]),
        "t1_mean_when_wait": float(c["t"][wait, 0].mean()) if bool(wait.any()) else None,
        "t1_mean_when_answer": float(c["t"][~wait, 0].mean()) if bool((~wait).any()) else None,
        "gain_mean_when_wait": float((c["c1"] - c["t"][:, 0])[wait].mean()) if bool(wait.any()) else None,
        "gain_mean_when_answer": float((c["c1"] - c["t"][:, 0])[~wait].mean()) if bool((~wait).any()) else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    ap.add_argument("--quick", action="store_true", help="20 steps, 32 validation rows: checks the code, not the claim")
    a = ap.parse_args()
    torch.set_num_threads(1)
    base = pretrained_base(log=None)
    data = load_data("text", seq_len=64, train_split="finetune")
    ft = FinetuneConfig(steps=20) if a.quick else FinetuneConfig()
    val = data.val[:32] if a.quick else data.val
    out = {"format": "cyb_nb.ap_pauses/1", "finetune": ft.__dict__, "data": str(data), "base_val_ce_nll": base.base_info["val_nll"],
           "env": {"torch": torch.__version__, "python": platform.python_version(), "threads": 1}, "runs": {}}
    for name, prior in (("prior_0.9", 0.9), ("no_prior", None)):
        t0 = time.perf_counter()
        cfg = LossConfig("ap", dk_prior=prior)
        init = profile(grow_pause_model(base, 3), val, prior)
        model, hist = finetune(base, data, cfg, ft, progress=False, eval_every=ft.steps, eval_batches=1)
        trained = profile(model, val, prior)
        dec = score_adaptive(model, val, halt="threshold", threshold=0.5, dk_prior=prior)
        out["runs"][name] = {"dk_prior": prior, "init": init, "trained": trained,
                             "adaptive": {k: dec[k] for k in ("mean_nll", "mean_pauses", "positions_per_token")},
                             "val_nll_evaluate": evaluate(model, data, cfg, batch_size=64)["nll"],
                             "seconds": time.perf_counter() - t0}
        print(name, json.dumps({k: trained[k] for k in ("nll", "mean_pauses", "frac_pauses_gt_half", "agreement_wait_vs_later_better")}),
              f"{out['runs'][name]['seconds']:.0f} s", flush=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
