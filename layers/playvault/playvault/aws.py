"""boto3 clients created on first use.

A client costs tens of milliseconds to build (it loads its service model). Handlers keep one per
container, but the ones a typical invocation never touches (SQS for requeues, KMS on a data-key
cache miss) should not lengthen every cold start.
"""

from __future__ import annotations

import threading
from typing import Any

import boto3


class LazyClient:
    def __init__(self, service: str, **client_kwargs: Any):
        self._service = service
        self._kwargs = client_kwargs
        self._client: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        if self._client is None:
            with self._lock:  # user threads may race to the first call
                if self._client is None:
                    self._client = boto3.client(self._service, **self._kwargs)
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)
