# %% [markdown]
# # CYB among the classics: ACT and PonderNet
#
# > Adaptive Computation Time's ponder cost and PonderNet's expected loss with its KL to a geometric prior, written with
# > CYB's own stopping-time code and set side by side with CYB-AP, VA and DP on the running example; the correspondences,
# > where they break, and one small task on which the three behave differently.

# %%
#| default_exp classics

# %%
#| hide
from nbdev.showdoc import show_doc
from fastcore.test import test_close, test_eq, test_fail

# %% [markdown]
# ## Why this chapter
#
# Catch Your Breath did not invent the idea of a network that decides how long to think. It descends from two classics,
# and a teacher of adaptive computation usually teaches them first:
#
# - **ACT** — Graves (2016), "Adaptive Computation Time for Recurrent Neural Networks". A recurrent network runs a
#   variable number of inner steps per input; a *halting unit* says how much of the decision to stop falls on each step, the
#   output is the halting-weighted mean of the steps, and a *ponder cost* charges for the steps used.
# - **PonderNet** — Banino, Balaguer and Blundell (2021), "PonderNet: Learning to Ponder". The halting becomes a real
#   probability: at each step the network halts with probability $\lambda_n$; training minimises the *expected* loss under
#   that halting distribution plus a KL divergence to a geometric prior.
#
# CYB's pause steps are PonderNet's inner steps, and its `<don't know>` probability $d_i$ is PonderNet's "do not halt yet",
# $1-\lambda_i$. Three questions separate the three methods, and this chapter answers each with the same code:
#
# 1. **How is the stopping step parameterised?** (The same stick-breaking distribution in all three, once ACT's halting
#    units are read correctly.)
# 2. **Where does the log sit?** ACT takes the loss of the *mean of the outputs*; PonderNet the *mean of the losses*
#    (an expectation of a log); CYB the *loss of the mean of the predicted probabilities* (a log of an expectation).
# 3. **What charges for compute?** ACT: the ponder cost $N + R$. PonderNet: a KL to a geometric prior. CYB-AP: nothing at
#    all (waiting is free); CYB-VA and CYB-DP: a KL to a prior $\rho$, in either direction.
#
# **Notation (as in the rest of the book).** One real token is followed by $W-1$ pause tokens, so it has $W$ steps
# $i = 1..W$ (step 1 is the token itself). At step $i$ the model says `<don't know>` (δ) with probability $d_i$, with
# $d_W \equiv 0$, and gives the correct next token probability $t_i$ (δ excluded and renormalised). $S$ is the step at which
# the model answers and $s_i = \Pr(S = i)$. The classics index inner steps by $n$; we write their formulas with $n$ where we
# quote them and with $i$ once they are mapped onto CYB's steps. The book's $\rho$ is the prior (VA) or target (DP) of $S$;
# ACT's "ponder cost" is written $P$ here, never $\rho$.
#
# **Running example** (chapters 00–04): one token, $W = 4$, $d = (0.7, 0.6, 0.4)$, $t = (0.1, 0.3, 0.5, 0.6)$. With no
# forced stops, $s = (0.30, 0.28, 0.252, 0.168)$, the mixture $\sum_i s_i t_i = 0.3408$, $\ell_{\text{AP}} = -\log 0.3408
# = 1.0765$ nats, and $\mathbb{E}[S] = 2.288$ steps ($\mathbb{E}[\text{pauses}] = 1.288$).

# %%
import math
import torch
import torch.nn.functional as F
import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from cyb_nb.stopping import log_stop_probs
from cyb_nb.losses import cyb_nll, cyb_va_loss, cyb_dp_loss

dtype = torch.float64
d = torch.tensor([0.7, 0.6, 0.4, 0.0], dtype=dtype)  # d_4 ≡ 0
t = torch.tensor([0.1, 0.3, 0.5, 0.6], dtype=dtype)
log_d, log_1md, log_t = d.log(), torch.log1p(-d), t.log()
s = log_stop_probs(log_d, log_1md).exp()
steps = torch.arange(1, 5, dtype=dtype)
print("s =", s.tolist(), "  E[S] =", round(float((steps * s).sum()), 4))

# %% [markdown]
# ## 1. PonderNet's halting distribution is CYB's $s$
#
# PonderNet (§2, "the halting process") runs a step function that, at step $n$, outputs a prediction $\hat y_n$ and a
# probability $\lambda_n$ of halting *given that it has not halted before*. Halting at step $n$ means "not at $1, \dots,
# n-1$, then yes at $n$", and the decisions are independent Bernoulli draws, so
#
# $$p_n = \lambda_n \prod_{j=1}^{n-1} (1-\lambda_j).$$
#
# With a maximum number of steps, the last step takes whatever mass is left: $\lambda_N = 1$.
#
# CYB (chapter 01, no forced stops, $\omega = 0{:}\dots{:}0{:}1$) stops at step $i$ when the model does *not* say δ at
# $i$ after saying δ at every earlier step:
#
# $$s_i = (1-d_i) \prod_{j=1}^{i-1} d_j, \qquad d_W \equiv 0.$$
#
# Put $\lambda_i = 1 - d_i$ into PonderNet's formula: $\lambda_i \prod_{j<i}(1-\lambda_j) = (1-d_i)\prod_{j<i} d_j = s_i$,
# term for term, and PonderNet's "$\lambda_N = 1$" is CYB's "$d_W \equiv 0$". **Halting is answering; not halting is
# saying `<don't know>`.** The code is the same function with its two arguments swapped:
# `log_stop_probs(log_d, log_1md)` with `log_d = log(1 − λ)` and `log_1md = log λ`.
#
# By hand on the running example, $\lambda = 1 - d = (0.3, 0.4, 0.6, 1)$:
# $p_1 = 0.3$; $p_2 = 0.4 \cdot 0.7 = 0.28$; $p_3 = 0.6 \cdot 0.7 \cdot 0.6 = 0.252$; $p_4 = 1 \cdot 0.7 \cdot 0.6 \cdot 0.4
# = 0.168$ — exactly $s$.

# %%
lam = 1 - d
p_hand = torch.tensor([0.3, 0.4 * 0.7, 0.6 * 0.7 * 0.6, 1 * 0.7 * 0.6 * 0.4], dtype=dtype)
p_code = log_stop_probs(torch.log1p(-lam), lam.log()).exp()  # PonderNet's p with CYB's stopping-time code
torch.testing.assert_close(p_code, p_hand); torch.testing.assert_close(p_code, s)
print("p =", [round(x, 4) for x in p_code.tolist()])

# %% [markdown]
# ## 2. PonderNet's loss: an expected loss, and a KL to a geometric prior
#
# PonderNet (§2, "training loss") minimises
#
# $$L = \underbrace{\sum_{n=1}^{N} p_n\, \mathcal{L}(y, \hat y_n)}_{L_{\text{Rec}}} \;+\; \beta\,
# \underbrace{\mathrm{KL}\big(p \,\|\, p_G(\lambda_p)\big)}_{L_{\text{Reg}}} .$$
#
# With the log loss $\mathcal{L}(y, \hat y_i) = -\log t_i$ and $p = s$, the first term is the **expected loss**
#
# $$L_{\text{Rec}} = \sum_i s_i\,(-\log t_i) = \mathbb{E}_{S\sim s}\big[-\log t_S\big],$$
#
# an *expectation of a log*. CYB-AP is the *log of an expectation*, $\ell_{\text{AP}} = -\log \sum_i s_i t_i =
# -\log \mathbb{E}_{S \sim s}[t_S]$.
#
# **By hand** on the running example ($-\log 0.1 = 2.3026$, $-\log 0.3 = 1.2040$, $-\log 0.5 = 0.6931$, $-\log 0.6 =
# 0.5108$):
# $L_{\text{Rec}} = 0.3 \cdot 2.3026 + 0.28 \cdot 1.2040 + 0.252 \cdot 0.6931 + 0.168 \cdot 0.5108
# = 0.6908 + 0.3371 + 0.1747 + 0.0858 = 1.2884$ nats, against $\ell_{\text{AP}} = 1.0765$. (That $1.2884$ nats sits next to
# $\mathbb{E}[\text{pauses}] = 1.288$ *steps* is a coincidence of these numbers.)
#
# **Why the expected loss is always the larger.** $-\log$ is convex, so Jensen's inequality
# $f(\mathbb{E}[X]) \le \mathbb{E}[f(X)]$ with $f = -\log$ and $X = t_S$ gives
#
# $$\ell_{\text{AP}} = -\log \sum_i s_i t_i \;\le\; \sum_i s_i (-\log t_i) = L_{\text{Rec}},$$
#
# with equality exactly when $t_i$ is the same on every step that $s$ gives mass to (e.g. when $s$ is one-hot).
#
# **Which of the two is the model's likelihood?** At test time PonderNet samples its halting step, $S \sim s$, and answers
# with $\hat y_S$ (PonderNet, §2, "evaluation sampling"); a CYB model answers at the first step where it does not say δ.
# Either way the probability that the answer is the correct token is $\sum_i s_i t_i$: the predictive distribution of
# "stop at a random step, answer there" is the **mixture** $\sum_i s_i \hat y_i$. So CYB-AP is the negative
# log-likelihood of the model's own sampled answer, and PonderNet's expected loss is a Jensen upper bound on it.
#
# **What each one trains.** Differentiate with respect to $\log t_i$:
#
# $$\frac{\partial L_{\text{Rec}}}{\partial \log t_i} = -s_i, \qquad
# \frac{\partial \ell_{\text{AP}}}{\partial \log t_i} = -\frac{s_i t_i}{\sum_j s_j t_j} = -r_i .$$
#
# The expected loss trains every step in proportion to its halting mass, so every step that may halt must be good on its
# own. The mixture trains step $i$ in proportion to its *posterior* $r_i = \Pr(S = i \mid \text{correct})$: the credit goes to
# the steps that were right, and a poor step with little posterior mass costs little. On the running example
# $r = (0.03, 0.084, 0.126, 0.1008)/0.3408 = (0.088, 0.246, 0.370, 0.296)$ against $s = (0.30, 0.28, 0.252, 0.168)$: the
# mixture moves the credit away from the weak first step.

