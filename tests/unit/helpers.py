"""Small helpers shared by the archive tests: sign a user in at the emulator, store a user, build an
Archiver wired to the emulator and the provisioned KMS key."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import asdict
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import requests

from playvault import clock
from playvault.archive import Archiver
from playvault.crypto import REFRESH_TOKEN, TokenCipher
from playvault.imports import issue_upload_id, upload_id_key
from playvault.spotify import Credentials, SpotifyClient
from playvault.store import users
from playvault_local.events import s3_object_created_event
from playvault_local.provision import DEV_CLIENT_ID, DEV_CLIENT_SECRET
from tests.conftest import REDIRECT_URI

SCOPE = "user-read-recently-played"


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _base_url(emulator: Any) -> str:
    return (emulator if isinstance(emulator, str) else emulator.url).rstrip("/")


def sign_in(emulator: Any, user_id: str) -> str:
    """The authorization-code flow with PKCE, scripted (`login_as` consents at once); returns the
    refresh token. `emulator` is an EmulatorServer, its accounts URL, or a bare EmulatorState
    (then the same steps run in-process, without HTTP)."""
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(16)
    if hasattr(emulator, "issue_code"):  # an EmulatorState
        emulator.validate_authorize(DEV_CLIENT_ID, REDIRECT_URI, "code", "S256", challenge)
        code = emulator.issue_code(DEV_CLIENT_ID, REDIRECT_URI, SCOPE, challenge, user_id)
        client = emulator.authenticate_client(DEV_CLIENT_ID, DEV_CLIENT_SECRET)
        return emulator.exchange_code(client, code, REDIRECT_URI, verifier, True)["refresh_token"]
    base = _base_url(emulator)
    answer = requests.get(
        f"{base}/authorize",
        params={"client_id": DEV_CLIENT_ID, "response_type": "code", "redirect_uri": REDIRECT_URI, "state": state,
                "scope": SCOPE, "code_challenge_method": "S256", "code_challenge": challenge, "login_as": user_id},
        allow_redirects=False, timeout=10,
    )
    assert answer.status_code == 302, answer.text
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    query = parse_qs(location.query)
    assert query["state"] == [state]
    token = requests.post(
        f"{base}/api/token",
        data={"grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": REDIRECT_URI,
              "code_verifier": verifier},
        auth=(DEV_CLIENT_ID, DEV_CLIENT_SECRET), timeout=10,
    )
    assert token.status_code == 200, token.text
    return token.json()["refresh_token"]


def make_user(user_id: str, refresh_token: str, cipher: TokenCipher, **fields: Any) -> users.UserModel:
    """A stored, active user whose refresh token is sealed by `cipher` (fields override defaults)."""
    now: datetime = clock.now()
    values: dict[str, Any] = {"status": users.ACTIVE, "created_at": now, "authorized_at": now,
                              "display_name": user_id}
    values.update(fields)
    user = users.UserModel(user_id, **sealed_fields(cipher, user_id, refresh_token), **values)
    user.save()
    return user


def sealed_fields(cipher: TokenCipher, user_id: str, refresh_token: str, access_token: str | None = None
                  ) -> dict[str, Any]:
    """The token attributes of a user item, sealed as sign-up seals them."""
    return {k: v for k, v in asdict(cipher.seal_new(user_id, refresh_token, access_token)).items() if v is not None}


def open_token(cipher: TokenCipher, user: users.UserModel, purpose: str) -> str:
    """A stored token in clear (REFRESH_TOKEN or ACCESS_TOKEN from playvault.crypto)."""
    sealed = user.refresh_token_enc if purpose == REFRESH_TOKEN else user.access_token_enc
    return cipher.open(user.token_key, sealed, user.user_id, purpose)


def make_cipher(aws_env: Any) -> TokenCipher:
    """A TokenCipher (a fresh container: empty data-key cache) on the stack's KMS key."""
    return TokenCipher(boto3.client("kms"), aws_env.physical["TokenKey"]["Arn"])


def make_spotify(emulator: Any, **client_kwargs: Any) -> SpotifyClient:
    base = _base_url(emulator)
    kwargs: dict[str, Any] = {"api_url": base + "/v1", "accounts_url": base,
                              "credentials": lambda: Credentials(DEV_CLIENT_ID, DEV_CLIENT_SECRET)}
    kwargs.update(client_kwargs)
    return SpotifyClient(**kwargs)


def make_archiver(aws_env: Any, emulator: Any, **client_kwargs: Any) -> Archiver:
    """An Archiver whose SpotifyClient talks to the emulator (server or URL) as the dev client."""
    return Archiver(make_spotify(emulator, **client_kwargs), make_cipher(aws_env))


