"Tests for the `cyb-nb` command line: help, argument errors (exit 2), train -> checkpoint -> eval, quick demo outputs."
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cyb_nb.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=240):
    "Run `python -m cyb_nb.cli ARGS` in a fresh process."
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "cyb_nb.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def exit_code(argv, capsys=None):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_help_lists_subcommands():
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    for word in ("demo", "train", "eval"):
        assert word in r.stdout


@pytest.mark.parametrize("argv, msg", [
    (["train", "--loss", "xyz"], "--loss"),
    (["train", "--steps", "0"], "--steps"),
    (["train", "--steps", "ten"], "--steps"),
    (["train", "--task", "nope"], "unknown task"),
    (["train", "--loss", "ce", "--pauses", "3"], "--pauses"),
    (["train", "--lr", "-1"], "--lr"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_options_exit_2(argv, msg, capsys):
    assert exit_code(argv) == 2
    assert msg in capsys.readouterr().err


def test_missing_and_corrupt_checkpoint_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    assert exit_code(["eval", str(missing)]) == 2
    assert "missing.pt" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_text("definitely not a checkpoint")
    assert exit_code(["eval", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "corrupt" in err
    assert exit_code(["train", "--resume", str(missing), "--steps", "1"]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_train_then_eval_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--loss", "ap", "--task", "modsum", "--steps", "4", "--pauses", "2", "--seq-len", "16",
                "--n-seqs", "64", "--batch-size", "8", "--eval-every", "2", "--eval-batches", "1", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    ckpt = out / "checkpoint.pt"
    assert ckpt.is_file()
    rows = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    r = run_cli("eval", ckpt, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["loss"] == "ap" and res["step"] == 4 and res["task"] == "modsum"
    assert res["n_tokens"] > 0 and math.isfinite(res["nll"]) and 0 <= res["mean_pauses"] <= 2
    assert abs(res["bits"] - res["nll"] / math.log(2)) < 1e-9
    assert "pauses_hard" in res and "pauses_easy" in res


def test_quick_demo_writes_outputs(tmp_path, capsys):
    from cyb_nb.cli import run_demo
    res = run_demo(tmp_path, steps=2, quick=True, progress=False, task="modsum")
    assert [r["loss"] for r in res] == ["base", "ce", "tbys", "ap"]
    assert [r["mean_pauses"] for r in res][:3] == [0.0, 0.0, 3.0]
    assert [r["positions_per_token"] for r in res] == [1, 1, 4, 4]
    printed = capsys.readouterr().out
    assert "CYB-AP" in printed and "bits/tok" in printed and "vs CE" in printed and "regime: finetune" in printed
    for f in ("results.json", "curves.png", "pauses.png"):
        assert (tmp_path / f).stat().st_size > 0
    j = json.loads((tmp_path / "results.json").read_text())
    assert len(j["results"]) == 4 and j["config"]["regime"] == "finetune"


def test_demo_recipes_start_from_one_base(tmp_path):
    "Every fine-tuned recipe starts from the base's weights: before any step, CE continued reproduces the base's validation NLL."
    from cyb_nb.cli import run_demo
    res = run_demo(tmp_path, steps=1, quick=True, progress=False, task="modsum")
    base, ce = res[0], res[1]
    assert abs(ce["nll"] - base["nll"]) < 0.2  # one small step away from the base, not a fresh model (ln V away)
    fresh = run_demo(tmp_path / "scratch", steps=1, quick=True, progress=False, task="modsum", regime="scratch")
    assert abs(fresh[0]["nll"] - base["nll"]) > abs(ce["nll"] - base["nll"])


def test_demo_and_pretrain_refuse_bad_corpus(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\x00\x01\x02")
    for argv in (["demo", "--corpus", str(empty)], ["pretrain", "--corpus", str(binary)], ["demo", "--corpus", str(tmp_path / "nope")],
                 ["demo", "--task", "modsum", "--corpus", str(empty)]):
        assert exit_code(argv) == 2
        err = capsys.readouterr().err
        assert "--corpus" in err, err


def test_pretrain_caches_and_writes(tmp_path, capsys):
    args = ["pretrain", "--steps", "3", "--d-model", "16", "--layers", "1", "--heads", "2", "--seq-len", "16", "--batch-size", "4",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--out", str(tmp_path / "base.pt")]
    assert exit_code(args) == 0
    first = capsys.readouterr().out
    assert "pretrained base" in first and "base.pt" in first
    assert len(list((tmp_path / "cache").glob("base-*.pt"))) == 1
    assert exit_code(args) == 0  # the second call reuses the cache: no pretraining message
    assert "pretrained base" not in capsys.readouterr().out
    from cyb_nb.train import load_base
    assert load_base(tmp_path / "base.pt").base_info["config"]["steps"] == 3


def test_parser_defaults():
    a = build_parser().parse_args(["train"])
    assert (a.loss, a.task, a.pauses) == ("ap", "text", None)


# ---------- reliability (issue 21) ----------
import signal
import time

import torch

from cyb_nb.train import load_checkpoint

SMALL = ["--task", "modsum", "--seq-len", "16", "--n-seqs", "64", "--batch-size", "8", "--eval-batches", "1", "--no-progress"]


def _rows(out):
    return [json.loads(x) for x in (Path(out) / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_writes_a_checkpoint_and_the_run_resumes(tmp_path, sig):
    "Ctrl-C / SIGTERM in a real `cyb-nb train` process: a checkpoint of the last step, a clear message, then a clean resume."
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "cyb_nb.cli", "train", "--steps", "100000", "--eval-every", "100000",
                             "--out", str(out), *SMALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not ((out / "history.jsonl").exists() and len((out / "history.jsonl").read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig.value, err
    assert f"{sig.name} received" in err and "--resume" in err and "Traceback" not in err
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert step >= 3 and [r["step"] for r in _rows(out)][-1] == step
    r = run_cli("train", "--steps", step + 2, "--eval-every", 100000, "--out", out, "--resume", out / "checkpoint.pt", *SMALL)
    assert r.returncode == 0, r.stderr
    assert [row["step"] for row in _rows(out)] == list(range(1, step + 3))


def test_diverging_run_exits_2_and_saves_nothing(tmp_path, capsys):
    "The issue's reproduction (--loss va --lr 1e6) used to exit 0 with NaN weights in checkpoint.pt."
    out = tmp_path / "nan"
    assert exit_code(["train", "--loss", "va", "--lr", "1e6", "--warmup", "0", "--steps", "15", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "error: non-finite" in err and "no checkpoint was written" in err
    assert not (out / "checkpoint.pt").exists()


def test_run_folder_rules(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--steps", "2", "--eval-every", "2", "--out", str(out), *SMALL]
    assert exit_code(base) == 0
    capsys.readouterr()
    assert exit_code(base) == 2  # a second run into the same folder is refused ...
    assert "not empty" in capsys.readouterr().err
    assert exit_code(["train", "--steps", "2", "--resume", str(out / "checkpoint.pt"), "--out", str(tmp_path / "rs4"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "already at step 2" in err and not (tmp_path / "rs4").exists()  # ... so is resuming to a step already reached
    assert exit_code(base + ["--overwrite"]) == 0  # ... unless asked for
    assert [r["step"] for r in _rows(out)] == [1, 2]


def test_output_path_problems_exit_2_before_training(tmp_path, capsys):
    (tmp_path / "x" / "checkpoint.pt").mkdir(parents=True)
    (tmp_path / "afile").write_text("x")
    for out, msg in [(tmp_path / "x", "checkpoint.pt"), (tmp_path / "afile", "is a file"), (tmp_path / "afile" / "sub", "afile")]:
        t0 = time.perf_counter()
        assert exit_code(["train", "--steps", "100000", "--out", str(out), "--overwrite", *SMALL]) == 2, out
        err = capsys.readouterr().err
        assert "argument --out" in err and msg in err, err
        assert time.perf_counter() - t0 < 30  # refused up front, not after 100000 steps
    assert not (tmp_path / "x" / "history.jsonl").exists()


@pytest.mark.parametrize("argv, msg", [
    (["train", "--pauses", "1000000"], "attention memory"),
    (["train", "--pauses", "33"], "[0, 32]"),
    (["train", "--seed", str(2**70)], "seed must be an int"),
    (["train", "--seed", "x"], "expected an integer"),
    (["train", "--n-seqs", str(10**9)], "n_train=1000000000"),
    (["train", "--task", "modsum", "--batch-size", "64", "--n-seqs", "8"], "--batch-size"),
    (["demo", "--seed", str(2**70)], "seed must be an int"),
])
def test_more_bad_options_exit_2(argv, msg, capsys, tmp_path):
    assert exit_code(argv + (["--out", str(tmp_path / "o")] if argv[0] == "train" else [])) == 2
    assert msg in capsys.readouterr().err


@pytest.fixture(scope="module")
def ap_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    assert main(["train", "--steps", "2", "--eval-every", "2", "--pauses", "2", "--out", str(out / "run"), *SMALL]) == 0
    return out / "run" / "checkpoint.pt"


@pytest.mark.parametrize("change, msg", [
    (["--loss", "va"], "used --loss ap, this command asks for --loss va"),
    (["--pauses", "3"], "used --pauses 2, this command asks for --pauses 3"),
    (["--size", "small"], "used --size tiny, this command asks for --size small"),
    (["--task", "lookup"], "used --task modsum, this command asks for --task lookup"),
    (["--seq-len", "24"], "used --seq-len 16, this command asks for --seq-len 24"),
])
def test_resume_with_other_options_exit_2(ap_checkpoint, change, msg, tmp_path, capsys):
    argv = ["train", "--steps", "4", "--pauses", "2", "--resume", str(ap_checkpoint), "--out", str(tmp_path / "o"), *SMALL]
    assert exit_code(argv + change) == 2
    assert msg in capsys.readouterr().err


def test_eval_on_a_task_with_another_vocabulary_exit_2(ap_checkpoint, capsys):
    assert exit_code(["eval", str(ap_checkpoint), "--task", "text"]) == 2
    err = capsys.readouterr().err
    assert "argument --task" in err and "'modsum'" in err


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    "A tiny GPT-2 and its tokenizer saved as a transformers folder: a user's own base."
    from cyb_nb.models import tiny_hf_lm
    d = tmp_path_factory.mktemp("hf_base")
    words = "the cat sat on a mat and dog ran to big red house it was . pauses help tokens".split()
    lm, tok = tiny_hf_lm("gpt2", words=words, d_model=16, n_layers=1, n_heads=2)
    lm.save_pretrained(d); tok.save_pretrained(d)
    return d


def test_train_grows_the_default_base(tmp_path, capsys):
    out = tmp_path / "run"
    assert exit_code(["train", "--base", "default", "--loss", "ap", "--steps", "2", "--batch-size", "4", "--n-seqs", "8",
                      "--eval-every", "2", "--eval-batches", "1", "--out", str(out), "--no-progress"]) == 0
    from cyb_nb.train import load_checkpoint, pretrained_base
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["extra"]["train_args"]["meta"]["train_split"] == "finetune"  # the base's other half
    assert ck["pause_vocab"]["n_pauses"] == 3
    base = pretrained_base(log=None)
    assert ck["model"]["tok_emb.weight"].shape[0] == base.tok_emb.weight.shape[0] + 3


def test_train_grows_a_transformers_base_on_your_text(tmp_path, hf_base):
    corpus = tmp_path / "mine.txt"
    corpus.write_text("\n".join("the cat sat on a mat and the dog ran to the big red house ." for _ in range(300)))
    out = tmp_path / "run"
    r = run_cli("train", "--base", hf_base, "--corpus", corpus, "--loss", "ap", "--pauses", "2", "--steps", "2", "--seq-len", "8",
                "--batch-size", "4", "--eval-every", "2", "--eval-batches", "1", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    from cyb_nb.models import PauseLM
    grown = PauseLM.from_pretrained(out / "model")
    assert grown.pause_vocab.n_pauses == 2


def test_bad_bases_exit_2(tmp_path, hf_base, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    from cyb_nb.models import PauseLM
    from transformers import AutoModelForCausalLM, AutoTokenizer
    PauseLM(AutoModelForCausalLM.from_pretrained(hf_base), AutoTokenizer.from_pretrained(hf_base), 1).save_pretrained(tmp_path / "plm")
    cases = [(["train", "--base", str(bad)], "corrupt"), (["train", "--base", str(tmp_path / "missing")], "neither 'default'"),
             (["train", "--base", str(tmp_path / "plm")], "already has pauses"),
             (["train", "--base", "default", "--tokenizer", str(hf_base)], "vocabulary"),
             (["demo", "--base", "default", "--regime", "scratch"], "--regime finetune")]
    for argv, msg in cases:
        assert exit_code(argv + ["--out", str(tmp_path / "o"), "--steps", "1"]) == 2, argv
        err = capsys.readouterr().err
        assert "--base" in err and msg in err, err


def test_demo_from_a_transformers_base(tmp_path, hf_base, capsys):
    from cyb_nb.cli import run_demo
    corpus = tmp_path / "mine.txt"
    corpus.write_text("\n".join("the cat sat on a mat and the dog ran to the big red house ." for _ in range(300)))
    res = run_demo(tmp_path / "demo", steps=1, quick=True, progress=False, corpus=corpus, base=hf_base)
    assert [r["loss"] for r in res] == ["base", "ce", "tbys", "ap"]
    assert abs(res[1]["nll"] - res[0]["nll"]) < 0.5  # continued from the user's base, not a fresh model


# --- cyb-nb generate, and eval of every kind of checkpoint (issue 30) ---

HF_TEXT = "\n".join("the cat sat on a mat and the dog ran to the big red house ." for _ in range(300))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, ap_checkpoint, hf_base):
    "One checkpoint of every kind the command line writes: TinyGPT, grown TinyGPT, a pretrained base, a grown 🤗 model, a demo's."
    from cyb_nb.cli import run_demo
    d = tmp_path_factory.mktemp("kinds")
    corpus = d / "mine.txt"
    corpus.write_text(HF_TEXT)
    assert main(["train", "--base", "default", "--loss", "ap", "--steps", "2", "--batch-size", "4", "--n-seqs", "8", "--eval-every",
                 "2", "--eval-batches", "1", "--out", str(d / "grown"), "--no-progress"]) == 0
    assert main(["pretrain", "--steps", "2", "--d-model", "16", "--layers", "1", "--heads", "2", "--seq-len", "16", "--batch-size",
                 "4", "--cache-dir", str(d / "cache"), "--no-progress", "--out", str(d / "base.pt")]) == 0
    assert main(["train", "--base", str(hf_base), "--corpus", str(corpus), "--loss", "ap", "--pauses", "2", "--steps", "2",
                 "--seq-len", "8", "--batch-size", "4", "--eval-every", "2", "--eval-batches", "1", "--out", str(d / "hf"),
                 "--no-progress"]) == 0
    run_demo(d / "demo", steps=1, quick=True, progress=False, corpus=corpus, base=hf_base)
    return {"tinygpt": (ap_checkpoint, "1 + 2 + 3 ="), "grown": (d / "grown", "The list data type"),
            "base": (d / "base.pt", "The list data type"), "hf": (d / "hf" / "checkpoint.pt", "the cat sat on"),
            "demo_ap": (d / "demo" / "ckpt_ap", "the cat sat on"), "demo_folder": (d / "demo", None)}


@pytest.mark.parametrize("kind", ["tinygpt", "grown", "base", "hf", "demo_ap"])
def test_generate_and_eval_every_checkpoint_kind(checkpoints, kind, tmp_path, capsys):
    from cyb_nb.decode import TokenEvent
    path, prompt = checkpoints[kind]
    capsys.readouterr()
    rec = tmp_path / "tokens.jsonl"
    assert main(["generate", str(path), "--prompt", prompt, "--max-new-tokens", "5", "--json", str(rec)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(prompt) and "\x1b" not in out  # captured stdout is no terminal: plain
    last = out.strip().splitlines()[-1]
    assert "5 tokens in" in last and "tokens/s" in last and "mean pauses per token" in last and "forward positions per token" in last
    events = [TokenEvent(**json.loads(line)) for line in rec.read_text().splitlines()]
    assert len(events) == 5 and all(len(e.d) >= 1 and e.positions >= 1 for e in events)
    mean_pos = float(last.split("forward positions per token ")[1].split()[0])
    assert abs(mean_pos - sum(e.positions for e in events) / 5) < 0.006
    assert main(["eval", str(path), "--batches", "1"]) == 0
    line = capsys.readouterr().out
    assert "val NLL" in line and "over the first 1 val batches of 32 =" in line and "tokens" in line


def test_generate_is_the_library_decoder_and_json_round_trips(checkpoints, tmp_path, capsys):
    "The CLI's tokens and records are stream_generate's with the checkpoint's settings (adaptive for AP, its δ prior)."
    import dataclasses
    from cyb_nb.decode import TokenEvent, generate
    from cyb_nb.train import load_model
    path, prompt = checkpoints["tinygpt"]
    rec = tmp_path / "t.jsonl"
    assert main(["generate", str(path), "--prompt", prompt, "--max-new-tokens", "6", "--seed", "3", "--json", str(rec)]) == 0
    model, cfg, _ = load_model(path)
    stoi = {s: i for i, s in enumerate(["0", "1", "2", "3", "4", "+", "=", ";", "#1", "#2", "#3", "#4"])}
    ref = generate(model, [stoi[w] for w in prompt.split()], 6, mode="adaptive", dk_prior=cfg.dk_prior, seed=3)
    got = [TokenEvent(**json.loads(line)) for line in rec.read_text().splitlines()]
    assert [e.token for e in got] == ref["tokens"]
    assert [(e.pauses, e.positions, e.d) for e in got] == [(e.pauses, e.positions, e.d) for e in ref["events"]]
    assert [dataclasses.asdict(e) for e in got] == [json.loads(line) for line in rec.read_text().splitlines()]
    assert main(["generate", str(path), "--prompt", prompt, "--max-new-tokens", "6", "--mode", "fixed", "--temperature", "0"]) == 0
    assert "Recipe 1: 2 pauses after every token" in capsys.readouterr().out


def test_generate_piped_has_no_escape_codes(checkpoints):
    path, prompt = checkpoints["hf"]
    r = run_cli("generate", path, "--prompt", prompt, "--max-new-tokens", "4", "--halt", "mass", "--threshold", "0.2")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and r.stdout.startswith(prompt) and "tokens/s" in r.stdout


def test_generate_on_a_terminal_colours_the_pauses(checkpoints, capsys, monkeypatch):
    path, prompt = checkpoints["tinygpt"]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["generate", str(path), "--prompt", prompt, "--max-new-tokens", "4", "--threshold", "0"]) == 0  # never answers early
    out = capsys.readouterr().out
    assert "\x1b[1m" + prompt in out and "\x1b[31m" in out and "\x1b[2m²\x1b[0m" in out  # all 2 pauses: red, dim superscript
    assert main(["generate", str(path), "--prompt", prompt, "--max-new-tokens", "4", "--plain"]) == 0
    assert "\x1b" not in capsys.readouterr().out


def test_generate_bad_input_exit_2(checkpoints, tmp_path, capsys):
    import torch
    tiny, prompt = checkpoints["tinygpt"]
    hf, hf_prompt = checkpoints["hf"]
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00 not a checkpoint")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    demo_ap = checkpoints["demo_ap"][0] / "checkpoint.pt"  # a grown 🤗 model without its model/ folder (and no --base recorded)
    (orphan / "checkpoint.pt").write_bytes(demo_ap.read_bytes())
    regrown = tmp_path / "regrown"  # the same without its folder but with the run's --base: grown again, the weights loaded
    regrown.mkdir()
    (regrown / "checkpoint.pt").write_bytes(Path(hf).read_bytes())
    assert exit_code(["generate", str(regrown), "--prompt", hf_prompt, "--max-new-tokens", "2"]) == 0
    cases = [(["generate", str(foreign), "--prompt", "a"], "argument checkpoint", "not a cyb_nb checkpoint"),
             (["generate", str(junk), "--prompt", "a"], "argument checkpoint", "corrupt"),
             (["generate", str(orphan), "--prompt", "a"], "argument checkpoint", "PauseLM"),
             (["generate", str(checkpoints["demo_folder"][0]), "--prompt", "a"], "argument checkpoint", "demo output folder"),
             (["generate", str(tiny), "--prompt", ""], "argument --prompt", "empty"),
             (["generate", str(tiny), "--prompt", "  "], "argument --prompt", "empty"),
             (["generate", str(tiny), "--prompt-file", str(empty)], "argument --prompt-file", "empty"),
             (["generate", str(tiny), "--prompt-file", str(tmp_path / "nope.txt")], "argument --prompt-file", "nope.txt"),
             (["generate", str(tiny), "--prompt", "1 + cat"], "argument --prompt", "'cat' is not a symbol"),
             (["generate", str(hf), "--prompt", "the zebra"], "argument --prompt", "cannot encode"),
             (["generate", str(hf), "--prompt", "the <pause_1>"], "argument --prompt", "pause"),
             (["generate", str(tiny), "--prompt", prompt, "--max-new-tokens", "0"], "argument --max-new-tokens", "positive"),
             (["generate", str(tiny), "--prompt", prompt, "--max-pauses", "3"], "argument --max-pauses", "2 pauses"),
             (["generate", str(tiny), "--prompt", prompt, "--threshold", "1.5"], "argument --threshold", "[0, 1]"),
             (["generate", str(tiny), "--prompt", prompt, "--max-new-tokens", "5000"], "argument --max-new-tokens", "positions"),
             (["generate", str(tiny)], "--prompt", "required"),
             (["eval", str(foreign)], "argument checkpoint", "not a cyb_nb checkpoint")]
    for argv, arg, msg in cases:
        assert exit_code(argv) == 2, argv
        err = capsys.readouterr().err
        assert arg in err and msg in err, (argv, err)


def test_eval_a_demo_folder_one_line_per_model(checkpoints, capsys):
    capsys.readouterr()
    assert main(["eval", str(checkpoints["demo_folder"][0]), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["loss"] for r in rows] == ["ce", "tbys", "ap"]
    assert all(r["scored"] == "the whole val split" and r["n_tokens"] > 0 for r in rows)


def test_train_final_line_says_over_how_many_tokens(tmp_path, capsys):
    from cyb_nb.train import evaluate, load_model
    assert main(["train", "--steps", "2", "--eval-every", "2", "--pauses", "2", "--out", str(tmp_path / "r"), *SMALL]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    model, cfg, _ = load_model(tmp_path / "r")
    from cyb_nb.cli import load_task
    n = evaluate(model, load_task("modsum", seq_len=16, n=64), cfg, batch_size=8, max_batches=1)["n_tokens"]
    assert f"over --eval-batches 1 batches of 8 = {n} tokens" in last, last


def test_demo_budget_is_in_epochs():
    "The demo's default budget is two epochs of the fine-tuning half (1499 steps of 4 rows on the bundled text's 2997 rows)."
    import dataclasses
    from cyb_nb.cli import DEMO_EPOCHS, budget_config, epoch_steps
    from cyb_nb.train import FinetuneConfig
    assert DEMO_EPOCHS == 2 and epoch_steps(2997, 2, 4) == 1499 and epoch_steps(2997, 0.5, 4) == 375 and epoch_steps(3, 0.01, 4) == 1
    ft = budget_config(FinetuneConfig(), 2997)
    assert (ft.steps, ft.warmup) == (1499, 50) and dataclasses.replace(ft, steps=1500, warmup=50) == FinetuneConfig()
    assert budget_config(FinetuneConfig(), 2997, epochs=0.5).warmup == 37  # warmup at most a tenth of a short budget
    assert budget_config(FinetuneConfig(), 2997, steps=7).steps == 7
    for bad in (dict(n_rows=0, epochs=1, batch_size=4), dict(n_rows=10, epochs=0, batch_size=4), dict(n_rows=10, epochs=math.nan, batch_size=4)):
        with pytest.raises(ValueError):
            epoch_steps(**bad)
    with pytest.raises(ValueError, match="not both"):
        budget_config(FinetuneConfig(), 100, steps=3, epochs=1)


def test_demo_prints_epochs_and_warns_under_one(tmp_path, monkeypatch, capsys):
    "`--size small` runs the 4x128 base (pretrained once into the cache); the budget is printed as steps and epochs, a warning under one."
    from cyb_nb import cli
    from cyb_nb.train import BaseConfig, FinetuneConfig
    monkeypatch.setenv("CYB_NB_CACHE", str(tmp_path / "cache"))
    # the real sizes, on a shrunk budget: a few pretraining steps on short rows of the synthetic task
    monkeypatch.setitem(cli.DEMO_FULL, "base", BaseConfig(seq_len=16, steps=3, batch_size=4, warmup=1))
    monkeypatch.setitem(cli.DEMO_FULL, "finetune", FinetuneConfig(batch_size=4, warmup=1))
    monkeypatch.setitem(cli.DEMO_FULL, "eval_every", 1000)
    res = cli.run_demo(tmp_path / "demo", epochs=0.005, progress=False, task="modsum", size="small")
    cap = capsys.readouterr()
    n_rows = 2048  # half of the synthetic task's 4096 training rows
    steps = math.ceil(0.005 * n_rows / 4)
    assert f"fine-tuning: {steps} steps of 4 rows = {steps * 4 / n_rows:.2f} epochs of the fine-tuning half ({n_rows} rows)" in cap.out
    assert "warning:" in cap.err and "needs about two" in cap.err
    assert all(r["steps"] == steps for r in res[1:])
    from cyb_nb.train import load_base
    cached = list((tmp_path / "cache").glob("base-*.pt"))  # pretrained once and cached for the next call
    assert len(cached) == 1
    cfg = load_base(cached[0]).base_info["config"]
    assert (cfg["d_model"], cfg["n_layers"], cfg["n_heads"]) == (128, 4, 4)  # the 4x128 base, not the shipped 2x64
    j = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert j["config"]["size"] == "small" and j["config"]["finetune"]["steps"] == steps
    res2 = cli.run_demo(tmp_path / "demo2", steps=steps * 2, progress=False, task="modsum", size="small")
    assert res2[0]["nll"] == res[0]["nll"]  # the cached base, not a second pretraining
    assert "warning:" in capsys.readouterr().err


def test_demo_size_checks(tmp_path, capsys):
    from cyb_nb.cli import demo_base_config
    from cyb_nb.train import MODEL_SIZES
    assert demo_base_config("small").size == MODEL_SIZES["small"] and demo_base_config("tiny").size == MODEL_SIZES["tiny"]
    for argv in (["demo", "--size", "base"], ["demo", "--size", "small", "--quick"], ["demo", "--size", "small", "--base", "default"],
                 ["demo", "--steps", "10", "--epochs", "1"], ["demo", "--epochs", "0"], ["demo", "--epochs", "nan"]):
        assert exit_code(argv + ["--out", str(tmp_path / "o")]) == 2, argv
    assert "--size" in capsys.readouterr().err
    with pytest.raises(ValueError, match="size"):
        demo_base_config("huge")


def test_generate_and_eval_say_which_dk_prior_they_used(checkpoints, capsys):
    "Without --dk-prior the decoder reads the checkpoint's loss (the model's loss_config); with it, the value passed; both are printed."
    from cyb_nb.cli import _with_loss_config
    from cyb_nb.losses import LossConfig
    from cyb_nb.train import load_model
    path, prompt = checkpoints["tinygpt"]
    model, cfg, _ = load_model(path)
    assert cfg is not None and _with_loss_config(model, cfg) is model.loss_config
    assert main(["generate", str(path), "--prompt", prompt, "--max-new-tokens", "3", "--seed", "0"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert f"ψ′ = {cfg.dk_prior:g}" in last and "(the model's loss_config)" in last
    assert main(["generate", str(path), "--prompt", prompt, "--max-new-tokens", "3", "--seed", "0", "--dk-prior", "0.5"]) == 0
    assert "ψ′ = 0.5 (passed)" in capsys.readouterr().out.splitlines()[-1]
    assert main(["eval", str(path), "--batches", "1"]) == 0
    assert f"δ prior ψ′ = {cfg.dk_prior:g} (the model's loss_config)" in capsys.readouterr().out
    own = LossConfig("ap", dk_prior=0.5)
    model.loss_config = own  # a model that already carries its loss keeps it over the checkpoint's record
    assert _with_loss_config(model, cfg) is own
