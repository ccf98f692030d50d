"""Test matrix for every wrapper the library puts around a transformers model — `make_myopic`/`myopic`, `PauseLM`, `PonderLM`,
`CascadeAwareModel`, `CYBTrainer` batches — over architectures (tiny random float64 configs, no download) × attention implementation
(eager; sdpa where the architecture has it) × padding (none; left padding through `attention_mask`).

Each wrapper is checked for what it promises: forward equal to the unwrapped model (where it promises that), causality (perturbing a
later token leaves every earlier real output unchanged), padding invariance (a left-padded row equals the same row alone, given the
same position ids), finite outputs at every position (pad queries included) and finite gradients; `make_myopic`'s gradients equal the
per-position brute-force reference.

Everything runs in float64 except eager attention with left padding on the architectures whose eager attention takes its softmax in
float32 (all but GPT-2): there transformers' float64 mask value (finfo(float64).min) becomes -inf in float32, a fully masked pad
query gets NaN, and 0·NaN carries it to the real positions of the next layer — in the vanilla model itself. Those cases run in float32.
"""
import sys

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from transformers import AttentionInterface  # noqa: E402
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface  # noqa: E402
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

from cyb_nb.myopic import MYOPIC_CUTS, is_myopic, make_myopic, myopic  # noqa: E402
from cyb_nb.stream import IGNORE_INDEX  # noqa: E402

V, L, N_PAD = 24, 8, 3  # vocabulary, sequence length, left padding of row 0
ARCHS = ("gpt2", "llama", "gemma2", "gpt_neox", "qwen2", "mistral")


def _config(arch: str):
    "A tiny config (2 layers, hidden 16); GQA where the architecture has it, sliding windows shorter than L, Gemma-2's logit soft-capping on."
    T, common = transformers, dict(vocab_size=V, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    dec = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, max_position_embeddings=64, initializer_range=0.1, **common)
    if arch == "gpt2":
        return T.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            initializer_range=0.1, **common)
    if arch == "llama":
        return T.LlamaConfig(num_attention_heads=4, num_key_value_heads=2, **dec)
    if arch == "gemma2":
        return T.Gemma2Config(num_attention_heads=2, num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8, sliding_window=4,
                              attn_logit_softcapping=2.0, **dec)
    if arch == "gpt_neox":
        return T.GPTNeoXConfig(num_attention_heads=2, hidden_dropout=0.0, attention_dropout=0.0, **dec)
    if arch == "qwen2":
        return T.Qwen2Config(num_attention_heads=4, num_key_value_heads=2, **dec)
    if arch == "mistral":
        return T.MistralConfig(num_attention_heads=4, num_key_value_heads=2, sliding_window=4, **dec)
    raise ValueError(arch)


_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gpt_neox": "GPTNeoXForCausalLM",
            "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
CASES = [(a, i) for a in ARCHS for i in ("eager", "sdpa") if i == "eager" or getattr(transformers, _CLASSES[a])._supports_sdpa]
PADS = ("none", "left")


def _dtype(arch: str, impl: str, pad: str) -> torch.dtype:
    "float64, but float32 for eager + left padding where the eager softmax runs in float32 (see the module docstring)."
    return torch.float32 if impl == "eager" and pad == "left" and arch != "gpt2" else torch.float64


def _model(arch: str, impl: str, seed: int = 0, pad: str = "none"):
    "A tiny random causal LM of `arch` with attention implementation `impl` in `_dtype(arch, impl, pad)`, in eval mode (no dropout)."
    torch.manual_seed(seed)
    cfg = _config(arch)
    cfg._attn_implementation = impl
    m = getattr(transformers, _CLASSES[arch])(cfg).to(_dtype(arch, impl, pad)).eval()
    assert m.config._attn_implementation == impl
    # eager attention of every architecture here but GPT-2 takes its softmax in float32: float32 precision, whatever the dtype
    m._test_float32_precision = m.dtype == torch.float32 or (impl == "eager" and arch != "gpt2")
    return m


def _tol(model, grad: bool = False) -> dict:
    "assert_close tolerances for `model`'s dtype: forward values, or gradients against the per-position reference."
    f64 = not any(getattr(x, "_test_float32_precision", False) for x in model.modules())
    if grad:
        return dict(atol=1e-10, rtol=1e-8) if f64 else dict(atol=2e-5, rtol=1e-3)
    return dict(atol=1e-12, rtol=1e-12) if f64 else dict(atol=1e-6, rtol=1e-5)


