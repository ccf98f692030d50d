"""ACT and PonderNet (cyb_nb.classics) against plain-Python float64 references (loops allowed here only), gradchecks, and
input validation."""
import math
import random

import pytest
import torch
import torch.nn.functional as F

from cyb_nb.classics import (act_halting, act_loss, act_output, act_ponder_cost, expected_nll, geometric_prior,
                             halting_distribution, kl_divergence, ponder_net_loss)
from cyb_nb.losses import cyb_va_loss

D64 = torch.float64


# ---- plain-Python references -----------------------------------------------------------------------------------------
def ref_stop(lam):
    "p_n = λ_n Π_{j<n} (1 − λ_j), the last step taking the rest."
    out, alive = [], 1.0
    for n, l in enumerate(lam):
        if n == len(lam) - 1:
            out.append(alive)
        else:
            out.append(alive * l)
            alive *= 1 - l
    return out


def ref_geometric(lambda_p, W):
    p = [lambda_p * (1 - lambda_p) ** n for n in range(W)]
    z = sum(p)
    return [x / z for x in p]


def ref_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def ref_ponder(d, t, lambda_p, beta):
    s = ref_stop([1 - x for x in d])
    loss = sum(si * -math.log(ti) for si, ti in zip(s, t) if si > 0)
    return loss + beta * ref_kl(s, ref_geometric(lambda_p, len(d)))


def ref_act(h, eps):
    "ACT as written: N = first n with Σ_{j<=n} h_j >= 1 − eps (at most W), R = 1 − Σ_{j<N} h_j, p_n = h_n (n < N), p_N = R."
    W, H, N = len(h), 0.0, len(h)
    for n in range(W):
        H += h[n]
        if H >= 1 - eps:
            N = n + 1
            break
    R = 1 - sum(h[:N - 1])
    p = [h[n] if n < N - 1 else (R if n == N - 1 else 0.0) for n in range(W)]
    return p, N, R


def ref_log_softmax(z):
    m = max(z)
    lse = m + math.log(sum(math.exp(x - m) for x in z))
    return [x - lse for x in z]


def ref_act_output(p, logits):
    V = len(logits[0])
    mean = [sum(p[n] * logits[n][v] for n in range(len(p)) if p[n] > 0) for v in range(V)]
    return ref_log_softmax(mean)


def _parts(a):
    "(log d, log(1 − d)) from δ logits, the CYB head's form."
    return F.logsigmoid(a), F.logsigmoid(-a)


# ---- PonderNet --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lambda_p", [0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("W", [1, 2, 4, 7])
def test_geometric_prior_matches_reference(lambda_p, W):
    got = geometric_prior(lambda_p, W)
    assert got.dtype == D64 and got.shape == (W,)
    torch.testing.assert_close(got, torch.tensor(ref_geometric(lambda_p, W), dtype=D64), rtol=0, atol=1e-14)


def test_geometric_prior_running_example():
    torch.testing.assert_close(geometric_prior(0.5, 4), torch.tensor([8, 4, 2, 1], dtype=D64) / 15)


