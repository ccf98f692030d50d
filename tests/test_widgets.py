"""Widgets built headlessly: values set programmatically, computed state checked against independent references."""
import math

import pytest
import torch

torch.set_num_threads(1)  # the shared test machine: more threads are much slower under load

from cyb_nb.stream import PauseVocab
from cyb_nb.widgets import (LossExplorer, PauseExplorer, TrainingDashboard, explore_loss, has_frontend, parse_ratios,
                            parts_to_step_logits, pauses_html)


# ---------------------------------------------------------------- independent references (float64 loops, paper formulas)
def ref_s(d, omega, W):
    "Pr(S=i): s_i = prod_{j<i} d_j * [w_i + (1-d_i) * Omega_{i+1}], last step forced; omega None = one-hot at W."
    w = [0.0] * (W - 1) + [1.0] if omega is None else [x / sum(omega) for x in omega]
    dd = list(d) + [0.0]  # the last step always responds
    s = []
    for i in range(W):
        surv = math.prod(dd[:i])
        tail = sum(w[i + 1:])
        s.append(surv * (w[i] + (1 - dd[i]) * tail))
    return s


def ref_loss(variant, d, t, omega=None, gamma0=1.0, rho=None, alpha=0.0):
    W = len(t)
    g = [gamma0 ** i for i in range(W)]
    if variant == "ce":
        return -math.log(t[0])
    if variant == "tbys":
        return -math.log(t[-1])
    r = [1.0] * W if rho is None else list(rho)
    r = [x / sum(r) for x in r]
    if variant == "va":
        s = ref_s(d, None, W)
        return sum(-si * math.log(gi * ti) + (si * math.log(si / ri) if si > 0 else 0.0) for si, gi, ti, ri in zip(s, g, t, r))
    s = ref_s(d, omega, W)
    nll = -math.log(sum(si * gi * ti for si, gi, ti in zip(s, g, t)))
    if variant == "dp":
        nll += alpha * sum(ri * math.log(ri / si) for ri, si in zip(r, s) if ri > 0)
    return nll


def test_headless():
    assert not has_frontend()


def test_step_logits_reproduce_parts():
    d, t = torch.tensor([0.1, 0.5, 0.97]), torch.tensor([0.3, 0.02, 0.8])
    p = parts_to_step_logits(d, t).softmax(-1)
    torch.testing.assert_close(p[:, 2], d.double())
    torch.testing.assert_close(p[:, 0] / (1 - p[:, 2]), t.double())
    with pytest.raises(ValueError, match="inside"):
        parts_to_step_logits(torch.tensor([1.0]), torch.tensor([0.5]))


@pytest.mark.parametrize("variant", ["ap", "va", "dp", "tbys", "ce"])
def test_explorer_loss_matches_reference(variant):
    ex = LossExplorer(W=4, variant="ap")
    d, t = [0.3, 0.8, 0.45], [0.15, 0.4, 0.35, 0.9]
    ex.set(d=d, t=t, variant=variant, omega="1:0:2:1", rho="1:2:3:4", gamma0=0.9, alpha=0.5)
    om = [1, 0, 2, 1]
    want = ref_loss(variant, d, t, omega=om if variant in ("ap", "dp") else None, gamma0=0.9 if variant in ("ap", "va", "dp") else 1.0,
                    rho=[1, 2, 3, 4], alpha=0.5)
    assert ex.loss == pytest.approx(want, rel=1e-10)
    # the displayed s is the reference stopping distribution for the CYB variants
    if variant in ("ap", "dp"):
        assert ex.state["s"].tolist() == pytest.approx(ref_s(d, om, 4), abs=1e-12)
    if variant == "va":
        assert ex.state["s"].tolist() == pytest.approx(ref_s(d, None, 4), abs=1e-12)


def test_explorer_gradients_match_finite_differences():
    d, t = [0.3, 0.6, 0.5], [0.2, 0.3, 0.7, 0.8]
    h = 1e-6

    def central_diff(variant, kw, which, i):
        "Finite-difference derivative of the reference loss w.r.t. d_i (which='d') or t_i (which='t')."
        plus, minus = {"d": list(d), "t": list(t)}, {"d": list(d), "t": list(t)}
        plus[which][i] += h; minus[which][i] -= h
        return (ref_loss(variant, plus["d"], plus["t"], **kw) - ref_loss(variant, minus["d"], minus["t"], **kw)) / (2 * h)

    for variant in ("ap", "va", "dp"):
        kw = dict(omega=[1, 1, 1, 1] if variant != "va" else None, gamma0=0.95, rho=[1, 2, 2, 1], alpha=0.3)
        r = explore_loss(d, t, variant, **kw)
        for which, n in (("d", 3), ("t", 4)):
            for i in range(n):
                assert r[f"grad_{which}"][i].item() == pytest.approx(central_diff(variant, kw, which, i), rel=1e-5, abs=1e-8)


