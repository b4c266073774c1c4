"""The local S3's POST policy check (playvault_local.s3_post), one condition kind at a time, allowed
and refused, on forms presigned by boto3 exactly as playvault.imports.presigned_upload signs them."""

from __future__ import annotations

import base64
import email.header
import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.config import Config
from urllib3 import encode_multipart_formdata

from playvault_local import s3_post

BUCKET = "playvault-local-userfiles"
KEY = "imports/alice/20260501T120000Z-0a1b2c3d-" + "a" * 32 + "/export"
SECRETS = {"testing": "testing"}
NOW = datetime.now(UTC)


def presign(conditions=None, fields=None, key=KEY, expires=900, secret="testing",  # noqa: S107 - moto's
            key_id="testing", version="s3v4"):
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:1",
                      aws_access_key_id=key_id, aws_secret_access_key=secret, aws_session_token="token",
                      config=Config(signature_version=version))
    base_fields = {"x-amz-server-side-encryption": "AES256", "x-amz-meta-file-name": "${filename}",
                   "success_action_redirect": "https://example.test/me?uploaded=1"}
    base_conditions = [{"key": key}, ["content-length-range", 1, 100], {"x-amz-server-side-encryption": "AES256"},
                       ["starts-with", "$x-amz-meta-file-name", ""],
                       {"success_action_redirect": "https://example.test/me?uploaded=1"}]
    post = s3.generate_presigned_post(BUCKET, key, Fields=base_fields if fields is None else fields,
                                      Conditions=base_conditions if conditions is None else conditions,
                                      ExpiresIn=expires)
    return dict(post["fields"])


def form(fields, file=b'[{"ts": 1}]', name="my_spotify_data (1).zip", after=None):
    parts = list(fields.items())
    if file is not None:
        parts.append(("file", (name, file, "application/zip")))
    parts += list((after or {}).items())
    body, content_type = encode_multipart_formdata(parts)
    return s3_post.parse_form(body, content_type)


def refused(fields, bucket=BUCKET, now=NOW, **kwargs) -> s3_post.PostRefused:
    with pytest.raises(s3_post.PostRefused) as caught:
        s3_post.check(form(fields, **kwargs), bucket, SECRETS, now)
    return caught.value


def accepted(fields, bucket=BUCKET, now=NOW, **kwargs) -> None:
    s3_post.check(form(fields, **kwargs), bucket, SECRETS, now)


def test_the_form_as_presigned_is_accepted():
    fields = presign()
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"  # as the account function signs (s3v4)
    accepted(fields)


# ---------------------------------------------------------------- signature and expiration
def test_the_signature_must_be_the_stacks_over_the_policy_as_sent():
    assert refused(presign(secret="another secret")).code == "SignatureDoesNotMatch"
    unknown = refused(presign(key_id="AKIDUNKNOWN"))
    assert (unknown.status, unknown.code) == (403, "InvalidAccessKeyId")
    fields = presign()
    policy = json.loads(base64.b64decode(fields["policy"]))
    policy["conditions"][0] = ["starts-with", "$key", "imports/"]  # widened by the client
    tampered = {**fields, "policy": base64.b64encode(json.dumps(policy).encode()).decode()}
    assert refused(tampered).status == 403 and refused(tampered).code == "SignatureDoesNotMatch"


def test_signature_version_2_forms_are_checked_too():
    fields = presign(version="s3")
    assert "AWSAccessKeyId" in fields and "x-amz-algorithm" not in fields
    accepted(fields)
    assert refused(presign(version="s3", secret="another secret")).code == "SignatureDoesNotMatch"
    assert refused({**fields, "key": "imports/bob/x/evil.json"}).code == "AccessDenied"


def test_an_expired_policy_is_refused():
    signed_at = datetime.now(UTC)  # botocore signs with the real clock
    fields = presign(expires=60)
    accepted(fields, now=signed_at + timedelta(seconds=30))
    late = refused(fields, now=signed_at + timedelta(seconds=120))
    assert (late.status, late.code) == (403, "AccessDenied")
    assert late.message == "Invalid according to Policy: Policy expired."


# ---------------------------------------------------------------- conditions
def test_bucket_condition():
    fields = presign(conditions=[{"bucket": BUCKET}, {"key": KEY}], fields={})
    accepted(fields, bucket=BUCKET)
    other = refused(fields, bucket="someone-elses-bucket")
    assert other.message == f'Invalid according to Policy: Policy Condition failed: ["eq", "$bucket", "{BUCKET}"]'