def test_halting_distribution_matches_reference():
    g = torch.Generator().manual_seed(0)
    lam = torch.rand(6, 5, generator=g, dtype=D64) * 0.98 + 0.01
    got = halting_distribution(lam.log(), torch.log1p(-lam)).exp()
    for row, lrow in zip(got, lam):
        torch.testing.assert_close(row, torch.tensor(ref_stop(lrow.tolist()), dtype=D64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("beta", [0.0, 0.01, 1.0, 3.0])
@pytest.mark.parametrize("lambda_p", [0.2, 0.5])
def test_ponder_net_loss_matches_reference(beta, lambda_p):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, 5, generator=g, dtype=D64) * 2
    t = torch.rand(3, 4, 5, generator=g, dtype=D64) * 0.98 + 0.01
    ld, l1 = _parts(a)
    got = ponder_net_loss(ld, l1, t.log(), lambda_p, beta)
    assert got.shape == (3, 4)
    d = torch.sigmoid(a)
    for idx in [(i, j) for i in range(3) for j in range(4)]:
        want = ref_ponder(d[idx].tolist(), t[idx].tolist(), lambda_p, beta)
        assert abs(float(got[idx]) - want) < 1e-12


def test_running_example_numbers():
    d = torch.tensor([0.7, 0.6, 0.4, 0.0], dtype=D64)
    t = torch.tensor([0.1, 0.3, 0.5, 0.6], dtype=D64)
    ld, l1, lt = d.log(), torch.log1p(-d), t.log()
    assert abs(float(ponder_net_loss(ld, l1, lt, 0.5, 0.0)) - 1.28838) < 1e-5
    assert abs(float(ponder_net_loss(ld, l1, lt, 0.5, 1.0)) - 1.44512) < 1e-5
    s = torch.tensor([0.3, 0.28, 0.252, 0.168], dtype=D64)
    assert abs(float(act_ponder_cost(s.log())) - 4.168) < 1e-12
    z = torch.stack([lt, torch.log1p(-t)], -1)
    assert abs(float(act_loss(s.log(), z, torch.tensor(0), 0.0)) - 1.19071) < 1e-5


def test_ponder_net_at_beta_one_is_cyb_va_with_a_geometric_prior():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 6, generator=g, dtype=D64)
    tg = torch.randint(0, 5, (2, 3), generator=g)
    z = logits.clone()
    logp = torch.log_softmax(z, -1)
    ld = logp[..., -1]
    l1 = torch.log1p(-ld.exp())
    lt = torch.log_softmax(z[..., :-1], -1).gather(-1, tg[..., None, None].expand(2, 3, 4, 1)).squeeze(-1)
    pn = ponder_net_loss(ld, l1, lt, 0.3, 1.0).mean()
    va = cyb_va_loss(logits, tg, geometric_prior(0.3, 4), dk_prior=None)
    torch.testing.assert_close(pn, va, rtol=0, atol=1e-12)


def test_expected_nll_and_kl_handle_zeros():
    log_s = torch.tensor([0.5, 0.5, 0.0], dtype=D64).log()  # s_3 = 0, and t_3 = 0: 0 · log 0 = 0
    log_t = torch.tensor([0.2, 0.4, 0.0], dtype=D64).log()
    assert abs(float(expected_nll(log_s, log_t)) - 0.5 * (-math.log(0.2) - math.log(0.4))) < 1e-14
    q = torch.tensor([0.25, 0.25, 0.5], dtype=D64)
    assert abs(float(kl_divergence(log_s, q.log())) - ref_kl([0.5, 0.5, 0.0], q.tolist())) < 1e-14
    assert float(kl_divergence(q.log(), log_s)) == float("inf")  # q has mass where s = 0
    ls = log_s.clone().requires_grad_(True)
    expected_nll(ls, log_t).backward()
    assert torch.isfinite(ls.grad).all()


def test_ponder_net_gradcheck():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 5, generator=g, dtype=D64, requires_grad=True)
    lt = (torch.rand(2, 5, generator=g, dtype=D64) * 0.9 + 0.05).log().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, lt: ponder_net_loss(*_parts(a), lt, 0.4, 0.7), (a, lt))
    ls = torch.log_softmax(torch.randn(3, 4, generator=g, dtype=D64), -1).requires_grad_(True)
    lq = torch.log_softmax(torch.randn(3, 4, generator=g, dtype=D64), -1).requires_grad_(True)
    assert torch.autograd.gradcheck(kl_divergence, (ls, lq))
    assert torch.autograd.gradcheck(lambda x: expected_nll(torch.log_softmax(x, -1), lq), (ls,))


