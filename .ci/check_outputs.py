"""Check that the notebooks are stored executed (they are the documentation): `python .ci/check_outputs.py [NOTEBOOKS]`.

* every code cell that draws or prints (print, display, show_doc, Markdown, a plotting call, or a bare expression as its last
  statement) holds at least one output, and no cell holds an error;
* every notebook that draws has at least one stored image;
* no stored Markdown output carries Quarto attribute markup (`{target="_blank" ...}`), which JupyterLab, GitHub and the docs site
  show as raw text (`show_doc` renders through `cyb_nb.docs.DocRenderer`, named in settings.ini);
* every notebook carries the python3 kernelspec, so Jupyter, VS Code and Colab open it without a "Select Kernel" dialog;
* notebooks listed in NOT_YET_EXECUTED are skipped (with a line saying so) — the list is for a chapter that is being rewritten; keep it
  empty on main.
`.ci/run` also checks that `nbdev_clean` leaves nbs/ unchanged. Refresh the outputs with `python .ci/execute_notebooks.py`.
"""
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_YET_EXECUTED: tuple = ()
SHOWS = re.compile(r"\b(print|display|show_doc|Markdown)\(|(\.|\b)(plot\w*|imshow|hist|bar|barh|scatter|errorbar)\(|plt\.subplots\(")
DRAWS = re.compile(r"(\.|\b)(plot\w*|imshow|hist|bar|barh|scatter|errorbar)\(|plt\.subplots\(")


def _source(cell) -> str:
    "The cell's code without nbdev directives."
    return "\n".join(l for l in "".join(cell["source"]).splitlines() if not l.lstrip().startswith("#|"))


def _directives(cell) -> set:
    "The nbdev directives of a cell, e.g. {'export', 'hide', 'eval: false'}."
    return {l.lstrip()[2:].strip().replace(" ", "") for l in "".join(cell["source"]).splitlines() if l.lstrip().startswith("#|")}


def _top_level(code: str) -> str:
    "The cell's top-level statements other than definitions and imports (what runs visibly when the cell runs)."
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    skip = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
    return "\n".join(ast.get_source_segment(code, n) or "" for n in tree.body if not isinstance(n, skip))


def _ends_in_expression(code: str) -> bool:
    "Whether the last statement is a bare expression Jupyter would display (not a test_* call, not ending in ';')."
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    if not body or not isinstance(body[-1], ast.Expr) or code.rstrip().endswith(";"):
        return False
    v = body[-1].value
    if isinstance(v, ast.Call):
        name = v.func.id if isinstance(v.func, ast.Name) else (v.func.attr if isinstance(v.func, ast.Attribute) else "")
        return not (name.startswith("test") or name in ("print", "display", "plt.close", "close", "set_num_threads"))
    return not isinstance(v, ast.Constant)


def problems(path: Path) -> list:
    "What is missing from one notebook's stored outputs."
    nb = json.loads(path.read_text(encoding="utf-8"))
    out, draws, images = [], False, 0
    if nb.get("metadata", {}).get("kernelspec", {}).get("name") != "python3":
        out.append("has no python3 kernelspec (Jupyter would open it with a 'Select Kernel' dialog)")
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or "eval:false" in _directives(cell):
            continue
        code, outputs = _source(cell), cell.get("outputs", [])
        images += sum("image/png" in o.get("data", {}) for o in outputs)
        visible = _top_level(code)
        draws |= bool(DRAWS.search(visible))
        if any("{target=" in "".join(o.get("data", {}).get("text/markdown", "")) for o in outputs):
            out.append(f"cell {i} ({cell.get('id')}) shows raw Quarto link markup: re-run it (show_doc renders through cyb_nb.docs)")
        if any(o.get("output_type") == "error" for o in outputs):
            out.append(f"cell {i} ({cell.get('id')}) holds an error")
        if (SHOWS.search(visible) or _ends_in_expression(code)) and not outputs:
            out.append(f"cell {i} ({cell.get('id')}) draws or prints but has no stored output: {code.strip().splitlines()[0][:70]!r}")
    if draws and not images:
        out.append("draws but stores no image")
    return out


def main(argv=None):
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])] or sorted((ROOT / "nbs").glob("*.ipynb"))
    bad = 0
    for p in paths:
        if p.name in NOT_YET_EXECUTED:
            print(f"{p.name}: skipped (listed in NOT_YET_EXECUTED)")
            continue
        for msg in problems(p):
            print(f"{p.name}: {msg}")
            bad += 1
    if bad:
        sys.exit(f"{bad} problem(s): run `python .ci/execute_notebooks.py` and commit the notebooks with their outputs")
    print(f"outputs present in {len(paths)} notebooks")


if __name__ == "__main__":
    main()
