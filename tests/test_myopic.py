"Tests for cyb_nb.myopic: forward identity, the gradient of every cut vs brute force (TinyGPT, GPT-2, Llama), the tasks, probes, errors."
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cyb_nb.models import Attention, TinyGPT, TinyGPTConfig, apply_rope, tiny_hf_lm
from cyb_nb.myopic import (MYOPIC_CUTS, MyopicAttention, MyopicCut, SineRegressor, compare_myopic, diagonal_attention_probs,
                           diagonal_split_attention, is_myopic, load_precache, make_myopic, make_precache, make_sine_task, myopic,
                           myopic_attention, myopic_cut_of, probe_accuracy, probe_r2, residual_states, sine_losses, sine_probes,
                           train_sine)
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


def _ref_masked_myopic_grads(q, k, v, w, keep, softcap=None):
    "Brute force with a key mask `keep [B, 1, L, L]` (and optional soft-capping): per query t, every key/value but t's detached; a query with no key outputs 0."
    L = q.shape[-2]
    out = [torch.zeros_like(x) for x in (q, k, v)]
    allowed = keep & torch.ones(L, L, dtype=torch.bool).tril()
    for t in range(L):
        own = (torch.arange(L) == t)[:, None].to(q.dtype)
        kk, vv = k * own + k.detach() * (1 - own), v * own + v.detach() * (1 - own)
        s = (q @ kk.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        s = s if softcap is None else softcap * torch.tanh(s / softcap)
        row = allowed[..., t, :]  # [B, 1, L]
        e = torch.where(row, torch.exp(s[..., t, :] - s[..., t, :].detach().amax(-1, keepdim=True)), 0.0)
        wt = e / e.sum(-1, keepdim=True).clamp(min=1e-300)
        o = (wt[..., None] * vv).sum(-2)
        for acc, g in zip(out, torch.autograd.grad((o * w[..., t, :]).sum(), (q, k, v), allow_unused=True)):
            if g is not None:
                acc += g
    return out


@pytest.mark.parametrize("softcap", [None, 0.7])
def test_fully_masked_rows_give_zero_and_finite_gradients(softcap):
    "Left padding: queries that may read no key (every key masked) get diagonal weight 0 and output 0; no NaN forward or backward."
    torch.manual_seed(3)
    B, H, L, D = 2, 2, 6, 4
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    w = torch.randn(B, H, L, D, dtype=torch.float64)
    pad = torch.tensor([[True] * 2 + [False] * 4, [False] * 6])  # row 0: two pad positions on the left
    keep = (~pad)[:, None, None, :].expand(B, 1, L, L)  # bool mask as transformers' sdpa builds it (+ causality inside)
    keep = keep & torch.ones(L, L, dtype=torch.bool).tril()
    p = diagonal_attention_probs(q, k, attn_mask=keep, softcap=softcap)
    assert torch.isfinite(p).all() and (p[0, :, :2] == 0).all() and (p[0, :, 2:] > 0).all()
    pg = diagonal_attention_probs(q.detach().requires_grad_(), k, attn_mask=keep, softcap=softcap)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(pg.sum(), (k,)))
    sdpa = lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, attn_mask=keep)
    for fn in (lambda: myopic_attention(q, k, v, attend=None if softcap is None else _capped(softcap, keep), attn_mask=keep,
                                        softcap=softcap),
               lambda: diagonal_split_attention(q, k, v, k.detach(), v.detach(), attn_mask=keep, softcap=softcap)):
        out = fn()
        assert torch.isfinite(out).all() and (out[0, :, :2] == 0).all()
        got = torch.autograd.grad((out * w).sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in got)
        for a, b in zip(got, _ref_masked_myopic_grads(q, k, v, w, keep, softcap)):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    if softcap is None:
        torch.testing.assert_close(myopic_attention(q, k, v, attn_mask=keep)[0, :, 2:], sdpa(q, k, v)[0, :, 2:], atol=0, rtol=0)


