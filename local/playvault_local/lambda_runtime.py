"""Calling a function the way Lambda does: import its module from CodeUri, pass a real context."""

from __future__ import annotations

import functools
import importlib.util
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from playvault_local import iam
from playvault_local.template import FunctionSpec


def function_arn(function_name: str) -> str:
    """The local function's ARN, as Lambda names it in a context and in an invocation record."""
    return f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"


@dataclass
class LambdaContext:
    """The attributes and method of Lambda's context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int
    timeout_s: float
    time_source: Callable[[], float] = time.monotonic
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"

    def __post_init__(self) -> None:
        self.invoked_function_arn = function_arn(self.function_name)
        self.log_group_name = self.log_group_name or f"/aws/lambda/{self.function_name}"
        self._deadline = self.time_source() + self.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - self.time_source()) * 1000))


def load_module(spec: FunctionSpec, layer_paths: list[Any] | None = None) -> ModuleType:
    """Import CodeUri/<module>.py under a unique name (every function's module is called `app`).

    Importing runs the module's cold start: the environment must already be set.
    """
    for path in layer_paths or []:
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    module_name, _ = spec.handler.rsplit(".", 1)
    unique = f"{spec.logical_id}_{module_name}"
    file_spec = importlib.util.spec_from_file_location(unique, spec.code_uri / f"{module_name}.py")
    if file_spec is None or file_spec.loader is None:
        raise ImportError(f"{spec.logical_id}: no {module_name}.py in {spec.code_uri}")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[unique] = module
    file_spec.loader.exec_module(module)
    return module


def load_handler(spec: FunctionSpec, layer_paths: list[Any] | None = None) -> Callable[[dict, Any], Any]:
    """The handler; its cold start and every invocation run as the function (the AWS calls made
    inside are checked against its role when the local IAM check is on: playvault_local.iam), with
    its own Powertools parameter cache, as each function's container has on AWS (shared, the first
    function to fetch a parameter would hide every other function's fetch from the IAM check)."""
    container = _Container(spec.logical_id)
    with container, iam.invoked(spec.logical_id):
        module = load_module(spec, layer_paths)
    handler = iam.checked(spec.logical_id, getattr(module, spec.handler.rsplit(".", 1)[1]))

    @functools.wraps(handler)
    def invoke(*args: Any, **kwargs: Any) -> Any:
        with container:
            return handler(*args, **kwargs)

    return invoke


class _Container:
    """A function's Powertools parameter providers (and so their caches), swapped in while it runs.
    Invocations overlapping in threads (tests only; run and serve invoke one at a time) share the
    view of the first one in."""

    _lock = threading.Lock()
    _depth = 0
    _all: list[dict[str, Any]] = []

    def __init__(self, function: str):
        self.function = function
        self.providers: dict[str, Any] = {}
        self._saved: dict[str, Any] = {}
        with _Container._lock:
            _Container._all.append(self.providers)

    def __enter__(self) -> None:
        from aws_lambda_powertools.utilities.parameters import base

        with _Container._lock:
            _Container._depth += 1
            if _Container._depth == 1:
                self._saved = dict(base.DEFAULT_PROVIDERS)
                base.DEFAULT_PROVIDERS.clear()
                base.DEFAULT_PROVIDERS.update(self.providers)

    def __exit__(self, *exc: object) -> None:
        from aws_lambda_powertools.utilities.parameters import base

        with _Container._lock:
            _Container._depth -= 1
            if _Container._depth == 0:
                self.providers.clear()
                self.providers.update(base.DEFAULT_PROVIDERS)
                base.DEFAULT_PROVIDERS.clear()
                base.DEFAULT_PROVIDERS.update(self._saved)


def set_parameter_provider(kind: str, provider: Any) -> None:
    """Every function's container, and code outside any, reads `kind` parameters ("ssm") through
    `provider` from now on (tests: an SSM that refuses every read)."""
    from aws_lambda_powertools.utilities.parameters import base

    with _Container._lock:
        for providers in _Container._all:
            providers[kind] = provider
        base.DEFAULT_PROVIDERS[kind] = provider


def clear_parameter_caches() -> None:
    """Every function's cached parameters expire (what 5 minutes do on AWS)."""
    from aws_lambda_powertools.utilities import parameters

    with _Container._lock:
        for providers in _Container._all:
            providers.clear()
    parameters.clear_caches()


def context_for(spec: FunctionSpec, time_source: Callable[[], float] = time.monotonic) -> LambdaContext:
    return LambdaContext(function_name=spec.logical_id, memory_limit_in_mb=spec.memory_mb,
                         timeout_s=spec.timeout_s, time_source=time_source)
