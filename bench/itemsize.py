"""DynamoDB item size by AWS's published rules (wire-format items, as in a request or response body).

An item's size is the sum of its attribute names' UTF-8 lengths plus each value's size: strings by
UTF-8 length, binary by raw length, numbers about 1 byte per 2 significant digits + 1, booleans and
nulls 1 byte, lists and maps 3 bytes + 1 byte per element + their elements (map keys count too),
sets the sum of their elements. Request units round this up per 1 KB (writes) or 4 KB (reads).
"""

from __future__ import annotations

import base64
from typing import Any


def _number_size(text: str) -> int:
    digits = text.lstrip("-").replace(".", "").lstrip("0").rstrip("0") or "0"
    return (len(digits) + 1) // 2 + 1


def value_size(value: dict[str, Any]) -> int:
    (kind, data), = value.items()
    if kind == "S":
        return len(data.encode())
    if kind == "N":
        return _number_size(data)
    if kind == "B":
        return len(base64.b64decode(data)) if isinstance(data, str) else len(data)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in data)
    if kind == "NS":
        return sum(_number_size(n) for n in data)
    if kind == "BS":
        return sum(len(base64.b64decode(b)) if isinstance(b, str) else len(b) for b in data)
    if kind == "L":
        return 3 + sum(1 + value_size(v) for v in data)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in data.items())
    raise ValueError(f"unknown DynamoDB type {kind}")


def item_size(item: dict[str, dict[str, Any]]) -> int:
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())
