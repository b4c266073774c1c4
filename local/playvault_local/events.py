"""Real AWS event shapes for invoking the functions in-process: EventBridge scheduled events, SQS
event source mapping batches, API Gateway HttpApi payload 2.0 requests (and their responses)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

REGION = "us-east-1"
ACCOUNT = "123456789012"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def scheduled_event(moment: datetime, rule_name: str) -> dict[str, Any]:
    """What EventBridge Scheduler/rules deliver to a Schedule-triggered function."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": _iso(moment),
        "region": REGION,
        "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{rule_name}"],
        "detail": {},
    }


def sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """One record of an SQS event, from a ReceiveMessage answer (AttributeNames=All)."""
    attributes = message.get("Attributes", {})
    record_attributes = {
        "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
        "SentTimestamp": attributes.get("SentTimestamp", "0"),
        "SenderId": attributes.get("SenderId", "AIDAIENQZJOLO23YVJ4VO"),
        "ApproximateFirstReceiveTimestamp": attributes.get("ApproximateFirstReceiveTimestamp", "0"),
    }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": record_attributes,
        "messageAttributes": {},
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    return {"Records": [sqs_record(m, queue_arn) for m in messages]}


def http_api_event(method: str, path: str, *, query: str = "", headers: dict[str, str] | None = None,
                   body: bytes | None = None, route_key: str | None = None, source_ip: str = "127.0.0.1",
                   now: datetime | None = None, cookies: list[str] | None = None) -> dict[str, Any]:
    """API Gateway HttpApi payload format 2.0."""
    now = now or datetime.now(UTC)
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    lowered.setdefault("host", "127.0.0.1")
    lowered.setdefault("user-agent", "playvault-local")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key or f"{method} {path}",
        "rawPath": path,
        "rawQueryString": query,
        "headers": lowered,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "local",
            "domainName": lowered["host"],
            "domainPrefix": lowered["host"].split(".")[0],
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": source_ip,
                     "userAgent": lowered["user-agent"]},
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key or f"{method} {path}",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    if body:
        try:
            event["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


def http_api_event_for_url(method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    parts = urlsplit(url)
    return http_api_event(method, parts.path, query=parts.query, **kwargs)


def http_response(answer: Any) -> tuple[int, dict[str, str], bytes, list[str]]:
    """A handler's payload 2.0 answer -> (status, headers, body bytes, cookies)."""
    if not isinstance(answer, dict) or "statusCode" not in answer:
        # API Gateway infers a 200 JSON response from any other value.
        import json

        return 200, {"content-type": "application/json"}, json.dumps(answer).encode(), []
    body = answer.get("body") or ""
    raw = base64.b64decode(body) if answer.get("isBase64Encoded") else body.encode("utf-8")
    headers = {str(k): str(v) for k, v in (answer.get("headers") or {}).items()}
    for key, values in (answer.get("multiValueHeaders") or {}).items():
        headers[str(key)] = ", ".join(str(v) for v in values)
    return int(answer["statusCode"]), headers, raw, list(answer.get("cookies") or [])


def s3_object_created_event(bucket: str, key: str, size: int, etag: str, moment: datetime,
                            reason: str = "PostObject") -> dict[str, Any]:
    """What an EventBridge rule delivers for an S3 "Object Created" (bucket notifications to
    EventBridge on): moto does not emit it, so the local runner and the tests build it."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": ACCOUNT,
        "time": _iso(moment),
        "region": REGION,
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, "size": size, "etag": etag.strip('"'), "sequencer": uuid.uuid4().hex[:18].upper()},
            "request-id": uuid.uuid4().hex[:16].upper(),
            "requester": ACCOUNT,
            "source-ip-address": "127.0.0.1",
            "reason": reason,
        },
    }
