"""A real browser against a served local stack: sign in through the consent page; the waitlist at the
cap; a user's whole account (the landing page, /me after a poll, the back button to the consent page,
CSV and JSON Lines exports equal to the plays table, sign-out, sign-in again, delete my data: nothing
of the user left in any table or bucket, another user untouched; axe-core finds no serious or
critical violation on the landing page, /me, the export, delete and deletion pages at 1280 and 390
px, and at 390 px nothing overflows); importing a Spotify data export from /me (the ZIP posted straight to S3, the job
paused by a 429 and resumed, its progress to completion, the coverage timeline); an upload pointed
into another user's prefix (refused by the local S3's policy check; planted directly, a failed job).

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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

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
                # Every AWS call the functions made was checked against their roles: none refused.
                iam = requests.get(f"http://127.0.0.1:{port}/_local/iam", timeout=10).json()
                assert iam["checked_calls"] > 0 and iam["denied"] == [], iam["denied"]
                return
        pytest.fail(f"serve did not come up (exit {process.poll()}): {''.join(seen)}")
    finally:
        stop_process(process, timeout_s=20)
        assert servers_started_by(process.pid) == []


@pytest.fixture
def login_url(served: dict[str, str]) -> str:
    return served["sign in"]


@pytest.fixture
def full_login_url() -> Iterator[str]:
    for info in _serve("--parameter", "MaxUsers=1"):
        yield info["sign in"]


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, str]]:
    # One stack for the tests of this module that use it (each has its own users; the IAM check covers
    # them all). Deletion waits the worker's timeout (150 s) after marking the user; here 5 s keeps the test short.
    yield from _serve("--parameter", "DeletionGraceSeconds=5")


@pytest.fixture
def served_alone() -> Iterator[dict[str, str]]:
    """A stack of its own: the import's counts are compared with the plays polled just before it."""
    yield from _serve("--parameter", "DeletionGraceSeconds=5")


@pytest.fixture(scope="module")
def browser():  # each test opens its own contexts
    sync_playwright = _browser_or_fail()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield instance
        finally:
            instance.close()


# ---------------------------------------------------------------- accessibility and the phone layout
WIDTHS = (1280, 390)  # a laptop, a phone
BLOCKING = ("serious", "critical")  # axe-core's impacts that fail the test


def _axe_or_fail():
    try:
        from axe_playwright_python.sync_playwright import Axe
    except ImportError:
        pytest.fail("axe-playwright-python is not installed: pip install -r requirements-dev.txt")
    return Axe()


def _page_fits(page, width: int) -> list[str]:
    """What does not fit a `width`-pixel screen: horizontal overflow, text under 12 px, and text of
    the coverage timeline under 12 px (its labels are drawn in pixels, never scaled down)."""
    return page.evaluate("""width => {
        const found = [];
        const wide = document.documentElement.scrollWidth;
        if (wide > width) found.push(`page ${wide} px wide`);
        for (const el of document.querySelectorAll('main *')) {
            if (el.closest('svg') || !el.childNodes.length) continue;
            // visually hidden for screen readers only (table.cards' header row on a phone): not on screen
            let hidden = false;
            for (let up = el; up && !hidden; up = up.parentElement) hidden = getComputedStyle(up).clipPath !== 'none';
            if (hidden) continue;
            const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
            const rect = el.getBoundingClientRect();
            const name = `${el.tagName}#${el.id} in #${(el.parentElement.closest('[id]') || {}).id}`;
            if (own && rect.width > 0 && rect.right > width + 1) found.push(`${name} ends at ${rect.right}`);
            if (own && parseFloat(getComputedStyle(el).fontSize) < 12) found.push(`${name} text under 12 px`);
        }
        for (const t of document.querySelectorAll('#coverage svg text')) {
            const box = t.getBoundingClientRect();
            if (box.height < 12) found.push(`coverage label ${t.textContent} ${box.height} px high`);
            if (box.left < 0 || box.right > width + 1) found.push(`coverage label ${t.textContent} outside`);
        }
        return found;
    }""", width)


