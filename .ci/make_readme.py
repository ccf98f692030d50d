"""Generate README.md from nbs/index.ipynb (markdown cells verbatim, visible code cells fenced, their stored text and markdown outputs
below them; links to `images/...` are made relative to the repository root, where the README lives).

nbdev_readme renders through Quarto, which is not installable from the package registries available here,
so this small converter produces the same kind of README. `--check` exits 1 if README.md is out of date.
"""
import json
import re
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
            parts += [out for out in map(_output, cell.get("outputs", [])) if out]
    return re.sub(r"\]\(images/", "](nbs/images/", "\n\n".join(parts)) + "\n"


def _output(out: dict) -> str:
    "A stored output as README text: markdown as is, printed text or a plain value in a fenced block, anything else left out."
    data = out.get("data", {})
    if "text/markdown" in data:
        return "".join(data["text/markdown"]).strip()
    text = "".join(out.get("text", "")) if out.get("output_type") == "stream" else "".join(data.get("text/plain", ""))
    return "```\n" + text.strip() + "\n```" if text.strip() and "image/png" not in data else ""


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