def test_ponder_net_float32_agrees():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(4, 6, generator=g, dtype=D64)
    lt = (torch.rand(4, 6, generator=g, dtype=D64) * 0.9 + 0.05).log()
    want = ponder_net_loss(*_parts(a), lt, 0.5, 0.1)
    got = ponder_net_loss(*_parts(a.float()), lt.float(), 0.5, 0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


# ---- ACT --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.0, 0.01, 0.1])
def test_act_halting_matches_reference(eps):
    rng = random.Random(5)
    for _ in range(200):
        W = rng.randint(1, 7)
        h = [rng.uniform(0.01, 0.99) ** rng.choice([1, 2, 4]) for _ in range(W)]
        log_p, N, R = act_halting(torch.tensor(h, dtype=D64).log(), eps)
        p_ref, N_ref, R_ref = ref_act(h, eps)
        assert int(N) == N_ref
        assert abs(float(R) - R_ref) < 1e-12
        torch.testing.assert_close(log_p.exp(), torch.tensor(p_ref, dtype=D64), rtol=0, atol=1e-12)
        assert abs(float(act_ponder_cost(torch.tensor(h, dtype=D64).log(), eps)) - (N_ref + R_ref)) < 1e-12


def test_act_halting_batched_and_edge_cases():
    h = torch.tensor([[0.995, 0.5, 0.5],  # stops at once: N = 1, R = 1
                      [0.1, 0.1, 0.1],  # never reaches 1 − eps: capped at W, R = 0.8
                      [0.5, 0.49, 0.3]],  # reaches 0.99 exactly at step 2
                     dtype=D64)
    log_p, N, R = act_halting(h.log())
    assert N.tolist() == [1, 3, 2]
    torch.testing.assert_close(R, torch.tensor([1.0, 0.8, 0.5], dtype=D64))
    torch.testing.assert_close(log_p.exp(), torch.tensor([[1, 0, 0], [0.1, 0.1, 0.8], [0.5, 0.5, 0]], dtype=D64))
    for row in range(3):
        p_ref, N_ref, R_ref = ref_act(h[row].tolist(), 0.01)
        assert int(N[row]) == N_ref


def test_act_ponder_cost_gradient_is_minus_one_before_N():
    h = torch.tensor([0.3, 0.28, 0.252, 0.168, 0.2], dtype=D64)  # H = 0.3, 0.58, 0.832, 1.0 → N = 4
    hh = h.clone().requires_grad_(True)
    P = act_ponder_cost(hh.log())
    (g,) = torch.autograd.grad(P, hh)
    torch.testing.assert_close(g, torch.tensor([-1, -1, -1, 0, 0], dtype=D64))


def test_act_gradcheck_away_from_the_threshold():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(4, 5, generator=g, dtype=D64)
    H = torch.cumsum(torch.sigmoid(a), -1)
    assert ((H - 0.99).abs() > 1e-3).all()  # gradcheck's steps never move N
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: act_halting(F.logsigmoid(a))[0].exp(), (a,))
    assert torch.autograd.gradcheck(lambda a: act_ponder_cost(F.logsigmoid(a)), (a,))
    z = torch.randn(4, 5, 3, generator=g, dtype=D64, requires_grad=True)
    tg = torch.randint(0, 3, (4,), generator=g)
    assert torch.autograd.gradcheck(lambda a, z: act_loss(F.logsigmoid(a), z, tg, 0.05), (a, z))


def test_act_output_and_loss_match_reference():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(3, 4, generator=g, dtype=D64)
    z = torch.randn(3, 4, 5, generator=g, dtype=D64)
    tg = torch.randint(0, 5, (3,), generator=g)
    log_p, N, R = act_halting(F.logsigmoid(a))
    out = act_output(log_p, z)
    loss = act_loss(F.logsigmoid(a), z, tg, 0.02)
    for b in range(3):
        p_ref, N_ref, R_ref = ref_act(torch.sigmoid(a[b]).tolist(), 0.01)
        o_ref = ref_act_output(p_ref, z[b].tolist())
        torch.testing.assert_close(out[b], torch.tensor(o_ref, dtype=D64), rtol=0, atol=1e-12)
        assert abs(float(loss[b]) - (-o_ref[int(tg[b])] + 0.02 * (N_ref + R_ref))) < 1e-12