# %%
def expected_loss_small(log_s, log_t):  # the smallest code: E_s[-log t]
    return -(log_s.exp() * log_t).sum(-1)

L_rec = expected_loss_small(s.log(), log_t)
l_ap = -torch.logsumexp(s.log() + log_t, -1)
assert abs(float(L_rec) - 1.2884) < 5e-5 and abs(float(l_ap) - 1.0765) < 5e-5 and l_ap <= L_rec

lt = log_t.clone().requires_grad_(True)
(g_rec,) = torch.autograd.grad(expected_loss_small(s.log(), lt), lt)
(g_ap,) = torch.autograd.grad(-torch.logsumexp(s.log() + lt, -1), lt)
torch.testing.assert_close(-g_rec, s)
torch.testing.assert_close(-g_ap, s * t / (s * t).sum())
print("expected loss", round(float(L_rec), 4), " mixture NLL", round(float(l_ap), 4))
print("credit per step: expected loss", [round(x, 3) for x in (-g_rec).tolist()], " mixture", [round(x, 3) for x in (-g_ap).tolist()])

# %% [markdown]
# ### The geometric prior, truncated to $W$ steps
#
# PonderNet's prior is the distribution of the halting step when every step halts with the same probability $\lambda_p$:
# $p_G(n) = \lambda_p (1-\lambda_p)^{n-1}$, a geometric distribution with mean $1/\lambda_p$ steps. With only $W$ steps it
# must be truncated. We renormalise it over $1..W$; its total mass there is a geometric series,
#
# $$\sum_{n=1}^{W} \lambda_p (1-\lambda_p)^{n-1} = \lambda_p \,\frac{1 - (1-\lambda_p)^W}{1 - (1-\lambda_p)} = 1 - (1-\lambda_p)^W ,
# \qquad\text{so}\qquad p_G(i) = \frac{\lambda_p (1-\lambda_p)^{i-1}}{1 - (1-\lambda_p)^W}.$$
#
# (The other natural truncation puts the tail mass $(1-\lambda_p)^{W-1}$ on the last step, as the halting process itself
# does; exercise 4 compares the two.) For $\lambda_p = 0.5$ and $W = 4$: the mass is $1 - 0.5^4 = 0.9375$, and
# $p_G = (0.5, 0.25, 0.125, 0.0625)/0.9375 = (8, 4, 2, 1)/15 = (0.5333, 0.2667, 0.1333, 0.0667)$.
#
# The KL term, by hand, $\mathrm{KL}(s\|p_G) = \sum_i s_i \log(s_i / p_G(i))$:
# $0.3\log(0.3/0.5333) = 0.3 \cdot (-0.5754) = -0.1726$; $0.28 \log(0.28/0.2667) = 0.28 \cdot 0.0488 = 0.0137$;
# $0.252 \log(0.252/0.1333) = 0.252 \cdot 0.6366 = 0.1604$; $0.168 \log(0.168/0.0667) = 0.168 \cdot 0.9243 = 0.1553$;
# total $0.1567$ nats. PonderNet's loss with $\beta = 0.01$ is $1.28838 + 0.00157 = 1.28995$; with $\beta = 1$ it is
# $1.2884 + 0.1567 = 1.4451$.
#
# **PonderNet with $\beta = 1$ is CYB-VA.** CYB-VA (chapter 03) is $-\sum_i s_i \log(\gamma_i t_i) + \mathrm{KL}(s\|\rho)$.
# With $\gamma \equiv 1$ and $\rho = p_G$ this is $L_{\text{Rec}} + 1 \cdot \mathrm{KL}(s \| p_G)$: the same objective, term
# for term. VA is the negative ELBO of the mixture under the prior $\rho$; PonderNet's $\beta$ tempers the prior (exercise 1
# finds the optimum $s_i \propto p_G(i)\, t_i^{1/\beta}$).

# %%
q = torch.tensor([8, 4, 2, 1], dtype=dtype) / 15
kl_sq = (s * (s / q).log()).sum()
assert abs(float(kl_sq) - 0.1567) < 5e-5
assert abs(float(L_rec + 0.01 * kl_sq) - 1.28995) < 5e-5 and abs(float(L_rec + kl_sq) - 1.4451) < 5e-5
print("KL(s‖p_G) =", round(float(kl_sq), 4))

# %% [markdown]
# ## 3. Three KL divergences, two directions
#
# | loss | penalty | direction | infinite when | consequence |
# |---|---|---|---|---|
# | PonderNet | $\beta\,\mathrm{KL}(p\,\|\,p_G)$ | model first | $p$ has mass where $p_G = 0$ | the prior must be positive everywhere (a geometric one is) |
# | CYB-VA | $\mathrm{KL}(s\,\|\,\rho)$ | model first — **PonderNet's direction** | $s$ has mass where $\rho = 0$ | `cyb_va_loss` refuses a $\rho$ with zeros |
# | CYB-DP | $\alpha\,\mathrm{KL}(\rho\,\|\,s)$ | prior first — **reversed** | $s = 0$ where $\rho > 0$ | $\rho$ may hold zeros; $s$ must *cover* $\rho$'s support |
#
# The model-first KL is cheap when $s$ sits on a part of the prior's support and ignores the rest (it is "mode seeking");
# the prior-first KL is expensive whenever $s$ misses mass the prior has ("mass covering"). On the running example with
# $\rho = p_G$ the two happen to be close, $\mathrm{KL}(s\|p_G) = 0.1567$ and $\mathrm{KL}(p_G\|s) = 0.1474$, but their
# gradients differ: one weighs the log-ratio by $s$, the other by $p_G$.
#
# A pitfall when coding PonderNet's term: PyTorch's `nn.KLDivLoss` takes `(input, target)` with `input` a log-probability and
# computes $\sum \text{target}\,(\log \text{target} - \text{input})$, i.e. $\mathrm{KL}(\text{target}\,\|\,\cdot)$. So
# `KLDivLoss()(p.log(), p_G)` is $\mathrm{KL}(p_G \| p)$ — CYB-DP's direction, not the one PonderNet writes.

# %%
kl_qs = (q * (q / s).log()).sum()
kl_torch = torch.nn.KLDivLoss(reduction="sum")(s.log(), q)
torch.testing.assert_close(kl_torch, kl_qs)  # KLDivLoss(log p, p_G) is KL(p_G‖p)
assert abs(float(kl_qs) - 0.1474) < 5e-5
print(f"KL(s‖p_G) = {kl_sq:.4f}   KL(p_G‖s) = {kl_qs:.4f}   nn.KLDivLoss(s.log(), p_G) = {kl_torch:.4f}")

