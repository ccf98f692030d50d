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


def test_gradcheck_full_generic_loss():
    torch.manual_seed(8)
    z = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True); tg = torch.tensor([[2, 0]])
    assert torch.autograd.gradcheck(lambda x: cyb_loss(x, tg, [1, 2, 1], [1, .9, .8]), (z,))  # full Jacobian, not fast_mode


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
        assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-6, fast_mode=True)


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


def test_more_errors():
    z = torch.randn(2, 3, 4, 8); t = torch.randint(0, 7, (2, 3))
    cases = [
        (lambda: cyb_va_loss(z, t, gamma=[1, 0, 1, 1]), ValueError, "gamma"),  # VA: −s log γ is infinite at γ = 0
        (lambda: cyb_dp_loss(z, t, rho=[1, -1, 1, 1], alpha=0.1), ValueError, "rho"),
        (lambda: cyb_dp_loss(z, t, rho=[0, 0, 0, 0], alpha=0.1), ValueError, "rho"),
        (lambda: cyb_loss(z, t, dk_prior=0.0), ValueError, "dk_prior"),
        (lambda: cyb_loss(z, torch.full_like(t, -3)), ValueError, "targets"),
        (lambda: cyb_loss(z, t, step_mask=torch.ones(2, 3, 3, dtype=torch.bool)), ValueError, "step_mask"),
        (lambda: cyb_loss(z, t, step_mask=torch.tensor([True, False, True, True]).expand(2, 3, 4)), ValueError, "prefix"),
        (lambda: LossConfig("ap", W_max=0), ValueError, "W_max"),
        (lambda: LossConfig("ap", omega=[1, 1, 1], W_max=4), ValueError, "omega"),
        (lambda: LossConfig("va", rho=[1, 1], W_max=4), ValueError, "rho"),
        (lambda: LossConfig("ap", gamma=[1, 2], W_max=2), ValueError, "gamma"),
        (lambda: LossConfig("dp", alpha=-1), ValueError, "alpha"),
        (lambda: LossConfig("ap", W_max=3)(z, t), ValueError, "W_max"),
        (lambda: LossConfig("ce", W_max=4), ValueError, "W_max"),
        (lambda: head_log_probs(z, t), ValueError, "broadcast"),
        (lambda: log_stop_probs(z[..., 0], z[..., 1, :3]), ValueError, "same shape"),
    ]
    for call, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call()


def test_defaults_are_the_winning_config():
    torch.manual_seed(4)
    z = torch.randn(2, 3, 4, 8, dtype=torch.float64); t = torch.randint(0, 7, (2, 3))
    torch.testing.assert_close(LossConfig()(z, t), cyb_loss(z, t, [0, 0, 0, 1], [1, 1, 1, 1], 0.9))
    assert LossConfig().alpha == 0 and LossConfig.from_name("dp").alpha == 0.01 and LossConfig("dp").alpha == 0.01
    assert LossConfig("ce").uses_pauses is False and LossConfig("tbys").uses_pauses is True
    # ratios are normalised: 4:1:1:4 is the same as 0.4:0.1:0.1:0.4
    torch.testing.assert_close(cyb_loss(z, t, [4, 1, 1, 4]), cyb_loss(z, t, [.4, .1, .1, .4]))
    # dk_prior=None = no shift: d is the plain softmax mass of δ
    ld, _, _ = head_log_probs(z, t[..., None], None)
    torch.testing.assert_close(ld.exp(), z.softmax(-1)[..., -1])


def test_tbys_is_generic_loss_with_variable_pauses():
    torch.manual_seed(5)
    W = 4
    z = torch.randn(3, 5, W, 7, dtype=torch.float64); t = torch.randint(0, 6, (3, 5)); t[0, 0] = IGN
    mask = torch.arange(W) <= torch.randint(0, W, (3, 5))[..., None]
    forced = z.clone(); forced[..., -1] = torch.where(mask, 1e4, forced[..., -1])  # abstain at every existing step
    torch.testing.assert_close(tbys_loss(z, t, mask), cyb_loss(forced, t, None, None, 0.9, mask), rtol=0, atol=1e-10)


