"""Difficulty in the paper's regime (chapter 15): a CE base pretrained on the first half of `modsum`, grown with
three pauses and fine-tuned on the second half with CE (continued), CYB-AP (γ = 1 and γ = 0.9^(i-1)), CYB-VA and CYB-DP
(α = 0.01, 0.1), over seeds; per difficulty level: expected pauses, NLL, the gain of later steps; calibration and the token table.

    python benchmarks/difficulty_regime.py                      # the measured run: preset 'cpu', 3 seeds (~16 min on one CPU thread)
    python benchmarks/difficulty_regime.py --preset cpu_long --checkpoints ''   # CE vs CYB-AP fine-tuned 4x longer, one seed (~9 min)
    python benchmarks/difficulty_regime.py --preset test --out /tmp/d.json --checkpoints ''   # seconds: every code path

Resumable: runs already in the JSON document (with the same settings) are kept. The document is written atomically after
every run; the table printed at the end is `cyb_nb.difficulty.difficulty_report` of it. With --checkpoints (default
benchmarks/difficulty_regime/) the base and the first seed's CYB-AP and CYB-DP (α = 0.01) models are saved there for the chapter's
widgets (`CHECKPOINT_SETTINGS`); a run already in the document whose checkpoint is missing is trained again to write it.
"""
import argparse
import time
from pathlib import Path

import torch

from cyb_nb.difficulty import DIFFICULTY_PRESETS, REGIME_SETTINGS, difficulty_preset, difficulty_report, run_difficulty

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=sorted(DIFFICULTY_PRESETS))
    ap.add_argument("--out", help="the JSON document (written atomically; default benchmarks/difficulty_regime.json for the preset "
                    "'cpu', benchmarks/difficulty_regime_PRESET.json otherwise)")
    ap.add_argument("--checkpoints", default=str(HERE / "difficulty_regime"), help="folder for base.pt, ap.pt, dp_a001.pt ('' for none)")
    ap.add_argument("--seeds", type=int, nargs="+", help="override the preset's seeds")
    ap.add_argument("--settings", nargs="+", choices=sorted(REGIME_SETTINGS), help="override the preset's settings")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared small CPU)")
    a = ap.parse_args(argv)
    if a.threads < 1:
        ap.error(f"--threads must be >= 1, got {a.threads}")
    torch.set_num_threads(a.threads)
    over = {k: tuple(v) for k, v in (("seeds", a.seeds), ("settings", a.settings)) if v}
    cfg = difficulty_preset(a.preset, **over)
    a.out = a.out or str(HERE / ("difficulty_regime.json" if a.preset == "cpu" else f"difficulty_regime_{a.preset}.json"))
    t0 = time.perf_counter()
    doc = run_difficulty(cfg, out=a.out, preset_name=a.preset, checkpoints=a.checkpoints or None)
    print(difficulty_report(doc))
    print(f"\nwall time of this invocation: {time.perf_counter() - t0:.0f} s (all runs in the document: {doc['seconds']:.0f} s)")
    return doc


if __name__ == "__main__":
    main()