def _capped(softcap, keep):
    "Soft-capped causal attention with a bool key mask, written out (rows with no key output 0)."
    def attend(q, k, v):
        s = softcap * torch.tanh((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) / softcap)
        s = s.masked_fill(~keep, float("-inf"))
        live = ~torch.isneginf(s).all(-1, keepdim=True)
        return s.masked_fill(~live, 0).softmax(-1).masked_fill(~live, 0) @ v
    return attend


@pytest.mark.parametrize("cut", ["hidden", "kv"])
def test_model_forward_identical_and_restorable(cut):
    m = _tiny()
    ids = torch.randint(0, 20, (3, 11))
    a = m(ids)
    make_myopic(m, cut=cut, beta=0.25)
    assert is_myopic(m) and all(isinstance(b.attn, MyopicAttention) for b in m.blocks)
    assert myopic_cut_of(m) == MyopicCut(cut, 0.25)
    b = m(ids)  # under autograd: the cut's own path
    with torch.no_grad():
        c = m(ids)  # the vanilla shortcut
    make_myopic(m, False)
    assert not is_myopic(m) and myopic_cut_of(m) is None and all(type(b.attn) is Attention for b in m.blocks)
    assert not any("myopic_cut" in vars(b.attn) for b in m.blocks)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, m(ids))


def test_bigram_changes_outputs_and_reads_no_earlier_input():
    m = _tiny(n_layers=2)
    ids = torch.randint(0, 20, (2, 8))
    with myopic(m, cut="bigram"):
        a = m(ids)
        other = ids.clone()
        other[:, :5] = torch.randint(0, 20, (2, 5))
        b = m(other)
        with torch.no_grad():
            torch.testing.assert_close(m(ids), a)  # no shortcut for the bigram: it is a different model
    assert not torch.allclose(a, m(ids))
    torch.testing.assert_close(a[:, 5:], b[:, 5:])  # outputs after position 5 ignore what came before


def test_model_built_with_myopic_attention_class():
    torch.manual_seed(3)
    cfg = TinyGPTConfig(vocab_size=10, n_outputs=11, d_model=16, n_layers=2, n_heads=2)
    m1 = TinyGPT(cfg, attention_cls=MyopicAttention)
    torch.manual_seed(3)
    m0 = TinyGPT(cfg)
    ids = torch.randint(0, 10, (2, 6))
    assert is_myopic(m1) and torch.equal(m1(ids), m0(ids))


@pytest.mark.parametrize("cut", list(MYOPIC_CUTS))
@pytest.mark.parametrize("t", [4, 9])
def test_gradient_to_earlier_inputs_zero_only_in_myopic_mode(t, cut):
    m = _tiny(seed=t)
    ids = torch.randint(0, 20, (2, 10))

    def grad_norms(model):
        e = model.embed(ids).detach().requires_grad_(True)
        loss = F.cross_entropy(model(inputs_embeds=e)[:, t], ids[:, 0])  # loss at position t only
        g, = torch.autograd.grad(loss, e)
        return g.norm(dim=-1)

    gv = grad_norms(m)
    with myopic(m, cut=cut):
        gm = grad_norms(m)
    assert (gv[:, :t] > 1e-8).all()  # vanilla: every earlier position is trained by the loss at t
    assert (gm[:, :t] == 0).all()  # myopic: none is
    assert (gm[:, t] > 0).all()  # the residual path at t itself is kept
    assert (gv[:, t + 1:] == 0).all() and (gm[:, t + 1:] == 0).all()  # causality


@pytest.mark.parametrize("cut", list(MYOPIC_CUTS))
def test_gradient_to_earlier_hidden_states_through_attention(cut):
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
    with myopic(m, cut=cut):
        gm = grad_h(m)
    assert gv[s].abs().max() > 0 and gm[s].abs().max() == 0 and gm[t].abs().max() > 0


def _heads(attn, inp, cos, sin):
    "q, k, v `[B, H, L, hd]` of a TinyGPT Attention for input `inp [B, L, d]` (projection and RoPE, written out for the references)."
    B, L, _ = inp.shape
    qkv = attn.qkv(inp).view(B, L, 3, attn.n_heads, attn.head_dim)
    qk = apply_rope(qkv[:, :, :2], cos[:, :, None, None], sin[:, :, None, None])
    return qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)


