"""Loss tests: vectorised losses vs brute-force float64 enumeration of the decision process, gradcheck, limits, errors.

The references below never call cyb_nb: they simulate Pr(S=i) from the model/world decisions with plain Python loops.
"""
import itertools
import math
import random

import pytest
import torch

from cyb_nb.losses import (LossConfig, ce_loss, cyb_dp_loss, cyb_loss, cyb_va_loss, head_log_probs, tbys_loss)
from cyb_nb.stopping import log_stop_probs

IGN = -100


# ---------- references (pure Python, float) ----------
def ref_head(z, x, dk_prior):
    V = len(z) - 1
    shift = 0.0 if dk_prior is None else math.log(dk_prior * V / (1 - dk_prior))
    e = [math.exp(v) for v in z[:-1]] + [math.exp(z[-1] + shift)]
    tot = sum(e)
    d = e[-1] / tot
    t = e[x] / sum(e[:-1])
    return d, t


def ref_stop_probs(d, omega, n):
    """Enumerate all paths of the decision process for a token with n existing steps (of W): model abstains w.p. d_i,
    the world's deadline D ~ omega forces an answer at D (deadlines past the last step act as a forced answer there)."""
    W = len(d)
    s = [0.0] * W
    for D in range(W):  # world deadline, 0-based
        if omega[D] == 0:
            continue
        for i in range(n):
            # stop at step i: abstain on 0..i-1 (none of them the deadline or the last step), then stop at i
            p = omega[D]
            ok = True
            for j in range(i):
                if j == D or j == n - 1:
                    ok = False
                    break
                p *= d[j]
            if not ok:
                continue
            if i == D or i == n - 1:
                pass  # forced: the answer happens at i whatever the model says
            else:
                p *= (1 - d[i])
            s[i] += p
    return s


def ref_losses(d, t, omega, gamma, rho, alpha, n):
    W = len(d)
    s = ref_stop_probs(d, omega, n)
    ap = -math.log(sum(s[i] * gamma[i] * t[i] for i in range(n)))
    # VA and DP live in the no-world-stop setting, with ρ's tail mass moved to the last existing step
    s0 = ref_stop_probs(d, [0.0] * (W - 1) + [1.0], n)
    rho_n = rho[: n - 1] + [sum(rho[n - 1:])]
    va = -sum(s0[i] * math.log(gamma[i] * t[i]) for i in range(n) if s0[i] > 0) \
        + sum(s0[i] * math.log(s0[i] / rho_n[i]) for i in range(n) if s0[i] > 0)
    kl = sum(rho_n[i] * math.log(rho_n[i] / s0[i]) for i in range(n) if rho_n[i] > 0)
    dp = -math.log(sum(s0[i] * t[i] for i in range(n))) + alpha * kl
    tbys = -math.log(t[n - 1])
    return dict(ap=ap, va=va, dp=dp, tbys=tbys, s=s)


def random_case(rng, W, B=2, T=3, V=5, variable=False):
    torch.manual_seed(rng.randrange(10**6))
    logits = torch.randn(B, T, W, V + 1, dtype=torch.float64) * 2
    targets = torch.randint(0, V, (B, T))
    targets[0, -1] = IGN
    omega = [rng.random() for _ in range(W)]
    omega = [w / sum(omega) for w in omega]
    gamma = sorted([rng.uniform(0.2, 1.0) for _ in range(W)], reverse=True)
    rho = [rng.uniform(0.1, 1.0) for _ in range(W)]
    rho = [r / sum(rho) for r in rho]
    counts = torch.randint(0, W, (B, T)) if variable else torch.full((B, T), W - 1)
    mask = torch.arange(W) <= counts[..., None]
    return logits, targets, omega, gamma, rho, rng.uniform(0, 0.5), mask if variable else None, counts