def _accessible(page, what: str) -> None:
    """axe-core (through Playwright) finds no violation of serious or critical impact on the page at
    either width, and at the phone's width the page fits (no sideways scrolling, readable text)."""
    axe = _axe_or_fail()
    try:
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})
            violations = axe.run(page).response["violations"]
            blocking = [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
                        for v in violations if v.get("impact") in BLOCKING]
            assert blocking == [], f"{what} at {width} px: {blocking}"
            if width < 600:
                assert _page_fits(page, width) == [], f"{what} at {width} px"
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


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
    _accessible(page, "the export page")
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
    visitor = browser.new_context().new_page()  # signed out: the landing page, then sign-in
    visitor.goto(f"{base}/")
    assert visitor.url == f"{base}/" and visitor.locator("#sign-in").get_attribute("href") == "/auth/login"
    _accessible(visitor, "the landing page")
    bystander = browser.new_context().new_page()
    _sign_in(bystander, login_url, OTHER)
    page = browser.new_context(accept_downloads=True).new_page()
    _sign_in(page, login_url, USER)
    assert page.url.startswith(f"{base}/me")
    # back from /me (the callback and /auth/login were redirects) to Spotify's consent page, and on
    # again: the callback gets a used state, and the browser is signed in: its archive, no error
    page.go_back()
    assert "asks for access" in page.content(), page.url
    page.click("#agree")
    page.wait_for_load_state()
    assert page.url == f"{base}/me", page.url
    page.goto(login_url)  # the sign-in link, signed in
    assert page.url == f"{base}/me", page.url

    # /me after the first poll: a sign-in dispatches at once, and two sign-ups in a row are both
    # overdue, so neither waits for the other's moment (the user listened the hour before)
    _wait_for(page, lambda: int(page.locator("#plays-total").inner_text()) > 0, "the first poll", 45)
    stored = _plays(served, USER)
    assert int(page.locator("#plays-total").inner_text()) == len(stored) > 0
    assert page.locator("#status").inner_text() == "Archiving"
    today = datetime.now(UTC).date()  # the user's time zone: UTC until they pick one
    days_this_month = (today.replace(day=28) + timedelta(days=4)).replace(day=1) - today.replace(day=1)
    assert page.locator("#series-plays .bar").count() == days_this_month.days  # the default period: this month
    assert page.locator("#top-tracks tr.item").count() >= 1 and page.locator("#top-artists tr.item").count() >= 1
    assert int(page.locator("#total-plays").get_attribute("data-value")) >= 1
    assert page.locator("#first-play").inner_text() == stored[0]["played_at"]["S"][:16].replace("T", " ") + " UTC"
    _accessible(page, "/me")


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
    _wait_for(bystander, lambda: int(bystander.locator("#plays-total").inner_text()) > 0, "the bystander's poll")
    other_before = len(_plays(served, OTHER))
    page.click("#delete-link")
    page.wait_for_load_state()
    assert "35 days" in page.content()
    _accessible(page, "the delete page")
    page.click("#confirm-delete")
    page.wait_for_load_state()
    assert "/deletions/" in page.url
    assert "poll" in page.locator("#deletion-wait").inner_text()  # why it waits: the grace time
    _wait_for(page, lambda: "Done" in page.locator("#deletion-status").inner_text(), "the deletion", 60)
    _accessible(page, "the deletion page")
    assert int(page.locator("#deleted-plays").inner_text()) >= len(stored)
    assert _everything_mentioning(served, USER) == []
    assert len(_plays(served, OTHER)) >= other_before > 0
    bystander.goto(f"{base}/me")
    assert bystander.locator("#status").inner_text() == "Archiving"
    page.goto(f"{base}/me")
    assert "/authorize" in page.url or "asks for access" in page.content()  # signed out: back to sign-in


# ---------------------------------------------------------------- importing a data export
IMPORTER_USER = "e2e-importer"
FILE_NAME = "my_spotify_data (1).zip"
HISTORY_TRACKS = range(400, 430)  # catalog tracks listened to in the years before sign-up


def _export_zip(info: dict[str, str], polled: list[dict]) -> tuple[bytes, int, int]:
    """Spotify's extended streaming history for the user: 30 plays of 2024, a skip and a
    private-session stream (both dropped by the listening rule), and every polled play again
    (ts = its end, whole seconds, as the export has it). -> (zip, plays to add, already archived)."""
    import io
    import json
    import zipfile
    from datetime import UTC, datetime, timedelta

    from spotify_emulator import catalog

    def row(ended: datetime, track_id: str, name: str, ms_played: int, incognito: bool = False) -> dict:
        return {"ts": ended.strftime("%Y-%m-%dT%H:%M:%SZ"), "platform": "android", "ms_played": ms_played,
                "conn_country": "SE", "ip_addr": "192.0.2.7", "master_metadata_track_name": name,
                "master_metadata_album_artist_name": "An Artist", "master_metadata_album_album_name": "An Album",
                "spotify_track_uri": f"spotify:track:{track_id}", "episode_name": None, "episode_show_name": None,
                "spotify_episode_uri": None, "reason_start": "trackdone",
                "reason_end": "trackdone" if ms_played >= 30_000 else "fwdbtn", "shuffle": False,
                "skipped": ms_played < 30_000, "offline": False, "offline_timestamp": None,
                "incognito_mode": incognito}

    start = datetime(2024, 3, 1, 18, 0, tzinfo=UTC)
    history = [catalog.track(0, index) for index in HISTORY_TRACKS]
    rows = [row(start + timedelta(days=7 * n), t["id"], t["name"], 200_000) for n, t in enumerate(history)]
    rows.append(row(start + timedelta(days=400), history[0]["id"], history[0]["name"], 12_000))  # a skip
    rows.append(row(start + timedelta(days=401), history[1]["id"], history[1]["name"], 200_000, incognito=True))
    tracks = _aws(info, "dynamodb")
    known = [p for p in polled if p.get("track_id", {}).get("S")]
    for play in known:
        track_id = play["track_id"]["S"]
        name = tracks.get_item(TableName="playvault-local-TracksTable", Key={"track_id": {"S": track_id}})["Item"]
        ended = datetime.fromtimestamp(int(play["played_at_ms"]["N"]) // 1000, UTC)
        rows.append(row(ended, track_id, name["name"]["S"], 180_000))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Spotify Extended Streaming History/Streaming_History_Audio_2024-2026_0.json",
                         json.dumps(rows))
        archive.writestr("Spotify Extended Streaming History/ReadMeFirst_ExtendedStreamingHistory.pdf", b"%PDF-1.4")
    return buffer.getvalue(), len(history), len(known)


