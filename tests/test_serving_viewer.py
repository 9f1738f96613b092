"""The run viewer in a real headless browser: Debian's Chromium driven by Playwright (never a downloaded
browser). Where Chromium is absent these tests skip, saying why; in CI (CI=true) that is a failure instead:
``make browser`` (run by .ci/run) installs it."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from r3rag.config import ViewerConfig
from r3rag.serving.records import load_run
from run_fixtures import write_run

CHROMIUM = os.environ.get("R3RAG_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).is_file() and shutil.which(CHROMIUM) is None:
        return f"{CHROMIUM} is absent (apt-get install chromium, or `make browser` as root)"
    for module in ("gradio", "playwright"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (make install installs the dev extra)"
    return None


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory) -> Iterator[object]:
    missing = _browser_missing()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1300, "height": 1200},
        )
        yield context
        context.close()


LISTED = '#listing [role=gridcell][data-col="0"]'
"""The first column's cells of the listing's visible grid."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_ask(question: str):
    yield (
        "step",
        {
            "index": 1,
            "analysis": "Find it.",
            "query": f"about {question}",
            "answer": None,
            "passages": [{"id": "p1", "title": "Streamed Passage", "text": "streamed text"}],
            "raw": "",
            "valid": True,
            "issues": [],
        },
    )
    yield "answer", {"answer": "Streamed Answer", "status": "answered", "seconds": 0.5}


@pytest.fixture(scope="module")
def page_url(tmp_path_factory) -> Iterator[str]:
    if _browser_missing() is not None:
        pytest.skip(_browser_missing())
    from r3rag.serving.viewer import build

    run = load_run(write_run(tmp_path_factory.mktemp("viewer") / "run"))
    page = build(run, ViewerConfig(), fake_ask)
    port = free_port()
    page.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        allowed_paths=[str(run.folder)],
    )
    yield f"http://127.0.0.1:{port}"
    page.close()


@pytest.fixture
def page(browser_context, page_url):
    tab = browser_context.new_page()
    tab.goto(page_url)
    tab.wait_for_selector("#count")
    tab.wait_for_selector(LISTED)  # the count can show before the grid renders on a loaded machine
    yield tab
    tab.close()


def listed_numbers(tab) -> list[str]:
    """The first column of the listing's visible grid (gradio also renders a hidden sizing table)."""
    return [cell.inner_text().strip() for cell in tab.locator(LISTED).all()]


def test_the_page_lists_the_run_and_a_filter_changes_the_list(page):
    assert page.inner_text("#count") == "7 of 7 trajectories"
    assert listed_numbers(page) == [str(n) for n in range(7)]
    page.get_by_label("wrong", exact=True).check()
    page.wait_for_function("document.querySelector('#count').innerText.startsWith('3 of 7')")
    assert listed_numbers(page) == ["1", "3", "4"]
    page.get_by_label("all", exact=True).first.check()
    page.wait_for_function("document.querySelector('#count').innerText.startsWith('7 of 7')")


def test_a_trajectory_opens_with_its_passages_gold_marked_and_rewards(page):
    page.fill("#open-number textarea", "6")
    page.click("#open-button")
    page.wait_for_selector("#trajectory .r3-traj")
    text = page.inner_text("#trajectory")
    assert "ppo iter 3" in text and "Who designed the engine?" in text
    assert page.locator("#trajectory .r3-gold").count() == 1
    assert "Charles Babbage" in page.inner_text("#trajectory .r3-gold")
    assert "lambda_T 1.2" in text
    rewards = page.locator("#trajectory table.r3-reward").first.inner_text()
    assert "relevance" in rewards and "0.25" in rewards


def test_clicking_a_row_opens_its_trajectory(page):
    page.locator('#listing [data-testid="cell-2-4"]').click()
    page.wait_for_selector("#trajectory .r3-traj")
    assert page.get_attribute("#trajectory .r3-traj", "data-record") == "2"


def test_two_systems_side_by_side_on_one_question(page):
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_selector("#left .r3-traj")
    assert page.get_attribute("#left .r3-traj", "data-record") == "2"  # eval-a/r3rag on dev-1
    assert page.get_attribute("#right .r3-traj", "data-record") == "4"  # eval-b/rag-cot on dev-1


def test_the_ask_tab_streams_steps_then_the_answer(page):
    page.get_by_role("tab", name="Ask").click()
    page.fill("#ask-question textarea", "the engine")
    page.click("#ask-button")
    page.wait_for_function("document.querySelector('#ask-live').innerText.includes('Streamed Answer')")
    text = page.inner_text("#ask-live")
    assert "about the engine" in text and "Streamed Passage" in text