def _tokenizer():
    "A word-level tokenizer with V tokens (`<unk>`, `<pad>`, then words), built locally."
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *(f"w{k}" for k in range(V - 2))])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>")


def _batch(pad: str, seed: int = 1, vocab: int = V):
    "ids `[2, L]`, attention mask (None without padding; row 0 left-padded by N_PAD), position ids counting real tokens, real-token mask."
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (2, L), generator=g)
    if pad == "none":
        return ids, None, torch.arange(L).expand(2, L), torch.ones(2, L, dtype=torch.bool)
    mask = torch.ones(2, L, dtype=torch.long)
    mask[0, :N_PAD] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), mask.bool()


def _targets(ids, real):
    "Next-token targets with IGNORE_INDEX where the target is missing or padding."
    tgt = torch.full_like(ids, IGNORE_INDEX)
    tgt[:, :-1] = ids[:, 1:].masked_fill(~real[:, 1:], IGNORE_INDEX)
    return tgt.masked_fill(~real, IGNORE_INDEX)


def _logits(model, ids, mask, pos=None):
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


def _assert_causal(fwd, ids, real, j: int = 5):
    "Changing token j (real in every row) leaves the outputs at every real position before j unchanged (bit for bit)."
    assert real[:, j].all()
    ids2 = ids.clone()
    ids2[:, j] = 2 + (ids[:, j] - 2 + 7) % (V - 2)
    a, b = fwd(ids), fwd(ids2)
    before = real.clone()
    before[:, j:] = False
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    torch.testing.assert_close(a[before], b[before], atol=0, rtol=0)
    assert not torch.allclose(a[:, j], b[:, j])  # the perturbation does reach position j


def _assert_finite_grads(params, what=""):
    for p in params:
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), f"non-finite gradient {what}"


# ---------------------------------------------------------------- make_myopic / myopic -----------------------------------------


@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("arch,impl", CASES)
@pytest.mark.parametrize("cut", ["hidden", "kv"])
def test_myopic_forward_equals_vanilla(arch, impl, pad, cut):
    m = _model(arch, impl, pad=pad)
    ids, mask, _, real = _batch(pad)
    with torch.no_grad():
        vanilla = _logits(m, ids, mask)
    assert torch.isfinite(vanilla).all()
    with myopic(m, cut=cut):
        with torch.no_grad():
            a = _logits(m, ids, mask)
        b = _logits(m, ids, mask)  # under autograd the myopic path runs (capture pass, zero-valued diagonal terms)
    assert m.config._attn_implementation == impl
    for out in (a, b):
        assert torch.isfinite(out).all(), "NaN/inf at some position (pad queries included)"
        torch.testing.assert_close(out[real], vanilla[real], atol=0, rtol=0)  # bit for bit


