"""The book where its readers meet it: JupyterLab in a real (headless) Chromium, driven by Playwright.

One test, bounded in time (`DEADLINE_S`): start `jupyter lab` on 127.0.0.1 (a free port, a random token, the server always
stopped), open a copy of the widgets chapter (without its `#| slow` cells, as nbdev_test runs it), check that no dialog asks for a kernel (the notebook carries its kernelspec), run
all cells, check that no cell shows an error, click the loss explorer's "descend on d" and check that its view changed, then
start a live training dashboard (a cell the test appends to its copy) and check that it updates, stop it with its button and
check that it stopped. The screenshot of the stopped dashboard is saved as `nbs/images/jupyterlab.png` (the front page shows it), so
it is refreshed whenever the test runs.

Needs Chromium (`apt-get install chromium`) and the `playwright` package (the `dev` extra; its driver only — it drives the
system Chromium, nothing is downloaded). Skipped with the reason when either is missing, unless `CYB_NB_REQUIRE_DOCS_TEST=1`
(set by `.ci/run` once it has Chromium): then a missing piece fails.
"""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "09_widgets.ipynb"
DEADLINE_S = 600  # the whole test: server start, Run All, clicks (a loaded 2-core machine needs ~3 min)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LIVE_CELL = """# appended by tests/test_jupyterlab.py: a dashboard that trains in the background while the reader watches
live = TrainingDashboard(make_model(db, "ap", n_pauses=3, size=dict(d_model=32, n_layers=1, n_heads=4), seed=1, max_positions=256),
                         db, "ap", steps=5000, eval_every=5, eval_batches=1, batch_size=8, warmup=2, lr=1e-2)
