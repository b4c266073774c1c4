"""moto's TransactWriteItems, rolled back item by item as DynamoDB isolates it.

moto backs up every table a transaction names with a deep copy before running it, and puts the
copies back when the transaction is cancelled. DynamoDB does neither, and the copy does harm here:
- it costs time in proportion to the table, not the transaction: one merge of an export row into a
  polled play copied the whole plays table (tens of thousands of items in `make run --import`);
- in the threaded moto_server, a cancelled transaction puts back a copy taken before other requests'
  writes to the same table, silently undoing them (a lost play the emulator made, not the code).

`install()` makes moto's backup of a table the live table itself, and saves and restores only the
items the transaction names, under one lock so transactions are atomic with respect to each other.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

_lock = threading.Lock()
_installed = False


class _TablesAsThemselves:
    """Stands in for the `copy` module inside moto's DynamoDB models: a Table "copies" as itself;
    everything else (an item before an update) is copied as before."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        from moto.dynamodb.models.table import Table

        return value if isinstance(value, Table) else copy.deepcopy(value, memo)


def _named_items(backend: Any, transact_items: list[dict[str, Any]]) -> list[tuple[Any, Any, Any, Any]]:
    """(table, hash key, range key, a copy of the item or None) for every item the transaction names."""
    saved = []
    for entry in transact_items:
        try:
            ((_, operation),) = entry.items()
            table = backend.get_table(operation["TableName"])
            keys = operation.get("Key") or {name: operation["Item"][name]
                                           for name in (table.hash_key_attr, table.range_key_attr) if name}
            hash_key, range_key = backend.get_keys_value(table, keys)
        except Exception:  # noqa: BLE001, S112  moto refuses this entry itself, before writing anything of it
            continue
        saved.append((table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))))
    return saved


def _restore(saved: list[tuple[Any, Any, Any, Any]]) -> None:
    for table, hash_key, range_key, item in reversed(saved):
        if item is None:
            table.delete_item(hash_key, range_key)
        elif range_key is not None:
            table.items[hash_key][range_key] = item
        else:
            table.items[hash_key] = item


def install() -> None:
    """Patch moto's DynamoDB backend in this process (idempotent): the in-process mock of the tests
    and the moto_server of the local runner."""
    global _installed
    if _installed:
        return
    from moto.dynamodb import models

    original = models.DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        with _lock:
            saved = _named_items(self, transact_items)
            try:
                return original(self, transact_items)
            except Exception:
                _restore(saved)
                raise

    models.copy = _TablesAsThemselves()
    models.DynamoDBBackend.transact_write_items = transact_write_items
    _installed = True