# %% [markdown]
# ## 4. ACT: halting units, a threshold, a remainder and a ponder cost
#
# ACT (§2) gives each inner step $n$ a **halting unit** $h_n = \sigma(\cdot) \in (0, 1)$ and stops at the first step where
# the running total reaches $1 - \varepsilon$ ($\varepsilon = 0.01$ in the paper, which lets the network stop after one step
# when $h_1 \ge 1-\varepsilon$), capped at a maximum number of steps (here $W$):
#
# $$H_n = \sum_{j=1}^{n} h_j, \qquad N = \min\{\, n : H_n \ge 1-\varepsilon \,\}, \qquad R = 1 - H_{N-1}.$$
#
# The **remainder** $R$ is what is left of the unit mass when the last step arrives. The **halting weights** are
# $p_n = h_n$ for $n < N$ and $p_N = R$; they sum to one. The state and the output passed on are the halting-weighted
# means of the steps' states and outputs, $\sum_n p_n y_n$ (a "mean-field" update). The **ponder cost** is
# $P = N + R$, and the training loss is the task loss plus $\tau \sum P$ over the sequence, with a time penalty $\tau$
# (ACT §2.1). $N$ is piecewise constant in the $h_n$, so its gradient is zero; the gradient flows through $R$ alone:
# $\partial P / \partial h_n = -1$ for every $n < N$ (ACT §2.2). The ponder cost always pushes towards stopping *earlier*.
#
# ### ACT's weights with CYB's stopping-time code
#
# ACT's $h_n$ is *unconditional*: it is the mass of stopping at $n$, like $s_n$, not the conditional $\lambda_n$. The
# conditional probability of halting at $n$ given no halt before is the mass at $n$ over the mass still left:
#
# $$\lambda_n = \frac{h_n}{1 - H_{n-1}}, \qquad 1 - \lambda_n = \frac{1 - H_{n-1} - h_n}{1 - H_{n-1}} = \frac{1-H_n}{1-H_{n-1}} .$$
#
# The survival product telescopes, every numerator cancelling the next denominator (and $H_0 = 0$):
#
# $$\prod_{j=1}^{n-1}(1-\lambda_j) = \frac{1-H_1}{1-H_0}\cdot\frac{1-H_2}{1-H_1}\cdots\frac{1-H_{n-1}}{1-H_{n-2}} = 1 - H_{n-1},$$
#
# so the stick-breaking formula returns $\lambda_n \prod_{j<n}(1-\lambda_j) = h_n$, and a *forced stop* at step $N$ — the
# step that must answer, like CYB's last step — receives the survival $\prod_{j<N}(1-\lambda_j) = 1 - H_{N-1} = R$.
# **ACT's halting weights are CYB's $s$ with $d_n = 1 - \lambda_n$ and the last step moved from $W$ to $N$.** In code:
# `log_stop_probs(log(1−λ), log λ, step_mask = steps ≤ N)`.
#
# **Where the correspondence stops.**
#
# - *The threshold.* CYB and PonderNet always define all $W$ steps and $d_i \in [0,1]$ by construction. In ACT, $\lambda_n
#   = h_n / (1 - H_{n-1})$ is a probability only while $H_{n-1} < 1$, and the threshold is what guarantees that: every step
#   before $N$ has $H_n < 1 - \varepsilon$. The cut-off $N$ itself depends on the $h_n$ with a zero gradient, and the
#   last unit $h_N$ is discarded and replaced by $R$ (whatever of $h_N$ overshoots the unit mass is dropped).
# - *The readout.* ACT averages the steps' states and outputs and takes the loss of the average (for a softmax output, the
#   average of the *logits*). PonderNet averages the *losses*. CYB averages the *probabilities* and takes the log of the
#   average. Only CYB's is the likelihood of a model that stops at a random step and answers there.
# - *The compute.* ACT runs all $N$ steps every time (it needs each of them for the mean), so its cost is deterministic;
#   CYB and PonderNet stop at a random $S$ and spend $S$ steps, on average $\mathbb{E}[S] = \sum_i i\, s_i$.
#
# **By hand, on the running example**, let ACT's halting units be CYB's stopping masses, $h = s = (0.3, 0.28, 0.252,
# 0.168)$. Then $H = (0.3, 0.58, 0.832, 1.0)$; the first $H_n \ge 0.99$ is at $n = 4$, so $N = 4$, $R = 1 - 0.832 = 0.168$,
# the weights are $s$ itself, and $P = 4 + 0.168 = 4.168$. Compare $\mathbb{E}[S] = 2.288$: ACT charges for the four
# steps it *runs*; a sampled stop *spends* $2.288$ on average.
#
# **Ponder cost and expected steps.** Under ACT's weights the mean step is
# $\sum_n n\,p_n = \sum_{n<N} n h_n + N\big(1 - \sum_{n<N} h_n\big) = N - \sum_{n<N} (N-n)\, h_n \le N < N + R = P .$
# Both are compute terms, both shrink when mass moves earlier, but their gradients differ: $\partial P/\partial h_n = -1$
# for every $n < N$, $\partial \sum_n n p_n / \partial h_n = -(N - n)$, which rewards early mass more.

# %%
def act_weights_small(h, eps=0.01):  # ACT's rule as written: p_n = h_n before N, the remainder R at N
    H = torch.cumsum(h, 0)
    N = int((H >= 1 - eps).nonzero()[0]) + 1 if bool((H >= 1 - eps).any()) else len(h)
    R = 1 - (H[N - 2] if N > 1 else 0.0)
    p = torch.zeros_like(h); p[:N - 1] = h[:N - 1]; p[N - 1] = R
    return p, N, float(R)

h = s.clone()
p_act, N, R = act_weights_small(h)
assert N == 4 and abs(R - 0.168) < 1e-12 and abs(N + R - 4.168) < 1e-12
# the same weights from CYB's stopping-time code: hazards λ_n = h_n / (1 − H_{n−1}), last step forced at N
H = torch.cumsum(h, 0); H_prev = H - h
lam_act = h[:N - 1] / (1 - H_prev[:N - 1])
log_lam = torch.cat([lam_act.log(), torch.zeros(1, dtype=dtype)])
log_1mlam = torch.cat([torch.log1p(-lam_act), torch.zeros(1, dtype=dtype)])  # the forced step's entries are ignored
torch.testing.assert_close(log_stop_probs(log_1mlam, log_lam).exp(), p_act[:N])
mean_step = float((steps * p_act).sum())
assert abs(mean_step - (N - sum((N - n) * float(h[n - 1]) for n in range(1, N)))) < 1e-12 and mean_step < N + R
print(f"N = {N}, R = {R:.3f}, ponder cost P = {N + R:.3f};  E[S] = {mean_step:.3f}")

# %% [markdown]
# ### ACT's readout on the running example
#
# The running example gives only $t_i$, the probability of the correct token; ACT's output averages logits, which depend on
# how the *rest* of the mass is spread. Take the smallest readout that has a full distribution: two outcomes per step,
# "correct" with $t_i$ and "wrong" with $1 - t_i$, logits $z_i = (\log t_i, \log(1-t_i))$. The mean logits are
# $\sum_i p_i \log t_i = -1.2884$ (the expected loss, negated) and $\sum_i p_i \log(1-t_i) = 0.3\log 0.9 + 0.28 \log 0.7 +
# 0.252\log 0.5 + 0.168\log 0.4 = -0.0316 - 0.0999 - 0.1747 - 0.1539 = -0.4601$. Their softmax gives the correct outcome
# $1/(1 + e^{-0.4601 + 1.2884}) = 1/(1 + e^{0.8283}) = 0.3040$, and ACT's task loss is $-\log 0.3040 = 1.1907$ nats.
#
# ACT's loss also never exceeds the expected loss: $\operatorname{logsumexp}$ is convex, so
# $\operatorname{logsumexp}(\sum_i p_i z_i) \le \sum_i p_i \operatorname{logsumexp}(z_i)$, and subtracting the correct
# logit $\sum_i p_i z_{i,y}$ from both sides gives $-\log \operatorname{softmax}(\sum_i p_i z_i)_y \le \sum_i p_i (-\log t_i)$.
# On this example the three readouts order as CYB $1.0765$ < ACT $1.1907$ < PonderNet $1.2884$; the first and the last
# are ordered always (Jensen), ACT's place between them is not guaranteed.

# %%
z = torch.stack([log_t, torch.log1p(-t)], -1)  # [W, 2]: correct / wrong
act_nll = -torch.log_softmax((p_act[:, None] * z).sum(0), -1)[0]
assert abs(float(act_nll) - 1.1907) < 5e-5 and act_nll <= L_rec
print("ACT's task loss on the two-outcome readout:", round(float(act_nll), 4))

# %% [markdown]
# ## 5. Making it fast and safe: the exported functions
#
# The library versions below take batches `[..., W]` in log space (`logsigmoid`-style inputs `log_d`, `log_1md`, `log_t`
# as the CYB head returns them), never loop over tokens or steps, and refuse malformed input with a `ValueError` or
# `TypeError` that names the argument. `tests/test_classics.py` checks each one against a plain-Python float64 reference
# (loops allowed there only), with `gradcheck`, and checks the validation.

# %%
#| export
from __future__ import annotations

import math

import torch

from cyb_nb.losses import _xlogy_terms
from cyb_nb.stopping import log_stop_probs

# %%
#| export
def _check_log_probs(x, name: str, shape=None) -> None:
    "A floating tensor `[..., W]` (W >= 1) of log-probabilities: no NaN, nothing above 0 (1e-6 slack for rounding)."
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor [..., W] of log-probabilities, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"{name} must have a last axis of W >= 1 steps, got shape {tuple(x.shape)}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} must have the shape of log_d, {tuple(shape)}, got {tuple(x.shape)}")
    if bool(torch.isnan(x).any()) or bool((x > 1e-6).any()):
        raise ValueError(f"{name} must hold log-probabilities (<= 0, no NaN)")


