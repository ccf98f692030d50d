"Tests for cyb_nb.train: loss decreases for every variant, evaluation metric, checkpoints (exact, atomic, resumable), CYBTrainer."
import json
import math
import os

import pytest
import torch

from cyb_nb.losses import LossConfig
from cyb_nb.models import forward_steps
from cyb_nb.stream import IGNORE_INDEX
from cyb_nb.train import (BatchSampler, as_splits, cosine_schedule, evaluate, load_checkpoint, make_model,
                          model_from_checkpoint, pause_vocab_of, save_checkpoint, train)

V = 8
TINY = dict(d_model=32, n_layers=2, n_heads=4)


def copy_task(n=160, T=12, seed=0):
    "Pairs (a, a): every odd position repeats the token before it, so half the next tokens are predictable."
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, T), generator=g)
    ids[:, 1::2] = ids[:, 0::2]
    return ids


DATA = copy_task()
KW = dict(batch_size=16, lr=1e-2, warmup=3, eval_every=1000, eval_batches=2, progress=False, seed=0)


@pytest.mark.parametrize("loss", ["ap", "va", "dp", "tbys", "ce"])
def test_loss_decreases_every_variant(loss):
    model = make_model(DATA, loss, size=TINY, seed=0)
    before = evaluate(model, DATA, loss)["nll"]
    h = train(model, DATA, loss, steps=30, **KW)
    losses = [r["loss"] for r in h]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, (loss, losses[:5], losses[-5:])
    after = evaluate(model, DATA, loss)["nll"]
    assert after < before - 0.1, (loss, before, after)


def _ref_mixture_nll(step_logits, targets, dk_prior=0.9):
    "Per-token -log sum_i s_i t_i in float64 with a Python loop (paper §1.3 head, §2.8 stopping with omega = 0:..:0:1)."
    lg = step_logits.double()
    B, T, W, V1 = lg.shape
    Vb = V1 - 1
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            y = int(targets[b, t])
            if y == IGNORE_INDEX:
                continue
            total, alive = 0.0, 1.0
            # prior shift log(psi'/psi): psi uniform over the V+1 outputs, psi'_DK = dk_prior, psi'_j = (1-dk_prior)/V
            shift = torch.full((V1,), math.log((1 - dk_prior) / Vb * V1), dtype=torch.float64)
            shift[-1] = math.log(dk_prior * V1)
            for i in range(W):
                z = lg[b, t, i] + shift
                p = torch.softmax(z, -1)
                d = float(p[-1]) if i < W - 1 else 0.0
                t_i = float(p[y] / p[:-1].sum())
                total += alive * (1 - d) * t_i
                alive *= d
            out[b, t] = -math.log(total)
    return out


def test_evaluate_matches_bruteforce_mixture():
    model = make_model(DATA, "ap", size=TINY, seed=1)
    ids = DATA[:3]
    res = evaluate(model, ids, "ap", per_token=True)
    with torch.no_grad():
        sl, st = forward_steps(model, ids, pause_vocab_of(model))
    ref = _ref_mixture_nll(sl, st.targets)
    m = st.targets != IGNORE_INDEX
    assert torch.allclose(res["token_nll"][m].double(), ref[m], atol=1e-4)
    assert abs(res["nll"] - float(ref[m].mean())) < 1e-4
    assert abs(res["bits"] - res["nll"] / math.log(2)) < 1e-12
    assert 0 <= res["mean_pauses"] <= 3
    # TBYS always reads the last step, CE has no pauses
    assert evaluate(model, ids, "tbys")["mean_pauses"] == 3
    assert evaluate(make_model(DATA, "ce", size=TINY), ids, "ce")["mean_pauses"] == 0


def test_cosine_schedule_reference():
    total, warm, r = 50, 5, 0.1
    for s in range(total):
        ref = (s + 1) / warm if s < warm else r + (1 - r) * (1 + math.cos(math.pi * (s - warm) / (total - warm))) / 2
        assert abs(cosine_schedule(s, total, warm, r) - ref) < 1e-12


def test_grad_accum_equals_big_batch():
    "2 micro-batches of 8 see the same data as one batch of 16, and the logged loss is their mean."
    a, b = make_model(DATA, "ap", size=TINY, seed=2), make_model(DATA, "ap", size=TINY, seed=2)
    ha = train(a, DATA, "ap", steps=3, **{**KW, "batch_size": 8}, grad_accum=2)
    hb = train(b, DATA, "ap", steps=3, **{**KW, "batch_size": 16})
    assert abs(ha[0]["loss"] - hb[0]["loss"]) < 1e-6
    assert all(abs(x["loss"] - y["loss"]) < 1e-3 for x, y in zip(ha, hb))
    assert ha[-1]["tokens"] == hb[-1]["tokens"] == 3 * 16 * (DATA.shape[1] - 1)