@pytest.mark.parametrize("W", range(1, 9))
@pytest.mark.parametrize("variable", [False, True])
def test_losses_match_brute_force(W, variable):
    rng = random.Random(W * 10 + variable)
    dk = 0.9
    logits, targets, omega, gamma, rho, alpha, mask, counts = random_case(rng, W, variable=variable)
    refs = {k: [] for k in ("ap", "va", "dp", "tbys")}
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if targets[b, t] == IGN:
                continue
            n = int(counts[b, t]) + 1
            dt = [ref_head(logits[b, t, i].tolist(), int(targets[b, t]), dk) for i in range(W)]
            r = ref_losses([x[0] for x in dt], [x[1] for x in dt], omega, gamma, rho, alpha, n)
            for k in refs:
                refs[k].append(r[k])
    mean = {k: sum(v) / len(v) for k, v in refs.items()}
    torch.testing.assert_close(cyb_loss(logits, targets, omega, gamma, dk, mask).item(), mean["ap"], rtol=0, atol=1e-10)
    torch.testing.assert_close(cyb_va_loss(logits, targets, rho, gamma, dk, mask).item(), mean["va"], rtol=0, atol=1e-10)
    torch.testing.assert_close(cyb_dp_loss(logits, targets, rho, alpha, None, None, dk, mask).item(), mean["dp"], rtol=0, atol=1e-10)
    torch.testing.assert_close(tbys_loss(logits, targets, mask).item(), mean["tbys"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("W", [1, 2, 3, 5, 8])
def test_stop_probs_brute_force_and_sum_to_one(W):
    rng = random.Random(W)
    for _ in range(5):
        d = torch.rand(W, dtype=torch.float64)
        omega = torch.rand(W, dtype=torch.float64)
        omega[rng.randrange(W)] = 0.0
        if omega.sum() == 0:
            omega[-1] = 1
        n = rng.randint(1, W)
        mask = torch.arange(W) < n
        s = log_stop_probs(d.log(), torch.log1p(-d), omega, mask).exp()
        ref = ref_stop_probs(d.tolist(), (omega / omega.sum()).tolist(), n)
        torch.testing.assert_close(s, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-12)
        assert abs(s.sum().item() - 1) < 1e-12


def test_gradcheck_every_loss():
    torch.manual_seed(0)
    W = 3
    logits = torch.randn(2, 2, W, 5, dtype=torch.float64, requires_grad=True)
    tg = torch.tensor([[1, 2], [3, IGN]])
    mask = torch.tensor([[[1, 1, 0], [1, 1, 1]], [[1, 0, 0], [1, 1, 1]]], dtype=torch.bool)
    fns = [lambda z: cyb_loss(z, tg, [1, 2, 1], [1, .9, .8]),
           lambda z: cyb_loss(z, tg, None, None, 0.9, mask),
           lambda z: cyb_va_loss(z, tg, [4, 1, 4]),
           lambda z: cyb_va_loss(z, tg, [4, 1, 4], None, 0.9, mask),
           lambda z: cyb_dp_loss(z, tg, [0, 1, 1], 0.1),
           lambda z: tbys_loss(z, tg, mask),
           lambda z: ce_loss(z[:, :, :1], tg),
           lambda z: LossConfig("ap").eval_nll(z, tg).sum()]
    for f in fns:
        assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-6)


def test_special_cases():
    torch.manual_seed(1)
    logits = torch.randn(3, 4, 4, 7, dtype=torch.float64)
    tg = torch.randint(0, 6, (3, 4))
    # W_max = 1: the generic loss is plain cross-entropy over the real vocabulary
    one = logits[:, :, :1]
    ce = torch.nn.functional.cross_entropy(one[:, :, 0, :-1].reshape(-1, 6), tg.reshape(-1))
    torch.testing.assert_close(cyb_loss(one, tg), ce)
    torch.testing.assert_close(ce_loss(one, tg), ce)
    # TBYS = generic loss with d_i = 1 before the last step and ω one-hot at W
    forced = logits.clone(); forced[:, :, :-1, -1] = 1e4
    torch.testing.assert_close(tbys_loss(logits, tg), cyb_loss(forced, tg, [0, 0, 0, 1]), rtol=0, atol=1e-10)
    # DP with α = 0 is the generic loss; the diagnostics' s sums to 1
    torch.testing.assert_close(cyb_dp_loss(logits, tg, [1, 1, 1, 1], 0.0), cyb_loss(logits, tg))
    _, diag = cyb_loss(logits, tg, return_diagnostics=True)
    torch.testing.assert_close(diag["s"].sum(-1), torch.ones(3, 4, dtype=torch.float64))
    steps = torch.arange(4, dtype=torch.float64)
    torch.testing.assert_close(diag["expected_pauses"], (diag["s"] * steps).sum(-1))
    assert (diag["d"][..., -1] == 0).all()


def test_eval_nll_readouts():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    tg = torch.randint(0, 5, (2, 3)); tg[1, 2] = IGN
    _, _, lt = head_log_probs(logits, tg[..., None])
    keep = tg != IGN
    torch.testing.assert_close(LossConfig("tbys").eval_nll(logits, tg), torch.where(keep, -lt[..., -1], torch.zeros(())))
    torch.testing.assert_close(LossConfig("ce").eval_nll(logits[:, :, :1], tg), torch.where(keep, -lt[..., 0], torch.zeros(())))
    ap = LossConfig("ap").eval_nll(logits, tg)
    torch.testing.assert_close(ap[keep].mean(), cyb_loss(logits, tg))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_nan_at_extreme_logits(dtype):
    torch.manual_seed(3)
    logits = (torch.randint(0, 2, (2, 3, 4, 9)).to(dtype) * 2 - 1) * 1e4
    logits[..., -1] = torch.tensor([1e4, -1e4]).repeat(12)[: 24].reshape(2, 3, 4)[..., :].to(dtype)
    tg = torch.randint(0, 8, (2, 3))
    for cfg in [LossConfig("ap"), LossConfig("ap", omega=[1, 1, 1, 1], gamma=[1, .9, .8, .7]), LossConfig("va", rho=[4, 1, 1, 4]),
                LossConfig("dp", rho=[0, 1, 1, 0], alpha=0.1), LossConfig("tbys")]:
        z = logits.clone().requires_grad_(True)
        loss = cfg(z, tg)
        loss.backward()
        assert torch.isfinite(loss), (cfg.name, loss)
        assert torch.isfinite(z.grad).all(), cfg.name


@pytest.mark.parametrize("call, exc, msg", [
    (lambda z, t: cyb_loss(z, t, omega=[1, -1, 1, 1]), ValueError, "omega"),
    (lambda z, t: cyb_loss(z, t, omega=[1, 1, 1]), ValueError, "omega"),
    (lambda z, t: cyb_loss(z, t, omega=[0, 0, 0, 0]), ValueError, "omega"),
    (lambda z, t: cyb_loss(z, t, omega=[1, float("nan"), 1, 1]), ValueError, "omega"),
    (lambda z, t: cyb_loss(z, t, gamma=[1, 1.2, 1, 1]), ValueError, "gamma"),
    (lambda z, t: cyb_loss(z, t, gamma=[1, -0.1, 1, 1]), ValueError, "gamma"),
    (lambda z, t: cyb_loss(z, t, gamma=[1, 1]), ValueError, "gamma"),
    (lambda z, t: cyb_va_loss(z, t, rho=[0, 1, 1, 1]), ValueError, "rho"),
    (lambda z, t: cyb_va_loss(z, t, rho=[1, 1]), ValueError, "rho"),
    (lambda z, t: cyb_dp_loss(z, t, rho=[1, 1, 1, 1], alpha=-0.5), ValueError, "alpha"),
    (lambda z, t: cyb_loss(z, t, dk_prior=1.5), ValueError, "dk_prior"),
    (lambda z, t: cyb_loss(z, torch.full_like(t, IGN)), ValueError, "empty batch"),
    (lambda z, t: cyb_loss(z[:0], t[:0]), ValueError, "non-empty"),
    (lambda z, t: cyb_loss(z, t[:, :1]), ValueError, "targets"),
    (lambda z, t: cyb_loss(z, t.float()), TypeError, "targets"),
    (lambda z, t: cyb_loss(z, t.clamp(max=0) + 7), ValueError, "targets"),
    (lambda z, t: cyb_loss(z[..., 0], t), ValueError, "logits"),
    (lambda z, t: ce_loss(z, t), ValueError, "W = 1"),
    (lambda z, t: LossConfig("xx"), ValueError, "loss name"),
])
def test_errors(call, exc, msg):
    z = torch.randn(2, 3, 4, 8); t = torch.randint(0, 7, (2, 3))
    with pytest.raises(exc, match=msg):
        call(z, t)