def test_explorer_slider_change_updates_state_and_teaching_points():
    ex = LossExplorer(W=3, variant="ap", d=[0.5, 0.5], t=[0.2, 0.5, 0.9])
    before = ex.loss
    assert ex.state["grad_d"][0] < 0  # AP: later steps are better -> waiting lowers the loss
    ex.d_sliders[0].value = 0.9  # as a user would
    assert ex.loss < before
    assert ex.loss == pytest.approx(ref_loss("ap", [0.9, 0.5], [0.2, 0.5, 0.9]), rel=1e-10)
    ex.set(t=[0.9, 0.5, 0.2])  # earlier steps better -> answer now
    assert ex.state["grad_d"][0] > 0
    # VA sticks to rho: with flat t, gradient descent on d drives s to rho
    va = LossExplorer(W=3, variant="va", t=[0.6] * 3, rho="3:1:1")
    va.descend(steps=300, lr=2.0)
    assert va.state["s"].tolist() == pytest.approx([0.6, 0.2, 0.2], abs=0.03)
    # bad input is reported, not raised from the observer, and not silently NaN-ed into a number
    va.omega.value = "1:2"
    va.set(variant="ap")
    assert "error" in va.state and math.isnan(va.loss)
    with pytest.raises(ValueError, match="W=3"):
        parse_ratios("1:2", 3, "omega")


def test_explorer_draws_headlessly():
    ex = LossExplorer(W=4)
    png = ex.png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert len(ex.axes[0].patches) == 4  # one bar of s per step


@pytest.fixture(scope="module")
def tiny_text():
    from cyb_nb.data import load_tokenizer
    tok = load_tokenizer()
    from cyb_nb.train import make_model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tok.vocab_size, (24, 12), generator=g)
    model = make_model(tok.vocab_size, "ap", n_pauses=2, size=dict(d_model=16, n_layers=1, n_heads=2), seed=0, max_positions=64)
    return tok, model, (ids[:20], ids[20:], tok.vocab_size)


def test_dashboard_history_grows_with_callbacks():
    dash = TrainingDashboard()
    assert dash.history == []
    for k in range(1, 4):
        assert dash({"step": k, "loss": 5.0 - k, "lr": 1e-3, "time": 0.1 * k}) is None
        assert len(dash.history) == k
    dash({"step": 4, "loss": 1.0, "val_nll": 2.0, "val_bits": 2.0 / math.log(2), "val_pauses": 1.5})
    assert len(dash.history.evals) == 1
    dash.stop()
    assert dash({"step": 5, "loss": 1.0}) == "stop"
    dash.draw()
    assert len(dash.axes[0].lines) == 2  # train and val curves
    with pytest.raises(TypeError, match="step"):
        dash([1, 2])


def test_dashboard_run_stop_resume(tiny_text, tmp_path):
    tok, model, data = tiny_text
    import copy
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    kw = dict(eval_every=2, eval_batches=1, batch_size=4, warmup=1)
    full = TrainingDashboard(m1, data, "ap", steps=6, checkpoint_dir=tmp_path / "a", **kw).run()
    assert full.history.column("step") == list(range(1, 7))
    assert full.token_pauses is not None and full.token_pauses.numel() == 4 * 11  # one val batch, targets per row
    dash = TrainingDashboard(m2, data, "ap", steps=6, checkpoint_dir=tmp_path / "b",
                             callbacks=[lambda row: dash.stop() if row["step"] == 3 else None], **kw)
    dash.run()
    assert dash.history[-1]["step"] == 3 and dash.checkpoint.is_file()
    dash.callbacks = []
    dash.resume()
    assert dash.history.column("step") == list(range(1, 7))
    assert dash.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-5)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dashboard_background_thread(tiny_text, tmp_path):
    tok, model, data = tiny_text
    dash = TrainingDashboard(model, data, "ap", steps=3, checkpoint_dir=tmp_path, eval_every=3, eval_batches=1, batch_size=4, warmup=1)
    dash.run(background=True)
    dash.thread.join(timeout=60)
    assert not dash.running and dash.error is None and len(dash.history) == 3


def ref_expected_pauses(model, ids, dk_prior=0.9):
    "Independent: run the stream, read d from softmax with the δ shift, s by the product formula, E[pauses]."
    from cyb_nb.models import forward_steps
    pv = model.pause_vocab
    with torch.no_grad():
        sl, _ = forward_steps(model, ids, pv)
    z = sl.double()[0]  # [T, W, V+1]
    V = z.shape[-1] - 1
    z[..., V] += math.log(dk_prior * V / (1 - dk_prior))
    d = z.softmax(-1)[..., V]
    out = []
    for tt in range(z.shape[0]):
        s = ref_s(d[tt, :-1].tolist(), None, pv.W_max)
        out.append(sum(k * sk for k, sk in enumerate(s)))
    return out