def ssm_refusing(code: str, message: str) -> list[str]:
    """Powertools' SSM provider (the one parameters.get_parameter uses) on a client whose every
    GetParameter fails with `code`, as SSM answers once the SDK's retries are spent. Its cache starts
    empty. Returns the names asked for."""
    import boto3
    from aws_lambda_powertools.utilities.parameters.ssm import SSMProvider
    from botocore.exceptions import ClientError

    from playvault_local.lambda_runtime import set_parameter_provider

    asked: list[str] = []
    client = boto3.client("ssm")

    def refuse(params: dict, **_: object) -> None:
        asked.append(params["Name"])
        raise ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                          "GetParameter")

    client.meta.events.register("before-parameter-build.ssm.GetParameter", refuse)
    # Each loaded function reads through its own providers (its container's cache): all of them refuse.
    set_parameter_provider("ssm", SSMProvider(boto3_client=client))
    return asked


class ProcessKilled(BaseException):
    """The process ends (a Lambda timeout, an out-of-memory kill): no handler of the job runs."""


def kill_at_advance(monkeypatch, call: int) -> None:
    """The importer's process dies at its `call`-th job update (imports.advance: the files list, then
    one per chunk): that chunk's plays are written, its count is not."""
    from playvault.store import imports

    real_advance = imports.advance
    calls = {"n": 0}

    def advance_then_die(job, token, progress, now):
        calls["n"] += 1
        if calls["n"] == call:
            raise ProcessKilled("Lambda timed out")
        return real_advance(job, token, progress, now)

    monkeypatch.setattr(imports, "advance", advance_then_die)


# Upload ids carry a MAC keyed as the functions derive it from the stack's client secret.
UPLOAD_ID_KEY = upload_id_key(DEV_CLIENT_SECRET)


def upload_export(s3: Any, bucket: str, user_id: str, now: datetime, body: bytes,
                  file_name: str = "export.zip") -> tuple[str, dict[str, Any]]:
    """An export uploaded where the page's form puts it (a fresh upload id), and the S3 event the
    upload sends the importer: (key, event)."""
    key = f"imports/{user_id}/{issue_upload_id(user_id, now, UPLOAD_ID_KEY)}/export"
    put = s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"file-name": file_name})
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    return key, s3_object_created_event(bucket, key, size, put["ETag"], now)


class ImportContinuations:
    """An import's continuations delivered as on AWS: the jobs queue's event source (the jobs
    function, one message a batch as the template's mapping), then the asynchronous invocations of
    the importer it made (aws_env collects them: moto runs no function)."""

    def __init__(self, aws_env: Any, load_function: Any, lambda_context: Any, invocations: list[Any],
                 importer: Any = None, importer_context: Any = None):
        from playvault_local.events import sqs_event

        self.sqs_event = sqs_event
        self.sqs = boto3.client("sqs")
        self.queue_url, self.queue_arn = aws_env.queue_url("JobsQueue"), aws_env.physical["JobsQueue"]["Arn"]
        self.importer_name = aws_env.name("ImporterFunction")
        self.jobs, self.jobs_context = load_function("JobsFunction"), lambda_context("JobsFunction")
        self.importer = importer or load_function("ImporterFunction")
        self.importer_context = importer_context or lambda_context("ImporterFunction")
        self.invocations = invocations
        self.messages = 0  # jobs-queue messages delivered
        self.handed_over = 0  # importer invocations run
        self.outcomes: list[dict[str, Any]] = []  # what each importer invocation answered

    def step(self) -> bool:
        """One jobs-queue message delivered (and the importer invocations it made run); False when
        no message is visible."""
        got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=1,
                                       AttributeNames=["All"]).get("Messages")
        if not got:
            return False
        self.messages += 1
        answer = self.jobs(self.sqs_event(got, self.queue_arn), self.jobs_context)
        assert answer == {"batchItemFailures": []}, answer
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=got[0]["ReceiptHandle"])
        while self.invocations:
            name, invocation_type, event = self.invocations.pop(0)
            assert (name, invocation_type) == (self.importer_name, "Event")
            self.handed_over += 1
            self.outcomes.append(self.importer(event, self.importer_context))
        return True

    def drain(self, max_rounds: int = 200) -> int:
        """Deliver until no message is visible; returns the importer invocations run."""
        before = self.handed_over
        for _ in range(max_rounds):
            if not self.step():
                return self.handed_over - before
        raise AssertionError("the jobs queue did not drain")


def sqs_follows(monkeypatch: Any, now: Any) -> None:
    """moto's SQS reads `now()` (a datetime) for delays and visibility: delayed messages become
    visible when the test's clock passes their delay, as they would on AWS."""
    from moto.sqs import models

    monkeypatch.setattr(models, "unix_time", lambda *args: now().timestamp())
    monkeypatch.setattr(models, "unix_time_millis", lambda *args: now().timestamp() * 1000)