live.run(background=True)
live"""


def _need(what: str, ok: bool, how: str):
    if not ok:
        if os.environ.get("CYB_NB_REQUIRE_DOCS_TEST") == "1":
            pytest.fail(f"{what} is required here (CYB_NB_REQUIRE_DOCS_TEST=1) but missing: {how}")
        pytest.skip(f"{what} is not installed here: {how}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def lab(tmp_path):
    "A JupyterLab server on loopback serving a scratch copy of the chapter (autosave never touches nbs/); always stopped."
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    _need("Chromium", chromium is not None, "`apt-get install chromium`")
    try:
        import playwright  # noqa: F401
    except ImportError:
        playwright = None
    _need("playwright", playwright is not None, "`pip install playwright` (in the dev extra)")
    root = tmp_path / "book"
    (root / "nbs").mkdir(parents=True)
    shutil.copy(ROOT / "settings.ini", root / "settings.ini")  # show_doc's renderer is named there
    nb = json.loads((ROOT / "nbs" / CHAPTER).read_text(encoding="utf-8"))
    # as under nbdev_test (settings.ini: tst_flags = slow), the chapter's `#| slow` cells (a 400-step dashboard) are left out
    nb["cells"] = [c for c in nb["cells"] if not (c["cell_type"] == "code" and re.match(r"\s*#\|\s*slow\b", "".join(c["source"])))]
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "live0001", "metadata": {}, "outputs": [],
                        "source": LIVE_CELL})
    (root / "nbs" / CHAPTER).write_text(json.dumps(nb), encoding="utf-8")
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel draws inline, as for a reader
    env.update(OMP_NUM_THREADS="1", JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "jrt"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "jlset"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "jlws"))
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
                             "--port", str(port), f"--IdentityProvider.token={token}", "--ServerApp.password=",
                             f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--ServerApp.open_browser=False"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"jupyter lab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("jupyter lab did not answer within 60 s")
        yield dict(url=url, token=token, chromium=chromium, root=root)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _wait(page, predicate_js: str, timeout_s: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if page.evaluate(predicate_js):
            return
        page.wait_for_timeout(500)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_widgets_chapter_runs_and_its_controls_work_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright
    t_start = time.monotonic()
    left = lambda: DEADLINE_S - (time.monotonic() - t_start)  # noqa: E731
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=lab["chromium"], args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1250, "height": 1000})
            page.goto(f"{lab['url']}/lab/tree/nbs/{CHAPTER}?token={lab['token']}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            _wait(page, "!!document.querySelector('.jp-Notebook-ExecutionIndicator, .jp-Toolbar-kernelStatus, "
                        ".jp-KernelStatus, [data-jp-item-name=\"kernelStatus\"]')", 30, "the kernel status")
            page.wait_for_timeout(3000)
            dialogs = page.locator(".jp-Dialog")
            assert dialogs.count() == 0, f"a dialog opened: {dialogs.first.inner_text()[:200]!r} (kernelspec missing?)"

            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
            n_code = page.locator(".jp-CodeCell").count()
            # every code cell shows [n] (none [*] or [ ]); the appended live cell included
            _wait(page, """() => { const ps = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);
                          return ps.length > 0 && ps.every(t => /\\[\\d+\\]/.test(t)); }""", left() - 60, "Run All to finish")
            outputs = page.locator(".jp-OutputArea-output").all_text_contents()  # text_content: cells out of view have no layout, so no innerText
            errors = [o for o in outputs if "Traceback (most recent call last)" in o or re.search(r"^\w+Error\b", o, re.M)]
            assert not errors, f"{len(errors)} cell(s) show an error: {errors[0][-1500:]}"

            explorer = page.locator(".widget-vbox", has=page.locator("button", has_text="descend on d")).first
            status = explorer.locator(".widget-html").last
            before, img_before = status.inner_text(), explorer.locator("img").first.get_attribute("src")
            explorer.locator("button", has_text="descend on d").click()
            t0 = time.monotonic()
            while status.inner_text() == before and time.monotonic() - t0 < 30:
                page.wait_for_timeout(300)
            after = status.inner_text()
            assert after != before and "loss =" in after, (before, after)
            t0 = time.monotonic()  # the picture follows the label (a new PNG, a new blob URL)
            while explorer.locator("img").first.get_attribute("src") == img_before and time.monotonic() - t0 < 20:
                page.wait_for_timeout(300)
            assert explorer.locator("img").first.get_attribute("src") != img_before, "the explorer's picture did not change"

            live = page.locator(".jp-Cell").last.locator(".widget-vbox", has=page.locator("button", has_text="stop")).first
            live_status = live.locator(".widget-html-content").first
            live.scroll_into_view_if_needed()  # JupyterLab skips the layout of cells out of view; text_content reads regardless
            steps_seen, texts = [], []
            t0 = time.monotonic()
            while time.monotonic() - t0 < min(90, left() - 20):
                texts.append(live_status.text_content() if live_status.count() else f"<no status; live cell: {page.locator('.jp-Cell').last.inner_text()[-300:]!r}>")
                m = re.search(r"step (\d+)/", texts[-1])
                if m:
                    steps_seen.append(int(m.group(1)))
                if len(set(steps_seen)) >= 3:
                    break
                page.wait_for_timeout(500)
            assert len(set(steps_seen)) >= 3, f"the live dashboard did not update: {steps_seen}; it showed {list(dict.fromkeys(texts))[-5:]}"
            live.locator("button", has_text="stop").click()
            t0 = time.monotonic()
            while "stopped at step" not in live_status.text_content() and time.monotonic() - t0 < 60:
                page.wait_for_timeout(500)
            final = live_status.text_content()
            assert "stopped at step" in final, final
            assert int(re.search(r"stopped at step (\d+)", final).group(1)) < 5000

            no_news = page.locator(".jp-toast-button", has_text=re.compile(r"^No$"))  # JupyterLab's "get notified about news?"
            if no_news.count():
                no_news.first.click()
            page.wait_for_timeout(500)  # the picture: the appended cell and its stopped dashboard, as the reader sees them
            page.screenshot(path=str(ROOT / "nbs" / "images" / "jupyterlab.png"))
        finally:
            browser.close()
