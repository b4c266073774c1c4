"""A real browser against a served local stack: sign in through the consent page; the waitlist at the
cap; a user's whole account (/me after a poll, CSV and JSON Lines exports equal to the plays table,
sign-out, sign-in again, delete my data: nothing of the user left in any table or bucket, another
user untouched).

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


def _serve(*extra: str) -> Iterator[dict[str, str]]:
    """`serve` as a subprocess; yields its banner as {label: value} (sign in, AWS (moto), ...)."""
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
            if "poll by hand" in line:
                info = {}
                for entry in seen:
                    label, sep, value = entry.partition(" : ")
                    if sep:
                        info[label.strip()] = value.strip()
                yield info
                return
        pytest.fail(f"serve did not come up (exit {process.poll()}): {''.join(seen)}")
    finally:
        stop_process(process, timeout_s=20)
        assert servers_started_by(process.pid) == []


@pytest.fixture
def login_url() -> Iterator[str]:
    for info in _serve():
        yield info["sign in"]


@pytest.fixture
def full_login_url() -> Iterator[str]:
    for info in _serve("--parameter", "MaxUsers=1"):
        yield info["sign in"]


@pytest.fixture
def served() -> Iterator[dict[str, str]]:
    # Deletion waits the worker's timeout (150 s) after marking the user; here 5 s keeps the test short.
    yield from _serve("--parameter", "DeletionGraceSeconds=5")


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
    assert page.url == login_url.replace("/auth/login", "/me?welcome=new")  # 303: the code left the address bar
    assert "You're in" in page.locator("#welcome").inner_text()


def test_at_the_cap_a_newcomer_gets_the_waitlist(browser, full_login_url):
    first = browser.new_context()
    page = first.new_page()
    _sign_in(page, full_login_url, "first-and-only")  # takes the only seat
    assert "You're in" in page.locator("#welcome").inner_text()

    newcomer = browser.new_context().new_page()  # another browser
    newcomer.goto(full_login_url)
    assert "full" in newcomer.locator("h1").inner_text().lower()
    newcomer.fill("#email", "later@example.com")
    newcomer.click("button[type=submit]")
    newcomer.wait_for_load_state()
    assert "on the list" in newcomer.locator("h1").inner_text()


# ---------------------------------------------------------------- the account, end to end
USER, OTHER = "e2e-listener", "e2e-bystander"


def _aws(info: dict[str, str], service: str):
    import boto3

    return boto3.client(service, endpoint_url=info["AWS (moto)"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _plays(info: dict[str, str], user_id: str) -> list[dict]:
    ddb = _aws(info, "dynamodb")
    items, start = [], None
    while True:
        kwargs = {"ExclusiveStartKey": start} if start else {}
        page = ddb.query(TableName="playvault-local-PlaysTable", KeyConditionExpression="user_id = :u",
                         ExpressionAttributeValues={":u": {"S": user_id}}, **kwargs)
        items += page["Items"]
        start = page.get("LastEvaluatedKey")
        if not start:
            return items


def _wait_for(page, check, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
        page.reload()
    pytest.fail(f"timed out waiting for {what}: {page.content()[:2000]}")


def _download(page, button: str) -> str:
    page.click(button)
    page.wait_for_load_state()
    assert "/me/exports/" in page.url, page.content()[:1500]
    _wait_for(page, lambda: page.locator("#download").count() == 1, "the export")
    with page.expect_download() as download:
        page.click("#download")
    return Path(download.value.path()).read_text()


def _everything_mentioning(info: dict[str, str], user_id: str) -> list[str]:
    """Every table item and bucket key of the stack that mentions the user id."""
    ddb, s3 = _aws(info, "dynamodb"), _aws(info, "s3")
    found = []
    for table in ddb.list_tables()["TableNames"]:
        for item in ddb.scan(TableName=table)["Items"]:
            if user_id in str(item):
                found.append(f"{table}: {str(item)[:200]}")
    for bucket in s3.list_buckets()["Buckets"]:
        for obj in s3.list_objects_v2(Bucket=bucket["Name"]).get("Contents") or []:
            if user_id in obj["Key"]:
                found.append(f"s3://{bucket['Name']}/{obj['Key']}")
    return found


def test_my_archive_export_sign_out_and_delete(browser, served):
    import csv
    import io
    import json

    login_url = served["sign in"]
    base = login_url.rsplit("/auth/login", 1)[0]
    bystander = browser.new_context().new_page()
    _sign_in(bystander, login_url, OTHER)
    page = browser.new_context(accept_downloads=True).new_page()
    _sign_in(page, login_url, USER)
    assert page.url.startswith(f"{base}/me")

    # /me after the first poll (the dispatcher runs every 20 s; the user listened the hour before)
    _wait_for(page, lambda: int(page.locator("#plays-total").inner_text()) > 0, "the first poll")
    stored = _plays(served, USER)
    assert int(page.locator("#plays-total").inner_text()) == len(stored) > 0
    assert page.locator("#status").inner_text() == "Archiving"
    assert page.locator("#plays-per-day rect.day").count() == 90
    assert page.locator("#top-tracks g.item").count() >= 1 and page.locator("#top-artists g.item").count() >= 1
    assert page.locator("#first-play").inner_text() == stored[0]["played_at"]["S"][:16].replace("T", " ") + " UTC"

    # the exports hold exactly the plays table (the listening goes on: compare with the table afterwards)
    rows = list(csv.DictReader(io.StringIO(_download(page, "#export-csv"))))
    page.goto(f"{base}/me")
    lines = [json.loads(line) for line in _download(page, "#export-jsonl").splitlines()]
    table = {p["played_at"]["S"]: p["track_id"]["S"] for p in _plays(served, USER)}
    assert {r["played_at"]: r["track_id"] for r in rows}.items() <= table.items() and len(rows) >= len(stored)
    assert {x["played_at"]: x["track"]["id"] for x in lines}.items() <= table.items()
    assert len(rows) == len({r["played_at"] for r in rows})  # no play twice
    assert [r["played_at"] for r in rows] == sorted(table)[:len(rows)]  # none missing (oldest first)
    assert all(r["track_name"] and r["artist_names"] and r["source"] == "api" for r in rows)

    # sign out, then in again
    page.goto(f"{base}/me")
    page.click("#sign-out")
    page.wait_for_load_state()
    assert "Signed out" in page.locator("h1").inner_text()
    _sign_in(page, login_url, USER)
    assert "Welcome back" in page.locator("#welcome").inner_text()

    # delete my data
    other_before = len(_plays(served, OTHER))
    page.click("#delete-link")
    page.wait_for_load_state()
    assert "35 days" in page.content()
    page.click("#confirm-delete")
    page.wait_for_load_state()
    assert "/deletions/" in page.url
    _wait_for(page, lambda: "Done" in page.locator("#deletion-status").inner_text(), "the deletion", 60)
    assert int(page.locator("#deleted-plays").inner_text()) >= len(stored)
    assert _everything_mentioning(served, USER) == []
    assert len(_plays(served, OTHER)) >= other_before > 0
    bystander.goto(f"{base}/me")
    assert bystander.locator("#status").inner_text() == "Archiving"
    page.goto(f"{base}/me")
    assert "/authorize" in page.url or "asks for access" in page.content()  # signed out: back to sign-in
