"""Difficulty in the paper's regime (chapter 15): per-level aggregation, pooled hard levels, the goal verdicts, config errors,
the task tokenizer, and the benchmark script end to end on the tiny preset.

Independent references: per-level means recomputed with explicit Python loops in float64 (not `mean_by_difficulty`), pooled means
by hand, verdicts on hand-built documents whose answer is known.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cyb_nb import difficulty as D
from cyb_nb.train import load_base, model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fake_stats(N=3, T=7, W=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(N, T, generator=g) > 0.2
    d = torch.rand(N, T, W, generator=g)
    d[..., -1] = 0
    return {"mask": mask, "nll": torch.rand(N, T, generator=g) * 3, "pauses": torch.rand(N, T, generator=g) * 3,
            "d": d, "t": torch.rand(N, T, W, generator=g)}, torch.randint(-1, 4, (N, T), generator=g)


def test_level_stats_against_loops():
    st, lab = _fake_stats()
    out = D.level_stats(st, lab)
    N, T, W = st["t"].shape
    for lvl in set(lab[st["mask"]].tolist()):
        cells = [(i, j) for i in range(N) for j in range(T) if st["mask"][i, j] and lab[i, j] == lvl]
        row = out[D.level_name(lvl)]
        assert row["n"] == len(cells)
        mean = lambda f: sum(float(f(i, j)) for i, j in cells) / len(cells)
        assert math.isclose(row["nll"], mean(lambda i, j: st["nll"][i, j].double()), rel_tol=1e-12)
        assert math.isclose(row["pauses"], mean(lambda i, j: st["pauses"][i, j].double()), rel_tol=1e-12)
        for k in range(W - 1):
            ref = mean(lambda i, j: st["t"][i, j, k + 1].double() - st["t"][i, j, k].double())
            assert math.isclose(row["gain"][k], ref, rel_tol=1e-9, abs_tol=1e-12)
            assert math.isclose(row["d"][k], mean(lambda i, j: st["d"][i, j, k].double()), rel_tol=1e-12)
        assert len(row["t"]) == W and len(row["gain"]) == W - 1
    assert sum(r["n"] for r in out.values()) == int(st["mask"].sum())  # masked cells never count


def test_level_stats_without_pauses_and_bad_shape():
    st, lab = _fake_stats()
    ce = {"mask": st["mask"], "nll": st["nll"]}
    out = D.level_stats(ce, lab)
    assert all(set(r) == {"n", "nll"} for r in out.values())
    with pytest.raises(ValueError, match="difficulty"):
        D.level_stats(st, lab[:, :-1])


def _doc(pauses_easy, pauses_hard, cal, seeds=(0, 1)):
    "A document with one pause setting ('ap') and CE, whose per-seed numbers are given."
    res = {}
    for s in seeds:
        bl = {"easy": {"n": 10, "nll": 0.1, "pauses": pauses_easy[s]},
              "hard1": {"n": 30, "nll": 0.5, "pauses": pauses_hard[s][0]}, "hard2": {"n": 10, "nll": 1.5, "pauses": pauses_hard[s][1]}}
        for v in bl.values():
            v.update(d=[0.1, 0.1, 0.1], t=[0.5] * 4, gain=[0.0] * 3)
        res[f"ap/s{s}"] = {"seed": s, "nll": 0.4, "mean_pauses": 0.2, "calibration": cal[s], "by_level": bl}
        res[f"ce/s{s}"] = {"seed": s, "nll": 0.5, "mean_pauses": 0.0,
                           "by_level": {k: {"n": v["n"], "nll": v["nll"] + 0.1} for k, v in bl.items()}}
    base = {"by_level": {"easy": {"n": 10, "nll": 0.0}, "hard1": {"n": 30, "nll": 1.0}, "hard2": {"n": 10, "nll": 1.6}}}
    return {"config": {"seeds": list(seeds), "settings": ["ce", "ap"], "task": "modsum"}, "base": base, "grown": None, "results": res}


def test_pooled_levers_and_goal():
    doc = _doc({0: 0.1, 1: 0.5}, {0: (0.2, 0.6), 1: (0.1, 0.1)}, {0: [0.3, 0.1, 0.2], 1: [0.3, float("nan"), 0.2]})
    bl = doc["results"]["ap/s0"]["by_level"]
    assert D.hard_levels(bl) == ["hard1", "hard2"]
    assert math.isclose(D.pooled(bl, "pauses", ["hard1", "hard2"]), (30 * 0.2 + 10 * 0.6) / 40)
    with pytest.raises(ValueError, match="levels"):
        D.pooled(bl, "pauses", ["hard9"])
    goals = D.goal_rows(doc)
    assert [g["setting"] for g in goals] == ["ap", "ap"]  # CE has no calibration: no goal row
    assert goals[0]["verdict"] == "meets" and goals[0]["hard_more"] and goals[0]["all_positive"]
    assert goals[1]["verdict"] == "fails: hard ≤ easy pauses, a Spearman ≤ 0 (or undefined)"  # 0.1 < 0.5 and a NaN step
    lv = {r["setting"]: r for r in D.lever_rows(doc)}
    h = [(30 * 0.2 + 10 * 0.6) / 40, 0.1]
    assert math.isclose(lv["ap"]["hard"], sum(h) / 2) and math.isclose(lv["ap"]["easy"], 0.3)
    assert math.isclose(lv["ap"]["hard_minus_easy"], ((h[0] - 0.1) + (h[1] - 0.5)) / 2)
    assert math.isclose(lv["ap"]["nll_hard"], (30 * 0.5 + 10 * 1.5) / 40) and "pauses" not in lv["ce"]
    rows = D.level_rows(doc)
    assert [r["setting"] for r in rows[:3]] == ["base"] * 3
    r = next(r for r in rows if r["setting"] == "ap" and r["level"] == "easy")
    assert math.isclose(r["pauses"], 0.3) and math.isclose(r["pauses_sd"], math.sqrt(((0.1 - 0.3) ** 2 + (0.5 - 0.3) ** 2) / 1))


def test_config_errors():
    for kw, name in ((dict(steps=0), "steps"), (dict(lr=0), "lr"), (dict(warmup=-1), "warmup"), (dict(seeds=()), "seeds"),
                     (dict(settings=("ap", "xx")), "settings"), (dict(n_rows=True), "n_rows"), (dict(base={"steps": 0}), "steps")):
        with pytest.raises(ValueError, match=name):
            D.DifficultyConfig(**kw)
    with pytest.raises(ValueError, match="preset"):
        D.difficulty_preset("nope")
    with pytest.raises(ValueError, match="setting"):
        D.run_difficulty_one("nope", 0, D.difficulty_preset("test"))


def test_task_tokenizer():
    tk = D.TaskTokenizer(["0", "1", "+", "="])
    assert tk.encode(" 1 + 0 = 1 ") == [1, 2, 0, 3, 1] and tk.decode(torch.tensor([1, 2, 0])) == "1 + 0"
    with pytest.raises(ValueError, match="vocabulary"):
        tk.encode("1 * 0")
    with pytest.raises(ValueError, match="itos"):
        D.TaskTokenizer([])


def test_script_end_to_end(tmp_path):
    out, ck = tmp_path / "d.json", tmp_path / "ck"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "difficulty_regime.py"), "--preset", "test", "--out", str(out),
           "--checkpoints", str(ck), "--settings", "ce", "ap", "dp_a01"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(out.read_text())
    seeds = D.difficulty_preset("test").seeds
    assert doc["format"] == "cyb_nb.difficulty/1" and sorted(doc["results"]) == sorted(f"{s}/s{k}" for s in ("ce", "ap", "dp_a01")
                                                                                        for k in seeds)
    ap = doc["results"]["ap/s0"]
    assert set(ap["by_level"]) >= {"easy", "random", "hard1"} and len(ap["calibration"]) == 3 and "pause_table" in ap
    assert math.isclose(sum(v["n"] for v in ap["by_level"].values()), ap["n_tokens"])
    assert math.isclose(sum(v["n"] * v["pauses"] for v in ap["by_level"].values()) / ap["n_tokens"], ap["mean_pauses"], rel_tol=1e-6)
    assert doc["grown"]["mean_pauses"] > 2.0  # the δ prior (0.9) before fine-tuning: ≈ 0.9 + 0.81 + 0.73 pauses
    assert "### Per difficulty level" in p.stdout and "### The goal, per seed" in p.stdout
    tt = D.difficulty_token_rows(doc)
    assert [r["quadrant"] for r in tt] == list(D.PAPER_TABLE3) and all(r["paper"] == D.PAPER_TABLE3[r["quadrant"]] for r in tt)
    axes = D.plot_levels(doc)
    n_levels = len(doc["base"]["by_level"])
    assert len(axes[0].patches) == 2 * n_levels and len(axes[1].patches) == 4 * n_levels  # pauses: ap, dp; NLL: base, ce, ap, dp
    import matplotlib.pyplot as plt
    plt.close(axes[0].figure)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    model, loss = model_from_checkpoint(ck / "ap.pt")
    assert loss.name == "ap" and model.pause_vocab.n_pauses == 3 and load_base(ck / "base.pt").pause_vocab.n_pauses == 0
    p2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)  # resumes: nothing left to train
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert json.loads(out.read_text())["results"] == doc["results"] and "ap/s0" not in p2.stdout
    (ck / "ap.pt").unlink()  # a missing checkpoint: only that run is trained again, the document's numbers are kept
    p3 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p3.returncode == 0, p3.stderr[-2000:]
    assert "ap/s0 retrained for ap.pt" in p3.stdout and (ck / "ap.pt").is_file() and "ce/s0" not in p3.stdout
    assert json.loads(out.read_text())["results"] == doc["results"]
