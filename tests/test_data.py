"""Data tests: task determinism, difficulty labels against brute-force re-derivation, corpus packing and splits,
bundled files, BatchSampler, load_data and error cases.

The references parse the generated sequences through their printable symbols (itos) with plain Python loops,
independently of how cyb_nb.data builds them.
"""
import gzip
import json
import shutil
import subprocess
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
import torch

from cyb_nb.data import (DATA_NAMES, EASY, RANDOM, TASKS, DataBundle, BatchSampler, corpus_split, load_corpus, load_data,
                         load_text, load_tokenizer, make_task, mean_by_difficulty, pack, rst_to_text, token_stream)
from cyb_nb.stream import IGNORE_INDEX, next_token_targets


# ---------------------------------------------------------------- reference parsers
def ref_modsum_labels(symbols, modulus):
    """Walk one modsum row symbol by symbol; return per-token labels (of the token itself) and check every answer."""
    labels, i, n_answers = [], 0, 0
    n = len(symbols)
    while i < n:
        head = symbols[i]
        assert head.startswith("#"), (i, symbols)
        k = int(head[1:])
        labels.append(RANDOM)
        i += 1
        operands = []
        for j in range(k):
            if i >= n:
                return labels, n_answers
            operands.append(int(symbols[i])); labels.append(RANDOM); i += 1
            if i >= n:
                return labels, n_answers
            expected_sep = "+" if j < k - 1 else "="
            assert symbols[i] == expected_sep, (i, symbols)
            labels.append(EASY); i += 1
        if i >= n:
            return labels, n_answers
        total = 0
        for a in operands:
            total += a
        assert int(symbols[i]) == total % modulus, (i, symbols, operands)
        labels.append(k); i += 1; n_answers += 1
        if i >= n:
            return labels, n_answers
        assert symbols[i] == ";"
        labels.append(EASY); i += 1
    return labels, n_answers


def ref_lookup_labels(symbols):
    """Parse the pair list and the queries of one lookup row; follow hops with a dict; return per-token labels."""
    labels, f, i = [], {}, 0
    while symbols[i] != "|":
        x, y, comma = symbols[i : i + 3]
        assert comma == "," and x not in f
        f[x] = y
        labels += [RANDOM, RANDOM, EASY]
        i += 3
    labels.append(EASY); i += 1  # '|'
    # f is one cycle through all keys: following it from any key visits every key once
    start = next(iter(f)); seen, x = [], start
    for _ in range(len(f)):
        seen.append(x); x = f[x]
    assert x == start and sorted(seen) == sorted(f)
    n, n_answers = len(symbols), 0
    while i < n:
        h = int(symbols[i][1:]); labels.append(RANDOM); i += 1
        if i >= n: break
        q = symbols[i]; labels.append(RANDOM); i += 1
        assert q in f
        if i >= n: break
        a = q
        for _ in range(h):
            a = f[a]
        assert symbols[i] == a, (symbols, i)
        labels.append(h); i += 1; n_answers += 1
        if i >= n: break
        assert symbols[i] == ";"; labels.append(EASY); i += 1
    return labels, n_answers


def expected_position_labels(token_labels):
    """difficulty[t] = label of token t+1; the last position has no target."""
    return token_labels[1:] + [IGNORE_INDEX]


# ---------------------------------------------------------------- synthetic tasks
@pytest.mark.parametrize("name", sorted(TASKS))
def test_tasks_deterministic_and_seed_dependent(name):
    a, b, c = make_task(name, 16, 48, seed=3), make_task(name, 16, 48, seed=3), make_task(name, 16, 48, seed=4)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.difficulty, b.difficulty)
    assert not torch.equal(a.ids, c.ids)
    assert a.ids.dtype == torch.long and a.difficulty.dtype == torch.long
    assert a.ids.shape == a.difficulty.shape == (16, 48)
    assert a.vocab_size <= 64 and len(a.itos) == a.vocab_size and len(set(a.itos)) == a.vocab_size
    assert 0 <= int(a.ids.min()) and int(a.ids.max()) < a.vocab_size


