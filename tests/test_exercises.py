"""Every exercise's reference solution in the book runs and checks itself, so solutions cannot rot.

A solution is a collapsed block in a Markdown cell:

    <details><summary>Solution</summary>

    ...explanation...

    ```python
    ...code that computes the answer and asserts it...
    ```

    </details>

Each ```python block inside a solution is executed in a fresh namespace that has `math`, `torch` and the lesson modules imported
(`from cyb_nb.stream import *`, ...), and must contain at least one `assert` (a solution that cannot fail checks nothing).
Pen-and-paper solutions carry no code block; `LESSONS` lists the chapters that must hold at least four exercises.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOLUTION = re.compile(r"<details>\s*<summary>\s*Solution.*?</summary>(.*?)</details>", re.S | re.I)
CODE = re.compile(r"```python\n(.*?)```", re.S)
PRELUDE = "import math\nimport torch\n" + "".join(
    f"from cyb_nb.{m} import *\n" for m in ("stream", "stopping", "losses"))
LESSONS: tuple = ("00_stream", "01_stopping", "02_loss_ap", "03_loss_va", "04_loss_dp", "04b_classics", "05_models", "06_data", "07_train",
                  "08_decode")  # lesson chapters: each holds >= 4 exercises with solutions


def solutions(path: Path) -> list:
    "The solution blocks of one notebook, as (cell index, solution text)."
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [(i, m.group(1)) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"
            for m in SOLUTION.finditer("".join(c["source"]))]


def _code_solutions():
    for p in sorted((ROOT / "nbs").glob("*.ipynb")):
        for i, text in solutions(p):
            for j, code in enumerate(CODE.findall(text)):
                yield pytest.param(code, id=f"{p.stem}-cell{i}-{j}")


CASES = list(_code_solutions())


@pytest.mark.parametrize("code", CASES or [pytest.param(None, marks=pytest.mark.skip(reason="no code solutions yet"))])
def test_code_solution_runs_and_checks_itself(code):
    assert re.search(r"^\s*assert\b", code, re.M), "a code solution must assert its answer"
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    exec(compile(PRELUDE + code, "<solution>", "exec"), {"__name__": "__solution__"})


@pytest.mark.parametrize("chapter", LESSONS or [pytest.param(None, marks=pytest.mark.skip(reason="no lesson chapters listed yet"))])
def test_lesson_chapters_hold_exercises(chapter):
    assert len(solutions(ROOT / "nbs" / f"{chapter}.ipynb")) >= 4, f"{chapter} has fewer than 4 exercises with solutions"


def test_the_solution_finder_sees_collapsed_blocks(tmp_path):
    md = "**Exercise 1**\n\n<details><summary>Solution</summary>\n\n```python\nx = 1\nassert x == 1\n```\n\n</details>\n"
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": md}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    p = tmp_path / "t.ipynb"
    p.write_text(json.dumps(nb))
    (i, text), = solutions(p)
    assert CODE.findall(text) == ["x = 1\nassert x == 1\n"]
