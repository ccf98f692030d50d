"""Execute the notebooks top to bottom in fresh kernels and store their outputs (nbdev's convention: notebooks are the docs).

    python .ci/execute_notebooks.py                    # every notebook in nbs/, two at a time
    python .ci/execute_notebooks.py nbs/05_models.ipynb nbs/07_train.ipynb --jobs 1

Reproducible: one BLAS/OpenMP thread, a fixed hash seed, no GPU, hubs offline; every notebook seeds its own generators. Long
results come from the measured JSON documents in benchmarks/, so a notebook executes in seconds to a minute; `CYB_NB_FULL=1` is set
for cells that show a fuller setting than their `nbdev_test` one. Outputs are then normalised by `nbdev_clean`, so that the stored
notebooks stay byte-stable (`.ci/check_outputs.py` checks that every chapter keeps its outputs).
"""
import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "CYB_NB_FULL": "1", "TQDM_DISABLE": "1"}


def execute(path: Path, timeout: int = 1800) -> float:
    "Execute one notebook in place (in its own folder, as Jupyter would) and return the seconds it took."
    import nbformat
    from nbclient import NotebookClient
    t0 = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    skipped = {}  # cells marked `#| eval: false` are not run, as under nbdev_test
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and any(l.strip().replace(" ", "") == "#|eval:false" for l in c.source.splitlines()):
            skipped[i], c.source = c.source, ""
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for i, src in skipped.items():
        nb.cells[i].source, nb.cells[i].outputs = src, []
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebooks to execute (default: every nbs/*.ipynb)")
    ap.add_argument("--jobs", type=int, default=2, help="notebooks executed at once")
    a = ap.parse_args(argv)
    os.environ.update(ENV)
    paths = [Path(p).resolve() for p in a.notebooks] or sorted((ROOT / "nbs").glob("*.ipynb"))
    failed = []

    def run(p):
        try:
            print(f"{p.name}: {execute(p):.0f} s", flush=True)
        except Exception as e:  # report every failure, then fail
            failed.append(p.name)
            print(f"{p.name}: FAILED\n{str(e)[-3000:]}", flush=True)

    with ThreadPoolExecutor(a.jobs) as ex:
        list(ex.map(run, paths))
    subprocess.run(["nbdev_clean"], cwd=ROOT, check=True)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
