"""S3's browser POST upload, held to its policy as S3 holds it (moto stores whatever it is sent).

A WSGI layer of the local AWS server (aws_server.py) in front of moto, for a multipart POST to a
bucket: the form is parsed, its SigV4 signature checked (x-amz-signature = HMAC-SHA256 of the base64
policy under the key derived from the credentials the local stack signs with), the policy's
expiration and every condition checked (`eq`, `starts-with`, `content-length-range` against the
file's size), and every form field must be covered by a condition except `policy`,
`x-amz-signature`, `file` and `x-ignore-*` (S3's POST policy rules). A violation gets S3's error
(403 AccessDenied "Invalid according to Policy: ...", SignatureDoesNotMatch, InvalidAccessKeyId;
400 EntityTooLarge / EntityTooSmall for the size, InvalidArgument for a missing field) and nothing
reaches moto. An accepted form goes on to moto with `${filename}` filled in in every field (S3
recognises it in all form fields; moto only in `key`) and non-ASCII metadata RFC 2047-encoded, as
S3 returns it. Fields after the file are ignored, as S3 ignores them.

Conditions are checked against the fields as posted (before `${filename}` is filled in).
"""

from __future__ import annotations

import base64
import binascii
import email.charset
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

# Fields no condition needs to cover (+ every field named x-ignore-*); AWSAccessKeyId and signature
# are Signature Version 2's (its docs exempt them too).
EXEMPT = ("policy", "x-amz-signature", "file", "awsaccesskeyid", "signature")
ALGORITHM = "AWS4-HMAC-SHA256"
_CREDENTIAL = re.compile(r"^([^/]+)/(\d{8})/([^/]+)/s3/aws4_request$")


class PostRefused(Exception):
    """What S3 answers instead of storing the object."""

    def __init__(self, status: int, code: str, message: str, **details: Any):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details

    def xml(self) -> bytes:
        extra = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in self.details.items())
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{self.code}</Code>'
                f"<Message>{escape(self.message)}</Message>{extra}<RequestId>{secrets.token_hex(8).upper()}"
                f"</RequestId></Error>").encode()


@dataclass
class PostForm:
    fields: list[tuple[str, str]] = field(default_factory=list)  # before the file, in order
    file_name: str | None = None  # None: no file part
    file_type: str = "application/octet-stream"
    file: bytes = b""

    def value(self, name: str) -> str | None:
        """A field's value (names are case-insensitive, as S3 treats them); the first if repeated."""
        return next((v for k, v in self.fields if k.lower() == name.lower()), None)

    @property
    def base_name(self) -> str:
        """What S3 puts for ${filename}: the text after the browser's last slash or backslash."""
        return re.split(r"[/\\]", self.file_name or "")[-1]


def parse_form(body: bytes, content_type: str) -> PostForm:
    """multipart/form-data -> PostForm (werkzeug's decoder: the one moto's own parsing uses)."""
    from werkzeug.http import parse_options_header
    from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

    _, options = parse_options_header(content_type)
    boundary = options.get("boundary")
    if not boundary:
        raise PostRefused(400, "MalformedPOSTRequest", "The body of your POST request is not well-formed "
                                                       "multipart/form-data.")
    decoder = MultipartDecoder(boundary.encode())
    decoder.receive_data(body)
    decoder.receive_data(None)
    form = PostForm()
    current: Field | File | None = None
    chunks: list[bytes] = []
    file_seen = False
    while True:
        try:
            event = decoder.next_event()
        except ValueError:
            raise PostRefused(400, "MalformedPOSTRequest", "The body of your POST request is not well-formed "
                                                           "multipart/form-data.") from None
        if isinstance(event, Field | File):
            current, chunks = event, []
        elif isinstance(event, Data):
            chunks.append(event.data)
            if not event.more_data and current is not None:
                data = b"".join(chunks)
                if isinstance(current, File) and current.name == "file" and not file_seen:
                    file_seen = True
                    form.file_name = current.filename or ""
                    form.file_type = current.headers.get("content-type", form.file_type)
                    form.file = data
                elif not file_seen:  # S3 ignores every field after the file
                    form.fields.append((current.name, data.decode("utf-8", "replace")))
                current = None
        elif isinstance(event, Epilogue | NeedData):
            return form


