"""Calling a function the way Lambda does: import its module from CodeUri, pass a real context."""

from __future__ import annotations

import importlib.util
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from playvault_local.template import FunctionSpec


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
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"
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
    return getattr(load_module(spec, layer_paths), spec.handler.rsplit(".", 1)[1])


def context_for(spec: FunctionSpec, time_source: Callable[[], float] = time.monotonic) -> LambdaContext:
    return LambdaContext(function_name=spec.logical_id, memory_limit_in_mb=spec.memory_mb,
                         timeout_s=spec.timeout_s, time_source=time_source)