def _per_position_reference(model, ids, mask, tgt, cut):
    "Σ_t ∇ loss_t with position t read live and every other position through `cut`, written from scratch (float64 loop over t)."
    state = {"t": 0}

    def mix(x, dim, zero=False):
        shape = [1] * x.ndim
        shape[dim] = x.shape[dim]
        own = (torch.arange(x.shape[dim]) == state["t"]).to(x.dtype).view(shape)
        return x * own + (torch.zeros_like(x) if zero else x.detach()) * (1 - own)

    impl = model.config._attn_implementation
    attns = [m for m in model.modules() if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")]
    hooks = []
    if cut == "kv":
        def ref(mod, q, k, v, attn_mask, **kw):
            base = sys.modules[type(mod).__module__].eager_attention_forward if impl == "eager" else ALL_ATTENTION_FUNCTIONS[impl]
            return base(mod, q, mix(k, 2), mix(v, 2), attn_mask, **kw)
        AttentionInterface.register("test_kv_reference", ref)
        AttentionMaskInterface.register("test_kv_reference", ALL_MASK_ATTENTION_FUNCTIONS[impl])
        model.set_attn_implementation("test_kv_reference")
    else:
        def pre(mod, args, kwargs):
            if args:
                return (mix(args[0], 1, cut == "bigram"), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": mix(kwargs["hidden_states"], 1, cut == "bigram")}
        hooks = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in attns]
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    try:
        for t in range(ids.shape[1]):
            state["t"] = t
            lt = F.cross_entropy(_logits(model, ids, mask)[:, t], tgt[:, t], reduction="sum", ignore_index=IGNORE_INDEX)
            if lt.requires_grad:
                for acc, g in zip(total, torch.autograd.grad(lt, params, allow_unused=True)):
                    if g is not None:
                        acc += g
    finally:
        for h in hooks:
            h.remove()
        model.set_attn_implementation(impl)
    return total


# every architecture × attention implementation × padding × cut
MYOPIC_MATRIX = [(arch, impl, pad, cut) for cut in MYOPIC_CUTS for arch, impl in CASES for pad in PADS]


@pytest.mark.parametrize("arch,impl,pad,cut", MYOPIC_MATRIX)
def test_myopic_gradients_match_reference(arch, impl, pad, cut):
    m = _model(arch, impl, pad=pad)
    ids, mask, _, real = _batch(pad)
    tgt = _targets(ids, real)
    params = list(m.parameters())
    with myopic(m, cut=cut):
        logits = _logits(m, ids, mask)
        assert torch.isfinite(logits).all()
        loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="sum", ignore_index=IGNORE_INDEX)
        got = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        # a loss on every position, pad queries included: the backward stays finite
        every = torch.autograd.grad(logits.logsumexp(-1).sum(), params, allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in (*got, *every))
    for a, b in zip(got, _per_position_reference(m, ids, mask, tgt, cut)):
        torch.testing.assert_close(torch.zeros_like(b) if a is None else a, b, **_tol(m, grad=True))


@pytest.mark.parametrize("arch,impl,pad,cut", MYOPIC_MATRIX)
def test_myopic_is_causal(arch, impl, pad, cut):
    m = _model(arch, impl, pad=pad)
    ids, mask, _, real = _batch(pad)
    with myopic(m, cut=cut):
        _assert_causal(lambda x: _logits(m, x, mask), ids, real)


@pytest.mark.parametrize("arch,impl", CASES)
def test_myopic_left_padding_equals_unpadded(arch, impl):
    "A left-padded row with its own position ids gives the logits of the same tokens without padding, myopic or not, with gradients on."
    m = _model(arch, impl, pad="left")
    ids, mask, pos, real = _batch("left")
    alone = ids[:1, N_PAD:]
    with myopic(m):
        padded = _logits(m, ids, mask, pos)[0, N_PAD:]
        single = _logits(m, alone, None, torch.arange(L - N_PAD)[None])[0]
    torch.testing.assert_close(padded, single, **_tol(m, grad=True))


def test_myopic_refuses_unsupported_implementations():
    "An attention implementation the cut cannot read (custom, flex, flash) is refused by name, and the model is left as it was."
    m = _model("llama", "sdpa")
    AttentionInterface.register("test_custom_attention", ALL_ATTENTION_FUNCTIONS["sdpa"])
    AttentionMaskInterface.register("test_custom_attention", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    impls = ["test_custom_attention"]
    try:
        m.set_attn_implementation("flex_attention")
        impls.append("flex_attention")
    except Exception:  # noqa: BLE001 - flex attention unavailable in this torch/transformers
        pass
    for impl in impls:
        m.set_attn_implementation(impl)
        with pytest.raises(ValueError, match=impl):
            make_myopic(m)
        assert m.config._attn_implementation == impl and not is_myopic(m)
        assert all(getattr(a, "_cyb_hook", None) is None for a in m.modules())


def test_myopic_two_models_with_different_implementations():
    "Masks follow each model's own base implementation even when an eager and an sdpa model are myopic at the same time."
    ids, mask, _, real = _batch("left")
    models = [_model("llama", "eager", pad="left"), _model("llama", "sdpa", pad="left")]
    with torch.no_grad():
        vanilla = [_logits(m, ids, mask) for m in models]
    for m in models:
        make_myopic(m)
    for m, v in zip(models, vanilla):
        out = _logits(m, ids, mask)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[real], v[real], **_tol(m))
    for m, impl in zip(models, ("eager", "sdpa")):
        make_myopic(m, False)
        assert m.config._attn_implementation == impl


# ---------------------------------------------------------------- PauseLM ------------------------------------------------------


def _pause_lm(arch, impl, n_pauses, seed=0, pad="none"):
    from cyb_nb.models import PauseLM
    return PauseLM(_model(arch, impl, seed, pad), _tokenizer(), n_pauses, seed=0)