def _losses(h):
    return [r["loss"] for r in h]


def test_checkpoint_roundtrip_exact(tmp_path):
    model = make_model(DATA, "ap", size=TINY, seed=3)
    train(model, DATA, "ap", steps=3, checkpoint_dir=tmp_path, **KW)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 3 and ck["optimizer"]["state"] and ck["sampler"]["pos"] > 0
    m2, cfg = model_from_checkpoint(tmp_path / "checkpoint.pt")
    sd1, sd2 = model.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert cfg == LossConfig.from_name("ap")
    assert pause_vocab_of(m2) == pause_vocab_of(model)


def test_resume_is_bit_identical(tmp_path):
    N = 6
    kw = dict(KW, eval_every=4, steps=2 * N)
    straight = train(make_model(DATA, "ap", size=TINY, seed=4), DATA, "ap", **kw)
    first = train(make_model(DATA, "ap", size=TINY, seed=4), DATA, "ap", checkpoint_dir=tmp_path,
                  callbacks=[lambda r: "stop" if r["step"] == N else None], **kw)
    assert len(first) == N
    fresh = make_model(DATA, "ap", size=TINY, seed=123)  # different init: everything must come from the checkpoint
    resumed = train(fresh, DATA, "ap", resume=tmp_path / "checkpoint.pt", **kw)
    assert len(resumed) == 2 * N
    assert _losses(resumed)[N:] == _losses(straight)[N:]  # exact float equality
    assert resumed.final["val_nll"] == straight.final["val_nll"]


def test_atomic_write_keeps_old_checkpoint(tmp_path, monkeypatch):
    model = make_model(DATA, "ap", size=TINY, seed=5)
    path = save_checkpoint(tmp_path / "c.pt", model, step=1, loss_config="ap")
    good = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=2, loss_config="ap")
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]  # no temp file left behind


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a cyb_nb checkpoint"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=2, resume=tmp_path / "nope.pt", **KW)


def test_callbacks_jsonl_and_stop(tmp_path):
    seen = []
    log = tmp_path / "log.jsonl"
    h = train(make_model(DATA, "tbys", size=TINY), DATA, "tbys", steps=10, log_path=log,
              callbacks=[seen.append, lambda r: "stop" if r["step"] == 4 else None], **{**KW, "eval_every": 2})
    assert len(h) == 4 and seen == list(h)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows == list(h)
    assert {"val_nll", "val_bits", "val_pauses"} <= set(h[1]) and "val_nll" not in h[0]


def test_bad_arguments():
    m = make_model(DATA, "ap", size=TINY)
    with pytest.raises(ValueError, match="steps"):
        train(m, DATA, "ap", steps=0)
    with pytest.raises(ValueError, match="n_pauses"):
        train(m, DATA, "ce", steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        train(m, DATA[:4], "ap", steps=1, batch_size=16, progress=False)
    with pytest.raises(TypeError, match="loss_config"):
        train(m, DATA, 3.0, steps=1)
    with pytest.raises(TypeError, match="data"):
        as_splits("some text")


def test_sampler_resumes():
    s = BatchSampler(DATA, 7, seed=1)
    for _ in range(30):
        s.next()
    st = s.state_dict()
    want = [s.next() for _ in range(30)]
    s2 = BatchSampler(DATA, 7, seed=2)
    s2.load_state_dict(st)
    assert all(torch.equal(a, b) for a, b in zip(want, [s2.next() for _ in range(30)]))


def test_cyb_trainer_runs_on_cpu(tmp_path):
    from transformers import TrainingArguments
    from cyb_nb.train import CYBTrainer, TokenDataset
    model = make_model(DATA, "ap", size=TINY, seed=6)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=5e-3,
                             use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True)
    tr = CYBTrainer(model=model, args=args, train_dataset=TokenDataset(DATA[:128]), eval_dataset=TokenDataset(DATA[128:]),
                    loss_config="ap")
    out = tr.train()
    assert out.global_step == 4 and math.isfinite(out.training_loss)
    assert any(not torch.equal(w0[k], v) for k, v in model.state_dict().items())
    ev = tr.evaluate()
    assert abs(ev["eval_loss"] - evaluate(model, DATA[128:], "ap")["nll"]) < 1e-3
    assert not any(p.name.startswith("checkpoint") for p in tmp_path.iterdir())
