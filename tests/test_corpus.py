"Appendix B (nbs/A2_corpus.ipynb, cyb_nb.corpus): the corpus files and the tokenizer, moved out of chapter 06 and re-exported by cyb_nb.data."
import subprocess
import sys

import pytest

import cyb_nb.corpus as C
import cyb_nb.data as D

MOVED = ("rst_to_text", "build_corpus", "build_stdlib_corpus", "train_tokenizer", "TextTokenizer", "asset_path", "load_tokenizer",
         "read_text_file", "read_corpus", "load_corpus", "DOC_TOKEN", "DOC_SEPARATORS", "CORPUS_SECTIONS", "CORPUS_SUFFIXES",
         "STDLIB_SKIP")


@pytest.mark.parametrize("name", MOVED)
def test_moved_names_stay_importable_from_data(name):
    assert getattr(D, name) is getattr(C, name)
    assert name in D.__all__ and name in C.__all__


def test_star_import_from_data_still_brings_the_moved_names():
    ns = {}
    exec("from cyb_nb.data import *", ns)
    assert all(n in ns for n in MOVED)


def test_corpus_does_not_import_data():
    code = "import sys, cyb_nb.corpus; assert 'cyb_nb.data' not in sys.modules, sorted(m for m in sys.modules if m.startswith('cyb_nb'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1000:]


def test_bundled_files_resolve_from_the_corpus_module():
    for name in ("pydocs.jsonl.gz", "pydocs.LICENSE.txt", "tokenizer.json"):
        assert C.asset_path(name).is_file()
    assert C.asset_path() == D.asset_path()
    with pytest.raises(ValueError, match="nope.bin"):
        C.asset_path("nope.bin")


def test_one_split_rule_for_the_tokenizer_and_the_chapter():
    "build_corpus trains the tokenizer on the blocks that chapter 06's blocks_of_split calls training blocks."
    texts = ["\n".join(f"d{j}p{i}" for i in range(n)) for j, n in enumerate((160, 37, 90))]
    blocks, splits = C._blocks(texts)
    assert D._blocks is C._blocks
    assert [b for b, s in zip(blocks, splits) if s != "val"] == D.blocks_of_split(texts, "train")
    assert [b for b, s in zip(blocks, splits) if s == "val"] == D.blocks_of_split(texts, "val")
    assert splits[9] == "val" and splits[:9] == ["pretrain", "finetune"] * 4 + ["pretrain"]


def test_tokenizer_class_is_the_one_load_data_checks():
    "load_data accepts a TextTokenizer instance, whichever module it was imported from."
    tk = C.load_tokenizer()
    assert isinstance(tk, D.TextTokenizer)
    b = D.load_data("text", seq_len=32, n_train=2, n_val=1, tokenizer=tk)
    assert b.tokenizer is tk and b.train.shape == (2, 32)
