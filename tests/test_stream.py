"""Stream tests: expand/collapse round-trips, positions, Recipe-2 index maps and error cases.

References are written here with plain Python loops, independently of cyb_nb.stream.
"""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from cyb_nb.stream import (IGNORE_INDEX, PauseVocab, as_steps, collapse, expand, from_steps, gather_steps,
                           next_token_targets, sample_pause_counts)

V = 50


def reference_expand(ids, counts, pause_ids, pad_id=0):
    "Loop-based expansion of one batch: lists of stream tokens, positions and step numbers per row."
    rows = []
    for b in range(len(ids)):
        toks, pos, steps = [], [], []
        for t, x in enumerate(ids[b]):
            toks.append(x); pos.append(t); steps.append(0)
            for k in range(counts[b][t]):
                toks.append(pause_ids[k]); pos.append(t); steps.append(k + 1)
        rows.append((toks, pos, steps))
    L = max(len(r[0]) for r in rows)
    T = len(ids[0])
    out = []
    for toks, pos, steps in rows:
        pad = L - len(toks)
        out.append((toks + [pad_id] * pad, pos + [T - 1] * pad, steps + [-1] * pad))
    return out


@st.composite
def batches(draw):
    B = draw(st.integers(1, 4)); T = draw(st.integers(1, 7)); n = draw(st.integers(0, 4))
    ids = draw(st.lists(st.lists(st.integers(0, V - 1), min_size=T, max_size=T), min_size=B, max_size=B))
    counts = draw(st.lists(st.lists(st.integers(0, n), min_size=T, max_size=T), min_size=B, max_size=B))
    variable = draw(st.booleans())
    return ids, n, counts if variable else None


@settings(max_examples=150, deadline=None)
@given(batches())
def test_expand_matches_reference_and_round_trips(case):
    ids, n, counts = case
    pause_ids = list(range(V, V + n))
    x = torch.tensor(ids)
    s = expand(x, n, pause_ids, counts=None if counts is None else torch.tensor(counts), vocab_size=V)
    cts = counts if counts is not None else [[n] * len(ids[0]) for _ in ids]
    ref = reference_expand(ids, cts, pause_ids)
    assert s.input_ids.tolist() == [r[0] for r in ref]
    assert s.position_ids.tolist() == [r[1] for r in ref]
    assert s.step_ids.tolist() == [r[2] for r in ref]
    assert s.valid.tolist() == [[st_ >= 0 for st_ in r[2]] for r in ref]
    assert s.counts.tolist() == cts
    # every existing step of token t points at a stream position holding token t's step k
    for b in range(len(ids)):
        for t in range(len(ids[0])):
            for k in range(n + 1):
                assert bool(s.step_mask[b, t, k]) == (k <= cts[b][t])
                if k <= cts[b][t]:
                    j = int(s.flat_index[b, t, k])
                    assert s.step_ids[b, j] == k and s.position_ids[b, j] == t
    assert torch.equal(collapse(s.input_ids, flat_index=s.flat_index), x)
    if counts is None:
        assert torch.equal(collapse(s.input_ids, W=n + 1), x)
        assert torch.equal(from_steps(as_steps(s.input_ids, n + 1)), s.input_ids)
        assert torch.equal(s.steps(s.input_ids), as_steps(s.input_ids, n + 1))


def test_targets_shared_by_all_steps():
    x = torch.tensor([[3, 1, 4, 1, 5]])
    s = expand(x, 2, vocab_size=V)
    assert s.targets.tolist() == [[1, 4, 1, 5, IGNORE_INDEX]]
    # the stream-level view: every position of token t would be scored against token t+1
    per_pos = gather_steps(s.input_ids[..., None], s.flat_index)[..., 0]
    assert per_pos[0, :, 0].tolist() == x[0].tolist()


def test_targets_with_padding_mask():
    x = torch.tensor([[3, 1, 4, 0]])
    assert next_token_targets(x, torch.tensor([[1, 1, 1, 0]])).tolist() == [[1, 4, IGNORE_INDEX, IGNORE_INDEX]]


