"""Helpers for the end-to-end tests: the CLI as a subprocess, and finding servers it left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / "layers" / "playvault"), str(ROOT / "local"), str(ROOT)]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("AWS_ENDPOINT_URL", None)
    return env


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "playvault_local", *args], capture_output=True, text=True,
                          env=cli_env(), cwd=ROOT, timeout=timeout)


def servers_started_by(pid: int) -> list[int]:
    """PIDs of AWS emulator processes started by `pid` still alive (they carry --parent PID)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"playvault_local.aws_server" in argv and b"--parent" in argv:
            if argv[argv.index(b"--parent") + 1] == str(pid).encode():
                found.append(int(entry.name))
    return found