def test_zero_omega_tail_and_masked_steps_have_finite_gradients():
    torch.manual_seed(6)
    z = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True); t = torch.randint(0, 5, (2, 3))
    mask = torch.arange(4) <= torch.tensor([[0, 1, 3], [2, 3, 1]])[..., None]
    for f in [lambda: cyb_loss(z, t, [1, 1, 0, 0]), lambda: cyb_loss(z, t, [1, 0, 0, 0], None, 0.9, mask),
              lambda: cyb_dp_loss(z, t, [0, 0, 1, 0], 0.5, [0, 1, 0, 1], None, 0.9, mask),
              lambda: cyb_va_loss(z, t, [1, 2, 3, 4], [1, .5, .5, .5], 0.9, mask)]:
        g, = torch.autograd.grad(f(), z)
        assert torch.isfinite(g).all()
    assert torch.autograd.gradcheck(lambda x: cyb_loss(x, t, [1, 1, 0, 0], None, 0.9, mask), (z,), fast_mode=True)


def test_head_gradcheck_and_bf16():
    torch.manual_seed(7)
    z = torch.randn(3, 4, 9, dtype=torch.float64, requires_grad=True); x = torch.randint(0, 8, (3, 4)); x[0, 0] = IGN
    w = torch.randn(3, 3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: sum((o * w[k]).sum() for k, o in enumerate(head_log_probs(z, x))), (z,))
    zb = z.detach().bfloat16().requires_grad_()
    out = head_log_probs(zb, x)
    sum(o.sum() for o in out).backward()
    assert zb.grad.dtype == torch.bfloat16 and torch.isfinite(zb.grad.float()).all()
    # log d and log(1 − d) are the logs of complementary probabilities
    torch.testing.assert_close(torch.logaddexp(out[0], out[1]), torch.zeros(3, 4))


try:
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=20, deadline=None)
    @given(W=st.integers(1, 6), B=st.integers(1, 3), T=st.integers(1, 4), V=st.integers(1, 6), seed=st.integers(0, 10**6),
           variable=st.booleans(), zeros=st.booleans())
    def test_random_shapes_brute_force(W, B, T, V, seed, variable, zeros):
        rng = random.Random(seed)
        torch.manual_seed(seed)
        logits = torch.randn(B, T, W, V + 1, dtype=torch.float64) * 3
        targets = torch.randint(0, V, (B, T))
        omega = [0.0 if zeros and rng.random() < 0.5 else rng.random() for _ in range(W)]
        if sum(omega) == 0:
            omega[-1] = 1.0
        omega = [w / sum(omega) for w in omega]
        counts = torch.randint(0, W, (B, T)) if variable else torch.full((B, T), W - 1)
        mask = (torch.arange(W) <= counts[..., None]) if variable else None
        loss, diag = cyb_loss(logits, targets, omega, None, 0.9, mask, return_diagnostics=True)
        ref, ref_s = [], []
        for b in range(B):
            for t in range(T):
                n = int(counts[b, t]) + 1
                dt = [ref_head(logits[b, t, i].tolist(), int(targets[b, t]), 0.9) for i in range(W)]
                s = ref_stop_probs([x[0] for x in dt], omega, n)
                ref.append(-math.log(sum(s[i] * dt[i][1] for i in range(n))))
                ref_s.append(s)
        assert abs(loss.item() - sum(ref) / len(ref)) < 1e-10
        torch.testing.assert_close(diag["s"], torch.tensor(ref_s, dtype=torch.float64).reshape(B, T, W), rtol=0, atol=1e-12)
        torch.testing.assert_close(diag["s"].sum(-1), torch.ones(B, T, dtype=torch.float64))
except ImportError:  # hypothesis is optional
    pass