def _import_row(page) -> dict[str, str]:
    cells = page.locator("#imports tr.import").first.locator("td").all_inner_texts()
    names = ["file", "state", "rows_read", "plays_added", "already_archived", "skipped", "to_look_up"]
    return {**dict(zip(names, cells, strict=True)),
            "data_state": page.locator("#imports tr.import").first.get_attribute("data-state")}


def test_import_a_data_export_from_my_page(browser, served_alone):
    import requests

    served = served_alone

    login_url = served["sign in"]
    base = login_url.rsplit("/auth/login", 1)[0]
    page = browser.new_page()
    _sign_in(page, login_url, IMPORTER_USER)
    _wait_for(page, lambda: int(page.locator("#plays-total").inner_text()) > 0, "the first poll")
    assert "No import yet" in page.locator("#imports").inner_text()
    polled = _plays(served, IMPORTER_USER)
    archive, to_add, already = _export_zip(served, polled)

    # The first catalog lookup meets a 429 (Retry-After 20 s: long enough for the page to see the pause
    # between two reloads): the import pauses, then resumes by itself.
    emulator = served["Spotify"].split()[0]
    requests.post(f"{emulator}/_emulator/inject", json={"path_prefix": "/v1/tracks/", "status": 429,
                                                        "retry_after": 20, "times": 1}, timeout=10).raise_for_status()

    # Named as a browser names a second download: the key never carries the name, the job does.
    page.set_input_files("#import-file", files=[{"name": FILE_NAME, "mimeType": "application/zip",
                                                "buffer": archive}])
    page.click("#import-upload")  # a multipart POST straight to the bucket; S3 answers 303 back to /me
    page.wait_for_load_state()
    assert page.url.startswith(f"{base}/me?uploaded=1"), page.url
    received = page.locator("#upload-received").inner_text()
    assert "is uploaded" in received and "imports/" not in received  # the file's name once its job has it
    s3 = _aws(served, "s3")
    prefix = f"imports/{IMPORTER_USER}/"
    uploads = [(bucket["Name"], obj["Key"]) for bucket in s3.list_buckets()["Buckets"]
               for obj in s3.list_objects_v2(Bucket=bucket["Name"], Prefix=prefix).get("Contents", [])]
    assert [key.rsplit("/", 1)[1] for _, key in uploads] == ["export"]  # in the user's own prefix, a fixed key
    from playvault.imports import file_name_from_metadata

    assert file_name_from_metadata(s3.head_object(Bucket=uploads[0][0], Key=uploads[0][1])["Metadata"]) == FILE_NAME

    seen: list[dict[str, str]] = []

    def state() -> str | None:
        if page.locator("#imports tr.import").count() == 0:
            return None
        seen.append(_import_row(page))
        return seen[-1]["data_state"]

    _wait_for(page, lambda: state() == "paused", "the import to pause on the 429", 60)
    paused = seen[-1]
    assert paused["file"] == FILE_NAME
    assert int(paused["plays_added"]) == to_add and int(paused["already_archived"]) == already  # rows are in
    assert int(paused["to_look_up"]) > 0 and "100 %" not in paused["state"] and "left" in paused["state"]
    _wait_for(page, lambda: state() == "done", "the import to resume and finish", 90)
    done = seen[-1]
    assert done["state"] == "Done"
    assert int(done["rows_read"]) == to_add + 2 + already
    assert (int(done["plays_added"]), int(done["already_archived"])) == (to_add, already)
    assert done["skipped"] == "1 in a private session; 1 too short to count as a play"  # in words

    # The plays table: the export's plays added once each, every polled play still once.
    table = _plays(served, IMPORTER_USER)
    imported = [p for p in table if p["source"]["S"] == "export"]
    assert len(imported) == to_add
    assert {p["played_at"]["S"][:4] for p in imported} == {"2024"}
    assert {p["played_at"]["S"] for p in polled} <= {p["played_at"]["S"] for p in table if p["source"]["S"] == "api"}
    assert int(page.locator("#plays-total").inner_text()) >= len(polled) + to_add

    # The coverage timeline: imported years, then polling since the sign-up.
    segments = page.locator("#coverage svg.coverage rect.segment")
    kinds = [segments.nth(i).get_attribute("class").split()[-1] for i in range(segments.count())]
    assert kinds[0] == "import" and kinds[-1] == "polling", kinds
    assert "filled by an import: 2024-03-01" in page.locator("#coverage rect.segment.import").first.inner_html()