def signing_key(secret: str, date: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _required(form: PostForm, name: str) -> str:
    value = form.value(name)
    if value is None:
        raise PostRefused(400, "InvalidArgument", f"Bucket POST must contain a field named '{name}'.  If it is "
                                                  "specified, please check the order of the fields.",
                          ArgumentName=name)
    return value


def _condition_text(operator: str, name: str, operand: Any) -> str:
    return json.dumps([operator, f"${name}", operand])


def check(form: PostForm, bucket: str, secrets_by_key_id: dict[str, str], now: datetime) -> None:
    """PostRefused for anything S3 would refuse; None when S3 would store the file."""
    if form.file_name is None:
        raise PostRefused(400, "InvalidArgument", "POST requires exactly one file upload per request.",
                          ArgumentName="file")
    seen: set[str] = set()
    for name, _ in form.fields:  # S3 takes names case-insensitively: a second `Key` would be a second key
        if name.lower() in seen:
            raise PostRefused(400, "InvalidArgument", f"Conflicting values for the form field {name.lower()}.",
                              ArgumentName=name.lower())
        seen.add(name.lower())
    _required(form, "key")
    policy_b64 = form.value("policy")
    if policy_b64 is None:  # an anonymous POST to a private bucket
        raise PostRefused(403, "AccessDenied", "Access Denied")
    if form.value("AWSAccessKeyId") is not None:  # Signature Version 2 (boto3's default for some endpoints)
        _check_v2(form, policy_b64, secrets_by_key_id)
    else:
        _check_v4(form, policy_b64, secrets_by_key_id)
    try:
        policy = json.loads(base64.b64decode(policy_b64, validate=True))
        expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
        conditions = policy["conditions"]
        assert isinstance(conditions, list)
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError, AssertionError):
        raise PostRefused(400, "InvalidPolicyDocument", "Invalid Policy: Invalid JSON.") from None
    if expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=UTC)
    if now >= expiration:
        raise PostRefused(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
    covered = {"bucket"}
    for condition in conditions:
        covered.add(_check_condition(condition, form, bucket))
    extra = [name for name, _ in form.fields
             if name.lower() not in covered and name.lower() not in EXEMPT and not name.lower().startswith("x-ignore-")]
    if extra:
        raise PostRefused(403, "AccessDenied", f"Invalid according to Policy: Extra input fields: {extra[0]}")


def _unknown_key(key_id: str) -> PostRefused:
    return PostRefused(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.",
                       AWSAccessKeyId=key_id)


def _mismatch() -> PostRefused:
    return PostRefused(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                                                     "signature you provided. Check your key and signing method.")


def _check_v4(form: PostForm, policy_b64: str, secrets_by_key_id: dict[str, str]) -> None:
    algorithm = _required(form, "x-amz-algorithm")
    if algorithm != ALGORITHM:
        raise PostRefused(400, "InvalidArgument", f"X-Amz-Algorithm only supports \"{ALGORITHM}\"",
                          ArgumentName="x-amz-algorithm")
    credential = _required(form, "x-amz-credential")
    _required(form, "x-amz-date")
    signature = _required(form, "x-amz-signature")
    scope = _CREDENTIAL.match(credential)
    if scope is None:
        raise PostRefused(400, "AuthorizationQueryParametersError", "Error parsing the X-Amz-Credential parameter; "
                                                                    "the Credential is mal-formed.")
    key_id, date, region = scope.groups()
    secret = secrets_by_key_id.get(key_id)
    if secret is None:
        raise _unknown_key(key_id)
    expected = hmac.new(signing_key(secret, date, region), policy_b64.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.lower()):
        raise _mismatch()


def _check_v2(form: PostForm, policy_b64: str, secrets_by_key_id: dict[str, str]) -> None:
    key_id = _required(form, "AWSAccessKeyId")
    signature = _required(form, "signature")
    secret = secrets_by_key_id.get(key_id)
    if secret is None:
        raise _unknown_key(key_id)
    expected = base64.b64encode(hmac.new(secret.encode(), policy_b64.encode(), hashlib.sha1).digest()).decode()
    if not hmac.compare_digest(expected, signature):
        raise _mismatch()


def _invalid(condition: Any) -> PostRefused:
    return PostRefused(400, "InvalidPolicyDocument", f"Invalid Policy: Invalid Condition: {json.dumps(condition)}")


def _check_condition(condition: Any, form: PostForm, bucket: str) -> str:
    """Checks one condition; returns the (lower-case) field name it covers."""
    if isinstance(condition, dict) and len(condition) == 1:
        (name, operand), = condition.items()
        operator = "eq"
    elif isinstance(condition, list) and len(condition) == 3 and isinstance(condition[0], str):
        operator = condition[0].lower()
        if operator == "content-length-range":
            low, high = int(condition[1]), int(condition[2])
            size = len(form.file)
            if size > high:
                raise PostRefused(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
                                  ProposedSize=size, MaxSizeAllowed=high)
            if size < low:
                raise PostRefused(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed "
                                                         "size", ProposedSize=size, MinSizeAllowed=low)
            return "content-length-range"
        if operator not in ("eq", "starts-with") or not str(condition[1]).startswith("$"):
            raise _invalid(condition)
        name, operand = str(condition[1])[1:], condition[2]
    else:
        raise _invalid(condition)
    if not isinstance(name, str) or not isinstance(operand, str):
        raise _invalid(condition)
    value = bucket if name.lower() == "bucket" else form.value(name)
    ok = value is not None and (value == operand if operator == "eq" else value.startswith(operand))
    if not ok:
        raise PostRefused(403, "AccessDenied", "Invalid according to Policy: Policy Condition failed: "
                                               + _condition_text(operator, name, operand))
    return name.lower()


def _mail_safe(value: str) -> str:
    """A metadata value as S3 stores and returns it: RFC 2047 when it is not US-ASCII."""
    if value.isascii():
        return value
    return email.charset.Charset("utf-8").header_encode(value)


def forwarded_body(form: PostForm) -> tuple[bytes, str]:
    """The form as moto should store it: `${filename}` filled in everywhere, metadata mail-safe."""
    boundary = "----playvault" + secrets.token_hex(12)
    parts = []
    for name, value in form.fields:
        name = name.lower()  # as checked (names are case-insensitive); moto reads them case-sensitively
        value = value.replace("${filename}", form.base_name)
        if name.lower().startswith("x-amz-meta-"):
            value = _mail_safe(value)
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode() + b"\r\n")
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="file"\r\n'
                 f"Content-Type: {form.file_type}\r\n\r\n".encode() + form.file + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _bucket_of(environ: dict[str, Any]) -> str | None:
    """The bucket of a path-style POST /<bucket> (what boto3 presigns for a local endpoint), except
    DeleteObjects (POST /<bucket>?delete, a signed API call)."""
    if environ.get("REQUEST_METHOD") != "POST" or environ.get("QUERY_STRING") == "delete":
        return None
    path = environ.get("PATH_INFO", "").strip("/")
    return path if path and "/" not in path and not path.startswith("_") else None


