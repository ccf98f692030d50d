"benchmarks/gain_scaling.py --quick end to end (seconds), so the script that writes benchmarks/gain_scaling.json cannot rot."
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gs(load_script):
    return load_script("benchmarks/gain_scaling.py")


def test_quick_run_writes_every_cell_and_resumes(gs, tmp_path):
    out = tmp_path / "gs.json"
    common = ["--quick", "--out", str(out), "--phases", "abd", "--cache-dir", str(tmp_path / "bases")]
    doc = gs.main(common)
    on_disk = json.loads(out.read_text())
    cells = [(c, s, e, seed) for p in "abd" for c, s, e, seeds in gs.QUICK_PHASES[p] for seed in seeds]
    assert len(on_disk["runs"]) == 3 * len(cells)  # CE, TBYS-3 and CYB-AP per cell and seed
    for corpus, size, epochs, seed in cells:
        for loss in ("ce", "tbys", "ap"):
            r = on_disk["runs"][gs.run_key(corpus, size, epochs, seed, loss)]
            assert math.isfinite(r["ppl"]) and r["ppl"] > 1 and r["wall_s"] > 0
            assert (r["mean_pauses"] == 0) == (loss == "ce")
            assert r["steps"] == math.ceil(epochs * r["n_rows"] / r["batch_size"])  # the budget is in epochs of the fine-tuning half
    # each base's own val ppl and pretraining budget, and the corpus' provenance
    for key, b in on_disk["bases"].items():
        assert b["val_ppl"] > 1 and b["train_ppl"] > 1 and b["pretrain_steps"] == gs.QUICK_BASE.steps and b["pretrain_epochs"] > 0, key
    assert on_disk["bases"]["text/small"]["params"] > on_disk["bases"]["text/tiny"]["params"]
    std = on_disk["corpora"]["stdlib"]
    assert len(std["sha256"]) == 64 and std["python"] and 0 < std["bytes"] <= gs.QUICK_STDLIB_BYTES
    assert on_disk["sessions"][0]["machine"]["cpu_count"] >= 1
    # the summary: per-seed change against CE, recomputed here from the runs
    rows = {(r["corpus"], r["size"], r["epochs"], r["recipe"]): r for r in on_disk["summary"]}
    small_ap = rows[("text", "small", 2.0, "ap")]
    assert small_ap["seeds"] == [0, 1] and small_ap["n"] == 2
    for seed, change in zip(small_ap["seeds"], small_ap["changes"]):
        ap, ce = (on_disk["runs"][gs.run_key("text", "small", 2.0, seed, k)]["ppl"] for k in ("ap", "ce"))
        assert change == pytest.approx(100 * (ap / ce - 1))
    assert small_ap["sd"] > 0 and rows[("stdlib", "tiny", 1.0, "tbys")]["n"] == 1
    assert doc["summary"] == on_disk["summary"]
    # a rerun trains nothing and keeps every number
    again = gs.main(common)
    assert again["runs"] == on_disk["runs"] and len(again["sessions"]) == 2 and again["sessions"][-1]["runs"] == 0
    stripped = json.loads(out.read_text())
    for b in stripped["bases"].values():
        del b["train_ppl"]
    out.write_text(json.dumps(stripped))
    described = gs.main(common + ["--bases-only"])  # no training: the cached bases described again
    assert described["bases"] == on_disk["bases"] and described["runs"] == on_disk["runs"]


def test_refuses_other_settings_and_unknown_phases(gs, tmp_path):
    out = tmp_path / "gs.json"
    gs.main(["--quick", "--out", str(out), "--phases", "b"])
    with pytest.raises(SystemExit):
        gs.main(["--quick", "--out", str(out), "--phases", "b", "--pretrain-steps", "3"])  # other bases: not mixed in
    with pytest.raises(SystemExit):
        gs.main(["--quick", "--out", str(tmp_path / "x.json"), "--phases", "z"])


def test_two_workers_share_one_document(tmp_path):
    "Two workers started together on one document run every job exactly once between them."
    import os
    import subprocess
    import sys
    out = tmp_path / "gs.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gain_scaling.py"), "--quick", "--out", str(out), "--phases", "ab",
           "--cache-dir", str(tmp_path / "bases")]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    doc = json.loads(out.read_text())
    assert len(doc["runs"]) == 9 and not doc["claims"]  # (small: 2 seeds + tiny: 1 seed) x 3 recipes, no claim left behind
    per_worker = [sum(f"ppl " in line and "steps" in line for line in log.splitlines()) for log in logs]
    assert sum(per_worker) == 9, logs  # every run trained once, by one of the two
    assert sum(log.count("pretraining its base") for log in logs) == 2  # each base pretrained by one worker only