# ---------------------------------------------------------------- an upload into someone else's archive
VICTIM, INTRUDER = "e2e-victim", "e2e-intruder"


def _imports_of(info: dict[str, str], user_id: str) -> list[dict]:
    return _aws(info, "dynamodb").query(TableName="playvault-local-ImportsTable",
                                        KeyConditionExpression="user_id = :u",
                                        ExpressionAttributeValues={":u": {"S": user_id}})["Items"]


def _upload_keys(info: dict[str, str], prefix: str) -> list[str]:
    s3 = _aws(info, "s3")
    return [obj["Key"] for bucket in s3.list_buckets()["Buckets"]
            for obj in s3.list_objects_v2(Bucket=bucket["Name"], Prefix=prefix).get("Contents", [])]


def test_an_upload_into_another_users_archive_is_refused(browser, served):
    login_url = served["sign in"]
    victim = browser.new_context().new_page()
    _sign_in(victim, login_url, VICTIM)
    intruder = browser.new_context().new_page()
    _sign_in(intruder, login_url, INTRUDER)

    # B takes the form on their own /me and points its key into A's prefix (the page has no script;
    # the test edits the DOM as anyone can in the browser's developer tools).
    own_key = intruder.locator("#import-form input[name=key]").get_attribute("value")
    form_action = intruder.locator("#import-form").get_attribute("action")
    assert own_key.startswith(f"imports/{INTRUDER}/")
    upload_id = own_key.split("/")[2]
    intruder.evaluate("key => { document.querySelector('#import-form input[name=key]').value = key; }",
                      f"imports/{VICTIM}/{upload_id}/evil.json")
    intruder.set_input_files("#import-file", files=[{"name": "evil.json", "mimeType": "application/json",
                                                    "buffer": b'[{"ts": "2021-01-01T00:00:00Z", "ms_played": 1}]'}])
    with intruder.expect_navigation() as navigation:
        intruder.click("#import-upload")
    answer = navigation.value
    assert answer.status == 403, answer.status  # the local S3, as S3 would: the policy's key condition
    refusal = intruder.content()
    assert "AccessDenied" in refusal and "Policy Condition failed" in refusal and f"imports/{INTRUDER}/" in refusal
    time.sleep(3)  # the importer's S3 rule polls every second: give it time to find anything
    assert _upload_keys(served, f"imports/{VICTIM}/") == []
    assert _imports_of(served, VICTIM) == [] and _imports_of(served, INTRUDER) == []
    assert [p for p in _plays(served, VICTIM) if p["source"]["S"] == "export"] == []

    # A mis-set policy would have let it in: planted directly under A's prefix with B's genuine upload
    # id, the object ends in a failed job on A's page that names the reason, and nothing is imported.
    s3 = _aws(served, "s3")
    bucket = form_action.rstrip("/").rsplit("/", 1)[1]  # the form posts path-style to the bucket
    s3.put_object(Bucket=bucket, Key=f"imports/{VICTIM}/{upload_id}/export", Metadata={"file-name": "evil.json"},
                  Body=b'[{"ts": "2021-01-01T00:00:00Z", "ms_played": 200000, "spotify_track_uri": null}]')

    def failed() -> bool:
        rows = victim.locator("#imports tr.import")
        return rows.count() == 1 and rows.first.get_attribute("data-state") == "failed"

    _wait_for(victim, failed, "the planted upload's job to fail", 30)
    assert "not issued to this user" in victim.locator("#imports tr.import").first.inner_text()
    [job] = _imports_of(served, VICTIM)
    assert job["state"]["S"] == "failed" and int(job["plays_added"]["N"]) == 0 and int(job["rows_read"]["N"]) == 0
    assert [p for p in _plays(served, VICTIM) if p["source"]["S"] == "export"] == []