class _OneQueryLive(Attention):
    "Per-position reference (β = 0): position `t` is read live, every other position through `cut`."
    t, cut = 0, "hidden"

    def forward(self, x, cos, sin, cache=None):
        B, L, D = x.shape
        own = (torch.arange(L) == self.t).to(x.dtype)
        q, k, v = _heads(self, x, cos, sin)
        if self.cut == "kv":
            o = own[:, None]
            k, v = k * o + k.detach() * (1 - o), v * o + v.detach() * (1 - o)
        else:
            base = x.detach() if self.cut == "hidden" else torch.zeros_like(x)
            _, k, v = _heads(self, x * own[:, None] + base * (1 - own[:, None]), cos, sin)
        return self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, L, D))


class _PairwiseReads(Attention):
    "Definition-level reference for any β: a key/value tensor per (query t, key j) pair — j = t live, j < t through the cut."
    cut, beta = "hidden", 0.5

    def forward(self, x, cos, sin, cache=None):
        B, L, D = x.shape
        q, k, v = _heads(self, x, cos, sin)
        if self.cut == "kv":
            pk, pv = (y.detach() + self.beta * (y - y.detach()) for y in (k, v))
        else:
            base = x.detach() if self.cut == "hidden" else torch.zeros_like(x)
            _, pk, pv = _heads(self, base + self.beta * (x - base), cos, sin)
        own = torch.eye(L, dtype=torch.bool)[:, :, None]  # [t, j, 1]
        K = torch.where(own, k[:, :, None], pk[:, :, None])  # [B, H, t, j, hd]
        V = torch.where(own, v[:, :, None], pv[:, :, None])
        s = torch.einsum("bhtd,bhtjd->bhtj", q, K) / math.sqrt(self.head_dim)
        w = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        return self.proj(torch.einsum("bhtj,bhtjd->bhtd", w, V).transpose(1, 2).reshape(B, L, D))


def _seq_loss(model, ids, tgt):
    return F.cross_entropy(model(ids).flatten(0, 1), tgt.flatten(), reduction="sum")


def _with_attention_class(model, cls, fn):
    "Run `fn()` with every block's attention swapped to `cls` (the parameters are shared), then swap back."
    before = [type(b.attn) for b in model.blocks]
    for b in model.blocks:
        b.attn.__class__ = cls
    try:
        return fn()
    finally:
        for b, c in zip(model.blocks, before):
            b.attn.__class__ = c


