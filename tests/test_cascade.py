"Tests for cyb_nb.cascade: deferral rule, cascade output, quality-cost curves and their area, the CAT loss."
import math

import pytest
import torch
import torch.nn.functional as F

from cyb_nb.cascade import (CATWeights, Curve, cascade, cat_loss, cat_weights, confidence, curve_area, should_defer, sweep,
                            token_scores)
from cyb_nb.stream import IGNORE_INDEX


# ---------------------------------------------------------------- confidence and the deferral rule
@pytest.mark.parametrize("rule", ["max_prob", "margin", "entropy"])
def test_threshold_zero_never_one_always(rule):
    torch.manual_seed(0)
    lg = torch.randn(4, 9, 11) * 5
    lg[0, 0] = torch.tensor([80.0] + [0.0] * 10)  # saturated: confidence exactly 1 for max_prob
    c = confidence(lg, rule)
    assert c.shape == (4, 9) and (c >= 0).all() and (c <= 1).all()
    assert not should_defer(c, 0.0).any()
    assert should_defer(c, 1.0).all()
    assert not should_defer(c, 0).any() and should_defer(c, 1).all()  # ints are fine too


def test_confidence_rules_against_direct_formulas():
    torch.manual_seed(1)
    lg = torch.randn(50, 6, dtype=torch.float64)
    p = lg.softmax(-1)
    ps = p.sort(-1, descending=True).values
    torch.testing.assert_close(confidence(lg, "max_prob").double(), ps[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(confidence(lg, "margin").double(), ps[:, 0] - ps[:, 1], rtol=1e-5, atol=1e-6)
    H = -(p * p.log()).sum(-1)
    torch.testing.assert_close(confidence(lg, "entropy").double(), 1 - H / math.log(6), rtol=1e-5, atol=1e-6)
    # a callable rule is used as given
    torch.testing.assert_close(confidence(lg, lambda z: z.softmax(-1)[..., 0]), p[:, 0])


def test_defer_is_strict_below_threshold():
    c = torch.tensor([0.1, 0.5, 0.5, 0.9])
    assert should_defer(c, 0.5).tolist() == [True, False, False, False]
    assert should_defer(c, 0.50001).tolist() == [True, True, True, False]


@pytest.mark.parametrize("bad", [-0.1, 1.1, float("nan"), "0.5", None, True])
def test_bad_threshold(bad):
    with pytest.raises(ValueError, match="threshold"):
        should_defer(torch.rand(3), bad)


def test_bad_confidence_inputs():
    with pytest.raises(ValueError, match="rule"):
        confidence(torch.randn(2, 3), "variance")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        confidence(torch.randn(2, 3), lambda z: z.sum(-1) + 10)
    with pytest.raises(ValueError, match="shape"):
        confidence(torch.randn(2, 3), lambda z: z)
    with pytest.raises(ValueError, match="V >= 2"):
        confidence(torch.randn(2, 1))
    with pytest.raises(ValueError, match="finite"):
        confidence(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(TypeError, match="floating"):
        confidence(torch.ones(2, 3, dtype=torch.long))


# ---------------------------------------------------------------- the cascade
def test_cascade_picks_per_token_against_loop():
    torch.manual_seed(2)
    B, T, V = 3, 7, 5
    s, l = torch.randn(B, T, V), torch.randn(B, T, V) * 2
    y = torch.randint(0, V, (B, T))
    y[:, -1] = IGNORE_INDEX
    tau = 0.45
    r = cascade(s, l, y, tau)
    tot, n, nd, acc = 0.0, 0, 0, 0
    for b in range(B):
        for t in range(T):
            if y[b, t] == IGNORE_INDEX:
                assert not r.defer[b, t]
                continue
            ps = torch.softmax(s[b, t].double(), -1)
            d = ps.max().item() < tau
            src = l if d else s
            logp = torch.log_softmax(src[b, t].double(), -1)
            tot += -logp[y[b, t]].item()
            acc += int(src[b, t].argmax() == y[b, t])
            nd += int(d)
            n += 1
            assert bool(r.defer[b, t]) == d
    assert r.deferral_rate == pytest.approx(nd / n)
    assert r.mean_nll == pytest.approx(tot / n, rel=1e-5)
    assert r.accuracy == pytest.approx(acc / n)


def test_cascade_bad_inputs():
    s = torch.randn(2, 3, 4)
    y = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="one shape"):
        cascade(s, torch.randn(2, 3, 5), y, 0.5)
    with pytest.raises(ValueError, match="targets"):
        cascade(s, s, torch.zeros(2, 4, dtype=torch.long), 0.5)
    with pytest.raises(TypeError, match="targets"):
        cascade(s, s, y.float(), 0.5)
    with pytest.raises(ValueError, match="targets must lie"):
        token_scores(s, torch.full((2, 3), 4))


# ---------------------------------------------------------------- curves
def test_curve_hand_computed_four_tokens():
    # confidences, and per-token accuracy of each model (1 = right)
    conf = torch.tensor([0.3, 0.8, 0.1, 0.5])
    acc_s = torch.tensor([0.0, 1.0, 0.0, 1.0])
    acc_l = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # by hand: confidence order is tokens 3 (0.1), 1 (0.3), 4 (0.5), 2 (0.8)
    # deferring k of them: accuracy sums 2 -> 3 (token 3 fixed) -> 4 (token 1 fixed) -> 3 (token 4 broken) -> 3 (token 2 same)
    # rates 0, 1/4, 1/2, 3/4, 1 ; accuracy 2/4, 3/4, 4/4, 3/4, 3/4
    # area = 1/4 * (0.5/2 + 0.75 + 1.0 + 0.75 + 0.75/2) = 1/4 * 3.125 = 0.78125
    cv = sweep(conf, acc_s, acc_l)
    assert cv.deferral_rate.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert cv.quality.tolist() == pytest.approx([0.5, 0.75, 1.0, 0.75, 0.75])
    assert cv.area == pytest.approx(0.78125)
    assert cv.chord_area == pytest.approx((0.5 + 0.75) / 2)
    # thresholds of each point: the smallest reaching it (0 for none deferred, then the next confidence up, 1 for all)
    assert cv.thresholds.tolist() == pytest.approx([0.0, 0.3, 0.5, 0.8, 1.0])
    # explicit thresholds: 0.4 defers tokens with conf < 0.4 -> {0.1, 0.3} -> accuracy 1; ends 0 and 1 are always added
    cv2 = sweep(conf, acc_s, acc_l, thresholds=[0.4])
    assert cv2.thresholds.tolist() == pytest.approx([0.0, 0.4, 1.0])
    assert cv2.quality.tolist() == pytest.approx([0.5, 1.0, 0.75])
    assert cv2.area == pytest.approx(0.5 * (0.5 + 1.0) / 2 + 0.5 * (1.0 + 0.75) / 2)


def test_curve_ties_defer_together():
    conf = torch.tensor([0.5, 0.5, 0.2])
    qs, ql = torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3)
    cv = sweep(conf, qs, ql)
    # tied tokens go together: points k = 0, 1, 3 only
    assert cv.deferral_rate.tolist() == pytest.approx([0.0, 1 / 3, 1.0])
    assert cv.quality.tolist() == pytest.approx([2.0, 1.0, 0.0])


def test_sweep_matches_cascade_at_each_threshold():
    torch.manual_seed(3)
    B, T, V = 4, 10, 6
    s, l = torch.randn(B, T, V), torch.randn(B, T, V) * 3
    y = torch.randint(0, V, (B, T))
    y[0, :3] = IGNORE_INDEX
    nll_s, cor_s, valid = token_scores(s, y)
    nll_l, cor_l, _ = token_scores(l, y)
    c = confidence(s)
    taus = [0.0, 0.2, 0.33, 0.5, 0.9, 1.0]
    cv_n = sweep(c, nll_s, nll_l, thresholds=taus, valid=valid)
    cv_a = sweep(c, cor_s.double(), cor_l.double(), thresholds=taus, valid=valid)
    for i, tau in enumerate(cv_n.thresholds.tolist()):
        r = cascade(s, l, y, tau)
        assert cv_n.deferral_rate[i].item() == pytest.approx(r.deferral_rate)
        assert cv_n.quality[i].item() == pytest.approx(r.mean_nll, rel=1e-5)
        assert cv_a.quality[i].item() == pytest.approx(r.accuracy)


def test_curve_area_and_bad_inputs():
    assert curve_area(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 4.0])) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="from 0 to 1"):
        curve_area(torch.tensor([0.0, 0.5]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="from 0 to 1"):
        curve_area(torch.tensor([0.0, 0.7, 0.5, 1.0]), torch.ones(4))
    with pytest.raises(ValueError, match="equally long"):
        curve_area(torch.tensor([0.0, 1.0]), torch.ones(3))
    with pytest.raises(ValueError, match="one score per token"):
        sweep(torch.rand(4), torch.rand(4), torch.rand(3))
    with pytest.raises(ValueError, match=r"conf must lie in \[0, 1\]"):
        sweep(torch.tensor([0.5, 1.5]), torch.rand(2), torch.rand(2))
    with pytest.raises(ValueError, match="thresholds"):
        sweep(torch.rand(4), torch.rand(4), torch.rand(4), thresholds=[0.5, 2.0])
    with pytest.raises(ValueError, match="finite"):
        sweep(torch.rand(2), torch.tensor([1.0, float("nan")]), torch.rand(2))
    with pytest.raises(ValueError, match="at least one token"):
        sweep(torch.rand(2), torch.rand(2), torch.rand(2), valid=torch.zeros(2, dtype=torch.bool))


# ---------------------------------------------------------------- CAT loss
def _cat_reference(s, y, lc, w, normalize):
    "Independent float64 loop: weight each token by the 2x2 table, average over kept weight or over tokens."
    num, den, n = 0.0, 0.0, 0
    table = {(True, True): w.both, (True, False): w.small_only, (False, True): w.large_only, (False, False): w.neither}
    for idx in range(y.numel()):
        b, t = divmod(idx, y.shape[1])
        if y[b, t] == IGNORE_INDEX:
            continue
        n += 1
        logits = s[b, t].double()
        nll = torch.logsumexp(logits, 0).item() - logits[y[b, t]].item()
        sc = int(torch.argmax(logits)) == int(y[b, t])
        wt = table[(sc, bool(lc[b, t]))]
        num += wt * nll
        den += wt
    return num / (den if normalize == "kept" else n)


@pytest.mark.parametrize("normalize", ["kept", "all"])
@pytest.mark.parametrize("w", [CATWeights.paper(), CATWeights.plain(), CATWeights(0.5, 2.0, 0.1, 0.0)])
def test_cat_loss_against_loop(w, normalize):
    torch.manual_seed(4)
    B, T, V = 3, 8, 5
    s = torch.randn(B, T, V) * 2
    y = torch.randint(0, V, (B, T))
    y[:, -1] = IGNORE_INDEX
    y[1, 2] = s[1, 2].argmax()  # make sure some small-correct tokens exist
    lc = torch.rand(B, T) > 0.4
    got = cat_loss(s, y, lc, weights=w, normalize=normalize)
    assert got.item() == pytest.approx(_cat_reference(s, y, lc, w, normalize), rel=1e-5)


def test_cat_loss_plain_is_cross_entropy_and_large_logits_path():
    torch.manual_seed(5)
    s, l = torch.randn(2, 6, 7), torch.randn(2, 6, 7)
    y = torch.randint(0, 7, (2, 6))
    y[0, 0] = IGNORE_INDEX
    ce = F.cross_entropy(s.reshape(-1, 7), y.reshape(-1), ignore_index=IGNORE_INDEX)
    assert cat_loss(s, y, large_logits=l, weights=CATWeights.plain()).item() == pytest.approx(ce.item(), rel=1e-6)
    lc = l.argmax(-1) == y.clamp_min(0)
    assert cat_loss(s, y, large_logits=l).item() == pytest.approx(cat_loss(s, y, lc).item(), rel=1e-6)


def test_cat_loss_masking_and_gradient():
    # token 0: small right & large right -> kept; token 1: small wrong & large right -> dropped (no gradient);
    # token 2: small wrong & large wrong -> kept; token 3: no target
    s = torch.tensor([[[3.0, 0.0, 0.0], [2.0, 0.0, 1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    y = torch.tensor([[0, 2, 0, IGNORE_INDEX]])
    lc = torch.tensor([[True, True, False, True]])
    loss, diag = cat_loss(s, y, lc, return_diagnostics=True)
    lp = torch.log_softmax(s.detach().double(), -1)[0]
    expected = -(lp[0, 0] + lp[2, 0]).item() / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert diag["weights"].tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert diag["cells"] == pytest.approx({"both": 1 / 3, "small_only": 0.0, "large_only": 1 / 3, "neither": 1 / 3})
    assert diag["kept"] == pytest.approx(2 / 3)
    loss.backward()
    assert s.grad[0, 1].abs().sum().item() == 0.0 and s.grad[0, 3].abs().sum().item() == 0.0
    assert s.grad[0, 0].abs().sum().item() > 0 and s.grad[0, 2].abs().sum().item() > 0


def test_cat_weights_table_and_empty_mask():
    sc = torch.tensor([True, True, False, False])
    lc = torch.tensor([True, False, True, False])
    w = CATWeights(both=0.1, small_only=0.2, large_only=0.3, neither=0.4)
    assert cat_weights(sc, lc, w).tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    s = torch.randn(1, 3, 4, requires_grad=True)
    z = cat_loss(s, torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), weights=CATWeights(0, 0, 0, 0))
    assert z.item() == 0.0 and not torch.isnan(z)
    z.backward()
    assert torch.isfinite(s.grad).all()


def test_cat_bad_inputs():
    s, y = torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)
    lc = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="exactly one"):
        cat_loss(s, y)
    with pytest.raises(ValueError, match="exactly one"):
        cat_loss(s, y, lc, large_logits=s)
    with pytest.raises(ValueError, match="normalize"):
        cat_loss(s, y, lc, normalize="mean")
    with pytest.raises(TypeError, match="large_correct"):
        cat_loss(s, y, lc.float())
    with pytest.raises(ValueError, match="one shape"):
        cat_loss(s, y, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="large_logits"):
        cat_loss(s, y, large_logits=torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match="weights"):
        cat_loss(s, y, lc, weights=(1, 1, 0, 1))
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="CATWeights.neither"):
            CATWeights(neither=bad)


# ---------------------------------------------------------------- the training adapter (needs cyb_nb.models / losses / train)
def _tiny_pair():
    from cyb_nb.train import make_model
    small = make_model(50, "ce", n_pauses=0, size=dict(d_model=16, n_layers=1, n_heads=2), seed=0, max_positions=16)
    large = make_model(50, "ce", n_pauses=0, size=dict(d_model=32, n_layers=1, n_heads=2), seed=1, max_positions=16)
    return small, large


def test_cat_loss_object_matches_cat_loss_with_large_argmax():
    from cyb_nb.cascade import CascadeAwareModel, CATLoss
    from cyb_nb.models import forward_steps
    torch.manual_seed(6)
    small, large = _tiny_pair()
    wrapped = CascadeAwareModel(small, large).train()
    assert {id(p) for p in wrapped.parameters() if p.requires_grad} == {id(p) for p in small.parameters()}
    x = torch.randint(0, 50, (3, 12))
    step_logits, stream = forward_steps(wrapped, x, wrapped.pause_vocab)
    loss = CATLoss(wrapped)(step_logits, stream.targets)
    with torch.no_grad():
        lc = large(x)[..., :50].argmax(-1) == stream.targets
    ref = cat_loss(small(x)[..., :50], stream.targets, lc)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    # ce_warmup: the first call is plain CE over the real tokens
    ce = F.cross_entropy(small(x)[..., :50].reshape(-1, 50), stream.targets.reshape(-1), ignore_index=IGNORE_INDEX)
    assert CATLoss(wrapped, ce_warmup=1)(step_logits, stream.targets).item() == pytest.approx(ce.item(), rel=1e-5)


def test_cat_loss_object_bad_use():
    from cyb_nb.cascade import CascadeAwareModel, CATLoss
    small, large = _tiny_pair()
    wrapped = CascadeAwareModel(small, large)
    with pytest.raises(RuntimeError, match="CascadeAwareModel"):
        CATLoss(wrapped)(torch.randn(2, 5, 1, 51), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="source"):
        CATLoss(small)
    with pytest.raises(ValueError, match="ce_warmup"):
        CATLoss(wrapped, ce_warmup=-1)


def test_train_cat_runs_through_train_and_leaves_large_untouched():
    from cyb_nb.cascade import train_cat, model_scores, cascade_curves
    torch.manual_seed(7)
    small, large = _tiny_pair()
    before = {k: v.clone() for k, v in large.state_dict().items()}
    s0 = {k: v.clone() for k, v in small.state_dict().items()}
    ids = torch.randint(0, 50, (40, 16))
    hist = train_cat(small, large, (ids[:32], ids[32:], 50), steps=3, batch_size=4, eval_every=3, eval_batches=1,
                     progress=False, warmup=1)
    assert len(hist) == 3 and all(math.isfinite(r["loss"]) for r in hist)
    assert all(torch.equal(before[k], v) for k, v in large.state_dict().items())
    assert any(not torch.equal(s0[k], v) for k, v in small.state_dict().items())
    sc_s, sc_l = model_scores(small, ids[32:]), model_scores(large, ids[32:])
    assert sc_s["conf"].shape == (8, 15)
    cv = cascade_curves(sc_s, sc_l)
    assert cv["nll"].quality[0].item() == pytest.approx(sc_s["nll"].double().mean().item(), rel=1e-6)
    assert cv["acc"].quality[-1].item() == pytest.approx(sc_l["correct"].double().mean().item(), rel=1e-6)


def test_named_readings_each_drop_one_cell():
    sc = torch.tensor([True, True, False, False])
    lc = torch.tensor([True, False, True, False])
    assert cat_weights(sc, lc, CATWeights.reading("defer")).tolist() == [1.0, 1.0, 0.0, 1.0]
    assert cat_weights(sc, lc, CATWeights.reading("hopeless")).tolist() == [1.0, 1.0, 1.0, 0.0]
    assert cat_weights(sc, lc, CATWeights.reading("plain")).tolist() == [1.0] * 4
    assert CATWeights.paper() == CATWeights.reading("defer")
    with pytest.raises(ValueError, match="reading must be one of"):
        CATWeights.reading("both")


@pytest.mark.usefixtures("one_torch_thread")
def test_cascade_experiment_trains_one_cat_model_per_reading():
    from cyb_nb.cascade import cascade_experiment
    ids = torch.randint(0, 30, (48, 12), generator=torch.Generator().manual_seed(0))
    data = (ids[:40], ids[40:], 30)
    size = dict(d_model=16, n_layers=1, n_heads=2)
    kw = dict(steps_small=4, steps_large=4, batch_size=8, warmup=1, eval_every=4, eval_batches=1, progress=False)
    res = cascade_experiment(data, size, size, weights={"defer": CATWeights.reading("defer"),
                                                        "plain": CATWeights.reading("plain")}, **kw)
    assert set(res["curves"]) == {"standard", "cat:defer", "cat:plain"}
    # a CAT model with the plain table is the standard model: same init, same batches, same loss
    assert res["curves"]["cat:plain"]["nll"].area == pytest.approx(res["curves"]["standard"]["nll"].area, rel=1e-5)
    assert set(cascade_experiment(data, size, size, **kw)["curves"]) == {"standard", "cat"}
    with pytest.raises(TypeError, match="weights must be"):
        cascade_experiment(data, size, size, weights={"x": 1.0}, **kw)


# ---------------------------------------------------------------- CAT as fine-tuning of pretrained models
def test_cascade_finetune_starts_from_the_pretrained_small_model():
    from cyb_nb.cascade import CascadeFinetuneConfig, cascade_finetune
    from cyb_nb.data import load_data
    from cyb_nb.train import BaseConfig, FinetuneConfig, pretrain_base
    torch.set_num_threads(1)
    cfg = CascadeFinetuneConfig(small=BaseConfig(seq_len=16, steps=10, d_model=16, n_layers=1, n_heads=2),
                                large=BaseConfig(seq_len=16, steps=10, d_model=32, n_layers=1, n_heads=2),
                                finetune=FinetuneConfig(steps=4, warmup=1, lr=1e-3), seeds=(0,))
    small, large = pretrain_base(cfg.small, progress=False), pretrain_base(cfg.large, progress=False)
    before = [p.detach().clone() for p in small.parameters()]
    data = load_data("text", seq_len=16, train_split="finetune", n_train=32, n_val=8)
    out = {v: cascade_finetune(small, large, data, v, cfg) for v in ("pretrained", "standard", "cat:hopeless")}
    assert all(torch.equal(a, b) for a, b in zip(before, small.parameters()))  # the base is copied, never trained in place
    assert all(torch.equal(a, b) for a, b in zip(before, out["pretrained"]["model"].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before, out["standard"]["model"].parameters()))
    rows = {(v, r["metric"]): r for v, o in out.items() for r in o["rows"]}
    for m in ("nll", "acc"):  # one frozen large model: the large-only end is the same for every small model
        assert rows[("pretrained", m)]["large_only"] == rows[("standard", m)]["large_only"] == rows[("cat:hopeless", m)]["large_only"]
        assert out["standard"]["points"][m][0] == pytest.approx(rows[("standard", m)]["small_only"])
        assert out["standard"]["points"][m][-1] == pytest.approx(rows[("standard", m)]["large_only"])


def test_cascade_finetune_config_rejects_bad_values():
    from cyb_nb.cascade import CascadeFinetuneConfig
    from cyb_nb.train import BaseConfig
    with pytest.raises(ValueError, match="reading"):
        CascadeFinetuneConfig(readings=("defer", "sometimes"))
    with pytest.raises(ValueError, match="normalize"):
        CascadeFinetuneConfig(normalize="none")
    with pytest.raises(ValueError, match="rows of one length"):
        CascadeFinetuneConfig(large=BaseConfig(seq_len=32))
