"""Decoding tests: KV-cached Recipe 1 equals uncached step logits, adaptive pauses follow d, statistics vs references.

References are written here independently of cyb_nb.decode: float64 loops, scipy.stats.spearmanr, and uncached
`forward_steps` on the Recipe-2 stream the adaptive decoder claims to have built.
"""
import math
import statistics

import pytest
import torch
from torch import nn

from cyb_nb.decode import (FROM_MODEL, DecodeConfig, ForceDontKnow, calibration, cached_step_logits, decode_config, expected_latency_histogram, generate, head_readout,
                           latency_histogram, pause_stats_by_token, pause_table, readout, sample_next, score_adaptive,
                           score_fixed, spearman, stream_generate, token_stats)
from cyb_nb.losses import LossConfig
from cyb_nb.losses import head_log_probs
from cyb_nb.models import forward_steps
from cyb_nb.train import make_model

V = 12
torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared CPU


@pytest.fixture(scope="module")
def model():
    return make_model(V, "ap", n_pauses=3, size="tiny", seed=0, max_positions=256).eval()


class Forced(nn.Module):
    "Test wrapper: overwrite the δ logit (last column) with a constant, keeping the cache interface."

    def __init__(self, model, value):
        super().__init__()
        self.model, self.value, self.pause_vocab = model, value, model.pause_vocab

    def new_cache(self):
        from cyb_nb.decode import new_cache
        return new_cache(self.model)

    def forward(self, *a, **kw):
        z = self.model(*a, **kw).clone()
        z[..., -1] = self.value
        return z


