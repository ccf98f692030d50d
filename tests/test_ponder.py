"""PonderLM tests: K=0 is the plain model, one pondering forward equals a hand-written pass-by-pass reference (float64,
per-position loops), gradients reach every pass, causality is kept, the transformers path works, bad arguments are refused.

References call the base model directly and redo the softmax / expected-embedding arithmetic with explicit loops,
independently of cyb_nb.ponder.
"""
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cyb_nb.models import TinyGPT
from cyb_nb.ponder import PonderLM, compute_per_token, n_params
from cyb_nb.stream import PauseVocab

V, N_PAUSES, D = 13, 2, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(dtype=torch.float64, seed=0):
    "A CYB-shaped TinyGPT: V real tokens, 2 pause rows in the input embedding, V+1 head columns (δ last)."
    torch.manual_seed(seed)
    pv = PauseVocab(vocab_size=V, n_pauses=N_PAUSES)
    m = TinyGPT.from_vocab(pv, d_model=D, n_layers=2, n_heads=2).to(dtype).eval()
    m.pause_vocab = pv
    return m


def gpt2(seed=0):
    "A tiny transformers GPT-2 built from a config (no download), float64, eval mode."
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=V, n_embd=D, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).double().eval()


def ids_batch(B=2, T=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g)


def reference_ponder(run, emb_weight, ids, K, tau=1.0, scale=1.0, mult=1.0, detach_pass=None):
    """Pass-by-pass PonderingLM with explicit per-position loops: `run(e) -> logits`; E = emb_weight[:V].

    detach_pass=k cuts the graph through pass k's pondering embedding (used to show each pass matters).
    """
    E = emb_weight[:V] * scale
    e = emb_weight[ids] * scale * mult
    B, T = ids.shape
    for k in range(1, K + 1):
        logits = run(e)
        rows = []
        for b in range(B):
            for t in range(T):
                z = logits[b, t, :V] / tau
                w = torch.exp(z - z.max())
                p = w / w.sum()
                acc = torch.zeros_like(E[0])
                for v in range(V):
                    acc = acc + p[v] * E[v]
                rows.append(acc)
        pe = torch.stack(rows).reshape(B, T, -1)
        if detach_pass == k:
            pe = pe.detach()
        e = e + pe
    return run(e)


# ---------------------------------------------------------------- K = 0 and the forward pass

def test_k0_equals_plain_tinygpt_exactly():
    m = tiny(torch.float32)
    x = ids_batch()
    assert torch.equal(PonderLM(m, steps=0)(x), m(x))
    pos = torch.arange(x.shape[1]).expand_as(x)
    assert torch.equal(PonderLM(m, steps=0)(x, position_ids=pos), m(x, position_ids=pos))
    # multiply_steps must not zero the input when K = 0
    assert torch.equal(PonderLM(m, steps=0, multiply_steps=True)(x), m(x))


def test_k0_equals_plain_hf_exactly():
    m = gpt2()
    x = ids_batch()
    assert torch.equal(PonderLM(m, steps=0)(x), m(x).logits)


@pytest.mark.parametrize("K,tau,scale_embeds,multiply", [(1, 1.0, False, False), (2, 0.5, True, False), (3, 2.0, False, True)])
def test_forward_matches_pass_by_pass_reference_tinygpt(K, tau, scale_embeds, multiply):
    m = tiny()
    x = ids_batch()
    pm = PonderLM(m, steps=K, temperature=tau, scale_embeds=scale_embeds, multiply_steps=multiply)
    assert pm.vocab_size == V  # δ column and pause rows excluded
    ref = reference_ponder(lambda e: m(inputs_embeds=e), m.input_embeddings.weight, x, K, tau,
                           scale=math.sqrt(D) if scale_embeds else 1.0, mult=K if multiply else 1.0)
    torch.testing.assert_close(pm(x), ref, rtol=1e-10, atol=1e-10)
    assert ref.shape[-1] == V + 1  # final logits keep every head column


