"""DynamoDB's own refusals that moto does not make, made on the client side so tests and the local
runner see what real DynamoDB answers.

- Query with `KeyConditionExpression` `... BETWEEN :lo AND :hi` where :lo > :hi: DynamoDB answers
  ValidationException (moto answers an empty page), so code that builds such a range passes every
  local test and fails in production with a 500.

`install()` adds the hook to botocore's built-in handlers, so every botocore session created from
then on (boto3's, pynamodb's per-thread ones) has it; `register(events)` puts it on one session's or
client's event system.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

EVENT = "before-parameter-build.dynamodb.Query"
_BETWEEN = re.compile(r"\bBETWEEN\s+(:[A-Za-z0-9_]+)\s+AND\s+(:[A-Za-z0-9_]+)", re.IGNORECASE)


def _ordered_key(value: dict[str, Any]) -> tuple[str, Any] | None:
    """How DynamoDB orders a key attribute value: S by UTF-8 bytes, N as a number, B by bytes."""
    if "S" in value:
        return "S", value["S"].encode("utf-8")
    if "N" in value:
        return "N", Decimal(value["N"])
    if "B" in value:
        raw = value["B"]
        return "B", raw if isinstance(raw, bytes) else str(raw).encode()
    return None


def _render(value: dict[str, Any]) -> str:
    ((kind, raw),) = value.items()
    return f"{{{kind}:{raw}}}"


def refuse_reversed_between(params: dict[str, Any], **_: Any) -> None:
    """Raise DynamoDB's ValidationException for a BETWEEN whose lower bound is above its upper bound."""
    expression = params.get("KeyConditionExpression")
    if not isinstance(expression, str):
        return
    values = params.get("ExpressionAttributeValues") or {}
    for low_name, high_name in _BETWEEN.findall(expression):
        low, high = values.get(low_name), values.get(high_name)
        if not isinstance(low, dict) or not isinstance(high, dict):
            continue
        low_key, high_key = _ordered_key(low), _ordered_key(high)
        if low_key is None or high_key is None or low_key[0] != high_key[0] or low_key[1] <= high_key[1]:
            continue
        from botocore.exceptions import ClientError

        raise ClientError(
            {"Error": {"Code": "ValidationException",
                       "Message": "Invalid KeyConditionExpression: The BETWEEN operator requires upper bound to be "
                                  "greater than or equal to lower bound; lower bound operand: AttributeValue: "
                                  f"{_render(low)}, upper bound operand: AttributeValue: {_render(high)}"},
             "ResponseMetadata": {"HTTPStatusCode": 400}},
            "Query",
        )


def register(events: Any) -> None:
    """On one botocore event system (a session's, or client.meta.events)."""
    events.register(EVENT, refuse_reversed_between, unique_id="playvault-strict-dynamodb-between")


def install() -> None:
    """On every botocore session created from now on (idempotent)."""
    from botocore import handlers

    entry = (EVENT, refuse_reversed_between)
    if entry not in handlers.BUILTIN_HANDLERS:
        handlers.BUILTIN_HANDLERS.append(entry)
