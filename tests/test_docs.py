"The notebooks are stored executed (they are the docs), and the built docs site shows their formulas and figures."
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".ci"))
import check_outputs  # noqa: E402
from build_docs import site_links  # noqa: E402


def _nb(cells, kernelspec=True):
    meta = {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}} if kernelspec else {}
    return {"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}


def _code(src, outputs=()):
    return {"cell_type": "code", "id": "x", "metadata": {}, "execution_count": None, "source": src, "outputs": list(outputs)}


def test_output_check_catches_what_a_reader_would_miss(tmp_path):
    png = {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}, "metadata": {}}
    text = {"output_type": "stream", "name": "stdout", "text": "7\n"}
    cases = [  # (cells, number of problems)
        ([("print(7)",)], 1), ([("print(7)", text)], 0),
        ([("x = 1\nx",)], 1), ([("def f():\n    print(1)",)], 0), ([("test_eq(1, 1)",)], 0),
        ([("fig, ax = plt.subplots()\nax.plot([1])", text)], 1),  # draws, but no image stored anywhere
        ([("fig, ax = plt.subplots()\nax.plot([1])", png)], 0), ([("#| eval: false\nprint(1)",)], 0),
        ([("y = f()", {"output_type": "error", "ename": "E", "evalue": "", "traceback": []})], 1),
        ([("show_doc(f)", {"output_type": "execute_result", "execution_count": None, "metadata": {},
                           "data": {"text/markdown": '[source](u){target="_blank"}\n\n### f'}})], 1),  # raw Quarto markup
    ]
    for cells, n in cases:
        p = tmp_path / "t.ipynb"
        p.write_text(json.dumps(_nb([_code(src, outs) for src, *outs in cells])))
        assert len(check_outputs.problems(p)) == n, (cells, check_outputs.problems(p))
    p.write_text(json.dumps(_nb([_code("x = 1")], kernelspec=False)))  # Jupyter would ask "Select Kernel"
    assert [m for m in check_outputs.problems(p) if "kernelspec" in m]


def test_links_between_notebooks_become_site_urls():
    md = "[a](09_widgets.ipynb#loss-explorer), [b](syllabus.ipynb), [c](index.ipynb), [d](https://x.org/e.ipynb), [f](#g)"
    assert site_links(md, "01_stopping") == "[a](../09_widgets/#loss-explorer), [b](../syllabus/), [c](../), [d](https://x.org/e.ipynb), [f](#g)"
    assert site_links(md, "index").startswith("[a](09_widgets/#loss-explorer), [b](syllabus/), [c](),")


def test_every_notebook_is_stored_with_its_outputs():
    notebooks = [p for p in sorted((ROOT / "nbs").glob("*.ipynb")) if p.name not in check_outputs.NOT_YET_EXECUTED]
    bad = {p.name: check_outputs.problems(p) for p in notebooks}
    assert not any(bad.values()), {k: v[:3] for k, v in bad.items() if v}


def _dom(page: Path) -> str:
    "The DOM of a built page after its scripts ran, from headless Chromium."
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([shutil.which("chromium") or shutil.which("chromium-browser"), "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                            f"--user-data-dir={profile}", "--virtual-time-budget=8000", "--dump-dom", page.as_uri()],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.parametrize("chapter", ["01_stopping", "10_experiments"])
def test_docs_site_renders_formulas_and_figures(chapter):
    site = ROOT / "_site"
    required = os.environ.get("CYB_NB_REQUIRE_DOCS_TEST") == "1"  # set by .ci/run once it built the site and has Chromium
    if not required and not (site / "index.html").exists():
        pytest.skip("the docs site is not built here: `pip install -e \".[docs]\" && python .ci/build_docs.py` (.ci/run does)")
    if not required and not (shutil.which("chromium") or shutil.which("chromium-browser")):
        pytest.skip("headless Chromium is not installed here: `apt-get install chromium` (.ci/run does)")
    dom = _dom(site / chapter / "index.html")
    assert dom.count("<mjx-container") >= 3, "MathJax did not typeset the page's formulas"
    assert "data:image/png;base64," in dom, "no stored figure on the page"
    assert 'class="md-search' in dom, "no search box"
    labels = re.findall(r"(\d\d) · [^<]+?\s*</", dom)  # chapter labels in page order: the title, then the navigation
    nav = list(dict.fromkeys(labels[labels.index("00"):]))
    assert nav == sorted(nav) and {"00", "01", "10", "14"} <= set(nav), f"chapters missing or out of order: {nav}"


def _png_size(path: Path) -> tuple:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_docs_site_screenshot_is_taken_from_the_built_site():
    """The front page's picture of the docs site is retaken from the site just built (1280×1000, the stopping-time chapter),
    so it shows the current navigation and cannot go stale."""
    site = ROOT / "_site"
    required = os.environ.get("CYB_NB_REQUIRE_DOCS_TEST") == "1"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not required and not (site / "index.html").exists():
        pytest.skip("the docs site is not built here: `pip install -e \".[docs]\" && python .ci/build_docs.py` (.ci/run does)")
    if not required and not chromium:
        pytest.skip("headless Chromium is not installed here: `apt-get install chromium` (.ci/run does)")
    out = ROOT / "nbs" / "images" / "docs_site.png"
    with tempfile.TemporaryDirectory() as profile:
        shot = Path(profile) / "shot.png"
        r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                            f"--user-data-dir={profile}", "--virtual-time-budget=8000", "--window-size=1280,1000",
                            f"--screenshot={shot}", (site / "01_stopping" / "index.html").as_uri()],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
        assert _png_size(shot) == (1280, 1000)
        assert shot.stat().st_size > 20_000, "the screenshot is (nearly) blank"
        shutil.copyfile(shot, out)
