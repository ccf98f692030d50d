"`benchmarks/gpu_check.py` cannot rot: its dry run executes every part on the CPU with tiny sizes, and without a GPU it says so."
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_dry_run_runs_every_part_and_writes_its_figures(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = json.loads(out.read_text())
    parts = res["parts"]
    assert res["dry_run"] and res["machine"]["torch"] == torch.__version__
    assert not [n for n, p in parts.items() if "error" in p], {n: p.get("error") for n, p in parts.items()}
    tests = parts["tests"]["result"]
    assert tests["returncode"] == 0 and tests["passed"] >= 6 and tests["failed"] == 0 and tests["skipped"] == 0
    bf16 = parts["bf16"]["result"]
    assert set(bf16) == {"ce", "tbys", "ap", "va", "dp"}
    assert all(v["loss_rel_diff"] < 0.05 and v["grad_cosine"] > 0.99 for v in bf16.values()), bf16
    th = parts["throughput"]["result"]
    assert [t["W"] for t in th["tinygpt"] + th["pauselm_gpt2"]] == [1, 4, 1, 4]
    assert all(t["real_tokens_per_s"] > 0 for t in th["tinygpt"] + th["pauselm_gpt2"])
    assert [t["V"] for t in th["loss_vs_cross_entropy"]] == [64, 100]
    reg = parts["regime"]["result"]
    assert all(reg[k]["val_ppl"] > 1 for k in ("ce", "ap")) and "ap_vs_ce_percent" in reg
    assert "decoding" in parts
    assert "GPU check" in r.stdout and "CYB-AP" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_stops_with_a_clear_message(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "no CUDA device is visible" in r.stderr and "--dry-run" in r.stderr
    assert not (tmp_path / "x.json").exists()


def test_unknown_part_is_refused():
    r = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--parts", "tests,speed"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "--parts" in r.stderr and "speed" in r.stderr
