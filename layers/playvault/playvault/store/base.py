"""Binding the pynamodb models to their tables and region at cold start."""

from __future__ import annotations

import os

from pynamodb.exceptions import PutError, PynamoDBException
from pynamodb.models import Model

from playvault.config import TableSettings

ALL_MODELS: dict[str, type[Model]] = {}
_bindings = 0  # how many times bind() ran: per-container caches of table contents key on it


def table(settings_field: str):
    """Class decorator: the model's table name comes from TableSettings.<settings_field>."""

    def register(model: type[Model]) -> type[Model]:
        ALL_MODELS[settings_field] = model
        return model

    return register


class BaseMeta:
    table_name = "unbound"  # bind() sets the real name before any call
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # host stays None: botocore then honours the standard AWS_ENDPOINT_URL by itself.
    connect_timeout_seconds = 2
    read_timeout_seconds = 5
    max_retry_attempts = 3
    base_backoff_ms = 25
    # One connection per worker thread (USER_CONCURRENCY <= 64): pynamodb's default pool of 10 made
    # threads beyond the 10th open and discard a connection per request (BENCHMARKS.md).
    max_pool_connections = 64


def bind(settings: TableSettings) -> None:
    """Point every model at its table (names from the environment model) and drop cached clients."""
    global _bindings
    _bindings += 1
    names = settings.model_dump()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    for settings_field, model in ALL_MODELS.items():
        if settings_field not in names:
            continue
        model.Meta.table_name = names[settings_field]
        model.Meta.region = region
        model._connection = None  # the next call builds a client for the new table/endpoint


def binding() -> int:
    """Changes whenever the models are pointed at (possibly other) tables: a cache of what a table
    holds is valid only for the binding it was filled under."""
    return _bindings


def condition_failed(exc: PynamoDBException) -> bool:
    """True when a conditional write was refused because its condition did not hold."""
    return exc.cause_response_code == "ConditionalCheckFailedException"


def put_if_absent(item: Model) -> bool:
    """Conditional put on the hash key: True if this call created the row, False if it existed
    (maybe written by a concurrent worker a moment ago). Never overwrites."""
    hash_key = type(item)._hash_key_attribute()
    try:
        item.save(condition=hash_key.does_not_exist())
    except PutError as exc:
        if condition_failed(exc):
            return False
        raise
    return True