def _check_parts(log_d, log_1md, log_t=None) -> None:
    "Validate CYB's parts: log d and log(1 − d) of the same shape and complementary before the last step; log t alike."
    _check_log_probs(log_d, "log_d")
    _check_log_probs(log_1md, "log_1md", log_d.shape)
    if log_t is not None:
        _check_log_probs(log_t, "log_t", log_d.shape)
    total = torch.logaddexp(log_d[..., :-1], log_1md[..., :-1])  # log(d + 1 − d) = 0 on every step but the forced last one
    if total.numel() and bool((total.abs() > 1e-4).any()):
        raise ValueError("log_d and log_1md must be log d and log(1 − d): exp(log_d) + exp(log_1md) = 1 at every step but the last")


def _check_weight(x, name: str) -> float:
    "A finite real number >= 0 (not a bool)."
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
    return float(x)

# %%
#| export
def halting_distribution(log_lam: torch.Tensor, log_1mlam: torch.Tensor) -> torch.Tensor:
    "PonderNet's log p_n = log λ_n + Σ_{j<n} log(1 − λ_j) over `[..., W]`, the last step taking the rest: CYB's s with d = 1 − λ."
    _check_parts(log_1mlam, log_lam)  # the roles of d and 1 − d: not halting is saying δ
    return log_stop_probs(log_1mlam, log_lam)


def geometric_prior(lambda_p: float, W: int, dtype=torch.float64, device=None) -> torch.Tensor:
    "PonderNet's geometric prior p_G(i) = λ_p (1 − λ_p)^(i−1), truncated to i = 1..W and renormalised (divided by 1 − (1 − λ_p)^W)."
    if isinstance(lambda_p, bool) or not isinstance(lambda_p, (int, float)) or not 0 < lambda_p <= 1:
        raise ValueError(f"lambda_p must be a number in (0, 1] (the prior's halting probability per step), got {lambda_p!r}")
    if isinstance(W, bool) or not isinstance(W, int) or W < 1:
        raise ValueError(f"W must be an int >= 1 (steps per token), got {W!r}")
    i = torch.arange(W, dtype=torch.float64)
    p = lambda_p * (1 - lambda_p) ** i  # 0 ** 0 = 1: λ_p = 1 puts all mass on step 1
    return (p / p.sum()).to(dtype=dtype, device=device)