@pytest.mark.parametrize("arch,impl", CASES)
def test_pause_lm_without_pauses_equals_the_model(arch, impl):
    pl = _pause_lm(arch, impl, 0)
    ids, _, _, real = _batch("none")
    steps = pl(ids)  # [B, T, 1, V+1]
    assert steps.shape == (2, L, 1, V + 1)
    torch.testing.assert_close(steps[:, :, 0], pl.head_logits(pl.lm(input_ids=ids).logits), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("arch,impl", CASES)
def test_growth_in_place_equals_the_copy(arch, impl):
    "grow_pause_model(in_place=True) reuses the base object and gives the copy's model: the same weights and, on a left-padded stream, the same step logits bit for bit; the copy leaves the base untouched."
    from cyb_nb.models import grow_pause_model
    from cyb_nb.stream import expand
    base = _model(arch, impl, pad="left")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    copied = grow_pause_model(base, 2, tokenizer=_tokenizer(), seed=0)
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())
    grown = grow_pause_model(base, 2, tokenizer=_tokenizer(), seed=0, in_place=True)
    assert grown.lm is base
    assert grown.state_dict().keys() == copied.state_dict().keys()
    assert all(torch.equal(v, copied.state_dict()[k]) for k, v in grown.state_dict().items())
    ids, _, _, _ = _batch("none")
    s = expand(ids, 2, grown.pause_vocab.pause_ids, vocab_size=V)
    n = s.input_ids.shape[1]
    pad = lambda x: torch.cat([torch.zeros(2, N_PAD, dtype=torch.long), x], 1)
    am = pad(torch.ones(2, n, dtype=torch.long))
    am[1, :N_PAD] = 1  # row 1 reads its pads as tokens, row 0 masks them: both rows must agree between the two models
    a = grown(pad(s.input_ids), position_ids=pad(s.position_ids), attention_mask=am)
    b = copied(pad(s.input_ids), position_ids=pad(s.position_ids), attention_mask=am)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("myopic_on", [False, True])
@pytest.mark.parametrize("arch,impl", CASES)
def test_pause_lm_causal_finite_and_padding_invariant(arch, impl, myopic_on):
    "Pauses with per-token counts (a right-padded stream), then a left-padded stream through attention_mask; myopic equals vanilla."
    from cyb_nb.train import as_loss_config
    from cyb_nb.stream import expand
    pl = _pause_lm(arch, impl, 2, pad="left")
    ids, _, _, real = _batch("none")
    counts = torch.randint(0, 3, ids.shape, generator=torch.Generator().manual_seed(3))
    vanilla = pl(ids, counts=counts)
    if myopic_on:
        make_myopic(pl)
    out = pl(ids, counts=counts)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, vanilla, **_tol(pl))
    _assert_causal(lambda x: pl(x, counts=counts), ids, real)
    loss = as_loss_config("ap")(out, _targets(ids, real), step_mask=expand(ids, 2, pl.pause_vocab.pause_ids, counts=counts).step_mask)
    loss.backward()
    _assert_finite_grads(pl.parameters(), f"{arch}/{impl}")
    # the stream API with left padding: row 0 behind N_PAD pads equals the same stream alone
    s = expand(ids[:1], 2, pl.pause_vocab.pause_ids, vocab_size=V)
    n = s.input_ids.shape[1]
    sid = torch.cat([torch.zeros(1, N_PAD, dtype=torch.long), s.input_ids], 1)
    pos = torch.cat([torch.zeros(1, N_PAD, dtype=torch.long), s.position_ids], 1)
    am = torch.cat([torch.zeros(1, N_PAD, dtype=torch.long), torch.ones(1, n, dtype=torch.long)], 1)
    padded = pl(sid, position_ids=pos, attention_mask=am)
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[:, N_PAD:], pl(s.input_ids, position_ids=s.position_ids), **_tol(pl, grad=True))


# ---------------------------------------------------------------- PonderLM -----------------------------------------------------


