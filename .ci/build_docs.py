"""Build the docs site from the notebooks' stored outputs: `pip install -e ".[docs]" && python .ci/build_docs.py` → _site/.

1. Stage nbs/ into _build/docs/: notebooks as stored (nothing is re-executed), as nbdev's docs show them — `#| hide` and
   `default_exp` cells and directive lines removed — and an output carrying both a live widget view and its PNG keeps the PNG only
   (a static site cannot run widgets); nbs/images/ is copied so that the notebooks' image links stay valid. A Markdown link to
   another notebook, `[text](09_widgets.ipynb#loss-explorer)`, which works in JupyterLab and on GitHub, becomes the page's URL
   on the site (`../09_widgets/#loss-explorer`): mkdocs-jupyter renders notebooks with nbconvert and leaves such links alone.
2. MathJax 3 (SVG output, no web fonts) is served from the site itself, so formulas render offline: `npm pack mathjax@3` once into
   _build/mathjax/ (the npm registry is reachable where the site is built); pass `--mathjax-url URL` to use a CDN instead.
3. `mkdocs build --strict` (mkdocs-material + mkdocs-jupyter): any warning — a broken link, a missing page — fails the build.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"
STAGE = BUILD / "docs"
MATHJAX_VERSION = "3.2.2"
WIDGET = "application/vnd.jupyter.widget-view+json"
MATHJAX_CONFIG = """window.MathJax = {
  tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], displayMath: [["$$", "$$"], ["\\\\[", "\\\\]"]], processEscapes: true},
  options: {ignoreHtmlClass: "tex2jax_ignore", processHtmlClass: "tex2jax_process|jp-RenderedMarkdown|arithmatex"}
};
"""


def _directives(cell) -> set:
    "nbdev directives of a cell (`#| hide`, `#| export`, ...), without spaces."
    return {l.strip()[2:].replace(" ", "") for l in "".join(cell["source"]).splitlines() if l.strip().startswith("#|")}


NB_LINK = re.compile(r"\]\(([A-Za-z0-9_-]+)\.ipynb(#[^)\s]*)?\)")  # a Markdown link to a sibling notebook


def site_links(text: str, page: str) -> str:
    "Links to sibling notebooks in Markdown `text` of page `page` (a notebook stem) rewritten to the site's URLs: `x.ipynb#a` → `../x/#a`."
    up = "" if page == "index" else "../"  # mkdocs serves page p at p/ and the home page at the site root
    return NB_LINK.sub(lambda m: f"]({up}{'' if m.group(1) == 'index' else m.group(1) + '/'}{m.group(2) or ''})", text)


def static_outputs(nb: dict, page: str = "index") -> dict:
    "The notebook as a reader sees it: nbdev's hidden cells and directive lines gone, widget views replaced by their PNG, no widget state."
    nb["cells"] = [c for c in nb["cells"] if not (_directives(c) & {"hide"} or any(d.startswith("default_exp") for d in _directives(c)))]
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            cell["source"] = site_links("".join(cell["source"]), page)
        if cell["cell_type"] == "code":
            cell["source"] = [l for l in cell["source"] if not l.strip().startswith("#|")]
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET in data and "image/png" in data:
                del data[WIDGET]
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def mathjax() -> Path:
    "MathJax's single-file SVG build, fetched once from the npm registry into _build/mathjax/."
    target = BUILD / "mathjax" / "tex-svg.js"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as d:
            subprocess.run(["npm", "pack", f"mathjax@{MATHJAX_VERSION}", "--silent"], cwd=d, check=True, capture_output=True)
            with tarfile.open(next(Path(d).glob("mathjax-*.tgz"))) as tf:
                target.write_bytes(tf.extractfile("package/es5/tex-svg.js").read())
    return target


def stage(mathjax_url: str | None):
    "Copy nbs/ into _build/docs with static outputs, MathJax and its configuration."
    if STAGE.exists():
        shutil.rmtree(STAGE)
    (STAGE / "_mathjax").mkdir(parents=True)
    for nb_path in sorted((ROOT / "nbs").glob("*.ipynb")):
        nb = static_outputs(json.loads(nb_path.read_text(encoding="utf-8")), nb_path.stem)
        (STAGE / nb_path.name).write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
    if (ROOT / "nbs" / "images").is_dir():
        shutil.copytree(ROOT / "nbs" / "images", STAGE / "images")
    (STAGE / "_mathjax" / "config.js").write_text(MATHJAX_CONFIG)
    if mathjax_url is None:
        shutil.copy(mathjax(), STAGE / "_mathjax" / "tex-svg.js")
    else:
        (STAGE / "_mathjax" / "tex-svg.js").write_text(f'document.write(\'<script src="{mathjax_url}"><\\/script>\');\n')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mathjax-url", default=None, help="load MathJax from this URL instead of serving a local copy")
    a = ap.parse_args(argv)
    stage(a.mathjax_url)
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(ROOT / "mkdocs.yml")], cwd=ROOT)
    if r.returncode:
        sys.exit("mkdocs build --strict failed (see the warnings above)")
    print(f"built {ROOT / '_site'}")


if __name__ == "__main__":
    main()