@pytest.mark.parametrize("seq_len,modulus,max_operands", [(40, 10, 4), (17, 7, 3), (64, 13, 6), (5, 10, 1)])
def test_modsum_labels_match_brute_force(seq_len, modulus, max_operands):
    td = make_task("modsum", 60, seq_len, seed=seq_len, modulus=modulus, max_operands=max_operands)
    total_answers, seen_k = 0, set()
    for r in range(len(td)):
        symbols = [td.itos[i] for i in td.ids[r].tolist()]
        tok_labels, n_ans = ref_modsum_labels(symbols, modulus)
        assert len(tok_labels) == seq_len
        assert td.difficulty[r].tolist() == expected_position_labels(tok_labels)
        total_answers += n_ans
        seen_k |= {l for l in tok_labels if l >= 1}
    assert total_answers > 0
    if seq_len >= 40:
        assert seen_k == set(range(1, max_operands + 1))  # every difficulty level occurs


@pytest.mark.parametrize("seq_len,kw", [(64, {}), (33, {"n_pairs": 4}), (80, {"n_symbols": 10, "max_hops": 3}),
                                        (48, {"n_symbols": 5, "n_pairs": 5, "max_hops": 1}), (19, {"n_pairs": 5})])
def test_lookup_labels_match_brute_force(seq_len, kw):
    td = make_task("lookup", 40, seq_len, seed=1, **kw)
    total = 0
    for r in range(len(td)):
        symbols = [td.itos[i] for i in td.ids[r].tolist()]
        tok_labels, n_ans = ref_lookup_labels(symbols)
        assert len(tok_labels) == seq_len
        assert td.difficulty[r].tolist() == expected_position_labels(tok_labels)
        total += n_ans
    assert total > 0
    assert set(td.difficulty[td.hard_mask].tolist()) == set(range(1, kw.get("max_hops", 2) + 1))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_masks_and_alignment_with_targets(name):
    td = make_task(name, 32, 40, seed=0)
    assert torch.equal(td.hard_mask, td.difficulty >= 1)
    assert torch.equal(td.random_mask, td.difficulty == RANDOM)
    # a label exists exactly where next_token_targets has a target
    assert torch.equal(td.difficulty == IGNORE_INDEX, next_token_targets(td.ids) == IGNORE_INDEX)
    assert set(td.difficulty.unique().tolist()) <= {IGNORE_INDEX, RANDOM, EASY, *range(1, 9)}


def test_random_labels_are_really_random():
    """Targets labelled RANDOM that are operands are (close to) uniform over the digits; EASY ones are separators."""
    td = make_task("modsum", 3000, 64, seed=0, modulus=10)
    tgt = next_token_targets(td.ids)
    rand_t = tgt[td.random_mask]
    digits = rand_t[rand_t < 10]
    freq = torch.bincount(digits, minlength=10).double() / digits.numel()
    assert (freq - 0.1).abs().max() < 0.01
    easy_syms = {td.itos[i] for i in tgt[td.difficulty == EASY].unique().tolist()}
    assert easy_syms == {"+", "=", ";"}
    hard_syms = {td.itos[i] for i in tgt[td.hard_mask].unique().tolist()}
    assert hard_syms == {str(d) for d in range(10)}


def test_task_errors():
    with pytest.raises(ValueError, match="modsum"):
        make_task("nope", 2, 8)
    with pytest.raises(ValueError, match="seq_len"):
        make_task("modsum", 2, 1)
    with pytest.raises(ValueError, match="n "):
        make_task("lookup", 0, 40)
    with pytest.raises(ValueError, match="modulus"):
        make_task("modsum", 2, 8, modulus=1)
    with pytest.raises(ValueError, match="seq_len"):
        make_task("lookup", 2, 20, n_pairs=8)
    with pytest.raises(ValueError, match="n_pairs"):
        make_task("lookup", 2, 40, n_symbols=5, n_pairs=6)
    with pytest.raises(TypeError):
        make_task("modsum", 2, 8, bogus=1)


# ---------------------------------------------------------------- bundled files and corpus
def test_bundled_files_present_via_importlib_resources():
    root = resources.files("cyb_nb") / "assets"
    for name in ("pydocs.jsonl.gz", "tokenizer.json", "pydocs.LICENSE.txt"):
        assert (root / name).is_file(), name
    lic = (root / "pydocs.LICENSE.txt").read_text()
    assert "PSF LICENSE AGREEMENT" in lic and "Python Software Foundation" in lic
    size = sum(len((root / n).read_bytes()) for n in ("pydocs.jsonl.gz", "tokenizer.json"))
    assert size < 2_000_000  # small enough to ship
    with gzip.open(str(root / "pydocs.jsonl.gz"), "rt") as fh:
        docs = [json.loads(l) for l in fh]
    assert len(docs) > 50 and all(d["text"].strip() for d in docs)


