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
