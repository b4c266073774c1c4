"""`make serve` in a terminal: the functions' JSON log lines go to a file (named at start), so the
banner with the sign-in URL stays readable; stderr keeps only what a developer must see."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from playvault_local.aws_server import stop_process
from tests.conftest import free_port
from tests.e2e._helpers import ROOT, cli_env, servers_started_by


def _banner(process: subprocess.Popen) -> dict[str, str]:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            continue
        if "poll by hand" in seen[-1]:
            return {label.strip(): value.strip() for label, sep, value in (e.partition(" : ") for e in seen) if sep}
    raise AssertionError(f"serve did not come up (exit {process.poll()}): {''.join(seen)}")


def test_serve_writes_the_functions_log_lines_to_a_file(tmp_path: Path):
    log = tmp_path / "functions.log"
    err = tmp_path / "stderr.txt"
    with err.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "playvault_local", "serve", "--port", str(free_port()),
                                    "--no-listening", "--log", str(log)], stdout=subprocess.PIPE, stderr=stderr,
                                   text=True, env=cli_env(), cwd=ROOT)
        try:
            info = _banner(process)
            assert info["function logs"].startswith(str(log))
            login = requests.get(info["sign in"], allow_redirects=False, timeout=30)  # the auth function logs
            assert login.status_code == 302
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "login started" not in log.read_text():
                time.sleep(0.2)
        finally:
            stop_process(process, timeout_s=20)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(r.get("message") == "login started" for r in records), log.read_text()[:2000]
    assert "login started" not in err.read_text() and '{"level"' not in err.read_text(), err.read_text()[:2000]
    assert servers_started_by(process.pid) == []