def test_pause_explorer_colours_follow_model_and_input(tiny_text):
    tok, model, _ = tiny_text
    # make d depend on the input: scale up weights so the untrained model is not uniform
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    pe = PauseExplorer(model, tok, samples=["def f(x): return x + 1", "hello world, hello again"])
    ids = torch.tensor([pe.ids])
    want = ref_expected_pauses(model, ids)
    assert math.isnan(pe.pauses[0])
    assert pe.pauses[1:] == pytest.approx(want[:-1], abs=1e-4)
    assert len(pe.colours) == len(pe.ids)
    html1, col1 = pe.html.value, list(pe.colours)
    # colour of token j follows the pauses at token j-1 (white 0 -> red W-1)
    a = [float(c.split(",")[-1].rstrip(")")) for c in col1[1:]]
    order_a = sorted(range(len(a)), key=lambda i: a[i])
    order_p = sorted(range(len(a)), key=lambda i: pe.pauses[1:][i])
    assert [round(a[i], 3) for i in order_a] == [round(a[i], 3) for i in order_p]
    pe.sample.index = 2  # pick the other sample
    assert pe.text.value == "hello world, hello again"
    assert pe.html.value != html1 and pe.ids == tok.encode("hello world, hello again")
    assert pe.pauses[1:] == pytest.approx(ref_expected_pauses(model, torch.tensor([pe.ids]))[:-1], abs=1e-4)
    pe.index.value = 3
    assert pe.selected == 3 and "outline" in pe.html.value
    assert pe.s[2].sum().item() == pytest.approx(1.0, abs=1e-5)
    # table: most paused first, means match the per-occurrence pauses
    assert pe.stats[0]["mean"] >= pe.stats[-1]["mean"]
    assert pe.stats[0]["mean"] == pytest.approx(max(p for p in pe.pauses[1:]), abs=1e-6) or pe.stats[0]["count"] > 1
    with pytest.raises(ValueError, match="token index"):
        pe.select(0)
    assert pe.png()[:4] == b"\x89PNG"


def test_pauses_html_escapes_and_checks():
    h, c = pauses_html(["<b>", "x"], [float("nan"), 3.0], W=4)
    assert "&lt;b&gt;" in h and c[1] == "rgba(220,60,40,0.900)"
    with pytest.raises(ValueError, match="equal length"):
        pauses_html(["a"], [1.0, 2.0], W=4)


def test_widget_output_carries_a_static_png_beside_the_live_view(monkeypatch):
    "In a kernel a widget is displayed as one bundle: the live widget view and a PNG of the same view, for readers without widgets."
    import base64
    import IPython.display
    import cyb_nb.widgets as W
    shown = []
    monkeypatch.setattr(W, "has_frontend", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append((obj, raw)))
    ex = LossExplorer()
    ex._ipython_display_()
    (bundle, raw), = shown
    assert raw and set(bundle) >= {"application/vnd.jupyter.widget-view+json", "image/png", "text/plain"}
    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert base64.b64decode(bundle["image/png"]) == ex.png()  # the same view, drawn by the widget's own code


def test_pause_explorer_reads_d_as_the_model_was_trained(tiny_text):
    "A model whose loss_config says ψ′ = 0.5 is explored with 0.5 unless another value is passed, and the widget says which."
    from cyb_nb.losses import LossConfig
    tok, model, _ = tiny_text
    text = "hello world, hello again"
    try:
        model.loss_config = LossConfig("ap", dk_prior=0.5)
        pe = PauseExplorer(model, tok, text=text)
        ids = torch.tensor([pe.ids])
        assert pe.pauses[1:] == pytest.approx(ref_expected_pauses(model, ids, 0.5)[:-1], abs=1e-4)
        assert pe.config.dk_prior == 0.5 and pe.config.dk_prior_from == "model" and "loss_config" in pe.info.value
        pe9 = PauseExplorer(model, tok, text=text, dk_prior=0.9)
        assert pe9.pauses[1:] == pytest.approx(ref_expected_pauses(model, ids, 0.9)[:-1], abs=1e-4)
        assert pe9.config.dk_prior_from == "explicit" and "passed" in pe9.info.value
        model.loss_config = None
        pe0 = PauseExplorer(model, tok, text=text)
        assert pe0.pauses[1:] == pytest.approx(pe9.pauses[1:], abs=1e-6) and pe0.config.dk_prior_from == "default"
    finally:
        model.loss_config = None