def test_forward_matches_reference_hf_with_mask():
    m = gpt2()
    x = ids_batch()
    mask = torch.ones_like(x)
    pm = PonderLM(m, steps=2, temperature=0.8)
    ref = reference_ponder(lambda e: m(inputs_embeds=e, attention_mask=mask).logits, m.transformer.wte.weight, x, 2, 0.8)
    torch.testing.assert_close(pm(x, attention_mask=mask), ref, rtol=1e-10, atol=1e-10)


def test_pondering_changes_the_output_and_trace_is_consistent():
    m = tiny()
    x = ids_batch()
    pm = PonderLM(m, steps=3)
    tr = pm(x, return_trace=True)
    assert len(tr.logits) == 4 and len(tr.probs) == 3 and len(tr.ponder_embeds) == 3 and len(tr.embeds) == 4
    torch.testing.assert_close(tr.logits[0], m(x))  # pass 1 sees the plain embeddings
    assert not torch.allclose(tr.final, m(x))
    for p in tr.probs:
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1], dtype=p.dtype))
    for k in range(3):
        torch.testing.assert_close(tr.embeds[k + 1], tr.embeds[k] + tr.ponder_embeds[k])
    torch.testing.assert_close(tr.final, pm(x))


def test_causal_future_tokens_do_not_change_past_logits():
    m = tiny()
    x = ids_batch(B=1, T=8)
    y = x.clone()
    y[0, 5:] = (y[0, 5:] + 1) % V
    pm = PonderLM(m, steps=3)
    a, b = pm(x), pm(y)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


# ---------------------------------------------------------------- gradients

def _loss(logits, x):
    return F.cross_entropy(logits[:, :-1, :V].reshape(-1, V), x[:, 1:].reshape(-1))


def test_gradient_reaches_every_pass_through_the_trace():
    m = tiny()
    x = ids_batch()
    tr = PonderLM(m, steps=3)(x, return_trace=True)
    grads = torch.autograd.grad(_loss(tr.final, x), tr.probs + tr.ponder_embeds + tr.logits[:-1])
    for g in grads:
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_parameter_gradients_equal_reference_and_each_pass_contributes():
    m = tiny()
    x = ids_batch()
    K = 3
    params = [p for p in m.parameters()]

    def grads(logits):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(_loss(logits, x), params)])

    run = lambda e: m(inputs_embeds=e)
    g_model = grads(PonderLM(m, steps=K)(x))
    g_ref = grads(reference_ponder(run, m.input_embeddings.weight, x, K))
    torch.testing.assert_close(g_model, g_ref, rtol=1e-8, atol=1e-10)
    for k in range(1, K + 1):  # detaching any one pass's pondering embedding changes the gradient: pass k is in the graph
        g_cut = grads(reference_ponder(run, m.input_embeddings.weight, x, K, detach_pass=k))
        assert (g_cut - g_model).abs().max() > 1e-6, f"pass {k} does not contribute to the gradient"


def test_hf_gradients_flow():
    m = gpt2()
    x = ids_batch()
    _loss(PonderLM(m, steps=2)(x), x).backward()
    assert m.transformer.wte.weight.grad is not None and m.transformer.wte.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- compute accounting, training loop, errors

def test_compute_per_token():
    m = tiny()
    for K in range(4):
        c = compute_per_token(PonderLM(m, steps=K))
        assert c["passes"] == K + 1 and c["params"] == n_params(m) and c["param_passes"] == (K + 1) * n_params(m)
    assert n_params(m) == sum(p.numel() for p in set(m.parameters()))  # tied weights counted once


def test_trains_with_project_loop():
    from cyb_nb.train import evaluate, make_model, train
    g = torch.Generator().manual_seed(0)
    # a deterministic cyclic sequence is learnable in a few steps
    base_row = torch.arange(16) % 5
    ids = torch.stack([torch.roll(base_row, int(s)) for s in torch.randint(0, 5, (64,), generator=g)])
    data = (ids[:48], ids[48:], 5)
    pm = PonderLM(make_model(data, "ce", size="tiny", seed=0), steps=2)
    before = evaluate(pm, data, "ce")["nll"]
    hist = train(pm, data, "ce", steps=30, batch_size=8, lr=1e-2, warmup=2, eval_every=30, progress=False)
    after = evaluate(pm, data, "ce")["nll"]
    assert math.isfinite(hist[-1]["loss"]) and after < before - 0.3