def _bucket_post_refusal(environ: dict[str, Any]) -> PostRefused | None:
    """What S3 answers a POST to a bucket that is no form upload (moto would store its fields)."""
    if environ.get("QUERY_STRING"):
        return PostRefused(405, "MethodNotAllowed", "The specified method is not allowed against this resource.",
                           Method="POST", ResourceType="BUCKET")
    if not str(environ.get("CONTENT_TYPE", "")).lower().startswith("multipart/form-data"):
        return PostRefused(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                           Condition="Bucket POST must be of the enclosure-type multipart/form-data")
    return None


def enforce(app: Callable[..., Iterable[bytes]], secrets_by_key_id: dict[str, str],
            now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Callable[..., Iterable[bytes]]:
    """WSGI: browser POST uploads to a bucket are checked here before moto sees them."""
    import io

    def middleware(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        bucket = _bucket_of(environ)
        if bucket is None:
            return app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        try:
            refusal = _bucket_post_refusal(environ)
            if refusal is not None:
                raise refusal
            form = parse_form(body, environ["CONTENT_TYPE"])
            check(form, bucket, secrets_by_key_id, now())
        except PostRefused as refused:
            data = refused.xml()
            reason = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed",
                      412: "Precondition Failed"}.get(refused.status, "Error")
            start_response(f"{refused.status} {reason}", [("Content-Type", "application/xml"),
                                                          ("Content-Length", str(len(data)))])
            return [data]
        forwarded, content_type = forwarded_body(form)
        environ = {**environ, "wsgi.input": io.BytesIO(forwarded), "CONTENT_LENGTH": str(len(forwarded)),
                   "CONTENT_TYPE": content_type}
        return app(environ, start_response)

    return middleware