def test_key_eq_refuses_another_users_key():
    fields = presign()
    moved = refused({**fields, "key": "imports/bob/x/evil.json"})
    assert (moved.status, moved.code) == (403, "AccessDenied")
    assert moved.message == f'Invalid according to Policy: Policy Condition failed: ["eq", "$key", "{KEY}"]'
    assert b"<Code>AccessDenied</Code>" in moved.xml() and b"Policy Condition failed" in moved.xml()


def test_key_starts_with():
    fields = presign(conditions=[["starts-with", "$key", "imports/alice/"]], fields={}, key="imports/alice/${filename}")
    accepted(fields)
    accepted({**fields, "key": "imports/alice/u/other.json"})
    moved = refused({**fields, "key": "imports/bob/u/evil.json"})
    assert moved.message == ('Invalid according to Policy: Policy Condition failed: '
                             '["starts-with", "$key", "imports/alice/"]')


def test_content_length_range_is_checked_against_the_file():
    fields = presign()
    accepted(fields, file=b"x" * 100)
    large = refused(fields, file=b"x" * 101)
    assert (large.status, large.code, large.details["MaxSizeAllowed"]) == (400, "EntityTooLarge", 100)
    small = refused(fields, file=b"")
    assert (small.status, small.code, small.details["MinSizeAllowed"]) == (400, "EntityTooSmall", 1)


def test_the_encryption_field_is_required_with_its_value():
    fields = presign()
    missing = refused({k: v for k, v in fields.items() if k != "x-amz-server-side-encryption"})
    assert missing.message.endswith('["eq", "$x-amz-server-side-encryption", "AES256"]')
    other = refused({**fields, "x-amz-server-side-encryption": "aws:kms"})
    assert other.code == "AccessDenied"


def test_success_action_redirect_must_be_the_policys():
    fields = presign()
    away = refused({**fields, "success_action_redirect": "https://attacker.test/"})
    assert away.message.endswith('["eq", "$success_action_redirect", "https://example.test/me?uploaded=1"]')
    status = refused({**fields, "success_action_status": "201"})  # a field the policy does not cover
    assert status.message == "Invalid according to Policy: Extra input fields: success_action_status"


def test_a_starts_with_condition_on_metadata():
    fields = presign()
    accepted({**fields, "x-amz-meta-file-name": "anything at all"})
    narrow = presign(conditions=[{"key": KEY}, ["starts-with", "$x-amz-meta-file-name", "Streaming_"]],
                     fields={"x-amz-meta-file-name": "Streaming_x.json"})
    accepted(narrow)
    assert refused({**narrow, "x-amz-meta-file-name": "other.json"}).code == "AccessDenied"


# ---------------------------------------------------------------- fields the policy does not cover
def test_extra_fields_are_refused_except_s3s_exempt_ones():
    fields = presign()
    extra = refused({**fields, "x-amz-meta-owner": "bob"})
    assert extra.message == "Invalid according to Policy: Extra input fields: x-amz-meta-owner"
    accepted({**fields, "x-ignore-note": "anything"})  # x-ignore-* is exempt
    # Fields after the file are ignored, as S3 ignores them.
    accepted(fields, after={"key": "imports/bob/x/evil.json", "x-amz-meta-owner": "bob"})


def test_missing_file_key_or_policy():
    fields = presign()
    no_file = refused(fields, file=None)
    assert (no_file.status, no_file.code) == (400, "InvalidArgument")
    no_key = refused({k: v for k, v in fields.items() if k != "key"})
    assert no_key.code == "InvalidArgument" and "'key'" in no_key.message
    anonymous = refused({k: v for k, v in fields.items() if k not in ("policy", "x-amz-signature")})
    assert (anonymous.status, anonymous.code) == (403, "AccessDenied")


# ---------------------------------------------------------------- what moto receives
def test_the_forwarded_form_fills_in_the_file_name_and_keeps_metadata_mail_safe():
    from werkzeug.formparser import parse_form_data
    from werkzeug.test import EnvironBuilder

    name = "Downloads/Streaming_History_Audio_2023 Müller+Søn (1) 100%.json"  # only the text after the last slash
    posted = form({**presign(), "x-ignore-x": "${filename}"}, name=name)
    body, content_type = s3_post.forwarded_body(posted)
    environ = EnvironBuilder(method="POST", data=body, content_type=content_type).get_environ()
    _, fields, files = parse_form_data(environ)
    assert fields["key"] == KEY
    encoded = fields["x-amz-meta-file-name"]
    assert encoded.isascii() and encoded.startswith("=?utf-8?")
    decoded = str(email.header.make_header(email.header.decode_header(encoded)))
    assert decoded == "Streaming_History_Audio_2023 Müller+Søn (1) 100%.json"
    assert fields["x-ignore-x"] == decoded  # ${filename} is recognised in every field
    assert files["file"].read() == b'[{"ts": 1}]'
