"""Shared fixtures. Resources come from template.yaml (playvault_local.provision), never listed here."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from playvault_local import provision as prov
from playvault_local.aws_server import stop_process
from playvault_local.lambda_runtime import context_for, load_handler
from playvault_local.moto_transactions import install as isolate_transactions_item_by_item
from playvault_local.strict_dynamodb import install as refuse_what_dynamodb_refuses

ROOT = Path(__file__).resolve().parents[1]
REDIRECT_URI = "http://127.0.0.1:8765/auth/callback"

# Credentials for the emulators only; they must never reach AWS.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": prov.LOCAL_REGION,
        "AWS_REGION": prov.LOCAL_REGION,
        "POWERTOOLS_METRICS_NAMESPACE": "PlayVault",
        "POWERTOOLS_SERVICE_NAME": "playvault",
    }
)
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_PROFILE", None)

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    """The tests talk to emulators on this machine and to nothing else."""
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {host}")
    return _real_connect(self, address)


socket.socket.connect = _loopback_only  # type: ignore[method-assign]


def _share_botocore_models() -> None:
    """Every mock_aws starts a fresh boto3 session, whose loader would parse botocore's JSON service
    models again (about a third of provisioning a test's stack): all loaders share one cache of them."""
    import botocore.loaders

    models: dict[Any, Any] = {}
    init = botocore.loaders.Loader.__init__

    def init_sharing_models(self: botocore.loaders.Loader, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._cache = models  # what botocore's instance_cache decorator fills

    botocore.loaders.Loader.__init__ = init_sharing_models  # type: ignore[method-assign]


_share_botocore_models()
refuse_what_dynamodb_refuses()  # e.g. a reversed BETWEEN, which moto answers with an empty page
isolate_transactions_item_by_item()  # moto copies whole tables per transaction and restores stale copies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _reset_clock_and_metrics() -> Iterator[None]:
    from playvault import clock
    from playvault.metrics import metrics

    metrics.clear_metrics()  # Powertools keeps one buffer per namespace: no leaks between tests
    yield
    clock.reset_clock()
    metrics.clear_metrics()


@pytest.fixture
def detailed_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """As with the stack's DetailedMetrics "true": every metric of the catalog is emitted, not only
    the core set (playvault.metrics reads DETAILED_METRICS once, at import)."""
    from playvault import metrics

    monkeypatch.setattr(metrics, "detailed", True)


# ---------------------------------------------------------------- Spotify emulator
@pytest.fixture
def emulator() -> Iterator[Any]:
    """An in-process Spotify emulator (thread) with PlayVault's dev client registered."""
    from spotify_emulator import EmulatorServer, EmulatorState

    state = EmulatorState(seed=7)
    state.register_client(prov.DEV_CLIENT_ID, prov.DEV_CLIENT_SECRET, [REDIRECT_URI])
    server = EmulatorServer(state).start()
    try:
        yield server
    finally:
        server.stop()


def stack_parameters(spotify_url: str, **overrides: str) -> dict[str, str]:
    params = {
        "SpotifyApiUrl": f"{spotify_url}/v1",
        "SpotifyAccountsUrl": spotify_url,
        "RedirectUri": REDIRECT_URI,
    }
    params.update(overrides)
    return params


# ---------------------------------------------------------------- AWS (moto in-process)
@pytest.fixture
def stack_overrides() -> dict[str, str]:
    """Template parameter overrides; a test module may override this fixture (e.g. MaxUsers)."""
    return {}


@pytest.fixture
def lambda_invocations() -> list[tuple[str, str, Any]]:
    """The Lambda Invokes the functions made under aws_env, as (function name, invocation type,
    event): moto runs no function, so a test delivers them (e.g. to the importer) itself."""
    return []


@pytest.fixture
def aws_env(emulator: Any, stack_overrides: dict[str, str], monkeypatch: pytest.MonkeyPatch,
            lambda_invocations: list[tuple[str, str, Any]]) -> Iterator[prov.Stack]:
    """moto's mock_aws with every resource of template.yaml provisioned and the functions' env set."""
    from moto import mock_aws

    from playvault import store
    from playvault.config import TableSettings

    with mock_aws():
        stack = prov.provision(parameters=stack_parameters(emulator.url, **stack_overrides))
        for key, value in stack.env.items():
            monkeypatch.setenv(key, value)
        store.bind(TableSettings.from_env())
        _clear_powertools_caches()
        with iam_checked(stack, lambda_invocations):
            yield stack


@contextmanager
def iam_checked(stack: prov.Stack, invocations: list[tuple[str, str, Any]] | None = None) -> Iterator[Any]:
    """Every AWS call a function (a handler from load_handler) makes is checked against the role the
    translated template gives it (playvault_local.iam): a call the role would refuse raises
    AccessDenied, as on AWS, and fails the test here, naming the function, action and resource.
    Lambda Invokes (after their check) are appended to `invocations` and answered 202."""
    from playvault_local.iam import IamCheck
    from playvault_local.telemetry import AwsCallHooks

    def invoke(name: str, invocation_type: str, payload: bytes) -> int:
        if invocations is None:
            raise AssertionError(f"a Lambda Invoke of {name} where the test collects none")
        invocations.append((name, invocation_type, json.loads(payload)))
        return 202

    check = IamCheck.for_stack(stack)
    hooks = AwsCallHooks(iam=check, invoke=invoke)
    hooks.install()
    try:
        yield check
    finally:
        hooks.uninstall()
    check.raise_if_denied()


def _clear_powertools_caches() -> None:
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()


@contextmanager
def stack_on_server(endpoint_url: str, spotify_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[prov.Stack]:
    """template.yaml provisioned on a real moto_server, the env (AWS_ENDPOINT_URL included) set, store bound."""
    from playvault import store
    from playvault.config import TableSettings

    stack = prov.provision(endpoint_url=endpoint_url, parameters=stack_parameters(spotify_url))
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    assert stack.env["AWS_ENDPOINT_URL"] == endpoint_url
    store.bind(TableSettings.from_env())
    with iam_checked(stack):
        yield stack
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    store.bind(TableSettings.from_env())  # drop the clients built for this endpoint


@pytest.fixture
def load_function(aws_env: prov.Stack) -> Callable[[str], Callable[[dict, Any], Any]]:
    """load_function("WorkerFunction") -> its handler, imported fresh with the env set (a cold start)."""

    def load(logical_id: str) -> Callable[[dict, Any], Any]:
        return load_handler(aws_env.functions[logical_id], aws_env.layer_paths)

    return load


@pytest.fixture
def lambda_context(aws_env: prov.Stack) -> Callable[[str], Any]:
    return lambda logical_id: context_for(aws_env.functions[logical_id])


# ---------------------------------------------------------------- real servers (integration)
def _wait_http(url: str, process: subprocess.Popen, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer at {url}")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto_server on 127.0.0.1:<free port>, stopped by its PID."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/moto-api/", process, "moto_server")
        yield url
    finally:
        stop_process(process)


@pytest.fixture
def moto_reset(moto_server: str) -> str:
    """A clean moto_server for this test (its state is process-wide)."""
    requests.post(f"{moto_server}/moto-api/reset", timeout=10)
    return moto_server


@pytest.fixture(scope="session")
def emulator_process() -> Iterator[str]:
    """The Spotify emulator as its own process (python -m spotify_emulator), stopped by its PID."""
    process = subprocess.Popen(
        [sys.executable, "-m", "spotify_emulator", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"spotify_emulator did not start: {line!r}")
        yield line.split("listening on ", 1)[1].strip()
    finally:
        stop_process(process)