@pytest.mark.parametrize("kw,msg", [(dict(steps=-1), "steps"), (dict(steps=1.5), "steps"), (dict(steps=True), "steps"),
                                    (dict(temperature=0), "temperature"), (dict(temperature=-1.0), "temperature"),
                                    (dict(temperature=float("nan")), "temperature"), (dict(vocab_size=0), "vocab_size")])
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        PonderLM(tiny(), **kw)


def test_bad_inputs():
    m = tiny()
    x = ids_batch()
    pm = PonderLM(m, steps=1)
    with pytest.raises(ValueError, match="exactly one"):
        pm(x, inputs_embeds=m.embed(x))
    with pytest.raises(ValueError, match="exactly one"):
        pm()
    with pytest.raises(ValueError, match="cache"):
        pm(x, cache=object())
    with pytest.raises(ValueError, match="vocab_size"):
        PonderLM(m, steps=1, vocab_size=V + 2)(x)  # fits the embedding (pause rows) but not the head (V + 1 columns)
    with pytest.raises(ValueError, match="vocab_size"):
        PonderLM(m, steps=1, vocab_size=V + 5)  # more real tokens than embedding rows
    with pytest.raises(TypeError, match="input embeddings"):
        PonderLM(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="nn.Module"):
        PonderLM("gpt2")


# ---------------------------------------------------------------- the learning-curve experiment
def test_gap_closed_is_the_share_of_the_gap():
    from cyb_nb.ponder import gap_closed
    rows = [{"regime": "scratch", "model": m, "seed": s, "step": 10, "val_nll": v + s}
            for s in (0, 1) for m, v in (("ponder K=0", 5.0), ("ponder K=3", 4.6), ("no-ponder ~2x params", 4.2))]
    rows.append({"regime": "finetune", "model": "ponder K=0", "seed": 0, "step": 10, "val_nll": 1.0})  # other regime: ignored
    g = gap_closed(rows, 3)
    assert [r["seed"] for r in g] == [0, 1]
    assert all(r["closed"] == pytest.approx(0.5) and r["gap"] == pytest.approx(0.8) for r in g)
    assert gap_closed(rows, 1) == []  # no K=1 rows


@pytest.mark.parametrize("bad, match", [(dict(ks=()), "ks"), (dict(ks=(0, -1)), "ks"), (dict(steps=0), "steps"),
                                        (dict(big_target=1.0), "big_target"), (dict(seeds=()), "seeds"),
                                        (dict(init="small"), "init")])
def test_ponder_curve_config_rejects_bad_values(bad, match):
    from cyb_nb.ponder import PonderCurveConfig
    with pytest.raises(ValueError, match=match):
        PonderCurveConfig(**bad)