def test_installed_wheel_ships_and_loads_data(tmp_path):
    """Build a wheel from a copy of the sources, install it to a folder, and load the text data from there."""
    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for f in ("setup.py", "settings.ini", "README.md", "LICENSE", "MANIFEST.in", "pyproject.toml"):
        if (repo / f).exists():
            shutil.copy(repo / f, src / f)
    shutil.copytree(repo / "cyb_nb", src / "cyb_nb", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "whl"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "whl").glob("*.whl"))
    import zipfile
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("cyb_nb/assets/pydocs.jsonl.gz", "cyb_nb/assets/tokenizer.json", "cyb_nb/assets/pydocs.LICENSE.txt"):
        assert f in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # a wheel is a zip laid out like site-packages
    code = ("import cyb_nb.data as d, sys; assert d.__file__.startswith(sys.argv[1]), d.__file__; "
            "b = d.load_data('text', 32, n_train=4, n_val=2); print(b.train.shape[0], b.decode(b.val[0])[:10])")
    r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("4 ")


def test_tokenizer_round_trips():
    tk = load_tokenizer()
    assert tk.vocab_size == 1024 and tk.doc_id == 0
    samples = ["", "a", "Hello, world!  Two spaces.\nNew line\ttab", "naïve café — ünïcödé ✓ 日本語 🙂", "<|doc|> in text"]
    samples += [t[:500] for _, t in load_corpus()[:5]]
    for s in samples:
        ids = tk.encode(s)
        assert all(0 <= i < tk.vocab_size for i in ids)
        assert tk.decode(ids) == s
        assert tk.decode(torch.tensor(ids, dtype=torch.long)) == s
    assert "".join(tk.tokens(tk.encode("plural nouns"))) == "plural nouns"
    with pytest.raises(TypeError):
        tk.encode(3)


