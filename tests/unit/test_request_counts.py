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
from bench.scenario import UserSpec, create_user, message_split, poll_counts, simplify_table_names, table_names
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
def worker_setup(aws_env: Any, emulator: Any, load_function: Any) -> tuple[Any, Any]:
    handler = load_function("WorkerFunction")
    control = EmulatorControl(emulator.url)
    sealer = TokenCipher(boto3.client("kms"), aws_env.physical["TokenKey"]["Arn"])

    def make_user(spec: UserSpec) -> None:
        create_user(spec, accounts_url=emulator.url, control=control, cipher=sealer,
                    client_id=DEV_CLIENT_ID, client_secret=DEV_CLIENT_SECRET)

    return handler, make_user


def test_an_idle_poll_splits_into_per_user_and_per_message_work(aws_env, recorder, worker_setup, lambda_context):
    """The cost model prices these (bench/cost.py): an idle poll's requests per user, and what a message
    costs once whatever number of users it carries: per user the GetItem and the one conditional
    UpdateItem of the user item; per message the rate gate's GetItem and the message's Powertools
    idempotency record (PutItem + UpdateItem)."""
    handler, make_user = worker_setup
    split = message_split(recorder=recorder, handler=handler, make_user=make_user,
                          context_factory=lambda: lambda_context("WorkerFunction"), suffix=uuid.uuid4().hex[:6])
    assert split["per_user"] == {"dynamodb_requests": 2, "dynamodb_wru": 1, "dynamodb_rru": 1}
    assert split["per_message"] == {"dynamodb_requests": 3, "dynamodb_wru": 2, "dynamodb_rru": 0.5}
    assert split["per_message_by_operation"] == {f"GetItem {aws_env.name('StateTable')}": 1,
                                                 f"PutItem {aws_env.name('IdempotencyTable')}": 1,
                                                 f"UpdateItem {aws_env.name('IdempotencyTable')}": 1}


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
# The dirty mark of the plays' date (UpdateItem); the date's first mark: the state and the marks read.
ROLLUPS_FIRST_MARK = {"UpdateItem RollupsTable": 1, "GetItem RollupsTable": 1, "Query RollupsTable": 1}


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

    # Tracks this container has met (the warm-up user played them): no lookup, only the play rows
    # (a conditional put each: never over an existing row; no imports, so no merge read), after the
    # rollups' dirty mark of their date. The mark is the date's first (a new user), so the poll also
    # looks for earlier dirty dates to recompute (the rollups' state and marks; none here).
    for name, plays in (("1_play_known_track", 1), ("20_plays_known_tracks", 20)):
        poll = counts[name]
        assert poll["spotify_requests"] == 1, name
        assert poll["dynamodb_by_operation"] == {**PER_USER, "PutItem PlaysTable": plays, **ROLLUPS_FIRST_MARK}, name
        assert poll["dynamodb_wru_by_table"]["PlaysTable"] == plays, name
        assert poll["dynamodb_wru_by_table"]["RollupsTable"] == 1, name
        assert poll["dynamodb_wru"] == 3 + plays + 1, name
        assert poll["kms_requests"] == 0, name
    # The same tracks seen by a container that has not met them: one keys-only lookup, no catalog write.
    cold = counts["20_plays_known_tracks_new_container"]
    assert cold["dynamodb_by_operation"] == {**PER_USER, "BatchGetItem TracksTable": 1,
                                             "PutItem PlaysTable": 20, **ROLLUPS_FIRST_MARK}
    assert cold["dynamodb_wru"] == 3 + 20 + 1

    fresh = counts["20_plays_unknown_tracks"]
    ops = fresh["dynamodb_by_operation"]
    assert fresh["spotify_requests"] == 1
    assert {k: v for k, v in ops.items() if k.startswith(("BatchGetItem", "BatchWriteItem"))} == {
        "BatchGetItem TracksTable": 1, "BatchGetItem AlbumsTable": 1, "BatchGetItem ArtistsTable": 1}
    assert ops["PutItem TracksTable"] == 20  # one conditional put per unknown track
    assert ops["PutItem PlaysTable"] == 20
    assert fresh["dynamodb_requests"] == (2 + 3 + 20 + ops["PutItem AlbumsTable"] + ops["PutItem ArtistsTable"] + 20
                                          + sum(ROLLUPS_FIRST_MARK.values()))
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