@pytest.mark.parametrize("cut", list(MYOPIC_CUTS))
def test_parameter_gradients_of_sequence_loss_match_per_position_reference(cut):
    "Full model, float64: the gradient of sum_t loss_t under `cut` equals sum_t of gradients with only position t read live."
    m = _tiny(n_layers=2, vocab=12).double()
    ids, tgt = torch.randint(0, 12, (2, 6)), torch.randint(0, 12, (2, 6))
    vanilla_loss = _seq_loss(m, ids, tgt)
    with myopic(m, cut=cut):
        loss = _seq_loss(m, ids, tgt)
        got = torch.autograd.grad(loss, list(m.parameters()))
    assert torch.equal(loss, vanilla_loss) == (cut != "bigram")

    def reference():
        _OneQueryLive.cut, ref = cut, [torch.zeros_like(p) for p in m.parameters()]
        for t in range(6):
            _OneQueryLive.t = t
            lt = F.cross_entropy(m(ids)[:, t], tgt[:, t], reduction="sum")
            for acc, g in zip(ref, torch.autograd.grad(lt, list(m.parameters()), allow_unused=True)):
                if g is not None:
                    acc += g
        return ref
    for a, b in zip(got, _with_attention_class(m, _OneQueryLive, reference)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("cut", list(MYOPIC_CUTS))
def test_beta_blend_matches_pairwise_reference(cut):
    m = _tiny(n_layers=2, vocab=12).double()
    ids, tgt = torch.randint(0, 12, (2, 5)), torch.randint(0, 12, (2, 5))
    _PairwiseReads.cut = cut
    for beta in (0.0, 0.4):
        _PairwiseReads.beta = beta
        with myopic(m, cut=cut, beta=beta):
            loss = _seq_loss(m, ids, tgt)
            got = torch.autograd.grad(loss, list(m.parameters()))
        ref_loss = _with_attention_class(m, _PairwiseReads, lambda: _seq_loss(m, ids, tgt))
        ref = torch.autograd.grad(ref_loss, list(m.parameters()))
        torch.testing.assert_close(loss, ref_loss, atol=1e-10, rtol=1e-10)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("cut", ["hidden", "kv"])
def test_beta_one_is_vanilla_and_beta_zero_the_default(cut):
    m = _tiny(n_layers=2, vocab=12).double()
    ids, tgt = torch.randint(0, 12, (2, 7)), torch.randint(0, 12, (2, 7))

    def grads(**kw):
        with myopic(m, **kw) if kw else torch.enable_grad():
            loss = _seq_loss(m, ids, tgt)
            return loss, torch.autograd.grad(loss, list(m.parameters()))
    lv, gv = grads()
    l1, g1 = grads(cut=cut, beta=1.0)
    assert torch.equal(l1, lv)
    for a, b in zip(g1, gv):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    l0, g0 = grads(cut=cut, beta=0.0)
    ld, gd = grads(cut=cut)
    assert torch.equal(l0, ld) and all(torch.equal(a, b) for a, b in zip(g0, gd))
    assert max(float((a - b).abs().max()) for a, b in zip(g0, gv)) > 1e-3  # the cut does change the gradient
    _, gh = grads(cut="hidden")
    _, gk = grads(cut="kv")
    assert max(float((a - b).abs().max()) for a, b in zip(gh, gk)) > 1e-3  # and the two cuts differ


def test_diagonal_split_attention_bruteforce():
    "Arbitrary past values, a KV-cache offset and a bool mask: against an explicit per-query computation."
    torch.manual_seed(5)
    q = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    k, v, pk, pv = (torch.randn(2, 3, 7, 5, dtype=torch.float64) for _ in range(4))
    mask = torch.ones(2, 1, 4, 7, dtype=torch.bool)
    mask[0, :, :, 1] = False  # row 0 may not read key 1
    out = diagonal_split_attention(q, k, v, pk, pv, attn_mask=mask)
    for b in range(2):
        for i in range(4):
            j_own = 3 + i
            keys = [j for j in range(j_own + 1) if mask[b, 0, i, j]]
            kk = torch.stack([k[b, :, j] if j == j_own else pk[b, :, j] for j in keys], 1)
            vv = torch.stack([v[b, :, j] if j == j_own else pv[b, :, j] for j in keys], 1)
            w = ((q[b, :, i : i + 1] @ kk.transpose(-1, -2)) / math.sqrt(5)).softmax(-1)
            torch.testing.assert_close(out[b, :, i], (w @ vv)[:, 0])


@pytest.mark.parametrize("cut", ["hidden", "kv"])
def test_kv_cache_decoding_unchanged(cut):
    m = _tiny()
    ids = torch.randint(0, 20, (1, 7))
    full = m(ids)
    with myopic(m, cut=cut):
        cache = m.new_cache()
        a = m(ids[:, :4], cache=cache)
        b = m(ids[:, 4:], cache=cache)  # under autograd: cached positions are read through their detached values
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)
    with myopic(m, cut="bigram"), pytest.raises(ValueError, match="bigram.*KV cache"):
        cache = m.new_cache()
        m(ids[:, :4], cache=cache)
        m(ids[:, 4:], cache=cache)


def _hf_model(kind):
    "Tiny float64 transformers models: GPT-2 and Llama from `tiny_hf_lm`, and a Llama with grouped-query attention."
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "llama-gqa":
        cfg = transformers.LlamaConfig(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, attn_implementation="sdpa")
        return transformers.LlamaForCausalLM(cfg).double()
    return tiny_hf_lm(kind, d_model=32, n_layers=2, n_heads=4)[0].double()


