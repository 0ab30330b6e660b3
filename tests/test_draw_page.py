"""The drawing page at ``GET /``, driven in a real headless Chromium against a real server.

The test draws strokes with the mouse on the page's canvas (examples of three shapes, then a
query), presses Predict and reads the label the page shows, with the server's API key typed
into the page's key field. Chromium comes from Debian (``apt-get install chromium``; Playwright's
own browser download is not reachable here), driven through ``executable_path``; without a
browser the tests skip and say so. ``.ci/run`` installs one.

Also a script: ``python tests/test_draw_page.py --url http://127.0.0.1:8000 --screenshot
docs/figures/draw-page.png`` draws the same shapes on a running server and saves a screenshot.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
KEY = "page-key"
BROWSER_ENV = "INNERLOOP_CHROMIUM"
# the flags that work for Debian's Chromium headless in a container without a network
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
Stroke = list[tuple[float, float]]  # points as fractions of the canvas


def ring(cx: float, cy: float, r: float, points: int = 16) -> Stroke:
    return [
        (cx + r * math.cos(2 * math.pi * t / points), cy + r * math.sin(2 * math.pi * t / points))
        for t in range(points + 1)
    ]


# three shapes a Conv4 tells apart easily; each example is shifted and scaled a little
SHAPES: dict[str, list[Stroke]] = {
    "line": [[(0.2, 0.2), (0.8, 0.8)]],
    "circle": [ring(0.5, 0.5, 0.3)],
    "cross": [[(0.2, 0.5), (0.8, 0.5)], [(0.5, 0.2), (0.5, 0.8)]],
}


def jitter(strokes: list[Stroke], k: int) -> list[Stroke]:
    scale, dx, dy = 1.0 - 0.08 * k, 0.03 * k, -0.02 * k
    return [
        [(0.5 + (x - 0.5) * scale + dx, 0.5 + (y - 0.5) * scale + dy) for x, y in s]
        for s in strokes
    ]


def chromium_path() -> str | None:
    for candidate in (os.environ.get(BROWSER_ENV), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def draw(page: Any, strokes: list[Stroke]) -> None:
    page.locator("#canvas").scroll_into_view_if_needed()
    box = page.locator("#canvas").bounding_box()
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=6)
        page.mouse.up()


def teach_and_ask(page: Any, shots: int = 2, query: str = "circle") -> str:
    """Name three labels, draw ``shots`` examples of each, draw a ``query`` shape, predict."""
    page.wait_for_selector("#model option", state="attached", timeout=30_000)
    while page.locator("#labels > li").count() < len(SHAPES):
        page.click("#add-label")
    for i, (name, strokes) in enumerate(SHAPES.items()):
        item = page.locator("#labels > li").nth(i)
        item.locator(".label-name").fill(name)
        for k in range(shots):
            draw(page, jitter(strokes, k))
            item.locator(".add-drawing").click()
        assert item.locator(".examples img").count() == shots
    draw(page, jitter(SHAPES[query], shots))
    page.click("#predict")
    page.wait_for_function(
        "document.querySelector('#prediction').textContent !== '–'"
        " || document.querySelector('#status').classList.contains('error')",
        timeout=120_000,
    )
    return str(page.locator("#prediction").text_content())


# ---- the tests ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    if executable is None:
        pytest.skip(f"no Chromium installed (apt-get install chromium, or set ${BROWSER_ENV})")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The shipped checkpoints, served with an API key."""
    from server_harness import ServerProcess

    log = tmp_path_factory.mktemp("draw-page") / "server.log"
    process = ServerProcess(REPO / "checkpoints", log, env={"INNERLOOP_API_KEY": KEY})
    try:
        yield process.wait_healthy()
    finally:
        process.stop()


def test_drawn_query_is_labelled_with_the_api_key(browser: Any, server: Any) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    try:
        page.goto(server.url + "/")
        # without the key the page says what is missing instead of failing silently
        page.wait_for_function(
            "document.querySelector('#status').textContent.includes('401')", timeout=30_000
        )
        assert "API key" in page.locator("#status").text_content()
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        page.wait_for_selector("#model option", state="attached", timeout=30_000)
        assert page.locator("#model").input_value() == "omniglot"  # the server's default
        for query in ("circle", "cross"):
            page.click("#clear")
            assert teach_and_ask(page, query=query) == query, page.locator("#status").text_content()
            ranked = page.locator("#ranking li").all_text_contents()
            assert len(ranked) == len(SHAPES) and ranked[0].startswith(f"{query}:")
            assert "ms on the server" in page.locator("#timing").text_content()
            page.reload()  # start from an empty page (the key stays for the session)
    finally:
        page.close()


def test_page_is_usable_on_a_phone(browser: Any, server: Any) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, has_touch=True
    )
    page = context.new_page()
    try:
        page.goto(server.url + "/")
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        # nothing wider than the screen, and the canvas takes touches instead of scrolling
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
        canvas = page.locator("#canvas").bounding_box()
        assert canvas["width"] >= 250 and canvas["x"] + canvas["width"] <= 390
        assert page.eval_on_selector("#canvas", "c => getComputedStyle(c).touchAction") == "none"
        assert teach_and_ask(page, shots=1, query="line") == "line"
    finally:
        context.close()


def test_an_error_from_the_server_is_shown(browser: Any, server: Any) -> None:
    page = browser.new_page()
    try:
        page.goto(server.url + "/")
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        page.wait_for_selector("#model option", state="attached", timeout=30_000)
        draw(page, SHAPES["line"])
        page.click("#predict")  # no examples yet: the page asks for them, nothing is sent
        assert "at least two labels" in page.locator("#status").text_content()
    finally:
        page.close()


# ---- the README's screenshot ----------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="screenshot the drawing page")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default="")
    parser.add_argument("--screenshot", type=Path, default=REPO / "docs/figures/draw-page.png")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise SystemExit("no Chromium: apt-get install chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        page = chromium.new_page(viewport={"width": 1100, "height": 760})
        page.goto(args.url + "/")
        if args.api_key:
            page.fill("#api-key", args.api_key)
            page.press("#api-key", "Enter")
        print("predicted:", teach_and_ask(page))
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(args.screenshot), full_page=True)
        chromium.close()
    print(f"wrote {args.screenshot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