def expected_nll(log_s: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    "PonderNet's expected loss E_s[−log t] = −Σ_i s_i log t_i per token (0 · log 0 = 0 where s_i = 0)."
    _check_log_probs(log_s, "log_s")
    _check_log_probs(log_t, "log_t", log_s.shape)
    return -_xlogy_terms(log_s.exp(), log_t).sum(-1)


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    "KL(p‖q) = Σ_i p_i (log p_i − log q_i) over the last axis (0 · log 0 = 0; +inf where p_i > 0 = q_i)."
    _check_log_probs(log_p, "log_p")
    _check_log_probs(log_q, "log_q")
    p = log_p.exp()
    return (_xlogy_terms(p, log_p) - _xlogy_terms(p, log_q.expand_as(log_p))).sum(-1)


def ponder_net_loss(log_d: torch.Tensor, log_1md: torch.Tensor, log_t: torch.Tensor, lambda_p: float,
                    beta: float) -> torch.Tensor:
    "Per-token PonderNet loss Σ_i s_i (−log t_i) + β·KL(s‖p_G(λ_p)) from CYB's parts `[..., W]` (halting λ = 1 − d)."
    _check_parts(log_d, log_1md, log_t)
    beta = _check_weight(beta, "beta")
    prior = geometric_prior(lambda_p, log_d.shape[-1], log_d.dtype, log_d.device)  # validates λ_p even when β = 0
    log_s = log_stop_probs(log_d, log_1md)
    loss = -_xlogy_terms(log_s.exp(), log_t).sum(-1)
    if beta > 0:
        s = log_s.exp()
        loss = loss + beta * (_xlogy_terms(s, log_s) - _xlogy_terms(s, prior.log().expand_as(log_s))).sum(-1)
    return loss

# %% [markdown]
# `ponder_net_loss` takes CYB's parts so that it can be set beside `cyb_nll` on the same head output; a PonderNet network
# that outputs $\lambda_n$ passes `log_d = log(1 − λ)` and `log_1md = log λ`. Its `geometric_prior` is positive at every
# step, so the KL is always finite.

# %%
show_doc(halting_distribution)

# %%
show_doc(geometric_prior)

# %%
show_doc(expected_nll)

# %%
show_doc(kl_divergence)

# %%
show_doc(ponder_net_loss)

# %% [markdown]
# ACT's exported functions take the halting units in log space, `log_h = logsigmoid(a)` for a halting logit $a$. They
# compute the weights with `log_stop_probs`, through the hazards $\lambda_n = h_n/(1 - H_{n-1})$ derived above, with
# `step_mask` marking the $N$ steps that run. The logs of $1 - H$ are taken only where $H < 1 - \varepsilon$, so the unused
# branch never produces a NaN that could leak into a gradient.

# %%
#| export
def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
        raise ValueError(f"eps must be a number in [0, 1) (ACT halts once the halting units sum to 1 − eps), got {eps!r}")
    return float(eps)


def act_halting(log_h: torch.Tensor, eps: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    "ACT's halting from log halting units `[..., W]`: `(log_p, N, R)`, p_n = h_n before N, R = 1 − Σ_{n<N} h_n at N, 0 after."
    _check_log_probs(log_h, "log_h")
    eps = _check_eps(eps)
    W = log_h.shape[-1]
    h = log_h.exp()
    H = torch.cumsum(h, -1)
    k = torch.arange(W, device=log_h.device)
    reached = (H >= 1 - eps) | (k == W - 1)  # ACT's cap: at most W steps
    N = reached.to(torch.uint8).argmax(-1) + 1  # the first step whose running total reaches 1 − eps (argmax: first maximum)
    runs, before = k < N[..., None], k < N[..., None] - 1
    zero = torch.zeros_like(h)
    log_left_prev = torch.log1p(-torch.where(runs, H - h, zero))  # log(1 − H_{n−1}), finite on the steps that run
    log_left = torch.log1p(-torch.where(before, H, zero))  # log(1 − H_n), used only before N
    log_lam = torch.where(before, log_h - log_left_prev, zero)  # hazard λ_n = h_n / (1 − H_{n−1})
    log_1mlam = torch.where(before, log_left - log_left_prev, zero)  # 1 − λ_n = (1 − H_n) / (1 − H_{n−1})
    log_p = log_stop_probs(log_1mlam, log_lam, step_mask=runs)
    R = log_left_prev.gather(-1, (N - 1)[..., None]).squeeze(-1).exp()
    return log_p, N, R


def act_ponder_cost(log_h: torch.Tensor, eps: float = 0.01) -> torch.Tensor:
    "ACT's ponder cost P = N + R per token; N is piecewise constant, so the gradient flows through the remainder R alone."
    _, N, R = act_halting(log_h, eps)
    return N.to(R.dtype) + R


def act_output(log_p: torch.Tensor, step_logits: torch.Tensor) -> torch.Tensor:
    "ACT's readout: log_softmax of the halting-weighted mean of the step logits, Σ_n p_n z_n; `log_p [..., W]`, `step_logits [..., W, V]`."
    _check_log_probs(log_p, "log_p")
    if not isinstance(step_logits, torch.Tensor) or not step_logits.is_floating_point():
        raise TypeError("step_logits must be a floating-point tensor [..., W, V]")
    if step_logits.shape[:-1] != log_p.shape:
        raise ValueError(f"step_logits must have shape [..., W, V] with [..., W] = {tuple(log_p.shape)}, got {tuple(step_logits.shape)}")
    p = log_p.exp()[..., None]
    z = torch.where(p > 0, p * step_logits, torch.zeros_like(step_logits)).sum(-2)  # steps after N take no part, even at −inf
    return torch.log_softmax(z, -1)


def act_loss(log_h: torch.Tensor, step_logits: torch.Tensor, targets: torch.Tensor, tau: float,
             eps: float = 0.01) -> torch.Tensor:
    "Per-token ACT loss: −log softmax(Σ_n p_n z_n)[target] + τ·(N + R); `log_h [..., W]`, `step_logits [..., W, V]`, `targets [...]`."
    tau = _check_weight(tau, "tau")
    log_p, N, R = act_halting(log_h, eps)
    out = act_output(log_p, step_logits)
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.shape != log_h.shape[:-1]:
        raise ValueError(f"targets must be an integer tensor of shape {tuple(log_h.shape[:-1])}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= out.shape[-1]):
        raise ValueError(f"targets must lie in [0, V={out.shape[-1]})")
    return -out.gather(-1, targets[..., None]).squeeze(-1) + tau * (N.to(R.dtype) + R)

# %%
show_doc(act_halting)

# %%
show_doc(act_ponder_cost)

# %%
show_doc(act_output)

# %%
show_doc(act_loss)

# %% [markdown]
# The exported functions agree with the small versions of sections 1–4 on the running example, in float64 and in
# float32, and on a random batch; the inputs they refuse name themselves.

# %%
torch.testing.assert_close(halting_distribution(lam.log(), torch.log1p(-lam)).exp(), s)
torch.testing.assert_close(geometric_prior(0.5, 4), q)
torch.testing.assert_close(expected_nll(s.log(), log_t), L_rec)
torch.testing.assert_close(kl_divergence(s.log(), q.log()), kl_sq)
torch.testing.assert_close(ponder_net_loss(log_d, log_1md, log_t, 0.5, 1.0), L_rec + kl_sq)
lp, N_, R_ = act_halting(s.log())
torch.testing.assert_close(lp.exp(), p_act); test_eq(int(N_), 4); test_close(float(R_), 0.168, eps=1e-12)
test_close(float(act_ponder_cost(s.log())), 4.168, eps=1e-12)
torch.testing.assert_close(-act_output(lp, z)[0], act_nll)
# float32 and a batch: same numbers within float32 precision
f32 = ponder_net_loss(log_d.float(), log_1md.float(), log_t.float(), 0.5, 1.0)
test_close(float(f32), float(L_rec + kl_sq), eps=1e-5)
torch.manual_seed(0)
a = torch.randn(5, 3, 6, dtype=dtype)
lh = F.logsigmoid(a)
lpb, Nb, Rb = act_halting(lh)
test_close(lpb.exp().sum(-1), torch.ones(5, 3, dtype=dtype), eps=1e-12)
test_fail(lambda: ponder_net_loss(log_d, log_1md, log_t, 1.5, 0.1), contains="lambda_p")
test_fail(lambda: ponder_net_loss(log_d, log_1md, log_t, 0.5, -1), contains="beta")
test_fail(lambda: ponder_net_loss(log_d, log_1md, log_t[:3], 0.5, 0.1), contains="log_t")
test_fail(lambda: ponder_net_loss(log_d, log_d, log_t, 0.5, 0.1), contains="log(1 − d)")
test_fail(lambda: act_halting(lh, eps=1.0), contains="eps")
test_fail(lambda: act_halting(a), contains="log_h")
test_fail(lambda: geometric_prior(0.5, 0), contains="W")

# %% [markdown]
# ## 6. Side by side on the running example
#
# Every loss below is computed by the library on the same $d$ and $t$. CYB-VA and CYB-DP come from `cyb_va_loss` and
# `cyb_dp_loss`, which take step logits: with no δ prior shift, the logits $(\log t_i(1-d_i),\ \log (1-t_i)(1-d_i),\ \log
# d_i)$ over a two-token vocabulary plus δ reproduce exactly this $d$ and $t$. ACT reads CYB's stopping masses as its
# halting units ($h = s$, section 4) and the two-outcome readout (section 4); its compute column is the ponder cost $P$, the
# others' is $\mathbb{E}[S]$, the mean number of steps a sampled stop spends.

# %%
def logits_from_parts(d, t):  # one token, W steps, vocabulary {correct, wrong} + δ, no prior shift
    cols = [(t * (1 - d)).log(), ((1 - t) * (1 - d)).log(), torch.where(d > 0, d, torch.ones_like(d)).log()]
    return torch.stack(cols, -1)[None, None]  # [1, 1, W, 3]; the last step's δ logit is ignored (d_W ≡ 0)

logits, target = logits_from_parts(d, t), torch.zeros(1, 1, dtype=torch.long)
uniform = [1, 1, 1, 1]
E_S = float((steps * s).sum())
tau = 0.01
rows = [  # (method, data term, compute / prior term, loss, compute)
    ("CYB-AP (ω = 0:0:0:1, γ ≡ 1)", "−log Σ s t", "none", float(cyb_nll(log_d, log_1md, log_t)[0]), E_S),
    ("CYB-VA (ρ uniform)", "−Σ s log t", "KL(s‖ρ)", float(cyb_va_loss(logits, target, uniform, dk_prior=None)), E_S),
    ("CYB-VA (ρ = p_G(0.5))", "−Σ s log t", "KL(s‖ρ)", float(cyb_va_loss(logits, target, q, dk_prior=None)), E_S),
    ("CYB-DP (ρ uniform, α = 0.01)", "−log Σ s t", "0.01·KL(ρ‖s)", float(cyb_dp_loss(logits, target, uniform, 0.01, dk_prior=None)), E_S),
    ("PonderNet (β = 0)", "−Σ s log t", "none", float(ponder_net_loss(log_d, log_1md, log_t, 0.5, 0.0)), E_S),
    ("PonderNet (λ_p = 0.5, β = 0.01)", "−Σ s log t", "0.01·KL(s‖p_G)", float(ponder_net_loss(log_d, log_1md, log_t, 0.5, 0.01)), E_S),
    ("PonderNet (λ_p = 0.5, β = 1)", "−Σ s log t", "KL(s‖p_G)", float(ponder_net_loss(log_d, log_1md, log_t, 0.5, 1.0)), E_S),
    (f"ACT (h = s, ε = 0.01, τ = {tau})", "−log softmax(Σ p z)", f"{tau}·(N + R)",
     float(act_loss(s.log(), z, torch.tensor(0), tau)), float(act_ponder_cost(s.log()))),
]
table = "| method | data term | compute / prior term | loss (nats) | compute (steps) |\n|---|---|---|---|---|\n"
table += "\n".join(f"| {m} | {dt} | {ct} | {v:.4f} | {c:.3f} |" for m, dt, ct, v, c in rows)
display(Markdown(table))

# %% [markdown]
# Checked against the hand-worked numbers of sections 2–4: AP $1.0765$; VA with a uniform $\rho$: $1.2884 + \mathrm{KL}(s\|
# \text{uniform}) = 1.2884 + (\log 4 - H(s)) = 1.2884 + (1.3863 - 1.3646) = 1.3100$; DP: $1.0765 + 0.01 \cdot 0.0235 =
# 1.0767$; PonderNet $1.2884$, $1.28995$, $1.4451$ — the last one equal to VA with $\rho = p_G$; ACT $1.1907 + 0.01 \cdot
# 4.168 = 1.2324$.

# %%
got = {m: v for m, _, _, v, _ in rows}
hand = [1.0765, 1.3100, 1.4451, 1.0767, 1.2884, 1.28995, 1.4451, 1.2324]
for (m, *_), want in zip(rows, hand):
    assert abs(got[m] - want) < 5e-5, (m, got[m], want)
test_close(got["CYB-VA (ρ = p_G(0.5))"], got["PonderNet (λ_p = 0.5, β = 1)"], eps=1e-12)  # VA = PonderNet at β = 1

# %% [markdown]
# ## 7. The correspondences in one table
#
# | | ACT (Graves 2016) | PonderNet (Banino et al. 2021) | CYB (this book) |
# |---|---|---|---|
# | inner step | an extra RNN update on the same input | an application of the step function | a pause token `<pause_k>` |
# | halting signal | unconditional unit $h_n$ | conditional $\lambda_n$ | conditional $1 - d_i$ (not saying δ) |
# | halting distribution | $p_n = h_n$, $p_N = R$ = stick-breaking with hazards $h_n/(1-H_{n-1})$, cut at $N$ | $p_n = \lambda_n\prod_{j<n}(1-\lambda_j)$ | $s_i = (1-d_i)\prod_{j<i} d_j$ — the same with $\lambda \leftrightarrow 1-d$ |
# | last step | $N$, data-dependent ($H_N \ge 1-\varepsilon$), no gradient | maximum $N$ with $\lambda_N = 1$ | $W$ with $d_W \equiv 0$ (or a deadline ω, chapter 01) |
# | data term | loss of the mean output $\mathcal{L}(\sum_n p_n y_n)$ | expected loss $\sum_n p_n \mathcal{L}(\hat y_n)$ (expectation of a log) | mixture NLL $-\log\sum_i s_i t_i$ (log of an expectation) |
# | compute term | ponder cost $\tau(N + R)$ | $\beta\,\mathrm{KL}(p\,\|\,p_G(\lambda_p))$ | AP: none; VA: $\mathrm{KL}(s\,\|\,\rho)$ (PonderNet's direction, $\beta = 1$); DP: $\alpha\,\mathrm{KL}(\rho\,\|\,s)$ (reversed) |
# | compute at test time | $N$ steps, deterministic | a sampled $S$: $\mathbb{E}[S]$ | the first step without δ: $\mathbb{E}[S] = 1 + \mathbb{E}[\text{pauses}]$ |
# | running example | $P = 4.168$, loss $1.1907$ (two-outcome readout) | $1.2884 + \beta \cdot 0.1567$ | AP $1.0765$, $\mathbb{E}[S] = 2.288$ |

# %% [markdown]
# ## 8. Where they differ: one small task
#
# Two experiments, each a few hundred Adam steps on free per-token halting logits with the $t$ profiles held fixed
# (seconds on a CPU). For CYB and PonderNet the logits give $d_i = \sigma(a_i)$; for ACT they give the halting units
# $h_n = \sigma(a_n)$, started where ACT's weights equal CYB's starting $s$, so all methods start from the same stopping
# distribution. ACT reads out through the two-outcome logits of section 4.
#
# **(a) Tokens whose $t$ rises at different rates, $W = 6$.** An *easy* token is nearly right from step 1; a *medium* one
# becomes right at step 3; a *slow* one keeps improving a little at every step.

# %%
def fit(method, T, pi, iters=400, lr=0.1, beta=0.0, lambda_p=0.5, tau=0.0):
    "Learn free halting logits per token for fixed t `T [K, C, W]` over C contexts with weights `pi [K, C]`; return s and compute."
    K, C, W = T.shape
    log_T, log_1mT = T.log(), torch.log1p(-T)
    s0 = log_stop_probs(F.logsigmoid(torch.zeros(K, W, dtype=dtype)), F.logsigmoid(torch.zeros(K, W, dtype=dtype))).exp()
    a = (torch.logit(s0) if method == "ACT" else torch.zeros(K, W, dtype=dtype)).requires_grad_(True)
    opt = torch.optim.Adam([a], lr=lr)
    for _ in range(iters):
        if method == "ACT":
            log_h = F.logsigmoid(a)[:, None].expand(K, C, W)
            z = torch.stack([log_T, log_1mT], -1)  # [K, C, W, 2]
            per = act_loss(log_h, z, torch.zeros(K, C, dtype=torch.long), tau)
        else:
            ld, l1 = F.logsigmoid(a)[:, None].expand(K, C, W), F.logsigmoid(-a)[:, None].expand(K, C, W)
            per = cyb_nll(ld, l1, log_T)[0] if method == "CYB-AP" else ponder_net_loss(ld, l1, log_T, lambda_p, beta)
        loss = (pi * per).sum()
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        i = torch.arange(1, W + 1, dtype=dtype)
        if method == "ACT":
            lp, N, R = act_halting(F.logsigmoid(a))
            return lp.exp(), N.to(dtype)  # ACT runs N steps
        s_ = log_stop_probs(F.logsigmoid(a), F.logsigmoid(-a)).exp()
        return s_, (i * s_).sum(-1)

T_a = torch.tensor([[0.90, 0.95, 0.96, 0.96, 0.96, 0.96],   # easy
                    [0.02, 0.20, 0.90, 0.95, 0.96, 0.96],   # medium: right from step 3
                    [0.10, 0.20, 0.30, 0.40, 0.50, 0.60]],  # slow: improves at every step
                   dtype=dtype)[:, None]  # [K=3, C=1, W=6]
pi_a = torch.ones(3, 1, dtype=dtype)
methods = {"CYB-AP": dict(method="CYB-AP"), "PonderNet β=0": dict(method="PN", beta=0.0),
           "PonderNet β=0.1, λp=0.5": dict(method="PN", beta=0.1), "ACT τ=0.01": dict(method="ACT", tau=0.01),
           "ACT τ=0.05": dict(method="ACT", tau=0.05)}
res_a = {name: fit(T=T_a, pi=pi_a, **kw) for name, kw in methods.items()}
fig, axes = plt.subplots(1, 3, figsize=(11, 2.8), sharey=True)
for k, (ax, title) in enumerate(zip(axes, ["easy", "medium (right from step 3)", "slow (improves every step)"])):
    for j, (name, (s_, c_)) in enumerate(res_a.items()):
        ax.bar(torch.arange(1, 7) + (j - 2) * 0.16, s_[k], 0.16, label=f"{name}")
    ax.plot(range(1, 7), T_a[k, 0], "k.--", lw=0.8, label="t_i")
    ax.set_title(title, fontsize=9); ax.set_xlabel("step i"); ax.set_xticks(range(1, 7))
axes[0].set_ylabel("learned s_i")
h_, l_ = axes[0].get_legend_handles_labels()
fig.legend(h_, l_, loc="lower center", ncol=6, fontsize=8, frameon=False)
plt.tight_layout(rect=(0, 0.1, 1, 1))

# %%
print(f"{'method':26s} " + "  ".join(f"{n:>8s}" for n in ["easy", "medium", "slow"]) + "   (E[S]; ACT: N steps run)")
for name, (s_, c_) in res_a.items():
    print(f"{name:26s} " + "  ".join(f"{float(c):8.2f}" for c in c_))
ap_s, pn0_s = res_a["CYB-AP"][0], res_a["PonderNet β=0"][0]
assert (ap_s - pn0_s).abs().max() < 0.02  # same minimisers on fixed t
assert res_a["CYB-AP"][0][2, -1] > 0.95  # no compute cost: the slow token waits for its best step
assert res_a["ACT τ=0.05"][1][0] <= 2 and res_a["ACT τ=0.05"][1][2] >= res_a["ACT τ=0.05"][1][0]

# %% [markdown]
# What the figure shows, and why:
#
# - **CYB-AP and PonderNet with $\beta = 0$ land on the same $s$.** With $t$ fixed, both data terms are minimised by putting
#   all mass on the steps with the largest $t_i$ ($-\log\sum_i s_i t_i$ falls as $\sum_i s_i t_i$ rises, which is linear in
#   $s$; $\sum_i s_i(-\log t_i)$ is linear in $s$). Among steps with *equal* $t$ neither has a preference, so the mass stays
#   spread over the plateau as gradient descent happened to move it there. The difference between the two data terms is in
#   how they *train $t$* (section 2) and, below, in what happens when one $s$ must serve several contexts.
# - **Neither has a compute cost.** The slow token waits for step 6, because every step is a little better; that is the
#   "waiting is free" property of CYB-AP with $\gamma \equiv 1$ (chapter 02).
# - **PonderNet's prior pulls the stop earlier and spreads it**: the optimum of $\sum_i s_i\ell_i + \beta\,\mathrm{KL}(s\|p_G)$
#   is $s_i \propto p_G(i)\, t_i^{1/\beta}$ (exercise 1), a trade between "good" ($t^{10}$) and "early" ($p_G$ halves at each
#   step).
# - **ACT's ponder cost truncates**: it runs a deterministic $N$ and stops as soon as one more step is worth less than
#   $\tau$; with $\tau = 0.05$ the easy token runs 2 steps, while the slow token, whose gains stay above $\tau$, still runs
#   all 6 (its ponder cost is $N + R \approx 7$ because nearly all the mass sits in the remainder).
#
# **(b) One $s$ for two contexts: where the log's place matters.** The halting is computed from what the model has read,
# not from the answer. Take one token that, after the same prefix, is followed by two kinds of continuation: kind A
# (probability 0.6) is best predicted at step 1 and gets *worse* with more steps (the pauses drift),
# $t^A = (0.9, 0.7, 0.4, 0.3)$; kind B (0.4) needs pauses, $t^B = (0.05, 0.2, 0.9, 0.9)$. The same $s$ serves both.
#
# - PonderNet's data term is $\sum_c \pi_c \sum_i s_i(-\log t^c_i) = \sum_i s_i\, \bar\ell_i$ with $\bar\ell_i = \sum_c \pi_c
#   (-\log t^c_i)$ — still *linear* in $s$, so its minimum is a vertex: it **commits to the one step** with the lowest average
#   log-loss. $\bar\ell = (1.261, 0.858, 0.592, 0.765)$: step 3.
# - CYB-AP's is $-\sum_c \pi_c \log \sum_i s_i t^c_i$ — a sum of convex functions of $s$, not linear. On $s = (x, 0, 1-x, 0)$
#   its derivative is zero where $0.6 \cdot 0.5/(0.4 + 0.5x) = 0.4 \cdot 0.85/(0.9 - 0.85x)$, i.e. $0.27 - 0.255x = 0.136 +
#   0.17x$, $x = 0.134/0.425 = 0.315$. CYB **hedges**: $s^\ast = (0.315, 0, 0.685, 0)$, each of the two steps being right for
#   one kind of continuation. Its mixture NLL is $0.534$ nats, against $0.592$ for the committed $s$ — and the mixture NLL is
#   what both models are scored on at test time, since both answer at a sampled step (section 2).

# %%
T_b = torch.tensor([[[0.9, 0.7, 0.4, 0.3], [0.05, 0.2, 0.9, 0.9]]], dtype=dtype)  # [K=1, C=2, W=4]
pi_b = torch.tensor([[0.6, 0.4]], dtype=dtype)
methods_b = {"CYB-AP": dict(method="CYB-AP"), "PonderNet β=0": dict(method="PN", beta=0.0),
             "PonderNet β=0.1, λp=0.5": dict(method="PN", beta=0.1), "ACT τ=0.01": dict(method="ACT", tau=0.01)}
res_b = {name: fit(T=T_b, pi=pi_b, iters=1500, **kw) for name, kw in methods_b.items()}

def mixture_nll_b(s_):  # the test-time score of "stop at S ~ s, answer there", averaged over the two kinds
    return float(-(pi_b[0] * (s_[0] * T_b[0]).sum(-1).log()).sum())

xs = torch.linspace(0, 1, 201, dtype=dtype)
S_line = torch.stack([xs, torch.zeros_like(xs), 1 - xs, torch.zeros_like(xs)], -1)  # s = (x, 0, 1 − x, 0)
mix_line = -(pi_b[0, 0] * (S_line @ T_b[0, 0]).log() + pi_b[0, 1] * (S_line @ T_b[0, 1]).log())
exp_line = S_line @ (-(pi_b[0][:, None] * T_b[0].log()).sum(0))
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
for j, (name, (s_, _)) in enumerate(res_b.items()):
    ax1.bar(torch.arange(1, 5) + (j - 1.5) * 0.2, s_[0], 0.2, label=f"{name} (mixture NLL {mixture_nll_b(s_):.3f})")
ax1.set_xticks(range(1, 5)); ax1.set_xlabel("step i"); ax1.set_ylabel("learned s_i")
ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, frameon=False)
ax1.set_title("one s for two kinds of continuation", fontsize=9)
ax2.plot(xs, mix_line, label="CYB-AP: −Σ π log Σ s t (mixture)"); ax2.plot(xs, exp_line, label="PonderNet: Σ π Σ s (−log t) (expected)")
ax2.axvline(0.315, color="grey", ls=":", lw=0.8); ax2.set_xlabel("x, with s = (x, 0, 1 − x, 0)"); ax2.set_ylabel("nats")
ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False); ax2.set_title("the two data terms along one edge of the simplex", fontsize=9)
plt.tight_layout()

# %%
s_ap, s_pn = res_b["CYB-AP"][0][0], res_b["PonderNet β=0"][0][0]
print("CYB-AP     s =", [round(x, 3) for x in s_ap.tolist()], " mixture NLL", round(mixture_nll_b(res_b["CYB-AP"][0]), 4))
print("PonderNet0 s =", [round(x, 3) for x in s_pn.tolist()], " mixture NLL", round(mixture_nll_b(res_b["PonderNet β=0"][0]), 4))
assert abs(float(s_ap[0]) - 0.315) < 0.02 and abs(float(s_ap[2]) - 0.685) < 0.02  # hedges, as derived
assert float(s_pn[2]) > 0.95  # commits to step 3
assert abs(mixture_nll_b(res_b["CYB-AP"][0]) - 0.534) < 2e-3 and abs(mixture_nll_b(res_b["PonderNet β=0"][0]) - 0.592) < 5e-3
assert abs(float(xs[mix_line.argmin()]) - 0.315) < 0.01 and int(exp_line.argmin()) == 0
ell_bar = -(pi_b[0][:, None] * T_b[0].log()).sum(0)  # average log-loss per step
gibbs = geometric_prior(0.5, 4) * torch.exp(-ell_bar / 0.1); gibbs = gibbs / gibbs.sum()
torch.testing.assert_close(res_b["PonderNet β=0.1, λp=0.5"][0][0], gibbs, atol=5e-3, rtol=0)

# %% [markdown]
# The trained $s$ matches the derivation: CYB-AP hedges between steps 1 and 3 and scores $0.534$; PonderNet with $\beta = 0$
# commits to step 3 and scores $0.592$ on the same test. With $\beta = 0.1$ PonderNet lands on the Gibbs form of exercise 1,
# $s_i \propto p_G(i)\, e^{-\bar\ell_i/\beta}$ (checked below): mostly step 3, a little on its neighbours, nothing on step 1,
# which is right for 60 % of the continuations. ACT hedges too — its loss of the mean logits is, like the mixture, not
# linear in $p$ — but ACT runs its $N = 3$ steps every time, while a CYB model that stops at a sampled step spends
# $\mathbb{E}[S] = 2.37$ steps on average for the same score. The lesson for a language model, where the next token is genuinely uncertain given the prefix: a loss that is an
# expectation of a log treats the halting step as a choice to be made *once*; the log of an expectation treats it as a
# mixture whose components may each be right for a different continuation.

# %%
for name, (s_, c_) in res_b.items():
    print(f"{name:26s} s = {[round(x, 3) for x in s_[0].tolist()]}  mixture NLL {mixture_nll_b(s_):.4f}  compute {float(c_[0]):.2f}")

# %% [markdown]
# ## Summary
#
# - **One halting distribution.** PonderNet's $p_n = \lambda_n\prod_{j<n}(1-\lambda_j)$ is CYB's $s_i$ with $\lambda_i =
#   1 - d_i$ — the same `log_stop_probs`. ACT's halting units are the *unconditional* masses; their hazards
#   $h_n/(1-H_{n-1})$ turn them into the same stick-breaking distribution, cut at the data-dependent step $N$ where the
#   remainder $R$ is forced.
# - **Three readouts.** ACT: loss of the mean output; PonderNet: mean of the losses (expectation of a log, a Jensen upper
#   bound); CYB: loss of the mean probability (log of an expectation), the likelihood of answering at a sampled step.
#   Running example: CYB $1.0765$, ACT $1.1907$ (two-outcome readout), PonderNet $1.2884$ nats.
# - **Three compute terms.** ACT's $\tau(N + R)$ (deterministic steps, gradient through $R$ only); PonderNet's
#   $\beta\,\mathrm{KL}(p\|p_G)$ — CYB-VA is exactly PonderNet with $\beta = 1$ and $\rho = p_G$; CYB-DP's $\alpha\,
#   \mathrm{KL}(\rho\|s)$ runs the other way; CYB-AP has none.
# - **Behaviour.** On fixed $t$, the two data terms share their minimisers; the regularisers decide the compute. When one
#   $s$ must serve several continuations, the expected loss commits to a single step and the mixture hedges, and the
#   mixture's choice scores better on the test both are judged by ($0.534$ vs $0.592$ nats). ACT hedges as well but pays
#   for every step it runs ($N = 3$ against CYB's $\mathbb{E}[S] = 2.37$).

# %% [markdown]
# ## Exercises
#
# **Exercise 1 (pen and paper, then code).** Minimise PonderNet's loss over the stopping distribution itself:
# $\min_s \sum_i s_i \ell_i + \beta \sum_i s_i \log(s_i/p_G(i))$ subject to $\sum_i s_i = 1$, with $\ell_i = -\log t_i$ fixed.
# Show that the minimiser is $s_i \propto p_G(i)\, t_i^{1/\beta}$ and that the minimum is $-\beta \log\sum_i p_G(i)\,
# t_i^{1/\beta}$. What does the minimum become at $\beta = 1$, and what does that say about CYB-VA?
#
# <details><summary>Solution</summary>
#
# Add a Lagrange multiplier $\mu$ for $\sum_i s_i = 1$ and set the derivative in $s_i$ to zero:
# $\ell_i + \beta(\log s_i - \log p_G(i) + 1) + \mu = 0$, so $\log s_i = \log p_G(i) - \ell_i/\beta + \text{const}$, i.e.
# $s_i = p_G(i)\, e^{-\ell_i/\beta}/Z = p_G(i)\, t_i^{1/\beta}/Z$ with $Z = \sum_j p_G(j)\, t_j^{1/\beta}$. Put it back:
# $\log(s_i/p_G(i)) = -\ell_i/\beta - \log Z$, so the loss is $\sum_i s_i \ell_i + \beta\sum_i s_i(-\ell_i/\beta - \log Z) =
# -\beta\log Z$. At $\beta = 1$ the minimum is $-\log\sum_i p_G(i)\, t_i$: the log of the expectation of $t$ under the
# *prior* — the target objective $\ell_{\text{CYB}\rho}$ that CYB-VA bounds (chapter 03), reached at $s \propto \rho t$.
#
# ```python
# from cyb_nb.classics import *
# t = torch.tensor([0.1, 0.3, 0.5, 0.6], dtype=torch.float64)
# pG = geometric_prior(0.5, 4)
# for beta in (0.1, 0.5, 1.0, 3.0):
#     s_star = pG * t ** (1 / beta); s_star = s_star / s_star.sum()
#     loss = lambda s: float((s * -t.log()).sum() + beta * (s * (s / pG).log()).sum())
#     assert abs(loss(s_star) + beta * math.log(float((pG * t ** (1 / beta)).sum()))) < 1e-12
#     for seed in range(50):  # no random distribution does better
#         g = torch.Generator().manual_seed(seed)
#         r = torch.rand(4, generator=g, dtype=torch.float64) + 1e-3
#         assert loss(r / r.sum()) >= loss(s_star) - 1e-12
# ```
#
# </details>
#
# **Exercise 2 (code).** A common slip: feed ACT the *conditional* answer probabilities $1 - d = (0.3, 0.4, 0.6, 1)$ of the
# running example as its halting units. Compute $N$, $R$, the weights and the ponder cost, and compare with section 4.
#
# <details><summary>Solution</summary>
#
# $H = (0.3, 0.7, 1.3, \dots)$ reaches $0.99$ at $n = 3$, so $N = 3$, $R = 1 - 0.7 = 0.3$, the weights are $(0.3, 0.4,
# 0.3, 0)$ and $P = 3.3$. These are not CYB's $s = (0.3, 0.28, 0.252, 0.168)$: a conditional probability read as an
# unconditional one over-counts the later steps (step 2 gets $0.4$ instead of $0.4 \cdot 0.7$) and the threshold then
# cuts off step 4.
#
# ```python
# from cyb_nb.classics import *
# d = torch.tensor([0.7, 0.6, 0.4, 0.0], dtype=torch.float64)
# log_p, N, R = act_halting(torch.log1p(-d))
# assert int(N) == 3 and abs(float(R) - 0.3) < 1e-12
# torch.testing.assert_close(log_p.exp(), torch.tensor([0.3, 0.4, 0.3, 0.0], dtype=torch.float64))
# assert abs(float(act_ponder_cost(torch.log1p(-d))) - 3.3) < 1e-12
# ```
#
# </details>
#
# **Exercise 3 (pen and paper, then code).** ACT's gradient. For fixed $N$, write $P = N + 1 - \sum_{n<N} h_n$ and show that
# $\partial P/\partial h_n = -1$ for $n < N$ and $0$ for $n \ge N$. Then check it with autograd on halting units
# $h = (0.3, 0.28, 0.252, 0.168)$ (so $N = 4$), differentiating with respect to $\log h$ (chain rule: multiply by $h_n$).
#
# <details><summary>Solution</summary>
#
# $R = 1 - H_{N-1} = 1 - \sum_{n<N} h_n$ contains $h_1, \dots, h_{N-1}$ with coefficient $-1$ and no later unit; $N$ is
# constant as long as no $H_n$ crosses $1-\varepsilon$. With respect to $\log h_n$ the gradient is $-h_n$ for $n < N$:
# $(-0.3, -0.28, -0.252, 0)$.
#
# ```python
# from cyb_nb.classics import *
# log_h = torch.tensor([0.3, 0.28, 0.252, 0.168], dtype=torch.float64).log().requires_grad_(True)
# P = act_ponder_cost(log_h)
# (g,) = torch.autograd.grad(P, log_h)
# torch.testing.assert_close(g, torch.tensor([-0.3, -0.28, -0.252, 0.0], dtype=torch.float64))
# assert abs(float(P) - 4.168) < 1e-12
# ```
#
# </details>
#
# **Exercise 4 (code).** The other truncation of the geometric prior puts the tail on the last step:
# $\tilde p_G(i) = \lambda_p(1-\lambda_p)^{i-1}$ for $i < W$ and $\tilde p_G(W) = (1-\lambda_p)^{W-1}$ — the halting
# process with $\lambda_i = \lambda_p$ for every step, the last forced. Show that `halting_distribution` produces it, and
# compute $\mathrm{KL}(s\|\tilde p_G)$ for the running example with $\lambda_p = 0.5$. Which truncation charges the running
# example less, and why?
#
# <details><summary>Solution</summary>
#
# $\tilde p_G = (0.5, 0.25, 0.125, 0.125)$. It gives step 4 twice the renormalised prior's mass ($0.125$ vs $0.0667$) and
# the early steps less, and the running example's $s$ has much of its mass late, so $\mathrm{KL}(s\|\tilde p_G) = 0.1048$
# is below $\mathrm{KL}(s\|p_G) = 0.1567$.
#
# ```python
# from cyb_nb.classics import *
# lam = torch.full((4,), 0.5, dtype=torch.float64)
# tail = halting_distribution(lam.log(), torch.log1p(-lam)).exp()
# torch.testing.assert_close(tail, torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64))
# s = torch.tensor([0.3, 0.28, 0.252, 0.168], dtype=torch.float64)
# kl_tail, kl_renorm = float(kl_divergence(s.log(), tail.log())), float(kl_divergence(s.log(), geometric_prior(0.5, 4).log()))
# assert abs(kl_tail - 0.1048) < 5e-5 and abs(kl_renorm - 0.1567) < 5e-5 and kl_tail < kl_renorm
# ```
#
# </details>
#
# **Exercise 5 (pen and paper, then code).** In experiment (b), find the mixture's optimum on the edge $s = (x, 0, 1-x, 0)$
# for a general share $\pi$ of kind A, and the value of $\pi$ below which CYB-AP stops hedging ($x = 0$). Check that steps 2
# and 4 do not want mass at the optimum for $\pi = 0.6$ (the KKT condition: $\partial F/\partial s_i \le 1$ for
# $F = \sum_c \pi_c\log\sum_i s_i t^c_i$, with equality on the support).
#
# <details><summary>Solution</summary>
#
# On the edge, kind A's mixture is $0.4 + 0.5x$ and kind B's $0.9 - 0.85x$. Setting the derivative of
# $\pi\log(0.4 + 0.5x) + (1-\pi)\log(0.9 - 0.85x)$ to zero: $0.5\pi(0.9 - 0.85x) = 0.85(1-\pi)(0.4 + 0.5x)$, so
# $x = (0.45\pi - 0.34(1-\pi))/(0.425\pi + 0.425(1-\pi)) = (0.79\pi - 0.34)/0.425$. It is positive when $\pi > 0.34/0.79 =
# 0.430$; below that CYB-AP also puts everything on step 3. At $\pi = 0.6$: $x = 0.134/0.425 = 0.3153$; the partial
# derivatives are $1$ on steps 1 and 3 and $0.880$, $0.892$ on steps 2 and 4.
#
# ```python
# tA = torch.tensor([0.9, 0.7, 0.4, 0.3], dtype=torch.float64); tB = torch.tensor([0.05, 0.2, 0.9, 0.9], dtype=torch.float64)
# x_opt = lambda pi: (0.79 * pi - 0.34) / 0.425
# assert abs(x_opt(0.6) - 0.3153) < 1e-4 and abs(0.34 / 0.79 - 0.430) < 1e-3
# s = torch.tensor([x_opt(0.6), 0, 1 - x_opt(0.6), 0], dtype=torch.float64).requires_grad_(True)
# F = 0.6 * (s @ tA).log() + 0.4 * (s @ tB).log()
# (g,) = torch.autograd.grad(F, s)
# assert abs(float(g[0]) - 1) < 1e-9 and abs(float(g[2]) - 1) < 1e-9 and float(g[1]) < 0.9 and float(g[3]) < 0.9
# ```
#
# </details>

# %% [markdown]
# ## Check yourself
#
# 1. PonderNet's $\lambda_n$ and ACT's $h_n$ are both called "halting probabilities". Which one is CYB's $1 - d_i$, and how
#    do you turn the other into it?
# 2. Why is PonderNet's expected loss never below CYB-AP's mixture NLL on the same $s$ and $t$, and when are they equal?
# 3. A colleague codes PonderNet's regulariser as `nn.KLDivLoss()(p.log(), p_G)`. Which of the book's losses has that KL
#    direction, and what changes if $p_G$ had zeros?
# 4. ACT's ponder cost on the running example is $4.168$ while $\mathbb{E}[S] = 2.288$. What does each count?
# 5. With the $t$ profiles fixed, CYB-AP and PonderNet ($\beta = 0$) learned the same $s$ in experiment (a) but not in (b).
#    What is different about (b)?
#
# <details><summary>Answers</summary>
#
# 1. $\lambda_n$ (conditional on not having halted) is $1 - d_i$. ACT's $h_n$ is unconditional; $\lambda_n = h_n/(1 - H_{n-1})$.
# 2. Jensen: $-\log$ is convex, so $-\log\mathbb{E}[t_S] \le \mathbb{E}[-\log t_S]$; equal when $t$ is constant on the
#    support of $s$.
# 3. It computes $\mathrm{KL}(p_G\|p)$, CYB-DP's direction. Zeros in $p_G$ would then be harmless ($0 \log 0 = 0$), while
#    PonderNet's written $\mathrm{KL}(p\|p_G)$ would be infinite wherever $p > 0 = p_G$.
# 4. $P = N + R$ counts the $N = 4$ steps ACT runs (all of them, for its mean) plus the remainder; $\mathbb{E}[S]$ is the
#    mean number of steps spent by a model that stops at a sampled step.
# 5. In (b) one $s$ serves two contexts with different best steps. The expected loss stays linear in $s$ (a vertex); the
#    mixture's average of logs is not, and its optimum is inside the simplex.
#
# </details>