def test_ponder_curves_script_writes_curves(tmp_path):
    import json, subprocess, sys
    from pathlib import Path
    out = tmp_path / "pc.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ponder_curves.py"
    p = subprocess.run([sys.executable, str(script), "--preset", "test", "--jobs", "1", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    scratch = {r["model"] for r in rows if r["regime"] == "scratch"}
    assert scratch == {"ponder K=0", "ponder K=1", "ponder K=3", "no-ponder ~2x params"}
    assert {r["model"] for r in rows if r["regime"] == "finetune"} == {"ponder K=0", "ponder K=1", "ponder K=3"}
    at = {(r["regime"], r["model"], r["step"]): r for r in rows}
    for step in (4, 8):  # every model of a seed sees the same tokens; K extra passes cost K+1 times the FLOPs
        k0, k3 = at[("scratch", "ponder K=0", step)], at[("scratch", "ponder K=3", step)]
        assert k0["tokens"] == k3["tokens"] == at[("scratch", "no-ponder ~2x params", step)]["tokens"]
        assert k3["train_flops"] == pytest.approx(4 * k0["train_flops"])
    assert all(math.isfinite(r["val_nll"]) for r in rows)
    assert "closes of the K=0 -> 2x gap" in p.stdout


# ---------------------------------------------------------------- the authors' initialisation (TinyGPTConfig.init="ponder")

def _ponder_init_stream(K, passes, scale_embeds, seed=0, d=64, L=2, V=200):
    "Per pass: the variance the blocks add to the residual stream (final state minus the pass input), and the final stream's RMS."
    from cyb_nb.models import TinyGPTConfig
    torch.manual_seed(seed)
    m = TinyGPT(TinyGPTConfig(vocab_size=V, n_outputs=V + 1, d_model=d, n_layers=L, n_heads=4, init="ponder", init_passes=passes))
    pm = PonderLM(m, steps=K, scale_embeds=scale_embeds)
    ids = torch.randint(0, V, (8, 64), generator=torch.Generator().manual_seed(1))
    hs = []
    hook = m.norm.register_forward_pre_hook(lambda mod, a: hs.append(a[0].detach()))  # the stream after the last block
    with torch.no_grad():
        tr = pm(ids, return_trace=True)
    hook.remove()
    assert len(hs) == K + 1
    added = [(h - e).pow(2).mean().item() for h, e in zip(hs, tr.embeds)]
    return added, hs[-1].pow(2).mean().sqrt().item()


@pytest.mark.parametrize("scale_embeds", [False, True])
def test_ponder_init_keeps_the_residual_stream_of_a_one_pass_model(scale_embeds):
    # ÷√(2L(K+1)) spreads one pass's variance budget over K+1 passes: the variance the blocks add, summed over the 4 passes
    # of K=3, is that of the 1-pass model's blocks (measured ratio 0.98 / 0.97), not 4× (4.18 / 3.99 with ÷√(2L) only)
    one, r1 = _ponder_init_stream(0, 1, scale_embeds)
    four, r4 = _ponder_init_stream(3, 4, scale_embeds)
    four_unscaled, _ = _ponder_init_stream(3, 1, scale_embeds)
    assert sum(four) / sum(one) == pytest.approx(1.0, abs=0.15)
    assert sum(four_unscaled) / sum(one) == pytest.approx(4.0, rel=0.15)
    # the stream after all passes: within a factor 2.5 of the 1-pass model's (measured 0.59 without scale_embeds — each pass
    # adds a quarter of the variance; 1.95 with — the pondering embeddings c·pE accumulate in the input e^K)
    assert 1 / 2.5 < r4 / r1 < 2.5


def test_ponder_curves_script_authors_setting_and_resume(tmp_path):
    import json, subprocess, sys
    from pathlib import Path
    out = tmp_path / "pa.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ponder_curves.py"
    run = lambda *a: subprocess.run([sys.executable, str(script), "--preset", "test", "--jobs", "1", "--no-finetune", "--ks", "0",
                                     "--authors", "--out", str(out), *a], capture_output=True, text=True, env=env, timeout=600)
    p = run("--seeds", "0")
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["config"]["init"] == "ponder" and doc["config"]["scale_embeds"] is True and doc["complete"] is True
    first = {k: v for k, v in doc["job_seconds"].items()}
    assert set(first) == {"scratch K=0 seed 0", "scratch big seed 0"}
    p = run("--seeds", "1")  # adds seed 1, keeps seed 0's rows without training them again
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming" in p.stdout and "2 jobs done, 2 to run" in p.stdout
    doc2 = json.loads(out.read_text())
    assert doc2["config"]["seeds"] == [0, 1]
    assert {k: doc2["job_seconds"][k] for k in first} == first
    assert [r for r in doc2["rows"] if r["seed"] == 0] == [r for r in doc["rows"] if r["seed"] == 0]
    assert {r["seed"] for r in doc2["rows"]} == {0, 1}
