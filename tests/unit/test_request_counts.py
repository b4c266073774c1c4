"""Exact AWS and Spotify requests of one steady-state user poll through the worker (BENCHMARKS.md, part 2).

The counts come from hooks on every botocore client (pynamodb's included) and a requests response
hook on the worker's Spotify session; they are deterministic, so they are asserted exactly. Timings
never are. The same measurement runs in `make bench` against moto_server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from bench.instrument import Recorder, SpotifyCounter
from bench.itemsize import item_size
from bench.scenario import UserSpec, create_user, poll_counts, simplify_table_names, table_names
from playvault.crypto import TokenCipher
from playvault_local.provision import DEV_CLIENT_ID, DEV_CLIENT_SECRET
from spotify_emulator.client import EmulatorControl


@pytest.fixture
def recorder(aws_env: Any) -> Iterator[Recorder]:
    recorder = Recorder().install()
    recorder.probe = recorder.uncounted_client("dynamodb", region_name="us-east-1")
    try:
        yield recorder
    finally:
        recorder.uninstall()


@pytest.fixture
def counts(aws_env: Any, emulator: Any, recorder: Recorder, load_function: Any, lambda_context: Any
           ) -> dict[str, dict[str, Any]]:
    handler = load_function("WorkerFunction")
    worker = __import__("sys").modules["WorkerFunction_app"]
    spotify_counter = SpotifyCounter()
    worker.spotify.session.hooks["response"].append(spotify_counter)
    control = EmulatorControl(emulator.url)
    # The users' tokens are sealed as the auth function would (another container's data key).
    sealer = TokenCipher(boto3.client("kms"), aws_env.physical["TokenKey"]["Arn"])

    def make_user(spec: UserSpec) -> Any:
        return create_user(spec, accounts_url=emulator.url, control=control, cipher=sealer,
                           client_id=DEV_CLIENT_ID, client_secret=DEV_CLIENT_SECRET)

    results = poll_counts(recorder=recorder, spotify_counter=spotify_counter, handler=handler,
                          context_factory=lambda: lambda_context("WorkerFunction"), make_user=make_user,
                          per_message_tables={aws_env.name("StateTable"), aws_env.name("IdempotencyTable")},
                          remember_token=lambda user_id, grant: worker.archiver.access_tokens.put(
                              user_id, grant.access_token, grant.expires_at),
                          suffix="-" + uuid.uuid4().hex[:6])
    simplify_table_names(results, table_names(aws_env))
    return results


PER_USER = {"GetItem UsersTable": 1, "UpdateItem UsersTable": 1}


def test_request_counts_per_poll(counts: dict[str, dict[str, Any]]) -> None:
    """One fixture run (it takes seconds), every scenario of BENCHMARKS.md part 2 asserted exactly."""
    idle = counts["idle"]
    # The goal: a poll with no new play is at most 2 DynamoDB requests and 1 write unit.
    assert idle["dynamodb_by_operation"] == PER_USER
    assert idle["dynamodb_requests"] == 2
    # Per message, shared by its users: the rate gate read, the message's idempotency record (put + update).
    assert idle["dynamodb_requests_per_message"] == 3
    assert idle["spotify_by_endpoint"] == {"recently_played": 1}
    assert (idle["kms_requests"], idle["ssm_requests"], idle["sqs_requests"]) == (0, 0, 0)  # warm container
    # WRU from item sizes: the user item is under 1 KB (1 unit, see the next test); the message's
    # idempotency record (2 units) is shared by the message's users.
    assert idle["dynamodb_wru_by_table"] == {"IdempotencyTable": 2, "UsersTable": 1}
    assert idle["dynamodb_rru"] == 1.5  # consistent user read 1, plus the per-message gate read 0.5

    # Tracks this container has met (the warm-up user played them): no lookup, only the play rows.
    for name, plays in (("1_play_known_track", 1), ("20_plays_known_tracks", 20)):
        poll = counts[name]
        assert poll["spotify_requests"] == 1, name
        assert poll["dynamodb_by_operation"] == {**PER_USER, "BatchWriteItem PlaysTable": 1}, name
        assert poll["dynamodb_wru_by_table"]["PlaysTable"] == plays, name
        assert poll["dynamodb_wru"] == 3 + plays, name
        assert poll["kms_requests"] == 0, name
    # The same tracks seen by a container that has not met them: one keys-only lookup, no catalog write.
    cold = counts["20_plays_known_tracks_new_container"]
    assert cold["dynamodb_by_operation"] == {**PER_USER, "BatchGetItem TracksTable": 1,
                                             "BatchWriteItem PlaysTable": 1}
    assert cold["dynamodb_wru"] == 3 + 20

    fresh = counts["20_plays_unknown_tracks"]
    ops = fresh["dynamodb_by_operation"]
    assert fresh["spotify_requests"] == 1
    assert {k: v for k, v in ops.items() if k.startswith(("BatchGetItem", "BatchWriteItem"))} == {
        "BatchGetItem TracksTable": 1, "BatchGetItem AlbumsTable": 1, "BatchGetItem ArtistsTable": 1,
        "BatchWriteItem PlaysTable": 1}
    assert ops["PutItem TracksTable"] == 20  # one conditional put per unknown track
    assert fresh["dynamodb_requests"] == 2 + 3 + 1 + ops["PutItem AlbumsTable"] + ops["PutItem ArtistsTable"] + 20
    assert fresh["dynamodb_wru_by_table"]["TracksTable"] == 20

    expired = counts["idle_token_expired"]
    assert expired["spotify_by_endpoint"] == {"token": 1, "recently_played": 1}
    assert expired["dynamodb_by_operation"] == PER_USER  # the new access token is never written
    assert expired["kms_requests"] == 0  # sealed with the user's own (cached) data key
    assert expired["ssm_requests"] == 0  # client credentials cached by Powertools Parameters (5 min)



# KMS's encrypted AES-256 data key is ~170-184 bytes (moto's is smaller); the emulator's access token is
# 122 characters, real ones can be longer: 1,024 - 900 leaves them 124 more bytes.
AWS_DATA_KEY_BYTES = 184
USER_ITEM_BUDGET_BYTES = 900


def test_user_item_fits_one_write_unit_on_aws(counts: dict[str, dict[str, Any]], aws_env: Any) -> None:
    items = boto3.client("dynamodb").scan(TableName=aws_env.name("UsersTable"))["Items"]
    assert items, "the counts fixture stored users"
    for item in items:
        # No access token at rest, ever: only the sealed refresh token.
        assert not {"access_token_enc", "access_token_expires_at"} & item.keys(), item["user_id"]["S"]
        on_aws = item_size(item) - len(item["token_key"]["B"]) + AWS_DATA_KEY_BYTES
        assert on_aws <= USER_ITEM_BUDGET_BYTES, (item["user_id"]["S"], on_aws)