def test_stream_is_doc_token_plus_blocks_and_packing_round_trips():
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(str(resources.files("cyb_nb") / "assets" / "tokenizer.json"))  # independent of the wrapper
    for split in ("train", "val"):
        expected = []
        for block in corpus_split(split):
            expected.append(raw.token_to_id("<|doc|>"))
            expected += raw.encode(block).ids
        stream = token_stream(split)
        assert stream.tolist() == expected
        for T in (7, 64):
            rows = load_text(T, split)
            assert rows.shape == (len(expected) // T, T)
            assert rows.reshape(-1).tolist() == expected[: rows.numel()]  # rows concatenate back to the stream
    rows = load_text(32, "val", max_rows=5)
    assert rows.shape == (5, 32)


def test_val_split_disjoint_and_deterministic():
    tr_blocks, va_blocks = corpus_split("train"), corpus_split("val")
    n_tr, n_va = sum(map(len, tr_blocks)), sum(map(len, va_blocks))
    assert 0.05 < n_va / (n_tr + n_va) < 0.2
    assert not set(tr_blocks) & set(va_blocks)
    all_text = "\n".join(t for _, t in load_corpus())
    assert sum(len(b) for b in tr_blocks + va_blocks) <= len(all_text)  # blocks partition the paragraphs
    tr = {tuple(r) for r in load_text(64, "train").tolist()}
    va = load_text(64, "val").tolist()
    assert not [r for r in va if tuple(r) in tr]
    assert corpus_split("val") == va_blocks


def test_pack_and_text_errors():
    s = torch.arange(10)
    assert pack(s, 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(ValueError, match="seq_len"):
        pack(s, 11)
    with pytest.raises(ValueError, match="stream"):
        pack(s.reshape(2, 5), 2)
    with pytest.raises(ValueError, match="split"):
        load_text(32, "test")
    with pytest.raises(ValueError, match="max_rows"):
        load_text(32, "train", max_rows=0)


def test_rst_to_text_strips_markup_and_code():
    rst = ("Heading\n=======\n\nCall :func:`print <builtins.print>` on ``x``, see :ref:`tut-x`::\n\n"
           "   >>> print(1)\n   1\n\n.. code-block:: python\n\n   secret_code()\n\n"
           ".. warning::\n   Be *careful* with\n   long lines.\n\n* a bullet item here\n")
    assert rst_to_text(rst) == ["Call print on x, see tut-x:", "Be careful with long lines.", "a bullet item here"]
    with pytest.raises(TypeError):
        rst_to_text(b"bytes")


# ---------------------------------------------------------------- batches and load_data
def test_batch_sampler_deterministic_epochs_and_resume():
    x = torch.arange(30).reshape(15, 2)
    draw = lambda seed, n: [s.next() for s in [BatchSampler(x, 4, seed=seed)] for _ in range(n)]
    a, b, c = draw(5, 9), draw(5, 9), draw(6, 9)
    assert len(a) == 9 and all(t.shape == (4, 2) for t in a)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    for e in range(3):  # within an epoch no row repeats
        rows = torch.cat(a[3 * e : 3 * e + 3])[:, 0].tolist()
        assert len(set(rows)) == 12
    s = BatchSampler(x, 4, seed=5)
    [s.next() for _ in range(4)]
    r = BatchSampler(x, 4, seed=0)
    r.load_state_dict(s.state_dict())
    assert [r.next().tolist() for _ in range(5)] == [u.tolist() for u in a[4:]]
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(x, 16)
    with pytest.raises(ValueError, match="ids"):
        BatchSampler(x[0], 1)
    with pytest.raises(ValueError, match="ids"):
        BatchSampler(x.float(), 2)


@pytest.mark.parametrize("name", DATA_NAMES)
def test_load_data_uniform(name):
    d = load_data(name, seq_len=40, n_train=64, n_val=16, seed=2)
    assert isinstance(d, DataBundle) and d.name == name and d.seq_len == 40
    assert d.train.shape == (64, 40) and d.val.shape == (16, 40)
    assert d.train.dtype == torch.long and int(d.train.max()) < d.vocab_size and int(d.val.max()) < d.vocab_size
    assert isinstance(d.decode(d.val[0]), str)
    if name == "text":
        assert d.difficulty_val is None and d.vocab_size == 1024
    else:
        td = make_task(name, 80, 40, seed=2)
        assert torch.equal(d.val, td.ids[64:]) and torch.equal(d.difficulty_val, td.difficulty[64:])
        assert torch.equal(d.train, td.ids[:64])
        assert not {tuple(r) for r in d.val.tolist()} & {tuple(r) for r in d.train.tolist()}


def test_load_data_errors():
    with pytest.raises(ValueError, match="text"):
        load_data("wiki")
    with pytest.raises(ValueError, match="seq_len"):
        load_data("modsum", seq_len=0)
    with pytest.raises(ValueError, match="n_train"):
        load_data("lookup", 64, n_train=-1)
    with pytest.raises(ValueError, match="options"):
        load_data("text", 32, modulus=5)


def test_mean_by_difficulty_matches_loop():
    td = make_task("modsum", 20, 30, seed=0)
    vals = torch.randn(20, 30, generator=torch.Generator().manual_seed(0))
    got = mean_by_difficulty(vals, td.difficulty)
    acc = {}
    for b in range(20):
        for t in range(30):
            lab = int(td.difficulty[b, t])
            if lab != IGNORE_INDEX:
                acc.setdefault(lab, []).append(float(vals[b, t]))
    assert sorted(got) == sorted(acc)
    for lab, xs in acc.items():
        assert got[lab][1] == len(xs)
        assert abs(got[lab][0] - sum(xs) / len(xs)) < 1e-9
    with pytest.raises(ValueError, match="shape"):
        mean_by_difficulty(vals[:, :3], td.difficulty)


def test_reliability_of_data_entry_points(tmp_path):
    "Issue 21: errors name the file or argument; nothing is capped silently; build_corpus writes only where it is told."
    from cyb_nb.data import build_corpus, check_seed, load_text, load_tokenizer, make_task
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(str(tmp_path / "bad.json"))
    n = load_text(64, "train").shape[0]
    with pytest.raises(ValueError, match=f"n_train=1000000000 .* {n} "):
        load_data("text", n_train=10**9)
    with pytest.raises(ValueError, match=f"max_rows={n + 1} "):
        load_text(64, "train", max_rows=n + 1)
    assert load_data("text", n_train=n).train.shape[0] == n  # exactly all of them is fine
    with pytest.raises(ValueError, match=r"seed must be an int in \[-2\*\*63"):
        make_task("modsum", 2, 16, seed=2**70)
    assert check_seed(2**64 - 1) == 2**64 - 1 and check_seed(-2**63) == -2**63
    src = tmp_path / "src"
    (src / "tutorial").mkdir(parents=True)
    (src / "tutorial" / "a.rst.txt").write_text("Some prose that is long enough to keep.\n")
    with pytest.raises(ValueError, match="out is required"):
        build_corpus(src, sections=("tutorial",))
    (src / "tutorial" / "broken.rst.txt").write_bytes(b"\xff\xfe not utf-8 \xff")
    with pytest.raises(ValueError, match="broken.rst.txt"):
        build_corpus(src, out=tmp_path / "out", sections=("tutorial",))
