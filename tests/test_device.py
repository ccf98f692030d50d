"""The library on an accelerator: the same computation on the device (float32) as on the CPU (float64).

These tests run on the device named by `CYB_NB_TEST_DEVICE` (default `cuda`) and are skipped when it is not there, so a plain
`pytest` on a CPU-only machine skips them. `python benchmarks/gpu_check.py` runs them on the GPU; its `--dry-run` (itself run by
`tests/test_gpu_check.py` in every CI run) runs them with `CYB_NB_TEST_DEVICE=cpu`, so the code of every check is exercised
everywhere and cannot rot.

Tolerances: the device computes in float32 (TF32 off) and the reference in float64 on the CPU, so the gap is float32 rounding
accumulated over a few layers: logits within 1e-4 (absolute), gradients within 1e-3 of the reference's norm.
"""
import os

import pytest
import torch

DEVICE = os.environ.get("CYB_NB_TEST_DEVICE", "cuda")
_available = DEVICE == "cpu" or (DEVICE.startswith("cuda") and torch.cuda.is_available())
pytestmark = pytest.mark.skipif(not _available, reason=f"device {DEVICE!r} is not available "
                                "(set CYB_NB_TEST_DEVICE=cpu to run these checks on the CPU; benchmarks/gpu_check.py runs them on a GPU)")
LOGIT_ATOL, GRAD_RTOL = 1e-4, 1e-3


@pytest.fixture(autouse=True)
def exact_float32():
    "No TF32 on the device while comparing with float64."
    if DEVICE.startswith("cuda"):
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        yield
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    else:
        yield


def _grads(model):
    return torch.cat([p.grad.detach().reshape(-1).double().cpu() for p in model.parameters() if p.grad is not None])


def _compare_forward_backward(make, run):
    "Build the model twice (same seed): float64 on the CPU and float32 on the device; compare outputs and parameter gradients."
    ref = make().double()
    out_ref = run(ref, "cpu")
    out_ref.pow(2).mean().backward()
    dev = make().to(DEVICE)
    out = run(dev, DEVICE)
    out.pow(2).mean().backward()
    assert torch.isfinite(out).all()
    assert (out.double().cpu() - out_ref).abs().max() < LOGIT_ATOL
    g_ref, g = _grads(ref), _grads(dev)
    assert g.shape == g_ref.shape and torch.isfinite(g).all()
    assert (g - g_ref).norm() <= GRAD_RTOL * g_ref.norm()


def _tiny_gpt():
    from cyb_nb.models import TinyGPT
    from cyb_nb.stream import PauseVocab
    torch.manual_seed(0)
    return TinyGPT.from_vocab(PauseVocab(40, 3), d_model=32, n_layers=2, n_heads=4)


def test_tinygpt_forward_backward_matches_cpu_float64():
    from cyb_nb.models import forward_steps
    ids = torch.randint(0, 40, (3, 7), generator=torch.Generator().manual_seed(1))
    _compare_forward_backward(_tiny_gpt, lambda m, dev: forward_steps(m, ids.to(dev), m.pause_vocab)[0])


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_pauselm_forward_backward_matches_cpu_float64(kind):
    from cyb_nb.models import PauseLM, tiny_hf_lm

    def make():
        torch.manual_seed(0)
        lm, tok = tiny_hf_lm(kind)
        return PauseLM(lm, tok, n_pauses=2, seed=0)

    ids = torch.randint(2, 16, (2, 6), generator=torch.Generator().manual_seed(2))
    _compare_forward_backward(make, lambda m, dev: m(ids.to(dev)))


def test_fused_head_backward_matches_autograd():
    from cyb_nb.losses import dk_shift, head_log_probs
    g = torch.Generator().manual_seed(3)
    z = (3 * torch.randn(64, 51, generator=g, dtype=torch.float64))
    z[:8, -1] = 30.0  # δ almost certain: the small-(1-d) branch of the fused backward
    z[8:16, -1] = -30.0  # δ almost impossible: the small-d branch
    x = torch.randint(0, 50, (64,), generator=g)
    w = torch.randn(3, 64, generator=g, dtype=torch.float64)  # weights of the three outputs in the scalar we differentiate

    def reference(z):  # plain autograd, float64, on the CPU
        b = dk_shift(50, 0.9)
        zz = torch.cat([z[:, :-1], z[:, -1:] + b], -1)
        ls = torch.log_softmax(zz, -1)
        log_d = ls[:, -1]
        log_1md = torch.logsumexp(ls[:, :-1], -1)
        log_t = ls.gather(-1, x[:, None])[:, 0] - log_1md
        return log_d, log_1md, log_t

    zr = z.clone().requires_grad_()
    out_r = reference(zr)
    sum(wi * o for wi, o in zip(w, out_r)).sum().backward()
    zd = z.float().to(DEVICE).requires_grad_()
    out_d = head_log_probs(zd, x.to(DEVICE))
    sum(wi.float().to(DEVICE) * o for wi, o in zip(w, out_d)).sum().backward()
    for a, b in zip(out_d, out_r):
        assert torch.allclose(a.double().cpu(), b.detach(), atol=1e-4, rtol=1e-4)
    assert torch.allclose(zd.grad.double().cpu(), zr.grad, atol=1e-4, rtol=1e-3)


def test_kv_cache_decoding_matches_recomputation():
    from cyb_nb.decode import cached_step_logits
    from cyb_nb.models import forward_steps
    m = _tiny_gpt().to(DEVICE).eval()
    ids = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(4)).to(DEVICE)
    with torch.no_grad():
        full = forward_steps(m, ids, m.pause_vocab)[0]
        cached = cached_step_logits(m, ids)
    assert cached.device.type == torch.device(DEVICE).type
    assert (cached - full).abs().max() < 1e-4


def test_checkpoint_written_on_device_loads_on_cpu_and_back(tmp_path):
    from cyb_nb.train import load_checkpoint, model_from_checkpoint, save_checkpoint
    m = _tiny_gpt().to(DEVICE)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    ids = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(5)).to(DEVICE)
    m(ids).float().pow(2).mean().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "ck.pt", m, optimizer=opt, step=1, loss_config="ap")
    ck = load_checkpoint(path, map_location="cpu")
    cpu_model, cfg = model_from_checkpoint(ck)
    assert cfg.name == "ap" and all(v.device.type == "cpu" for v in ck["model"].values())
    for k, v in m.state_dict().items():
        assert torch.equal(cpu_model.state_dict()[k], v.cpu()), k
    back = cpu_model.to(DEVICE)
    with torch.no_grad():
        assert torch.equal(back(ids), m(ids))
    opt2 = torch.optim.AdamW(back.parameters(), lr=1e-3)
    opt2.load_state_dict(ck["optimizer"])  # moments restored onto the device's parameters
    assert all(opt2.state[p]["exp_avg"].device == p.device for p in back.parameters())