def test_head_exact_in_every_regime():
    "δ dominant, target very unlikely, masked (−inf) logits: the head agrees with a float64 reference, in float32 too."
    torch.manual_seed(9)
    z = torch.randn(6, 4, 8, dtype=torch.float64) * 3
    z[0, :, -1] = 30.0  # raw p_δ ≈ 1
    z[1, :, 2] = -40.0  # target 2 is very unlikely
    z[2, :, 5] = -float("inf")  # a masked real token (not the target)
    z[3, :, -1] = -float("inf")  # δ masked: d = 0
    z[4] *= 1e3
    x = torch.tensor([0, 2, 1, 3, 4, 6])[:, None].expand(6, 4).clone()
    x[5, 0] = IGN
    ref = [[ref_head(z[b, k].tolist(), max(int(x[b, k]), 0), 0.9) for k in range(4)] for b in range(6) if b != 4]
    ld, l1md, lt = head_log_probs(z, x)
    keep = torch.tensor([b != 4 for b in range(6)])
    with torch.no_grad():
        d_ref = torch.tensor([[r[0] for r in row] for row in ref], dtype=torch.float64)
        t_ref = torch.tensor([[r[1] for r in row] for row in ref], dtype=torch.float64)
    torch.testing.assert_close(ld[keep].exp(), d_ref, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(l1md[keep].exp(), 1 - d_ref, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(lt[keep], t_ref.log(), rtol=1e-12, atol=1e-12)
    ld32, l1md32, lt32 = head_log_probs(z.float(), x)
    for a, b in ((ld32, ld), (l1md32, l1md), (lt32, lt)):
        fin = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), fin)
        torch.testing.assert_close(a[fin].double(), b[fin], rtol=1e-5, atol=1e-4)
    zg = z[:4].clone().nan_to_num(neginf=-60.0).requires_grad_()
    w = torch.randn(3, 4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q: sum((o * w[k]).sum() for k, o in enumerate(head_log_probs(q, x[:4]))), (zg,))


@pytest.mark.parametrize("name", ["ap", "va", "dp", "tbys", "ce"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("where", ["every logit", "real column", "don't-know column", "token without a target",
                                   "a step TBYS ignores"])
def test_nan_or_inf_logits_give_a_nan_loss(name, bad, where):
    "A NaN or +inf logit anywhere makes the loss NaN: a finite loss would hide weights that are already broken (issue 21)."
    torch.manual_seed(10)
    W = 1 if name == "ce" else 4
    z = torch.randn(2, 3, W, 7)
    t = torch.randint(0, 6, (2, 3))
    t[1, 2] = IGN
    if where == "every logit":
        z[:] = bad
    else:
        b, k, step, col = {"real column": (0, 1, W - 1, 2), "don't-know column": (0, 1, W - 1, -1),
                           "token without a target": (1, 2, 0, 0), "a step TBYS ignores": (0, 0, 0, 3)}[where]
        z[b, k, step, col] = bad
    z.requires_grad_()
    loss, diag = LossConfig.from_name(name)(z, t, return_diagnostics=True)
    assert torch.isnan(loss), (name, where, float(loss))
    if where in ("every logit", "real column", "don't-know column"):
        assert torch.isnan(diag["nll"][0, 1]), (name, where, diag["nll"])
    if where != "every logit":
        assert torch.isfinite(diag["nll"][0, 2]), (name, where, diag["nll"])  # other tokens keep their own values


def test_minus_inf_logit_is_a_zero_probability_not_an_error():
    "−inf on a real column that is not the target is a masked token (probability 0): the loss stays finite."
    torch.manual_seed(11)
    z = torch.randn(2, 3, 4, 7)
    t = torch.randint(0, 5, (2, 3))
    z[..., 5] = -float("inf")
    for name in ("ap", "va", "dp", "tbys"):
        assert torch.isfinite(LossConfig.from_name(name)(z, t)), name
