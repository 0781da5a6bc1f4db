"""The demo in a real browser: headless Chromium (Debian's `chromium` package) driven by Playwright
loads the page, picks an example scene, runs detection and captioning, and checks the results
show. It also checks the page asks for nothing beyond its own server (offline: no CDN, no analytics).
A screenshot of each result is saved in the test's temporary directory.

Skipped only off CI when /usr/bin/chromium is missing; in CI (`CI` set) it must run."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]

CHROMIUM = Path("/usr/bin/chromium")
# Headless and quiet: no GPU, no QUIC, no first-run pages, no background updates or sync.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
def settled(page) -> None:
    """Wait until the result panel has stopped showing progress (it fades while a request runs)."""
    from playwright.sync_api import expect

    expect(page.locator('#result-image [data-testid="status-tracker"]')).to_have_class(re.compile(r"\bhide\b"),
                                                                                       timeout=60_000)
    page.wait_for_timeout(500)  # the fade back in


SHAPE = re.compile(r"^(circle|square|triangle|diamond|cross|star|hexagon)\b", re.M)


@pytest.fixture(scope="module")
def browser_available():
    if os.environ.get("CI"):
        assert CHROMIUM.exists(), f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package"
        return
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); CI always runs this test")
    pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def served_app(browser_available, tmp_path_factory):
    """The demo on a free port, serving the shipped default checkpoint (what `python app.py` serves)."""
    from test_app import free_port, load_app

    from unitok.inference.pipeline import Pipeline

    app = load_app()
    demo = app.build_demo(Pipeline.from_pretrained(),
                          examples_dir=str(tmp_path_factory.mktemp("examples")))
    app.launch(demo, port=free_port(), block=False, quiet=True)
    try:
        yield demo.local_url
    finally:
        demo.close()


def test_page_runs_detection_and_captioning_on_an_example(served_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url = served_app
    requested, failed = [], []
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 1000})
        try:
            page = context.new_page()
            page.on("request", lambda r: requested.append(r.url))
            page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
            page.goto(url, wait_until="networkidle", timeout=60_000)
            expect(page.locator("#run")).to_be_visible(timeout=60_000)

            # Detection is the task the page opens on: click its first example scene, then Run.
            expect(page.locator("#task input")).to_have_value(re.compile("^detection"))
            expect(page.locator("#image")).to_be_visible()  # the inputs of the chosen task only
            expect(page.locator("#image2")).to_be_hidden()
            expect(page.locator("#region")).to_be_hidden()
            page.locator("#examples-detection tr.tr-body").first.click()
            expect(page.locator("#image img")).to_be_visible(timeout=30_000)
            page.locator("#run").click()
            answer = page.locator("#result-text textarea")
            expect(answer).not_to_have_value("", timeout=120_000)
            boxes = answer.input_value()
            assert SHAPE.search(boxes), f"no labelled box in the detection answer: {boxes!r}"
            expect(page.locator("#result-image img").first).to_be_visible()
            expect(page.locator("#result-json")).to_contain_text("Boxes")
            settled(page)
            page.screenshot(path=str(tmp_path / "detection.png"), full_page=True)

            # Captioning: pick the task from the dropdown; the example scene stays; Run again.
            page.locator("#task input").click()
            page.get_by_role("option", name=re.compile("^caption")).click()
            expect(page.locator("#prompt textarea, #prompt input").first).to_have_value("describe the image.")
            page.locator("#run").click()
            expect(page.locator("#result-json")).to_contain_text('"caption"', timeout=120_000)
            expect(page.locator("#result-json")).to_contain_text('"Text"')
            caption = answer.input_value()
            assert re.search(r"[a-z]+ [a-z]+", caption), f"not a sentence: {caption!r}"
            settled(page)
            page.screenshot(path=str(tmp_path / "caption.png"), full_page=True)

            # A bad upload: the page says what is wrong, and the server goes on answering.
            bad = tmp_path / "notes.png"
            bad.write_text("not a picture")
            page.locator("#image button[aria-label='Remove Image']").click()
            page.locator("#image input[type=file]").set_input_files(str(bad))
            page.locator("#run").click()
            expect(page.get_by_text(re.compile("notes.png\\) is not an image this demo can read")).first).to_be_visible(
                timeout=60_000)
            # ... and the server goes on answering: another example scene, detection again.
            page.locator("#examples-caption tr.tr-body").nth(1).click()
            page.locator("#task input").click()
            page.get_by_role("option", name=re.compile("^detection")).click()
            page.locator("#run").click()
            expect(page.locator("#result-json")).to_contain_text("Boxes", timeout=120_000)
            expect(answer).not_to_have_value(caption, timeout=120_000)
        finally:
            context.close()

    assert (tmp_path / "detection.png").stat().st_size > 0 and (tmp_path / "caption.png").stat().st_size > 0
    # Offline: every request went to the app's own server (no CDN fonts, analytics or share links).
    foreign = [u for u in requested if not u.startswith(url) and not u.startswith(("data:", "blob:"))]
    assert not foreign, f"the page reached beyond its server: {foreign}"
    # Event streams (queue/data) are cut when the browser closes; anything else must not fail.
    assert not [f for f in failed if "/queue/data" not in f], f"requests failed: {failed}"
