"""End to end: `spanqa serve` with the shipped model and a small collection, the page in headless Chromium, a question
typed, the answer and the begin/end chart on screen; in collection mode, the answer with its source and passage.
Uses Debian's chromium (apt-get install chromium); no browser is downloaded. The screenshots go to
benchmarks/out/web-e2e*.png (git-ignored)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SPANQA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOT = Path(__file__).resolve().parents[1] / "benchmarks" / "out" / "web-e2e.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COLLECTION = {
    "austen.txt": "Pride and Prejudice is an 1813 novel of manners written by Jane Austen. The novel follows the "
                  "character development of Elizabeth Bennet.",
    "paris.md": "# Paris\n\nThe Eiffel Tower is in Paris. It was finished in 1889 for the World's Fair.",
    "everest.txt": "Mount Everest, at 8,849 metres, is the highest mountain above sea level.",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("fastapi")
    from spanqa.collection import Collection

    docs = tmp_path_factory.mktemp("docs")
    for name, text in COLLECTION.items():
        (docs / name).write_text(text, encoding="utf-8")
    index = docs.parent / f"{docs.name}-index"
    Collection.build([docs], index)
    port = _free_port()
    cmd = [sys.executable, "-m", "spanqa", "serve", "--port", str(port), "--device", "cpu", "--log-level", "warning",
           "--index", str(index)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"spanqa serve exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("spanqa serve did not answer /healthz within 180 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run does it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright-python is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_page_answers_and_draws_the_chart(browser, server):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(server + "/")
    page.fill("[data-testid=question]", "Who is the protagonist?")
    page.click("[data-testid=ask]")
    answer = page.locator("[data-testid=answer]")
    answer.wait_for(state="visible", timeout=60_000)
    page.wait_for_function("document.querySelector('[data-testid=answer]').textContent.length > 0")
    text = answer.inner_text()
    context = page.input_value("[data-testid=context]")
    assert text == "Elizabeth Bennet" and text in context
    assert page.locator("[data-testid=highlighted-context] mark").inner_text() == text
    assert page.locator("[data-testid=no-answer]").is_hidden()
    assert page.locator("[data-testid=nbest] li").count() == 5

    chart = page.locator("[data-testid=begin-end-chart]")
    assert chart.is_visible()
    n_labels = chart.locator("svg > text[transform]").count()  # one rotated label per context token
    assert n_labels > 20
    assert chart.locator("rect[data-role=begin]").count() == n_labels
    assert chart.locator("rect[data-role=end]").count() == n_labels
    assert chart.locator("rect[data-role=span]").count() == 1
    assert chart.bounding_box()["height"] > 200
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOT), full_page=True)
    assert SHOT.stat().st_size > 10_000
    assert errors == []


def test_collection_mode_shows_the_source_the_passage_and_its_chart(browser, server):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.check("[data-testid=mode-collection]")
    assert page.locator("[data-testid=context]").is_hidden() and page.locator("[data-testid=passages]").is_visible()
    page.fill("[data-testid=question]", "When was the Eiffel Tower finished?")
    page.fill("[data-testid=passages]", "3")
    page.click("[data-testid=ask]")
    source = page.locator("[data-testid=source]")
    source.wait_for(state="visible", timeout=60_000)
    assert page.locator("[data-testid=answer]").inner_text() == "1889"
    assert "paris.md" in source.inner_text() and "from " in source.inner_text()
    passage = page.locator("[data-testid=highlighted-context]").inner_text()
    assert passage in COLLECTION["paris.md"] and "Eiffel Tower" in passage
    assert page.locator("[data-testid=highlighted-context] mark").inner_text() == "1889"
    chart = page.locator("[data-testid=begin-end-chart]")
    n_labels = chart.locator("svg > text[transform]").count()
    assert n_labels > 10 and chart.locator("rect[data-role=begin]").count() == n_labels
    assert chart.locator("rect[data-role=span]").count() == 1
    items = page.locator("[data-testid=nbest] li")
    assert items.count() == 5
    items.nth(1).click()  # another answer: its own passage and source
    mark = page.locator("[data-testid=highlighted-context] mark").inner_text()
    assert items.nth(1).get_attribute("class") == "selected" and items.nth(1).inner_text().startswith(mark)
    page.check("[data-testid=mode-context]")  # back: the context box is there again
    assert page.locator("[data-testid=context]").is_visible()
    page.screenshot(path=str(SHOT.with_name("web-e2e-collection.png")), full_page=True)
    assert errors == []


def test_page_shows_server_errors(browser, server):
    page = browser.new_page()
    page.goto(server + "/")
    page.fill("[data-testid=context]", "x" * 20_001)  # over the server's context limit
    page.click("[data-testid=ask]")
    err = page.locator("[data-testid=error]")
    err.wait_for(state="visible", timeout=30_000)
    assert "above the limit" in err.inner_text()


def test_docs_render_offline(browser, server):
    page = browser.new_page()
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto(server + "/docs")
    page.get_by_text("/v1/answer").first.wait_for(timeout=30_000)
    assert failed == []


def test_page_shows_no_answer(browser, server):
    """The no-answer indicator, with the server's reply replaced by one that says no answer."""
    page = browser.new_page()
    page.route("**/v1/answer", lambda route: route.fulfill(json={
        "answers": [{"text": "Jane", "start": 59, "end": 63, "score": 0.01}], "no_answer": True,
        "probabilities": {"tokens": [{"text": "Jane", "start": 59, "end": 63, "p_begin": 0.01, "p_end": 0.01,
                                      "window": 0}], "windows": 1, "null": [{"p_begin": 0.9, "p_end": 0.9}]}}))
    page.goto(server + "/")
    page.click("[data-testid=ask]")
    page.locator("[data-testid=no-answer]").wait_for(state="visible", timeout=30_000)
    assert page.locator("[data-testid=answer]").inner_text() == "(no answer)"
    assert page.locator("[data-testid=nbest] li").count() == 1