def test_constant_counts_equal_fixed_expansion():
    x = torch.randint(0, V, (3, 6))
    a = expand(x, 3, vocab_size=V)
    b = expand(x, 3, vocab_size=V, counts=torch.full((3, 6), 3))
    for f in ("input_ids", "position_ids", "flat_index", "step_mask", "step_ids", "valid", "targets"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_no_pauses_is_identity():
    x = torch.randint(0, V, (2, 5))
    s = expand(x, 0, (), vocab_size=V)
    assert torch.equal(s.input_ids, x) and torch.equal(s.position_ids, torch.arange(5).expand(2, 5))


def test_sample_pause_counts_distribution():
    g = torch.Generator().manual_seed(1)
    c = sample_pause_counts([1, 1, 1, 1], (4000,), generator=g)
    freqs = torch.bincount(c, minlength=4).float() / 4000
    assert torch.allclose(freqs, torch.full((4,), 0.25), atol=0.03)
    assert sample_pause_counts([0, 0, 1], (2, 3)).eq(2).all()


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: expand([[1, 2]], 1, (V,)), TypeError, "ids"),
    (lambda: expand(torch.tensor([1, 2]), 1, (V,)), ValueError, "ids"),
    (lambda: expand(torch.tensor([[1.0, 2.0]]), 1, (V,)), TypeError, "integer"),
    (lambda: expand(torch.zeros(0, 3, dtype=torch.long), 1, (V,)), ValueError, "empty"),
    (lambda: expand(torch.ones(2, 3, dtype=torch.long), -1, ()), ValueError, "n_pauses"),
    (lambda: expand(torch.ones(2, 3, dtype=torch.long), 2, (V,)), ValueError, "pause_ids"),
    (lambda: expand(torch.ones(2, 3, dtype=torch.long), 2, (V, V)), ValueError, "distinct"),
    (lambda: expand(torch.ones(2, 3, dtype=torch.long), 1, (5,), vocab_size=V), ValueError, "collide"),
    (lambda: expand(torch.ones(2, 3, dtype=torch.long), 2, (V, V + 1), counts=torch.full((2, 3), 3)), ValueError, "counts"),
    (lambda: expand(torch.ones(2, 3, dtype=torch.long), 2, (V, V + 1), counts=torch.full((2, 3), -1)), ValueError, "counts"),
    (lambda: expand(torch.ones(2, 3, dtype=torch.long), 2, (V, V + 1), counts=torch.ones(3, 2, dtype=torch.long)), ValueError, "counts"),
    (lambda: expand(torch.ones(2, 3, dtype=torch.long), 2, (V, V + 1), counts=torch.ones(2, 3)), TypeError, "counts"),
    (lambda: PauseVocab(V, 2, pause_ids=(1, V)), ValueError, "collide"),
    (lambda: PauseVocab(V, -1), ValueError, "n_pauses"),
    (lambda: as_steps(torch.zeros(2, 7), 3), ValueError, "divisible"),
    (lambda: as_steps(torch.zeros(2, 6), 0), ValueError, "W"),
    (lambda: sample_pause_counts([0.5, -0.1], (3,)), ValueError, "omega"),
    (lambda: sample_pause_counts([], (3,)), ValueError, "omega"),
])
def test_errors_name_the_argument(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_expand_refuses_ids_outside_the_vocabulary():
    "Issue 21: with vocab_size=5, ids >= 5 or < 0 are not real tokens (they would be read as pause ids or wrap around)."
    ids = torch.tensor([[0, 1, 4], [2, 3, 4]])
    expand(ids, 2, vocab_size=5)  # in range: fine
    with pytest.raises(ValueError, match=r"ids must be real-token ids in \[0, 5\), got range \[1, 5\]"):
        expand(ids + 1, 2, vocab_size=5)
    with pytest.raises(ValueError, match=r"got range \[-1, 4\]"):
        expand(ids - (ids == 0).long(), 2, vocab_size=5)
    with pytest.raises(ValueError, match="real-token ids"):
        expand(-ids - 1, 2, pause_ids=(100, 101))  # negative ids are never tokens, vocab_size known or not
