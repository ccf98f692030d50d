"Tests for cyb_nb.myopic: forward identity, myopic gradients vs brute force, the pre-caching task, probes, errors."
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cyb_nb.models import Attention, TinyGPT, TinyGPTConfig
from cyb_nb.myopic import (MyopicAttention, compare_myopic, diagonal_attention_probs, is_myopic, load_precache, make_myopic,
                           make_precache, myopic, myopic_attention, probe_accuracy, residual_states)
from cyb_nb.stream import IGNORE_INDEX


def _tiny(seed=0, n_layers=3, vocab=20):
    torch.manual_seed(seed)
    return TinyGPT(TinyGPTConfig(vocab_size=vocab, n_outputs=vocab + 1, d_model=32, n_layers=n_layers, n_heads=4))


def _ref_myopic_grads(q, k, v, w):
    "Brute force: for each query t, detach every key/value except position t's, and sum the per-query gradients (float64 loop)."
    L = q.shape[-2]
    out = [torch.zeros_like(x) for x in (q, k, v)]
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    for t in range(L):
        own = (torch.arange(L) == t)[:, None].to(q.dtype)
        kk, vv = k * own + k.detach() * (1 - own), v * own + v.detach() * (1 - own)
        s = (q @ kk.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        o = s.masked_fill(causal, float("-inf")).softmax(-1) @ vv
        for acc, g in zip(out, torch.autograd.grad((o[..., t, :] * w[..., t, :]).sum(), (q, k, v))):
            acc += g
    return out


@pytest.mark.parametrize("L", [1, 2, 6])
def test_attention_value_and_gradient_match_reference(L):
    torch.manual_seed(L)
    q, k, v = (torch.randn(2, 3, L, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(2, 3, L, 4, dtype=torch.float64)
    out = myopic_attention(q, k, v)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    got = torch.autograd.grad((out * w).sum(), (q, k, v))
    for a, b in zip(got, _ref_myopic_grads(q, k, v, w)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_attention_vanilla_gradient_differs():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(1, 1, 5, 4, dtype=torch.float64)
    gm = torch.autograd.grad((myopic_attention(q, k, v) * w).sum(), (k, v))
    gv = torch.autograd.grad((F.scaled_dot_product_attention(q, k, v, is_causal=True) * w).sum(), (k, v))
    # the last key/value is read only by its own query: same gradient; the first is read by all: different
    torch.testing.assert_close(gm[1][..., -1, :], gv[1][..., -1, :])
    assert (gm[1][..., 0, :] - gv[1][..., 0, :]).abs().max() > 1e-3


def test_diagonal_probs_against_softmax_with_offset():
    torch.manual_seed(1)
    q, k = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 3, 7, 5, dtype=torch.float64)
    p = diagonal_attention_probs(q, k)
    for i in range(4):  # query i sits at key position 3 + i and sees keys 0..3+i
        s = q[..., i : i + 1, :] @ k[..., : 4 + i, :].transpose(-1, -2)
        torch.testing.assert_close(p[..., i], (s / math.sqrt(5)).softmax(-1)[..., 0, -1])


def test_model_forward_identical_and_restorable():
    m = _tiny()
    ids = torch.randint(0, 20, (3, 11))
    a = m(ids)
    make_myopic(m)
    assert is_myopic(m) and all(isinstance(b.attn, MyopicAttention) for b in m.blocks)
    b = m(ids)
    make_myopic(m, False)
    assert not is_myopic(m) and all(type(b.attn) is Attention for b in m.blocks)
    assert torch.equal(a, b) and torch.equal(a, m(ids))


def test_model_built_with_myopic_attention_class():
    torch.manual_seed(3)
    cfg = TinyGPTConfig(vocab_size=10, n_outputs=11, d_model=16, n_layers=2, n_heads=2)
    m1 = TinyGPT(cfg, attention_cls=MyopicAttention)
    torch.manual_seed(3)
    m0 = TinyGPT(cfg)
    ids = torch.randint(0, 10, (2, 6))
    assert is_myopic(m1) and torch.equal(m1(ids), m0(ids))


@pytest.mark.parametrize("t", [4, 9])
def test_gradient_to_earlier_inputs_zero_only_in_myopic_mode(t):
    m = _tiny(seed=t)
    ids = torch.randint(0, 20, (2, 10))

    def grad_norms(model):
        e = model.embed(ids).detach().requires_grad_(True)
        loss = F.cross_entropy(model(inputs_embeds=e)[:, t], ids[:, 0])  # loss at position t only
        g, = torch.autograd.grad(loss, e)
        return g.norm(dim=-1)

    gv = grad_norms(m)
    with myopic(m):
        gm = grad_norms(m)
    assert (gv[:, :t] > 1e-8).all()  # vanilla: every earlier position is trained by the loss at t
    assert (gm[:, :t] == 0).all()  # myopic: none is
    assert (gm[:, t] > 0).all()  # the residual path at t itself is kept
    assert (gv[:, t + 1:] == 0).all() and (gm[:, t + 1:] == 0).all()  # causality


def test_gradient_to_earlier_hidden_states_through_attention():
    "Perturbation view: with a hidden state h_s (s < t) fed in as a leaf at block 2, d loss_t / d h_s is zero only when myopic."
    m = _tiny(n_layers=2)
    ids = torch.randint(0, 20, (1, 8))
    t, s = 7, 3

    def grad_h(model):
        caught = {}

        def hook(mod, inp, out):
            out = out.detach().requires_grad_(True)
            caught["h"] = out
            return out
        hnd = model.blocks[0].register_forward_hook(hook)
        try:
            loss = model(ids)[0, t].logsumexp(-1)
        finally:
            hnd.remove()
        return torch.autograd.grad(loss, caught["h"])[0][0]

    gv = grad_h(m)
    with myopic(m):
        gm = grad_h(m)
    assert gv[s].abs().max() > 0 and gm[s].abs().max() == 0 and gm[t].abs().max() > 0


def test_parameter_gradients_of_sequence_loss_match_bruteforce():
    "Full model: the myopic gradient of sum_t loss_t equals sum_t of gradients with every other position's attention reads detached."
    m = _tiny(n_layers=2, vocab=12).double()
    ids = torch.randint(0, 12, (2, 6))
    tgt = torch.randint(0, 12, (2, 6))
    with myopic(m):
        loss = F.cross_entropy(m(ids).flatten(0, 1), tgt.flatten(), reduction="sum")
        got = torch.autograd.grad(loss, list(m.parameters()))

    # reference: per query position t, an attention that detaches k/v at all positions != t (independent of the module under test)
    class OneQuery(Attention):
        t = 0

        def attend(self, q, k, v, n_past=0):
            own = (torch.arange(k.shape[2]) == OneQuery.t)[:, None].to(k.dtype)
            return F.scaled_dot_product_attention(q, k * own + k.detach() * (1 - own), v * own + v.detach() * (1 - own), is_causal=True)

    for b in m.blocks:
        b.attn.__class__ = OneQuery
    ref = [torch.zeros_like(p) for p in m.parameters()]
    for t in range(6):
        OneQuery.t = t
        lt = F.cross_entropy(m(ids)[:, t], tgt[:, t], reduction="sum")
        for acc, g in zip(ref, torch.autograd.grad(lt, list(m.parameters()), allow_unused=True)):
            if g is not None:
                acc += g
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_kv_cache_decoding_unchanged():
    m = _tiny()
    ids = torch.randint(0, 20, (1, 7))
    full = m(ids)
    with myopic(m):
        cache = m.new_cache()
        a = m(ids[:, :4], cache=cache)
        b = m(ids[:, 4:], cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


def test_hf_model_myopic():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, attn_implementation="sdpa")
    m = transformers.LlamaForCausalLM(cfg).eval()
    e = m.get_input_embeddings()(torch.randint(0, 30, (2, 7))).detach().requires_grad_(True)
    a = m(inputs_embeds=e).logits
    ga, = torch.autograd.grad(a[:, -1].logsumexp(-1).sum(), e)
    make_myopic(m)
    assert is_myopic(m)
    b = m(inputs_embeds=e).logits
    gb, = torch.autograd.grad(b[:, -1].logsumexp(-1).sum(), e)
    make_myopic(m, False)
    assert not is_myopic(m) and m.config._attn_implementation == "sdpa"
    assert torch.equal(a, b)
    assert ga[:, :-1].abs().amax() > 0 and gb[:, :-1].abs().amax() == 0 and gb[:, -1].abs().amax() > 0


def test_precache_task_bruteforce():
    task = make_precache(5, 37, seed=3, n_values=5, block=4)
    S = 6
    assert task.ids.shape == (5, 37) and task.vocab_size == 5 + 1 + 4
    for row, d, f in zip(task.ids.tolist(), task.difficulty.tolist(), task.feature.tolist()):
        for t, tok in enumerate(row):
            j = t % S
            if j < 4:
                assert 0 <= tok < 5
                assert f[t] == (int(tok > row[t - 1]) if j > 0 else -1)
            elif j == 4:
                assert tok == 5 and f[t] == -1
            else:
                xs = row[t - 5 : t - 1]
                assert tok == 6 + sum(b > a for a, b in zip(xs, xs[1:])) and f[t] == -1
            if t < 36:
                assert d[t] == {5: 1, 4: 0}.get((t + 1) % S, -1)
        assert d[-1] == IGNORE_INDEX
    assert torch.equal(make_precache(3, 20, seed=1).ids, make_precache(3, 20, seed=1).ids)
    assert not torch.equal(make_precache(3, 20, seed=1).ids, make_precache(3, 20, seed=2).ids)


def test_probe_accuracy():
    torch.manual_seed(0)
    h = torch.randn(400, 6, 8)
    y = (h[..., 1] - h[..., 4] > 0).long()
    mask = torch.ones(400, 6, dtype=torch.bool)
    assert probe_accuracy(h, y, mask) > 0.95
    assert abs(probe_accuracy(h, torch.randint(0, 2, (400, 6)), mask) - 0.5) < 0.06
    states = residual_states(_tiny(n_layers=2), torch.randint(0, 20, (2, 5)))
    assert len(states) == 3 and all(s.shape == (2, 5, 32) for s in states)


def test_compare_myopic_runs_with_train_loop():
    data = load_precache(n_train=32, n_val=8, seq_len=16, seed=0, n_values=4, block=3)
    res = compare_myopic(data, steps=3, batch_size=8)
    assert is_myopic(res.models["myopic"]) and not is_myopic(res.models["vanilla"])
    assert math.isfinite(res.gap) and res.gap_hard is not None and "gap" in res.table()
    assert len(res.histories["vanilla"]) == 3


def test_bad_inputs():
    q = torch.randn(1, 1, 4, 3)
    with pytest.raises(ValueError, match="q must hold at most"):
        myopic_attention(q, q[..., :2, :], q[..., :2, :])
    with pytest.raises(ValueError, match="k and v"):
        myopic_attention(q, q, q[..., :3, :])
    with pytest.raises(TypeError, match="q must be a floating"):
        myopic_attention(q.long(), q, q)
    with pytest.raises(TypeError, match="attend must be"):
        myopic_attention(q, q, q, attend=3)
    with pytest.raises(TypeError, match="model must contain"):
        make_myopic(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="model must be a torch"):
        make_myopic("gpt")
    with pytest.raises(TypeError, match="enabled must be a bool"):
        make_myopic(_tiny(), enabled="yes")
    for kw, msg in ((dict(n=0, seq_len=5), "n must"), (dict(n=2, seq_len=1), "seq_len must"), (dict(n=2, seq_len=5, block=1), "block must"),
                    (dict(n=2, seq_len=5, n_values=1), "n_values must"), (dict(n=2, seq_len=5, seed=1.5), "seed must")):
        with pytest.raises(ValueError, match=msg):
            make_precache(**kw)
    with pytest.raises(ValueError, match="steps must"):
        compare_myopic(load_precache(n_train=8, n_val=2, seq_len=8), steps=0)
    with pytest.raises(ValueError, match="h must be"):
        probe_accuracy(torch.randn(4, 3, 2), torch.zeros(4, 2, dtype=torch.long), torch.ones(4, 2, dtype=torch.bool))