def test_act_output_ignores_steps_that_do_not_run():
    log_p = torch.tensor([0.5, 0.5, 0.0], dtype=D64).log()
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-float("inf"), 0.0]], dtype=D64)  # step 3 does not run
    out = act_output(log_p, z)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.log_softmax(torch.tensor([0.5, 0.5], dtype=D64), -1))


# ---- validation -------------------------------------------------------------------------------------------------------
def test_validation_names_the_argument():
    d = torch.tensor([0.7, 0.6, 0.4, 0.0], dtype=D64)
    ld, l1, lt = d.log(), torch.log1p(-d), torch.tensor([0.1, 0.3, 0.5, 0.6], dtype=D64).log()
    cases = [
        (lambda: geometric_prior(0.0, 4), ValueError, "lambda_p"),
        (lambda: geometric_prior(1.5, 4), ValueError, "lambda_p"),
        (lambda: geometric_prior(True, 4), ValueError, "lambda_p"),
        (lambda: geometric_prior(0.5, 0), ValueError, "W"),
        (lambda: geometric_prior(0.5, 2.0), ValueError, "W"),
        (lambda: ponder_net_loss(ld, l1, lt, 0.5, -0.1), ValueError, "beta"),
        (lambda: ponder_net_loss(ld, l1, lt, 0.5, float("nan")), ValueError, "beta"),
        (lambda: ponder_net_loss(ld, l1, lt, 2.0, 0.0), ValueError, "lambda_p"),
        (lambda: ponder_net_loss(ld, l1, lt[:3], 0.5, 0.1), ValueError, "log_t"),
        (lambda: ponder_net_loss(ld, ld, lt, 0.5, 0.1), ValueError, "log_1md"),
        (lambda: ponder_net_loss(ld, l1, -lt, 0.5, 0.1), ValueError, "log_t"),
        (lambda: ponder_net_loss(ld.tolist(), l1, lt, 0.5, 0.1), TypeError, "log_d"),
        (lambda: ponder_net_loss(ld, l1, torch.full((4,), float("nan"), dtype=D64), 0.5, 0.1), ValueError, "log_t"),
        (lambda: halting_distribution(torch.tensor([0.1, 0.2], dtype=D64).log(), torch.tensor([0.1, 0.2], dtype=D64).log()),
         ValueError, "log"),
        (lambda: expected_nll(lt, lt[:2]), ValueError, "log_t"),
        (lambda: kl_divergence(torch.tensor([1, 0]), lt), TypeError, "log_p"),
        (lambda: act_halting(torch.tensor([0.5, 0.2])), ValueError, "log_h"),
        (lambda: act_halting(torch.tensor([0.5, 0.2]).log(), eps=1.0), ValueError, "eps"),
        (lambda: act_halting(torch.tensor([0.5, 0.2]).log(), eps=-0.1), ValueError, "eps"),
        (lambda: act_halting(torch.zeros(2, 0)), ValueError, "log_h"),
        (lambda: act_output(torch.tensor([0.5, 0.5]).log(), torch.zeros(3, 2)), ValueError, "step_logits"),
        (lambda: act_loss(torch.tensor([0.5, 0.5]).log(), torch.zeros(2, 3), torch.tensor(0), -1.0), ValueError, "tau"),
        (lambda: act_loss(torch.tensor([0.5, 0.5]).log(), torch.zeros(2, 3), torch.tensor(3), 0.1), ValueError, "targets"),
        (lambda: act_loss(torch.tensor([0.5, 0.5]).log(), torch.zeros(2, 3), torch.tensor(0.0), 0.1), ValueError, "targets"),
    ]
    for fn, exc, name in cases:
        with pytest.raises(exc, match=name):
            fn()
