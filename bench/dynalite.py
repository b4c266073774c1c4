"""dynalite (npm, MIT) as a second DynamoDB emulator for the worker's path, in the bench only.

moto_server answers a few hundred DynamoDB requests a second on this machine, which caps the
worker's measured throughput. dynalite (a Node.js DynamoDB implementation on LevelDB, in memory
here) is faster; it has no transactions and no UpdateTimeToLive, and the worker's path needs
neither. The bench installs it with npm into bench/.dynalite (gitignored), starts it on 127.0.0.1
on a free port, and stops it by the PID it started.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from playvault_local.aws_server import stop_process

VERSION = "4.0.0"
FOLDER = Path(__file__).resolve().parent / ".dynalite"
CLI = FOLDER / "node_modules" / "dynalite" / "cli.js"


class DynaliteUnavailable(RuntimeError):
    """node/npm missing or the install failed: the bench reports moto_server only, saying why."""


def install() -> Path:
    """npm install dynalite@VERSION into bench/.dynalite once; returns its cli.js."""
    if CLI.exists():
        return CLI
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise DynaliteUnavailable("node and npm are needed for dynalite")
    FOLDER.mkdir(exist_ok=True)
    proc = subprocess.run([npm, "install", "--prefix", str(FOLDER), "--no-audit", "--no-fund", "--loglevel=error",
                           f"dynalite@{VERSION}"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not CLI.exists():
        raise DynaliteUnavailable(f"npm install dynalite@{VERSION} failed: {proc.stderr[-500:]}")
    return CLI


class Dynalite:
    """A dynalite server on 127.0.0.1:port (in memory, tables ACTIVE at once)."""

    def __init__(self, port: int):
        import requests

        node = shutil.which("node")
        if not node:
            raise DynaliteUnavailable("node is needed for dynalite")
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([node, str(install()), "--host", "127.0.0.1", "--port", str(port),
                                      "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                error = self.proc.stderr.read() if self.proc.stderr else ""
                raise DynaliteUnavailable(f"dynalite exited: {error[-500:]}")
            try:
                requests.post(self.url, timeout=1)  # any answer (400: no target) means it listens
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise DynaliteUnavailable("dynalite did not start within 30 s")

    def stop(self) -> None:
        stop_process(self.proc)  # by PID: only the process this bench started


def create_tables(client: Any, stack: Any) -> list[str]:
    """The template's tables under the stack's names, keys and indexes as template.yaml defines them;
    no TTL (dynalite has no UpdateTimeToLive; the worker's path does not depend on expiry)."""
    from playvault_local import template as tpl

    created = []
    for logical, res in tpl.resources_of_type(stack.template, "AWS::DynamoDB::Table").items():
        props = stack.resolver.value(res["Properties"])
        request: dict[str, Any] = {"TableName": stack.name(logical), "KeySchema": props["KeySchema"],
                                   "AttributeDefinitions": props["AttributeDefinitions"],
                                   "BillingMode": "PAY_PER_REQUEST"}
        if props.get("GlobalSecondaryIndexes"):
            request["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        client.create_table(**request)
        created.append(logical)
    for name in created:
        client.get_waiter("table_exists").wait(TableName=stack.name(name), WaiterConfig={"Delay": 1})
    return created
