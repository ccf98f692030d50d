"""Do the synthetic tasks' difficulty labels mean what they say? Train a tiny plain causal transformer (no pauses)
on each task and print next-token accuracy on held-out data per difficulty label as training goes on.

Expected: EASY tokens are learned first, hard levels later and in order of their level; RANDOM tokens stay at chance.
Also trains a model twice as deep (more compute per token) to show that hard levels gain the most from compute.

    python benchmarks/data_difficulty.py [--steps 600] [--tasks modsum lookup]
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from cyb_nb.data import RANDOM, load_data
from cyb_nb.stream import IGNORE_INDEX, next_token_targets


class TinyCausalLM(nn.Module):
    def __init__(self, V, T, d=96, layers=2, heads=4):
        super().__init__()
        self.emb, self.pos = nn.Embedding(V, d), nn.Embedding(T, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, V)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(T), persistent=False)

    def forward(self, x):
        T = x.shape[1]
        h = self.emb(x) + self.pos(torch.arange(T))
        return self.head(self.body(h, mask=self.mask[:T, :T], is_causal=True))


def acc_by_label(model, ids, diff):
    with torch.no_grad():
        pred = model(ids).argmax(-1)
    tgt = next_token_targets(ids)
    ok = (pred == tgt) & (tgt != IGNORE_INDEX)
    return {int(l): ok[diff == l].float().mean().item() for l in diff.unique().tolist() if l != IGNORE_INDEX}


def run(task, steps, layers, seq_len, seed=0, **task_kw):
    torch.manual_seed(seed)
    data = load_data(task, seq_len=seq_len, n_train=8192, n_val=512, seed=seed, **task_kw)
    model = TinyCausalLM(data.vocab_size, seq_len, layers=layers)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for step in range(1, steps + 1):
        x = data.train[torch.randint(0, data.train.shape[0], (64,), generator=g)]
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), next_token_targets(x).reshape(-1), ignore_index=IGNORE_INDEX)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % (steps // 4) == 0:
            rows.append((step, acc_by_label(model, data.val, data.difficulty_val)))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--tasks", nargs="+", default=["modsum", "lookup"])
    ap.add_argument("--layers", nargs="+", type=int, default=[2, 4])
    ap.add_argument("--modulus", type=int, default=None, help="modsum option")
    args = ap.parse_args()
    torch.set_num_threads(2)
    for task in args.tasks:
        for layers in args.layers:
            t0 = time.time()
            kw = {"modulus": args.modulus} if task == "modsum" and args.modulus else {}
            rows = run(task, args.steps, layers, seq_len=48, **kw)
            labels = sorted(rows[-1][1])
            print(f"\n{task}, {layers} layers, d=96 ({time.time() - t0:.0f} s). held-out accuracy by label "
                  f"({RANDOM} = random, 0 = easy, k = hard level k)")
            print("step  " + "".join(f"{l:>8d}" for l in labels))
            for step, acc in rows:
                print(f"{step:<6d}" + "".join(f"{acc[l]:8.3f}" for l in labels))
