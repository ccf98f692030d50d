"""Model tests: KV cache = recomputation, RoPE from position ids (vs a float64 loop reference), pauses share positions,
the PauseLM adapter (GPT-2 and Llama built locally) vs the HF model's own logits, save/load round-trip, error cases."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import math

import pytest
import torch
import torch.nn as nn

from cyb_nb.losses import LossConfig
from cyb_nb.models import Attention, KVCache, PauseLM, TinyGPT, TinyGPTConfig, forward_steps, tiny_hf_lm
from cyb_nb.stream import PauseVocab, expand

import transformers

transformers.logging.set_verbosity_error()


def small_model(seed=0, n_pauses=3, V=30, **kw):
    torch.manual_seed(seed)
    pv = PauseVocab(V, n_pauses)
    cfg = dict(d_model=32, n_layers=2, n_heads=4, max_positions=256)
    cfg.update(kw)
    m = TinyGPT.from_vocab(pv, **cfg).eval()
    with torch.no_grad():  # a non-trivial δ head and norms, so that nothing passes by being zero
        m.dk_bias.fill_(0.3)
        for n in m.modules():
            if isinstance(n, nn.LayerNorm):
                n.weight.uniform_(0.5, 1.5)
    return m, pv


# ---------------------------------------------------------------- an independent float64 reference of TinyGPT


def reference_forward(m: TinyGPT, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    "TinyGPT's forward written with explicit loops over positions in float64 (one sequence)."
    c = m.config
    P = {k: v.detach().double() for k, v in m.state_dict().items()}
    H, hd = c.n_heads, c.d_model // c.n_heads
    L = len(ids)

    def rms(x, w):  # LayerNorm without bias
        x = x - x.mean(-1, keepdim=True)
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w

    def rope(v, p):  # v [hd]: rotate pair (i, i + hd/2) by p * base^(-2i/hd)
        out = v.clone()
        for i in range(hd // 2):
            a = p * c.rope_base ** (-2 * i / hd)
            out[i] = v[i] * math.cos(a) - v[i + hd // 2] * math.sin(a)
            out[i + hd // 2] = v[i + hd // 2] * math.cos(a) + v[i] * math.sin(a)
        return out

    h = P["tok_emb.weight"][ids]
    for l in range(c.n_layers):
        pre = f"blocks.{l}."
        x = rms(h, P[pre + "norm1.weight"])
        qkv = x @ P[pre + "attn.qkv.weight"].T
        q, k, v = qkv[:, : c.d_model], qkv[:, c.d_model: 2 * c.d_model], qkv[:, 2 * c.d_model:]
        y = torch.zeros(L, c.d_model, dtype=torch.float64)
        for hh in range(H):
            sl = slice(hh * hd, (hh + 1) * hd)
            qs = [rope(q[i, sl], int(pos[i])) for i in range(L)]
            ks = [rope(k[j, sl], int(pos[j])) for j in range(L)]
            for i in range(L):
                scores = torch.stack([qs[i] @ ks[j] / math.sqrt(hd) for j in range(i + 1)])
                w = torch.softmax(scores, 0)
                y[i, sl] = sum(w[j] * v[j, sl] for j in range(i + 1))
        h = h + y @ P[pre + "attn.proj.weight"].T
        x = rms(h, P[pre + "norm2.weight"])
        h = h + torch.nn.functional.gelu(x @ P[pre + "mlp.up.weight"].T) @ P[pre + "mlp.proj.weight"].T
    h = rms(h, P["norm.weight"])
    V = c.n_outputs - 1
    real = h @ P["tok_emb.weight"][:V].T
    dk = h @ P["dk_weight"] + P["dk_bias"]
    return torch.cat([real, dk[:, None]], 1)


def test_forward_matches_float64_loop_reference_with_pause_positions():
    m, pv = small_model(n_pauses=2)
    s = expand(torch.tensor([[3, 7, 1, 9]]), pv.n_pauses, pv.pause_ids, vocab_size=pv.vocab_size)
    with torch.no_grad():
        got = m(s.input_ids, position_ids=s.position_ids)[0].double()
    ref = reference_forward(m, s.input_ids[0], s.position_ids[0])
    assert (got - ref).abs().max() < 1e-4
    # and the reference with *sequential* positions differs: position ids really reach RoPE
    ref_seq = reference_forward(m, s.input_ids[0], torch.arange(s.input_ids.shape[1]))
    assert (got - ref_seq).abs().max() > 1e-4


# ---------------------------------------------------------------- KV cache


@pytest.mark.parametrize("chunks", ["1", "3", "W", "ragged"])
def test_kv_cache_equals_full_recomputation(chunks):
    m, pv = small_model()
    s = expand(torch.randint(0, 30, (2, 4), generator=torch.Generator().manual_seed(1)), pv.n_pauses, pv.pause_ids)
    L = s.input_ids.shape[1]
    sizes = {"1": [1] * L, "3": [3] * 5 + [1], "W": [pv.W_max] * (L // pv.W_max), "ragged": [5, 1, 4, 2, 4]}[chunks]
    assert sum(sizes) == L
    with torch.no_grad():
        full = m(s.input_ids, position_ids=s.position_ids)
        cache, outs, a = m.new_cache(), [], 0
        for n in sizes:
            outs.append(m(s.input_ids[:, a:a + n], position_ids=s.position_ids[:, a:a + n], cache=cache))
            a += n
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5
    assert len(cache) == L and isinstance(cache, KVCache)


def test_kv_cache_variable_pauses_and_default_positions():
    m, pv = small_model()
    counts = torch.tensor([[0, 3, 1, 2, 0]])
    s = expand(torch.tensor([[4, 5, 6, 7, 8]]), pv.n_pauses, pv.pause_ids, counts=counts)
    with torch.no_grad():
        full = m(s.input_ids, position_ids=s.position_ids)
        cache, outs = KVCache(), []
        for t in range(5):  # one chunk per real token, of 1 + counts[t] positions
            idx = s.flat_index[0, t][s.step_mask[0, t]]
            outs.append(m(s.input_ids[:, idx], position_ids=s.position_ids[:, idx], cache=cache))
        assert (torch.cat(outs, 1) - full).abs().max() < 1e-5
        # without position ids, positions continue the cache: equal to consecutive positions
        x = torch.randint(0, 30, (1, 7))
        c2 = KVCache()
        inc = torch.cat([m(x[:, :4], cache=c2), m(x[:, 4:], cache=c2)], 1)
        assert (inc - m(x)).abs().max() < 1e-5


# ---------------------------------------------------------------- positions


def test_pauses_share_positions_permutation_and_shift():
    m, pv = small_model()
    ids = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(2))
    s = expand(ids, pv.n_pauses, pv.pause_ids)
    W = pv.W_max
    assert (s.position_ids == torch.arange(5).repeat_interleave(W)[None]).all()
    with torch.no_grad():
        base = m(s.input_ids, position_ids=s.position_ids)
        shifted = m(s.input_ids, position_ids=s.position_ids + 23)
        assert (shifted - base).abs().max() < 1e-4  # RoPE is relative
        E = m.tok_emb.weight
        p1, p2 = pv.pause_ids[0], pv.pause_ids[1]
        E[[p1, p2]] = E[[p2, p1]].clone()  # permute two pause embeddings; positions unchanged
        perm = m(s.input_ids, position_ids=s.position_ids)
    assert (perm - base).abs().max() > 1e-3
    assert (perm[:, 0] - base[:, 0]).abs().max() == 0  # the first real token has seen no pause yet


# ---------------------------------------------------------------- gradients, dtypes, hooks


def test_backward_tied_head_and_bf16_autocast():
    m, pv = small_model()
    m.train()
    x = torch.randint(0, 30, (2, 4))
    sl, s = forward_steps(m, x, pv)
    assert sl.shape == (2, 4, pv.W_max, pv.n_outputs)
    LossConfig.from_name("ap")(sl, s.targets).backward()
    assert m.dk_weight.grad.abs().sum() > 0 and m.dk_bias.grad.abs().sum() > 0
    assert m.tok_emb.weight.grad[: pv.vocab_size].abs().sum() > 0
    m.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z = m(s.input_ids, position_ids=s.position_ids)
    assert z.dtype == torch.bfloat16 and torch.isfinite(z.float()).all()
    assert (z.float() - m(s.input_ids, position_ids=s.position_ids)).abs().max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    m, pv = small_model()
    s = expand(torch.randint(0, 30, (2, 5)), pv.n_pauses, pv.pause_ids)
    with torch.no_grad():
        ref = m(s.input_ids, position_ids=s.position_ids)
        got = m.cuda()(s.input_ids.cuda(), position_ids=s.position_ids.cuda()).cpu()
    assert (got - ref).abs().max() < 1e-4


def test_attention_subclass_hook():
    calls = []

    class Myopic(Attention):
        def attend(self, q, k, v, n_past=0):
            calls.append(self.layer_idx)
            return super().attend(q, k.detach(), v.detach(), n_past)

    torch.manual_seed(0)
    pv = PauseVocab(20, 1)
    a = TinyGPT.from_vocab(pv, d_model=16, n_layers=2, n_heads=2)
    b = TinyGPT.from_vocab(pv, d_model=16, n_layers=2, n_heads=2, attention_cls=Myopic)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 20, (1, 5))
    assert (a(x) - b(x)).abs().max() == 0 and calls == [0, 1]
    b(x).sum().backward()
    assert b.blocks[0].attn.qkv.weight.grad is not None  # queries still get gradients


def test_errors():
    m, pv = small_model()
    with pytest.raises(ValueError, match="divisible"):
        TinyGPTConfig(10, 5, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        TinyGPTConfig(3, 5)
    with pytest.raises(ValueError, match="input_ids"):
        m(torch.tensor([[0, 99]]))
    with pytest.raises(ValueError, match="max_positions"):
        m(torch.tensor([[0, 1]]), position_ids=torch.tensor([[0, 256]]))
    with pytest.raises(ValueError, match="position_ids"):
        m(torch.tensor([[0, 1]]), position_ids=torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match="exactly one"):
        m()
    with pytest.raises(TypeError, match="PauseVocab"):
        forward_steps(m, torch.tensor([[1, 2]]), 3)


# ---------------------------------------------------------------- PauseLM on tiny GPT-2 and Llama


def hand_step_logits(hf, pv, dk_id, ids):
    "Reference: build the stream by hand, run the HF model with an explicit mask, gather steps with loops."
    B, T = ids.shape
    W = pv.W_max
    stream = [[tok for t in range(T) for tok in [int(ids[b, t]), *pv.pause_ids]] for b in range(B)]
    pos = [[t for t in range(T) for _ in range(W)] for _ in range(B)]
    x, p = torch.tensor(stream), torch.tensor(pos)
    z = hf(input_ids=x, position_ids=p, attention_mask=torch.ones_like(x), use_cache=False).logits.double()
    out = torch.empty(B, T, W, pv.vocab_size + 1, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            for k in range(W):
                out[b, t, k, :-1] = z[b, t * W + k, : pv.vocab_size]
                out[b, t, k, -1] = z[b, t * W + k, dk_id]
    return out


def cyb_ap_reference(step_logits, targets, dk_prior=0.9):
    "Float64 CYB-AP loss (ω one-hot at W, γ = 1) by enumerating stopping steps, (Catch Your Breath, §2)."
    B, T, W, V1 = step_logits.shape
    n_vocab = V1  # |V| of the notes: the real tokens plus δ; ψ'_i = (1 - ψ'_DK)/(|V| - 1) for the others
    shift = math.log(dk_prior / ((1 - dk_prior) / (n_vocab - 1)))
    total, n = 0.0, 0
    for b in range(B):
        for t in range(T):
            y = int(targets[b, t])
            if y < 0:
                continue
            like = 0.0
            for i in range(W):
                z = step_logits[b, t, i].double().clone()
                z[-1] += shift
                pr = torch.softmax(z, 0)
                d = float(pr[-1].detach()) if i < W - 1 else 0.0
                ti = float(pr[y] / (1 - pr[-1]))
                s_i = math.prod(float(torch.softmax(torch.cat([step_logits[b, t, j, :-1].double(),
                                                                (step_logits[b, t, j, -1] + shift).double()[None]]), 0)[-1])
                                for j in range(i)) * (1 - d)
                like += s_i * ti
            total += -math.log(like)
            n += 1
    return total / n


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_pauselm_matches_hand_computation_and_losses(kind):
    torch.manual_seed(3)
    hf, tok = tiny_hf_lm(kind, d_model=32, n_layers=2, n_heads=4)
    V = len(tok)
    lm = PauseLM(hf, tok, n_pauses=2).train()  # train mode: dropout is 0, use_cache off as in training
    pv = lm.pause_vocab
    assert pv.vocab_size == V and pv.pause_ids == (V, V + 1) and lm.dont_know_id == V + 2
    assert tok.convert_ids_to_tokens([V, V + 1, V + 2]) == ["<pause_1>", "<pause_2>", "<dont_know>"]
    ids = torch.tensor([tok("the cat sat on a mat").input_ids, tok("a dog ran to the house").input_ids])
    sl = lm(ids)
    assert sl.shape == (2, ids.shape[1], 3, V + 1)
    ref = hand_step_logits(hf, pv, lm.dont_know_id, ids).detach()
    assert (sl.double() - ref).abs().max() < 1e-5
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]
    for name in ["ap", "va", "dp", "tbys"]:
        cfg = LossConfig.from_name(name)
        a, b = cfg(sl, targets), cfg(ref.float(), targets)
        assert abs(a.item() - b.item()) < 1e-5, name
    assert abs(LossConfig.from_name("ap")(sl, targets).item() - cyb_ap_reference(ref, targets)) < 1e-4
    # CE at step 1 (code index 0) by hand with log-softmax over the real vocabulary
    ce_ref = -torch.log_softmax(ref[:, :-1, 0, :-1], -1).gather(-1, targets[:, :-1, None]).mean()
    assert abs(LossConfig.from_name("ce")(sl[:, :, :1], targets).item() - ce_ref.item()) < 1e-5


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_pauselm_is_causal_across_pauses_and_caches(kind):
    "Pauses see everything before them (transformers' packed-sequence guess must not kick in) and the cache agrees."
    torch.manual_seed(4)
    hf, tok = tiny_hf_lm(kind, d_model=32, n_layers=2, n_heads=4)
    lm = PauseLM(hf, tok, n_pauses=3).train()
    ids = torch.tensor([tok("the cat sat on a mat").input_ids])
    ids2 = ids.clone()
    ids2[0, 0] = tok.convert_tokens_to_ids("dog")
    with torch.no_grad():
        a, b = lm(ids), lm(ids2)
        assert ((a - b).abs().amax(-1) > 1e-6).all()  # every step of every token sees token 0
        lm.eval()
        s = expand(ids, 3, lm.pause_vocab.pause_ids)
        full = lm(s.input_ids, position_ids=s.position_ids)
        cache, outs = lm.new_cache(), []
        for t in range(ids.shape[1]):
            sl_ = slice(4 * t, 4 * t + 4)
            outs.append(lm(s.input_ids[:, sl_], position_ids=s.position_ids[:, sl_], cache=cache))
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5


def test_pauselm_variable_counts():
    "Recipe 2 through the adapter: the existing steps equal the HF model run on the hand-built variable stream."
    torch.manual_seed(5)
    hf, tok = tiny_hf_lm("llama", d_model=32, n_heads=4)
    lm = PauseLM(hf, tok, n_pauses=3).eval()
    pv = lm.pause_vocab
    ids = torch.tensor([tok("the cat sat on a mat").input_ids])
    counts = [0, 3, 1, 2, 0, 1]
    with torch.no_grad():
        sl, s = forward_steps(lm, ids, pv, counts=torch.tensor([counts]))
        stream = [tok_ for t, c in enumerate(counts) for tok_ in [int(ids[0, t]), *pv.pause_ids[:c]]]
        pos = [t for t, c in enumerate(counts) for _ in range(c + 1)]
        x = torch.tensor([stream])
        z = hf(input_ids=x, position_ids=torch.tensor([pos]), attention_mask=torch.ones_like(x), use_cache=False).logits
    j = 0
    for t, c in enumerate(counts):
        for k in range(c + 1):
            assert (sl[0, t, k, :-1] - z[0, j, : pv.vocab_size]).abs().max() < 1e-5
            assert abs(sl[0, t, k, -1] - z[0, j, lm.dont_know_id]) < 1e-5
            j += 1
    assert s.step_mask[0].sum(-1).tolist() == [c + 1 for c in counts]


def test_save_from_pretrained_round_trip(tmp_path):
    torch.manual_seed(6)
    hf, tok = tiny_hf_lm("llama", d_model=32, n_heads=4)
    lm = PauseLM(hf, tok, n_pauses=2).eval()
    with torch.no_grad():
        lm.lm.get_output_embeddings().weight[lm.dont_know_id] += 1.0  # a distinctive δ row
    lm.save_pretrained(tmp_path)
    lm2 = PauseLM.from_pretrained(tmp_path).eval()
    assert lm2.pause_vocab == lm.pause_vocab and lm2.dont_know_id == lm.dont_know_id
    assert lm2.tokenizer.convert_ids_to_tokens(list(lm2.pause_vocab.pause_ids) + [lm2.dont_know_id]) == \
        ["<pause_1>", "<pause_2>", "<dont_know>"]
    assert lm2.tokenizer("the <pause_1> cat").input_ids[1] == lm.pause_vocab.pause_ids[0]  # still one special token
    ids = torch.tensor([tok("the cat sat on a mat").input_ids])
    with torch.no_grad():
        assert torch.equal(lm(ids), lm2(ids))
    with pytest.raises(ValueError, match="cyb_pause_lm.json"):
        PauseLM.from_pretrained(tmp_path / "nope")
    # from_base: a plain local model directory gets fresh special tokens
    base_dir = tmp_path / "base"
    hf3, tok3 = tiny_hf_lm("gpt2")
    hf3.save_pretrained(base_dir)
    tok3.save_pretrained(base_dir)
    lm3 = PauseLM.from_base(base_dir, n_pauses=1)
    assert lm3.pause_vocab.n_pauses == 1 and lm3.pause_vocab.vocab_size == len(tok3)


def test_pauselm_errors():
    hf, tok = tiny_hf_lm("gpt2")
    tok.add_tokens(["<dont_know>"], special_tokens=True)
    with pytest.raises(ValueError, match="already has"):
        PauseLM(hf, tok, n_pauses=2)

    class NoPositions(nn.Module):
        def get_input_embeddings(self):
            return nn.Embedding(4, 2)

        def forward(self, input_ids, attention_mask=None):
            return input_ids

    with pytest.raises(ValueError, match="position_ids"):
        PauseLM(NoPositions(), tiny_hf_lm()[1], n_pauses=2)
    with pytest.raises(ValueError, match="n_pauses"):
        PauseLM(*tiny_hf_lm(), n_pauses=-1)


# ---------------------------------------------------------------- growing a pretrained base into a pause model
def _tiny_base(seed=0):
    from cyb_nb.models import TinyGPT
    from cyb_nb.stream import PauseVocab
    torch.manual_seed(seed)
    return TinyGPT.from_vocab(PauseVocab(vocab_size=20, n_pauses=0), d_model=16, n_layers=2, n_heads=2).eval()


def test_grow_zero_pauses_is_the_base_and_the_base_is_untouched():
    from cyb_nb.models import grow_pause_model
    base = _tiny_base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    same = grow_pause_model(base, 0)
    assert same.state_dict().keys() == base.state_dict().keys()
    assert all(torch.equal(same.state_dict()[k], v) for k, v in before.items())
    grown = grow_pause_model(base, 3, seed=1)
    for p in grown.parameters():  # train the grown model a little: the base must not move (no shared storage)
        p.data.add_(0.5)
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())
    assert not any(a.data_ptr() == b.data_ptr() for a in base.parameters() for b in grown.parameters())


@pytest.mark.parametrize("init", ["mean", "copy", "random"])
def test_grow_keeps_the_first_real_step(init):
    from cyb_nb.models import forward_steps, grow_pause_model
    base = _tiny_base()
    grown = grow_pause_model(base, 2, init=init, copy_rows=[3, 4] if init == "copy" else None).eval()
    ids = torch.tensor([[5, 1, 7, 2, 9, 9]])
    with torch.no_grad():
        steps, _ = forward_steps(grown, ids, grown.pause_vocab)
        ref = base(ids)
    assert torch.allclose(steps[:, 0, 0], ref[:, 0], atol=1e-6)
    assert torch.equal(grown.tok_emb.weight[:20], base.tok_emb.weight)  # every trained row kept
    if init == "copy":
        assert torch.equal(grown.tok_emb.weight[20:], base.tok_emb.weight[[3, 4]])


def test_grow_refuses_bad_bases():
    from cyb_nb.models import grow_pause_model, tiny_hf_lm
    base = _tiny_base()
    with pytest.raises(ValueError, match="already has 2 pause rows"):
        grow_pause_model(grow_pause_model(base, 2), 3)
    with pytest.raises(ValueError, match="n_pauses"):
        grow_pause_model(base, -1)
    with pytest.raises(TypeError, match="tokenizer"):
        grow_pause_model(tiny_hf_lm("gpt2")[0], 2)
    with pytest.raises(TypeError, match="base must be"):
        grow_pause_model(torch.nn.Linear(2, 2), 2)


def test_grow_a_transformers_model_keeps_its_logits():
    from cyb_nb.models import grow_pause_model, tiny_hf_lm
    torch.manual_seed(0)
    lm, tok = tiny_hf_lm("llama", d_model=16, n_heads=2)
    lm.eval()
    V = len(tok)
    x = torch.tensor([tok("the cat sat on a mat").input_ids])
    g0, g2 = grow_pause_model(lm, 0, tokenizer=tok).eval(), grow_pause_model(lm, 2, tokenizer=tok).eval()
    assert len(tok) == V and lm.get_input_embeddings().weight.shape[0] == V
    with torch.no_grad():
        ref = lm(x).logits
        assert torch.allclose(g0(x)[:, :, 0, :V], ref, atol=1e-5)
        assert torch.allclose(g2(x)[:, 0, 0, :V], ref[:, 0], atol=1e-5)


# ---------------------------------------------------------------- initialisation: GPT-2's (default) and PonderingLM's

def _old_gpt2_init(model):
    "The initialisation TinyGPT had before `init` existed, written out: N(0, 0.02²), `*proj.weight` ÷ √(2L)."
    std = model.config.init_std
    for name, p in model.named_parameters():
        if "norm" in name or name == "dk_bias":
            continue
        nn.init.normal_(p, 0.0, std / math.sqrt(2 * model.config.n_layers) if name.endswith("proj.weight") else std)
    nn.init.zeros_(model.dk_bias)


def test_default_init_is_unchanged_bitwise():
    cfg = TinyGPTConfig(vocab_size=40, n_outputs=33, d_model=32, n_layers=3, n_heads=2)
    assert cfg.init == "gpt2" and cfg.init_passes == 1
    m = TinyGPT(cfg)
    torch.manual_seed(5)
    m.reset_parameters()
    new = {n: p.detach().clone() for n, p in m.named_parameters()}
    torch.manual_seed(5)
    _old_gpt2_init(m)
    for n, p in m.named_parameters():
        assert torch.equal(new[n], p), n


@pytest.mark.parametrize("L, K", [(2, 0), (3, 3), (4, 1)])
def test_ponder_init_std_per_layer_matches_the_formula(L, K):
    from cyb_nb.models import init_stds
    d = 128
    torch.manual_seed(0)
    m = TinyGPT(TinyGPTConfig(vocab_size=300, n_outputs=257, d_model=d, n_layers=L, n_heads=4, init="ponder", init_passes=K + 1))
    sigma = math.sqrt(2 / (5 * d))
    stds = init_stds(m)
    assert set(stds) == {n for n, _ in m.named_parameters() if "norm" not in n and n != "dk_bias"}
    for i in range(L):  # the factor per layer: qkv and MLP-in at sigma, both residual outputs at sigma / √(2L(K+1))
        for n in (f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.mlp.up.weight"):
            assert stds[n] == pytest.approx(sigma)
        for n in (f"blocks.{i}.attn.proj.weight", f"blocks.{i}.mlp.proj.weight"):
            assert stds[n] == pytest.approx(sigma / math.sqrt(2 * L * (K + 1)))
    assert stds["tok_emb.weight"] == pytest.approx(sigma) and stds["dk_weight"] == pytest.approx(sigma)
    for n, p in m.named_parameters():  # drawn: mean 0 and the std above (≥ 16k draws: relative s.e. of the std < 0.6%)
        if n in stds and p.numel() >= 10_000:
            assert p.std().item() == pytest.approx(stds[n], rel=0.03), n
            assert abs(p.mean().item()) < 4 * stds[n] / math.sqrt(p.numel()), n
        if n in stds:
            assert p.abs().max().item() <= 2.0  # trunc_normal_'s cut
    assert torch.equal(m.dk_bias, torch.zeros(1)) and all(torch.equal(p, torch.ones_like(p)) for n, p in m.named_parameters() if "norm" in n)
    # the GPT-2 default: 0.02 everywhere, residual outputs ÷ √(2L), whatever init_passes says
    g = TinyGPT(TinyGPTConfig(vocab_size=300, n_outputs=257, d_model=d, n_layers=L, n_heads=4, init_passes=K + 1))
    assert init_stds(g)["blocks.0.mlp.proj.weight"] == pytest.approx(0.02 / math.sqrt(2 * L))
    assert g.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * L), rel=0.03)


@pytest.mark.parametrize("kw, match", [(dict(init="xavier"), "init must be"), (dict(init_passes=0), "init_passes"),
                                       (dict(init_passes=2.0), "init_passes"), (dict(init_std=0.0), "init_std")])
def test_init_options_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        TinyGPTConfig(vocab_size=40, n_outputs=33, **kw)