def _hf_per_position_reference(model, ids, tgt, cut):
    "Sum over t of the gradient of loss_t, with position t read live and every other one through `cut` (no padding mask)."
    from test_hf_wrappers import _per_position_reference  # the one brute-force reference, shared with the wrapper matrix
    return _per_position_reference(model, ids, None, tgt, cut)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-gqa"])
@pytest.mark.parametrize("cut", list(MYOPIC_CUTS))
def test_hf_cut_gradients_match_per_position_reference(kind, cut):
    m = _hf_model(kind)
    impl = m.config._attn_implementation
    ids, tgt = torch.randint(2, 17, (2, 6)), torch.randint(2, 17, (2, 6))
    vanilla = m(input_ids=ids).logits
    with myopic(m, cut=cut):
        assert is_myopic(m) and myopic_cut_of(m) == MyopicCut(cut)
        logits = m(input_ids=ids).logits
        got = torch.autograd.grad(F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="sum"), list(m.parameters()),
                                  allow_unused=True)
    assert not is_myopic(m) and m.config._attn_implementation == impl
    assert all(getattr(a, "_cyb_hook", None) is None for a in m.modules())
    assert torch.equal(logits, vanilla) == (cut != "bigram")
    for a, b in zip(got, _hf_per_position_reference(m, ids, tgt, cut)):
        torch.testing.assert_close(torch.zeros_like(b) if a is None else a, b, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kind", ["gpt2", "llama-gqa"])
def test_hf_beta_one_is_vanilla(kind):
    m = _hf_model(kind)
    ids, tgt = torch.randint(2, 17, (2, 6)), torch.randint(2, 17, (2, 6))

    def grads():
        loss = F.cross_entropy(m(input_ids=ids).logits.flatten(0, 1), tgt.flatten(), reduction="sum")
        return loss, torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)
    lv, gv = grads()
    for cut in ("hidden", "kv"):
        with myopic(m, cut=cut, beta=1.0):
            l1, g1 = grads()
        assert torch.equal(l1, lv)
        for a, b in zip(g1, gv):
            if b is not None:
                torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_hf_input_gradient_and_decoding():
    m = _hf_model("llama-gqa").float().eval()
    e = m.get_input_embeddings()(torch.randint(0, 30, (2, 7))).detach().requires_grad_(True)
    a = m(inputs_embeds=e).logits
    ga, = torch.autograd.grad(a[:, -1].logsumexp(-1).sum(), e)
    make_myopic(m)
    b = m(inputs_embeds=e).logits
    gb, = torch.autograd.grad(b[:, -1].logsumexp(-1).sum(), e)
    ids = torch.randint(0, 30, (1, 9))
    with torch.no_grad():
        greedy = m.generate(ids, max_new_tokens=4, do_sample=False)
    make_myopic(m, False)
    with torch.no_grad():
        assert torch.equal(greedy, m.generate(ids, max_new_tokens=4, do_sample=False))
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
    assert res.cut == MyopicCut() and myopic_cut_of(res.models["myopic"]) == MyopicCut("hidden")
    init = {k: torch.zeros_like(v) if k.endswith("proj.weight") else v for k, v in res.models["vanilla"].state_dict().items()}
    res_kv = compare_myopic(data, steps=1, batch_size=8, cut="kv", beta=0.5, init=init, lr=1e-9)
    assert myopic_cut_of(res_kv.models["myopic"]) == MyopicCut("kv", 0.5)
    w = res_kv.models["vanilla"].blocks[0].attn.proj.weight
    assert w.abs().max() < 1e-6  # both models started from `init`
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
    with pytest.raises(ValueError, match="past_v must be a tensor shaped like v"):
        myopic_attention(q, q, q, past_v=q[..., :2, :])
    with pytest.raises(ValueError, match="cut must be one of"):
        make_myopic(_tiny(), cut="values")
    for beta in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="beta must be a number in"):
            MyopicCut("hidden", beta)
    with pytest.raises(ValueError, match="the 'kv' cut reads detached"):
        MyopicCut("kv").past_input(q)
    for kw, msg in ((dict(n=0), "n must"), (dict(n=2, seq_len=0), "seq_len must"), (dict(n=2, p=-0.1), "p must be a probability"),
                    (dict(n=2, n_terms=0), "n_terms must"), (dict(n=2, seed="a"), "seed must"), (dict(n=2, freq="x"), "freq must")):
        with pytest.raises(ValueError, match=msg):
            make_sine_task(**kw)
    with pytest.raises(ValueError, match="steps must"):
        train_sine(SineRegressor(16, 1, 2, 8), steps=0, p=0.5)
    with pytest.raises(TypeError, match="model must be a SineRegressor"):
        sine_probes(_tiny(), make_sine_task(4, 8))


