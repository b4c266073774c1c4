"""A real browser against a served local stack: sign in through the consent page; the waitlist at the cap.

Headless Debian Chromium (/usr/bin/chromium, `apt-get install -y chromium`) driven by Playwright
from PyPI; never a downloaded browser. Missing Chromium or Playwright fails the test, loudly.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from playvault_local.aws_server import stop_process
from tests.conftest import free_port
from tests.e2e._helpers import ROOT, cli_env, servers_started_by

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("PLAYVAULT_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-sync"]


def _browser_or_fail():
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `apt-get update && apt-get install -y "
                    "chromium` (the browser tests never download a browser)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: pip install -r requirements-dev.txt")
    return sync_playwright


def _serve(*extra: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "playvault_local", "serve", "--port", str(port), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=cli_env(),
                               cwd=ROOT)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        seen = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if process.poll() is not None:
                    break
                continue
            seen.append(line)
            if "sign in" in line:
                yield line.split(":", 1)[1].strip()
                return
        pytest.fail(f"serve did not come up (exit {process.poll()}): {''.join(seen)}")
    finally:
        stop_process(process, timeout_s=20)
        assert servers_started_by(process.pid) == []


@pytest.fixture
def login_url() -> Iterator[str]:
    yield from _serve()


@pytest.fixture
def full_login_url() -> Iterator[str]:
    yield from _serve("--parameter", "MaxUsers=1")


@pytest.fixture
def browser():
    sync_playwright = _browser_or_fail()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def _sign_in(page, login_url: str, user_id: str) -> None:
    page.goto(login_url)
    page.wait_for_selector("#agree")
    assert "asks for access to your account" in page.content()  # the emulator's consent page
    page.fill("#user_id", user_id)
    page.click("#agree")
    page.wait_for_load_state()


def test_sign_in_through_the_consent_page(browser, login_url):
    page = browser.new_page()
    _sign_in(page, login_url, "browser-user")
    assert page.url.startswith(login_url.replace("/auth/login", "/auth/callback"))
    assert "You're in" in page.locator("h1").inner_text()


def test_at_the_cap_a_newcomer_gets_the_waitlist(browser, full_login_url):
    page = browser.new_page()
    _sign_in(page, full_login_url, "first-and-only")  # takes the only seat
    assert "You're in" in page.locator("h1").inner_text()

    newcomer = browser.new_page()
    newcomer.goto(full_login_url)
    assert "full" in newcomer.locator("h1").inner_text().lower()
    newcomer.fill("#email", "later@example.com")
    newcomer.click("button[type=submit]")
    newcomer.wait_for_load_state()
    assert "on the list" in newcomer.locator("h1").inner_text()