@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("arch,impl", CASES)
def test_ponder_lm(arch, impl, pad):
    from cyb_nb.ponder import PonderLM
    m = _model(arch, impl, pad=pad)
    ids, mask, pos, real = _batch(pad)
    torch.testing.assert_close(PonderLM(m, steps=0)(ids, attention_mask=mask), _logits(m, ids, mask), **_tol(m))
    pm = PonderLM(m, steps=2)
    out = pm(ids, attention_mask=mask, position_ids=pos)
    assert torch.isfinite(out).all()
    _assert_causal(lambda x: pm(x, attention_mask=mask, position_ids=pos), ids, real)
    if pad == "left":
        single = pm(ids[:1, N_PAD:], position_ids=torch.arange(L - N_PAD)[None])
        torch.testing.assert_close(out[0, N_PAD:], single[0], **_tol(m, grad=True))
    F.cross_entropy(out.flatten(0, 1), _targets(ids, real).flatten(), ignore_index=IGNORE_INDEX).backward()
    _assert_finite_grads(pm.parameters(), f"{arch}/{impl}/{pad}")
    with myopic(pm):  # make_myopic reaches the transformers model inside the wrapper
        torch.testing.assert_close(pm(ids, attention_mask=mask, position_ids=pos)[real], out[real], **_tol(m))


# ---------------------------------------------------------------- cascade ------------------------------------------------------


@pytest.mark.parametrize("pad", PADS)
@pytest.mark.parametrize("arch,impl", CASES)
def test_cascade_aware_model(arch, impl, pad):
    "CascadeAwareModel returns the small model's output and records the large model's top-1 on the same (padded) input."
    from cyb_nb.cascade import CascadeAwareModel
    small, large = _pause_lm(arch, impl, 0, seed=0, pad=pad), _pause_lm(arch, impl, 0, seed=5, pad=pad)
    cam = CascadeAwareModel(small, large).train()
    ids, mask, pos, real = _batch(pad)
    out = cam(ids, position_ids=pos, attention_mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, small(ids, position_ids=pos, attention_mask=mask), **_tol(small))
    with torch.no_grad():
        want = large(ids, position_ids=pos, attention_mask=mask)[..., :-1].argmax(-1)
    assert torch.equal(cam.large_pred[real], want[real])
    _assert_causal(lambda x: cam(x, position_ids=pos, attention_mask=mask), ids, real)
    out.logsumexp(-1).sum().backward()
    _assert_finite_grads(small.parameters(), f"{arch}/{impl}/{pad}")
    assert all(p.grad is None for p in large.parameters())


# ---------------------------------------------------------------- CYBTrainer ---------------------------------------------------


@pytest.fixture(scope="module")
def training_args(tmp_path_factory):
    from transformers import TrainingArguments
    return TrainingArguments(output_dir=str(tmp_path_factory.mktemp("cyb_trainer")), use_cpu=True, report_to=[], save_strategy="no",
                             disable_tqdm=True, per_device_train_batch_size=2)


@pytest.mark.parametrize("myopic_on", [False, True])
@pytest.mark.parametrize("arch,impl", CASES)
def test_cyb_trainer_padded_batch(arch, impl, myopic_on, training_args):
    "A right-padded batch's summed loss is the sum of each row's loss alone; the gradient is finite; myopic leaves the loss unchanged."
    from cyb_nb.train import CYBTrainer, TokenDataset
    pl = _pause_lm(arch, impl, 2)
    ids, _, _, _ = _batch("none")
    tm = torch.ones_like(ids)
    tm[0, L - N_PAD:] = 0
    ids = ids.masked_fill(tm == 0, 0)
    ds = TokenDataset(ids, tm)
    tr = CYBTrainer(model=pl, args=training_args, loss_config="ap")
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ("input_ids", "labels")}
    n = int((batch["labels"] != IGNORE_INDEX).sum())
    vanilla = tr.compute_loss(pl, batch, num_items_in_batch=n)
    if myopic_on:
        make_myopic(pl)
    loss = tr.compute_loss(pl, batch, num_items_in_batch=n)
    torch.testing.assert_close(loss, vanilla, atol=1e-6, rtol=1e-6)
    rows = [TokenDataset(ids[:1, : L - N_PAD]), TokenDataset(ids[1:])]
    per_row = sum(tr.compute_loss(pl, {k: r[0][k][None] for k in ("input_ids", "labels")},
                                  num_items_in_batch=1) for r in rows)  # num_items 1: the row's summed loss
    torch.testing.assert_close(loss * n, per_row, atol=1e-5, rtol=1e-5)
    loss.backward()
    _assert_finite_grads(pl.parameters(), f"{arch}/{impl}")