def ids_(B=3, T=7, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- KV cache


@pytest.mark.parametrize("n_pauses", [0, 1, 3])
def test_cached_equals_uncached(n_pauses):
    m = make_model(V, "ap" if n_pauses else "ce", n_pauses=n_pauses, size="tiny", seed=1, max_positions=256).eval()
    ids = ids_(2, 9, seed=n_pauses)
    with torch.no_grad():
        ref, _ = forward_steps(m, ids, m.pause_vocab)
    got = cached_step_logits(m, ids)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() < 1e-5


def test_greedy_mixture_generation_matches_teacher_forced(model):
    "Greedy Recipe 1 generation picks the argmax of the teacher-forced mixture Σ s_i ŷ_i at every position."
    out = generate(model, [1, 2, 3], 6, temperature=0)
    full = torch.tensor([[1, 2, 3] + out["tokens"]])
    with torch.no_grad():
        sl, _ = forward_steps(model, full, model.pause_vocab)
    sl = sl.double()
    # independent float64 reference of the mixture
    logd, log1md, _ = head_log_probs(sl, torch.zeros(sl.shape[:-1], dtype=torch.long))
    d = logd.exp()
    y = torch.softmax(sl[..., :-1], -1)
    for t in range(2, full.shape[1] - 1):
        p, reach = torch.zeros(V, dtype=torch.float64), 1.0
        for i in range(4):
            s_i = reach * (1 - d[0, t, i]) if i < 3 else reach
            p += s_i * y[0, t, i]
            reach = reach * d[0, t, i]
        assert int(p.argmax()) == int(full[0, t + 1])


def test_events_fields(model):
    evs = list(stream_generate(model, [1, 2], 4, seed=0))
    assert len(evs) == 4
    for e in evs:
        assert e.positions == 4 and len(e.d) == 4 and abs(sum(e.s) - 1) < 1e-5 and 0 <= e.pauses <= 3
    evs = list(stream_generate(model, [1, 2], 4, mode="adaptive", seed=0, decode=lambda t: f"<{t[0]}>"))
    for e in evs:
        assert e.positions == e.pauses + 1 and len(e.d) == e.positions and e.text == f"<{e.token}>"


# ---------------------------------------------------------------- adaptive pauses


@pytest.mark.parametrize("value,expect", [(-1e4, 0), (1e4, 3)])
def test_forced_dont_know(model, value, expect):
    forced = Forced(model, value)
    g = generate(forced, [1, 2, 3], 5, mode="adaptive", seed=0)
    assert [e.pauses for e in g["events"]] == [expect] * 5
    assert g["positions_per_token"] == 1 + expect
    s = score_adaptive(forced, ids_())
    assert (s["pauses"] == expect).all() and s["positions_per_token"] == 1 + expect
    s = score_adaptive(forced, ids_(), halt="sample")
    assert (s["pauses"] == expect).all()
    # a smaller budget caps the pauses
    s = score_adaptive(forced, ids_(), max_pauses=1)
    assert (s["pauses"] == min(expect, 1)).all()
    # Recipe 1 does not adapt
    assert generate(forced, [1, 2, 3], 3)["positions_per_token"] == 4


def test_threshold_extremes(model):
    assert (score_adaptive(model, ids_(), threshold=0.0)["pauses"] == 3).all()  # d >= 0 always: pause to the deadline
    assert (score_adaptive(model, ids_(), threshold=1.0)["pauses"] == 0).all()  # d < 1 always: answer at once


@pytest.mark.parametrize("threshold", [0.5, 0.88, 0.9])
def test_adaptive_matches_uncached_recipe2_stream(model, threshold):
    "The cached adaptive decoder's NLL and d equal an uncached forward over the stream with its own pause counts."
    ids = ids_(3, 8, seed=3)
    sa = score_adaptive(model, ids, threshold=threshold)
    with torch.no_grad():
        sl, stream = forward_steps(model, ids, model.pause_vocab, counts=sa["pauses"])
    log_d, _, _ = head_readout(sl)
    log_y = torch.log_softmax(sl[..., :-1].double(), -1)
    for b in range(3):
        for t in range(8):
            k = int(sa["pauses"][b, t])
            assert torch.allclose(sa["d"][b, t, :k + 1].double(), log_d[b, t, :k + 1].exp().double(), atol=1e-5)
            if t < 7:
                assert abs(sa["nll"][b, t] + log_y[b, t, k, ids[b, t + 1]]) < 1e-4
            # the rule: pause while d >= threshold, answer at the first d < threshold (or at the deadline)
            d = sa["d"][b, t]
            assert all(d[i] >= threshold for i in range(k)) and (k == 3 or d[k] < threshold)


class Wobble(Forced):
    "Test wrapper: a δ logit that varies with the input id and position (the same in cached and uncached calls), so d spreads."

    def forward(self, ids, position_ids=None, **kw):
        z = self.model(ids, position_ids=position_ids, **kw).clone()
        z[..., -1] = 3.0 * torch.sin(1.3 * ids + 0.7 * position_ids)
        return z


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_mass_rule_matches_float64_reference(model, threshold):
    "halt='mass': pause while the mass not yet stopped, prod_j<=k d_j, is >= threshold; NLL of the deadline mixture, in float64."
    ids = ids_(3, 8, seed=4)
    model = Wobble(model, 0.0)
    sa = score_adaptive(model, ids, halt="mass", threshold=threshold)
    with torch.no_grad():
        sl, _ = forward_steps(model, ids, model.pause_vocab, counts=sa["pauses"])  # the stream the decoder says it built
    d_all = head_readout(sl.double())[0].exp()  # δ probability per step, in float64 (head_readout is checked against the losses' head)
    y_all = torch.softmax(sl[..., :-1].double(), -1)
    ks = set()
    for b in range(3):
        for t in range(8):
            k = int(sa["pauses"][b, t])
            ks.add(k)
            d = d_all[b, t]
            left = [math.prod(float(d[j]) for j in range(i + 1)) for i in range(4)]  # L_i
            assert all(left[i] >= threshold for i in range(k)) and (k == 3 or left[k] < threshold)
            if t < 7:
                y = y_all[b, t, :, ids[b, t + 1]]
                stopped = [(1 - float(d[i])) * (left[i - 1] if i else 1.0) for i in range(k)]
                p = sum(s * float(y[i]) for i, s in enumerate(stopped)) + (left[k - 1] if k else 1.0) * float(y[k])
                assert abs(float(sa["nll"][b, t]) + math.log(p)) < 1e-4
    if 0 < threshold < 1:
        assert len(ks) > 1, "the test should exercise more than one stopping step"


def test_mass_rule_ends_are_recipe1_and_answer_at_once(model):
    ids = ids_(3, 8, seed=5)
    assert score_adaptive(model, ids, halt="mass", threshold=0.0)["mean_nll"] == pytest.approx(score_fixed(model, ids)["mean_nll"], abs=1e-5)
    assert score_adaptive(model, ids, halt="mass", threshold=1.0)["mean_nll"] == pytest.approx(
        score_adaptive(model, ids, threshold=1.0)["mean_nll"], abs=1e-9)
    g_fixed = generate(model, [1, 2, 3], 8, temperature=0)
    g_mass = generate(model, [1, 2, 3], 8, mode="adaptive", halt="mass", threshold=0.0, temperature=0)
    assert g_mass["tokens"] == g_fixed["tokens"] and g_mass["positions_per_token"] == 4
    for e in generate(model, [1, 2, 3], 8, mode="adaptive", halt="mass", threshold=0.8, seed=0)["events"]:
        assert sum(e.s) == pytest.approx(1.0, abs=1e-6) and e.step == -1 and e.positions == e.pauses + 1
        assert all(x == 0 for x in e.s[e.positions:])  # no mass past the step where it stopped


# ---------------------------------------------------------------- statistics


def test_latency_histogram_sums_to_one(model):
    st = score_fixed(model, ids_(4, 10))
    h = latency_histogram(st["s"], st["mask"])
    assert abs(float(h.sum()) - 1) < 1e-5
    # brute force: mean of s over masked tokens, with a loop
    rows = [st["s"][b, t] for b in range(4) for t in range(10) if st["mask"][b, t]]
    assert torch.allclose(h, torch.stack(rows).mean(0), atol=1e-6)
    eh = expected_latency_histogram(st["expected_pauses"], st["mask"], W=4)
    assert abs(float(eh["freq"].sum()) - 1) < 1e-9 and eh["edges"].numel() == eh["freq"].numel() + 1


def test_token_stats_vs_bruteforce():
    g = torch.Generator().manual_seed(2)
    sl = torch.randn(2, 5, 4, V + 1, generator=g, dtype=torch.float64)
    tg = torch.randint(0, V, (2, 5), generator=g)
    tg[:, -1] = -100
    st = token_stats(sl, tg)
    logd, _, _ = head_log_probs(sl, torch.zeros(2, 5, 4, dtype=torch.long))
    d = logd.exp()
    for b in range(2):
        for t in range(4):
            y = torch.softmax(sl[b, t, :, :V], -1)[:, tg[b, t]]
            reach, p, ep = 1.0, 0.0, 0.0
            for i in range(4):
                s_i = reach * (1 - d[b, t, i]) if i < 3 else reach
                p, ep, reach = p + s_i * y[i], ep + i * s_i, reach * d[b, t, i]
            assert abs(st["nll"][b, t] + math.log(p)) < 1e-5
            assert abs(st["expected_pauses"][b, t] - ep) < 1e-5
        assert st["nll"][b, -1] == 0 and not st["mask"][b, -1]


def test_readout_mixture_and_argmax_bruteforce():
    g = torch.Generator().manual_seed(3)
    log_y = torch.log_softmax(torch.randn(2, 4, 6, generator=g, dtype=torch.float64), -1)
    log_s = torch.log_softmax(torch.randn(2, 4, generator=g, dtype=torch.float64), -1)
    lp, step = readout(log_y, log_s)
    for b in range(2):
        ref = sum(log_s[b, i].exp() * log_y[b, i].exp() for i in range(4))
        assert torch.allclose(lp[b].exp(), ref) and step[b] == -1
    lp, step = readout(log_y, log_s, "argmax_step")
    for b in range(2):
        i = max(range(4), key=lambda i: float(log_s[b, i]))
        assert step[b] == i and torch.equal(lp[b], log_y[b, i])


def test_top_k_restricts_support():
    log_p = torch.log_softmax(torch.randn(1, 20, generator=torch.Generator().manual_seed(4)), -1)
    allowed = set(log_p[0].topk(3).indices.tolist())
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(log_p, 1.5, top_k=3, generator=g)) for _ in range(200)}
    assert draws <= allowed and len(draws) > 1


