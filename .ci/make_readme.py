"""Generate README.md from nbs/index.ipynb (markdown cells verbatim, visible code cells fenced).

nbdev_readme renders through Quarto, which is not installable from the package registries available here,
so this small converter produces the same kind of README. `--check` exits 1 if README.md is out of date.
"""
import json
import sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]


def render() -> str:
    nb = json.loads((root / "nbs" / "index.ipynb").read_text(encoding="utf-8"))
    parts = ["<!-- Generated from nbs/index.ipynb by .ci/make_readme.py: edit the notebook, not this file. -->"]
    for cell in nb["cells"]:
        src = "".join(cell["source"]).strip()
        if not src:
            continue
        if cell["cell_type"] == "markdown":
            lines = src.splitlines()
            if lines[0].startswith("# ") and len(parts) == 1:
                parts.append(lines[0])
                rest = "\n".join(lines[1:]).strip()
                if rest:
                    parts.append(rest)
            else:
                parts.append(src)
        elif cell["cell_type"] == "code" and not any(line.strip().startswith(("#| hide", "#|hide")) for line in src.splitlines()):
            code = "\n".join(l for l in src.splitlines() if not l.startswith("#|"))
            parts.append("```python\n" + code + "\n```")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    text = render()
    readme = root / "README.md"
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            sys.exit("README.md is out of date with nbs/index.ipynb: run `python .ci/make_readme.py`")
        print("README.md is in sync with nbs/index.ipynb")
    else:
        readme.write_text(text, encoding="utf-8")
        print(f"wrote {readme}")