def test_sine_task_bruteforce():
    task = make_sine_task(4, seq_len=25, p=0.3, seed=2, freq=7.0, n_terms=3)
    x, z = task.inputs[..., 0], task.inputs[..., 1]
    assert task.inputs.shape == (4, 25, 2) and set(z.unique().tolist()) <= {0.0, 1.0}
    for r in range(4):
        for t in range(25):
            want = sum(math.sin(7 * float(x[r, t - i])) for i in range(1, 4) if t >= i) if z[r, t] else float(x[r, t])
            assert abs(float(task.target[r, t]) - want) < 1e-5
    torch.testing.assert_close(task.feature, torch.sin(7 * x))
    assert torch.equal(make_sine_task(3, 9, seed=4).inputs, make_sine_task(3, 9, seed=4).inputs)
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(make_sine_task(3, 9, seed=g).inputs, make_sine_task(3, 9, seed=g).inputs)  # a generator streams
    assert make_sine_task(2000, 10, p=0.0).query.sum() == 0 and make_sine_task(20, 10, p=1.0).query.all()
    assert abs(float(make_sine_task(4000, 10, p=0.2).query.float().mean()) - 0.2) < 0.01


def test_sine_regressor_training_and_losses():
    torch.manual_seed(0)
    m = SineRegressor(d_model=16, n_layers=1, n_heads=2, seq_len=12)
    ev = make_sine_task(32, 12, p=0.5, seed=1)
    pred, states = m(ev.inputs, hidden_states=True)
    assert pred.shape == (32, 12) and len(states) == 2 and states[0].shape == (32, 12, 16)
    losses = sine_losses(m, ev)
    z = ev.query
    ref = F.huber_loss(m(ev.inputs).detach(), ev.target, reduction="none")
    assert abs(losses["loss_z1"] - float(ref[z].mean())) < 1e-6 and abs(losses["loss_z0"] - float(ref[~z].mean())) < 1e-6
    assert losses["n_z1"] == int(z.sum())
    hist = train_sine(m, steps=60, p=0.0, batch_size=16, lr=1e-2, seq_len=12, eval_task=make_sine_task(32, 12, p=0.0, seed=3), eval_every=30)
    assert [h["step"] for h in hist] == [30, 60] and hist[-1]["loss"] < hist[0]["loss"]  # copying x_t is learnt quickly
    make_myopic(m)
    train_sine(m, steps=2, p=0.5, batch_size=4, seq_len=12)
    assert is_myopic(m)


def test_probe_r2_and_sine_probes():
    torch.manual_seed(0)
    h = torch.randn(300, 5, 6)
    mask = torch.ones(300, 5, dtype=torch.bool)
    assert probe_r2(h, 2 * h[..., 1] - h[..., 3], mask) > 0.99
    assert abs(probe_r2(h, torch.randn(300, 5), mask)) < 0.05
    m = SineRegressor(d_model=16, n_layers=2, n_heads=2, seq_len=10)
    rows = sine_probes(m, make_sine_task(64, 10, p=0.3), lags=range(3))
    assert len(rows) == 3 and all(len(r) == 3 for r in rows)
    assert rows[0][0] < 0.2  # the embedding of (x_t, z_t) holds sin(10 x_t) only through the final layer norm of a 2-d input