def test_pause_stats_vs_bruteforce():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 4, (3, 20), generator=g)
    ep = torch.rand(3, 20, generator=g, dtype=torch.float64) * 3
    mask = torch.rand(3, 20, generator=g) > 0.2
    got = {r["token"]: r for r in pause_stats_by_token(ids, ep, mask, min_count=1)}
    for tok in range(4):
        vals = [float(ep[b, t]) for b in range(3) for t in range(20) if mask[b, t] and ids[b, t] == tok]
        if not vals:
            continue
        r = got[tok]
        assert r["count"] == len(vals)
        assert abs(r["mean"] - statistics.fmean(vals)) < 1e-9
        assert abs(r["var"] - statistics.pvariance(vals)) < 1e-9
        assert r["median"] in vals  # torch's median is the lower middle value
    tab = pause_table(list(got.values()), k=2)
    assert set(tab) == {("low", "low"), ("low", "high"), ("high", "low"), ("high", "high")}


# ---------------------------------------------------------------- bad arguments


def test_bad_args(model):
    with pytest.raises(ValueError, match="mode"):
        generate(model, [1, 2], 2, mode="fast")
    with pytest.raises(ValueError, match="readout"):
        generate(model, [1, 2], 2, readout_rule="best")
    with pytest.raises(ValueError, match="halt"):
        generate(model, [1, 2], 2, mode="adaptive", halt="never")
    with pytest.raises(ValueError, match="threshold"):
        score_adaptive(model, ids_(), threshold=-0.1)
    with pytest.raises(ValueError, match="max_pauses"):
        score_adaptive(model, ids_(), max_pauses=7)
    with pytest.raises(ValueError, match="prompt ids"):
        generate(model, [1, V], 2)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [], 2)
    with pytest.raises(TypeError, match="prompt"):
        generate(model, torch.tensor([1.0, 2.0]), 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [1], 0)
    with pytest.raises(ValueError, match="max_positions"):
        generate(model, [1] * 250, 10)  # the fixture holds 256 positions
    with pytest.raises(ValueError, match="temperature"):
        sample_next(torch.zeros(1, 3), -1.0)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(torch.zeros(1, 3), 1.0, top_k=0)
    with pytest.raises(ValueError, match="omega"):
        score_adaptive(model, ids_(), omega=[1, 1])
    with pytest.raises(ValueError, match="mask"):
        latency_histogram(torch.ones(2, 3, 4) / 4, torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="by"):
        pause_stats_by_token(ids_(), torch.zeros(3, 7), by="next")
    with pytest.raises(TypeError, match="V\\+1"):
        head_readout(torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("bad", [None, 0, 2.0, True])
def test_stream_generate_needs_a_token_count(model, bad):
    "Issue 21: max_new_tokens=None used to end in a TypeError deep inside the generator."
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        next(stream_generate(model, [1, 2], max_new_tokens=bad))


# ---------- the trade-off benchmark (issue 17): runs end to end, Pareto and goal logic checked by brute force ----------
def test_tradeoff_pareto_and_goal_on_hand_made_points(load_script):
    dt = load_script("benchmarks/decode_tradeoff.py")
    P = lambda m, dec, kind, param, pos, nll: dict(model=m, decoder=dec, kind=kind, param=param, positions=pos, nll=nll)
    pts = [P("CE", "no pauses", "ce", 0, 1.0, 3.00), P("R1", "recipe1", "recipe1", 3, 4.0, 2.90),
           P("R1", "threshold 0.5", "threshold", 0.5, 1.5, 2.92), P("R1", "threshold 1", "threshold", 1.0, 1.0, 2.80),
           P("R1", "fixed 1", "fixed", 1, 2.0, 2.95), P("R2", "recipe1", "recipe1", 3, 4.0, 2.91),
           P("R2", "sample cap 1", "sample", 1, 1.7, 2.85), P("R2", "mass 0", "mass", 0.0, 4.0, 2.91),
           P("R2", "mass 0.1", "mass", 0.1, 1.8, 2.95)]
    assert dt.pareto(pts) == [False, False, False, True, False, False, False, False, False]  # threshold 1 dominates everything here
    assert [dt.adaptive(p) for p in pts] == [False, False, True, False, False, False, True, False, True]
    g = dt.goal(pts)
    assert g["max_positions"] == pytest.approx(1.6) and g["max_nll"] == pytest.approx(2.90 * 1.01)
    assert g["R1"]["decoder"] == "threshold 0.5" and g["R1"]["met"]  # tau = 1 never pauses: not counted as adaptive
    assert g["R1"]["nll_change"] == pytest.approx(2.92 / 2.90 - 1)
    assert g["R2"] is None and g["met"]  # the R2 sampler uses 1.7 > 1.6 positions
    assert g["best_non_adaptive"]["decoder"] == "no pauses"
    pts[2]["nll"] = 2.94
    assert not dt.goal(pts)["met"]


def test_tradeoff_benchmark_quick_run(tmp_path):
    import json, os, subprocess, sys
    from pathlib import Path
    out = tmp_path / "dt.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "decode_tradeoff.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(script.parents[1]))
    p = subprocess.run([sys.executable, str(script), "--quick", "--seeds", "0", "--json", str(out)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(out.read_text())
    pts = doc["runs"]["0"]["points"]
    by = {(q["model"], q["decoder"]): q for q in pts}
    assert by[("CE", "no pauses")]["positions"] == 1.0 and by[("R1", "recipe1")]["positions"] == 4.0
    for m in ("R1", "R2"):
        assert by[(m, "threshold 0")]["positions"] == 4.0 and by[(m, "threshold 1")]["positions"] == 1.0
        assert by[(m, "threshold 1")]["nll"] == by[(m, "fixed 0")]["nll"]  # never pausing is fixed 0
        assert by[(m, "fixed 2")]["positions"] == 3.0
        assert 1.0 <= by[(m, "sample cap 1")]["positions"] <= 2.0
        assert by[(m, "mass 0")]["positions"] == 4.0 and by[(m, "mass 0")]["nll"] == pytest.approx(by[(m, "recipe1")]["nll"], abs=1e-5)
        assert by[(m, "mass 1")]["nll"] == pytest.approx(by[(m, "fixed 0")]["nll"], abs=1e-9)  # tau = 1: answer at once
    assert all(q["tokens_per_s"] > 0 for q in pts)
    for q in pts:  # Pareto flags by brute force
        dominated = any(r["positions"] <= q["positions"] and r["nll"] <= q["nll"] and (r["positions"], r["nll"]) != (q["positions"], q["nll"])
                        for r in pts)
        assert q["pareto"] == (not dominated)
    assert len(doc["summary"]) == len(pts) and "goal per seed" in p.stdout


# ---------------------------------------------------------------- batched decoding

from cyb_nb.decode import generate_batch  # noqa: E402

BATCH_PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [2, 4, 6, 8, 10]]
BATCH_CASES = [dict(mode="fixed", temperature=0), dict(mode="fixed", temperature=1.0, top_k=5),
               dict(mode="fixed", readout_rule="sample"), dict(mode="fixed", readout_rule="argmax_step", omega=[1, 1, 1, 1]),
               dict(mode="adaptive", halt="threshold", threshold=0.9, temperature=0),
               dict(mode="adaptive", halt="sample", max_pauses=2), dict(mode="adaptive", halt="mass", threshold=0.3),
               dict(mode="adaptive", halt="mass", threshold=0.05, omega=[1, 1, 1, 1], top_k=4),
               dict(mode="adaptive", halt="sample", omega=[3, 1, 1, 1])]


def _single(model, prompt, n, seed, **kw):
    ev = list(stream_generate(model, prompt, n, seed=seed, **kw))
    return [e.token for e in ev], [e.pauses for e in ev]


@pytest.mark.parametrize("kw", BATCH_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_batched_rows_equal_the_single_row_decoder(model, kw):
    "Each row, seeded on its own, draws what stream_generate draws alone: the same tokens and the same pauses."
    seeds = [10, 11, 12, 13]
    b = generate_batch(model, BATCH_PROMPTS, 9, seeds=seeds, **kw)
    for r, p in enumerate(BATCH_PROMPTS):
        toks, pauses = _single(model, p, 9, seeds[r], **kw)
        assert b["tokens"][r] == toks, (r, kw)
        assert b["pauses"][r] == pytest.approx(pauses, abs=1e-4), (r, kw)
    n = sum(map(len, b["tokens"]))
    assert n == 4 * 9 and b["positions_per_token"] == pytest.approx(b["positions"] / n)
    if kw["mode"] == "fixed":
        assert b["positions_per_token"] == 4.0  # Recipe 1: W positions for every token, whatever the model says
    else:  # adaptive: 1 + pauses positions for the token that produced each generated one
        assert b["positions"] == sum(1 + p for row in b["pauses"] for p in row)


def test_batched_decoding_varies_pauses_across_rows_and_tokens(model):
    "The equality test above is only as strong as its cases: rows pause differently, so the per-row bookkeeping is exercised."
    b = generate_batch(model, BATCH_PROMPTS, 9, seeds=[10, 11, 12, 13], mode="adaptive", halt="sample")
    flat = [p for row in b["pauses"] for p in row]
    assert len(set(flat)) >= 3 and len({tuple(row) for row in b["pauses"]}) == 4


def test_a_finished_row_changes_no_other_row(model):
    "A row that stops at EOS early (or any extra row) leaves the other rows' tokens and pauses exactly as without it."
    kw = dict(mode="adaptive", halt="sample", temperature=1.0)
    alone = generate_batch(model, BATCH_PROMPTS[:2], 9, seeds=[10, 11], **kw)
    first = alone["tokens"][0][0]
    extra = generate_batch(model, [BATCH_PROMPTS[0], *BATCH_PROMPTS[:2]], 9, seeds=[10, 10, 11], eos_id=first, **kw)
    assert extra["tokens"][0] == [first]  # the extra row stopped at its first token
    assert extra["tokens"][1:] == [t[: t.index(first) + 1] if first in t else t for t in alone["tokens"]]  # EOS applies to all rows
    same = generate_batch(model, [[5, 5, 5], *BATCH_PROMPTS[:2]], 9, seeds=[99, 10, 11], **kw)
    assert same["tokens"][1:] == alone["tokens"] and same["pauses"][1:] == alone["pauses"]


def test_batched_decoding_of_a_transformers_pause_model():
    "The same equality on a grown `transformers` model (PauseLM over a tiny GPT-2), whose cache is a DynamicCache."
    from cyb_nb.models import PauseLM, tiny_hf_lm
    torch.manual_seed(0)
    lm, tok = tiny_hf_lm("gpt2")
    pm = PauseLM(lm, tok, n_pauses=2, seed=0).eval()
    prompts = [[2, 3, 4], [5, 6, 7, 8, 9], [10]]
    for kw in (dict(mode="fixed", temperature=0), dict(mode="adaptive", halt="sample")):
        b = generate_batch(pm, prompts, 5, seeds=[1, 2, 3], **kw)
        for r, p in enumerate(prompts):
            assert b["tokens"][r] == _single(pm, p, 5, r + 1, **kw)[0], (r, kw)


def test_batched_decoding_rejects_bad_arguments(model):
    with pytest.raises(ValueError, match="prompts"):
        generate_batch(model, [], 4)
    with pytest.raises(ValueError, match="seeds"):
        generate_batch(model, BATCH_PROMPTS, 4, seeds=[1, 2])
    with pytest.raises(ValueError, match="either seed"):
        generate_batch(model, BATCH_PROMPTS, 4, seed=0, seeds=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_batch(model, BATCH_PROMPTS, 0)
    with pytest.raises(ValueError, match="prompt ids"):
        generate_batch(model, [[1, 2, V]], 4)


# ---------------------------------------------------------------- decoding as the model was trained


@pytest.fixture
def trained_half(model):
    "The fixture model with a loss_config that says it was trained with ψ′ = 0.5 (what train/finetune record)."
    model.loss_config = LossConfig("ap", dk_prior=0.5)
    yield model
    model.loss_config = None


def _decodes(m, **kw):
    "Every decoder's output on `m`, as comparable tensors / lists, with its DecodeConfig."
    ids = ids_(3, 7, seed=5)
    out = {}
    for name, r in (("score_fixed", score_fixed(m, ids, **kw)), ("score_adaptive", score_adaptive(m, ids, **kw))):
        out[name] = (r["d"], r["config"])
    for mode in ("fixed", "adaptive"):
        g = generate(m, [1, 2, 3], 6, mode=mode, seed=0, **kw)
        assert all(e.config == g["config"] for e in g["events"])
        out[f"generate {mode}"] = (torch.tensor([e.d[0] for e in g["events"]]), g["config"])
        b = generate_batch(m, [[1, 2, 3], [4, 5]], 5, mode=mode, seeds=[0, 1], **kw)
        out[f"generate_batch {mode}"] = (torch.tensor([t for row in b["tokens"] for t in row] + [p for row in b["pauses"] for p in row]),
                                         b["config"])
    return out


def test_decoders_default_to_the_models_dk_prior(trained_half):
    own, half, ninety = _decodes(trained_half), _decodes(trained_half, dk_prior=0.5), _decodes(trained_half, dk_prior=0.9)
    for k in own:
        torch.testing.assert_close(own[k][0], half[k][0], msg=k)  # not naming ψ′ decodes with the model's 0.5
        assert own[k][1] == DecodeConfig(0.5, None, "model", "model"), k
        assert half[k][1].dk_prior_from == "explicit" and ninety[k][1] == DecodeConfig(0.9, None, "explicit", "model"), k
    for k in ("score_fixed", "score_adaptive", "generate fixed", "generate adaptive"):  # d itself: 0.5 lowers it
        assert (own[k][0] < ninety[k][0]).all(), k


def test_no_loss_config_falls_back_to_0_9(model):
    assert getattr(model, "loss_config", None) is None
    plain, ninety, half = _decodes(model), _decodes(model, dk_prior=0.9), _decodes(model, dk_prior=0.5)
    for k in plain:
        torch.testing.assert_close(plain[k][0], ninety[k][0], msg=k)
        assert plain[k][1] == DecodeConfig(0.9, None, "default", "default"), k
    assert not torch.equal(plain["score_fixed"][0], half["score_fixed"][0])


def test_omega_defaults_to_the_models_and_explicit_wins(model):
    ids = ids_(3, 7, seed=6)
    try:
        model.loss_config = LossConfig("ap", omega=(1, 1, 1, 1))
        for fn in (score_fixed, score_adaptive):
            own, given, none = fn(model, ids), fn(model, ids, omega=(1, 1, 1, 1)), fn(model, ids, omega=None)
            assert own["config"].omega == (1.0, 1.0, 1.0, 1.0) and own["config"].omega_from == "model"
            torch.testing.assert_close(own["nll"], given["nll"])
            assert not torch.equal(own["nll"], none["nll"]) and none["config"].omega_from == "explicit"
        model.loss_config = LossConfig("ap", omega=(0, 0, 0, 1))  # all on the last step: no deadline, no deadline draws
        assert decode_config(model).omega is None
        torch.testing.assert_close(score_adaptive(model, ids, halt="sample")["nll"], score_adaptive(model, ids, halt="sample", omega=None)["nll"])
        model.loss_config = LossConfig("va", rho=(1, 1, 1, 1))  # VA trains without a deadline
        assert decode_config(model).omega is None
    finally:
        model.loss_config = None


def test_decode_config_rejects_bad_values(model):
    with pytest.raises(ValueError, match="dk_prior"):
        decode_config(model, dk_prior=1.0)
    with pytest.raises(TypeError, match="dk_prior"):
        decode_config(model, dk_prior="0.5")
    bad = nn.Module()
    bad.loss_config = {"dk_prior": 0.5}
    with pytest.raises(TypeError, match="LossConfig"):
        decode_config(bad)
    assert decode_config(model, dk_prior=None).dk_prior is None  # None = no shift, not "the model's"
    assert repr(FROM_MODEL) == "FROM_MODEL"


def test_force_dont_know_keeps_the_wrapped_models_loss_config(trained_half):
    assert decode_config(ForceDontKnow(trained_half, 0.0)).dk_prior == 0.5


def test_a_model_trained_with_dk_prior_half_decodes_with_it():
    "Train a few steps with ψ′ = 0.5 and decode without naming it: train() records model.loss_config, the decoders read it."
    from cyb_nb.data import load_data
    from cyb_nb.train import train
    data = load_data("modsum", seq_len=16, n_train=64, n_val=8, seed=0)
    m = make_model(data, "ap", size="tiny", seed=0)
    train(m, data, LossConfig("ap", dk_prior=0.5), steps=3, batch_size=8, lr=3e-3, warmup=1, eval_every=3, progress=False)
    assert m.loss_config.dk_prior == 0.5
    ids = data.val[:2]
    own, half, ninety = score_fixed(m, ids), score_fixed(m, ids, dk_prior=0.5), score_fixed(m, ids, dk_prior=0.9)
    torch.testing.assert_close(own["d"], half["d"])
    assert own["config"].dk_prior_from == "model" and not torch.allclose(own["d"], ninety["d"])
