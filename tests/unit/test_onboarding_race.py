"""Seats under concurrency: many callbacks at once never overshoot the cap, and the counter always
equals the number of users (sign-up and removal are transactions).

moto's in-process DynamoDB is not serializable: a cancelled TransactWriteItems restores a deep copy
of the whole table taken before it ran, wiping writes other threads made meanwhile. Real DynamoDB
isolates transactions (serializable against other writes and transactions on the same items), so
the `serializable_moto` fixture gives moto that one property with a lock around its item
operations. Everything above it (HTTP, botocore, pynamodb, our retries) stays concurrent.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import boto3
import pytest
import requests

from playvault.crypto import TokenCipher
from playvault.onboarding import Connected, Onboarding, WaitlistRequired
from playvault.spotify import Budget, Credentials, SpotifyClient
from playvault.store import seats, users
from playvault_local import provision as prov

CAP = 5
USERS = 20


@pytest.fixture
def stack_overrides() -> dict[str, str]:
    return {"MaxUsers": str(CAP)}


@pytest.fixture
def serializable_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    for name in ("get_item", "put_item", "update_item", "delete_item", "transact_write_items"):
        original = getattr(DynamoDBBackend, name)

        @functools.wraps(original)
        def serialized(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return __original(self, *args, **kwargs)

        monkeypatch.setattr(DynamoDBBackend, name, serialized)


@pytest.fixture
def onboarding(aws_env, emulator, serializable_moto) -> Onboarding:
    env = aws_env.env
    credentials = lambda: Credentials(prov.DEV_CLIENT_ID, prov.DEV_CLIENT_SECRET)  # noqa: E731
    spotify = SpotifyClient(api_url=emulator.api_url, accounts_url=emulator.url, credentials=credentials,
                            pool_size=USERS)
    return Onboarding(
        spotify=spotify,
        cipher=TokenCipher(boto3.client("kms"), env["TOKEN_KEY_ID"]),
        credentials=credentials,
        accounts_url=emulator.url,
        redirect_uri=env["REDIRECT_URI"],
        scopes=env["SPOTIFY_SCOPES"],
        max_users=int(env["MAX_USERS"]),
    )


def consent(authorize_url: str, user_id: str) -> dict[str, str]:
    answer = requests.get(f"{authorize_url}&{urlencode({'login_as': user_id})}", allow_redirects=False, timeout=10)
    assert answer.status_code == 302
    return dict(parse_qsl(urlsplit(answer.headers["Location"]).query))


def callbacks_at_once(onboarding: Onboarding, user_ids: list[str]) -> list[Any]:
    """Every visitor passes /auth/login and consents first; then all callbacks run together."""
    queries = []
    for user_id in user_ids:
        start = onboarding.begin_login(returning=True)
        queries.append(consent(start.url, user_id))
    barrier = threading.Barrier(len(queries))

    def finish(query: dict[str, str]) -> Any:
        barrier.wait()
        return onboarding.complete_login(state=query["state"], code=query["code"], error=None,
                                         budget=Budget.seconds(30))

    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        return list(pool.map(finish, queries))


def user_ids() -> set[str]:
    return {u.user_id for u in users.UserModel.scan()}


def test_concurrent_sign_ups_never_overshoot_the_cap(onboarding: Onboarding) -> None:
    names = [f"racer{i:02d}" for i in range(USERS)]
    results = callbacks_at_once(onboarding, names)

    kinds = Counter(type(r).__name__ for r in results)
    assert kinds == {"Connected": CAP, "WaitlistRequired": USERS - CAP}
    winners = {r.user_id for r in results if isinstance(r, Connected)}
    assert all(not r.returning for r in results if isinstance(r, Connected))
    assert user_ids() == winners
    assert seats.seats_taken() == CAP


def test_same_user_twice_at_once_takes_one_seat(onboarding: Onboarding) -> None:
    results = callbacks_at_once(onboarding, ["twin", "twin", "twin"])
    assert all(isinstance(r, Connected) and r.user_id == "twin" for r in results)
    assert sorted(r.returning for r in results) == [False, True, True]
    assert user_ids() == {"twin"}
    assert seats.seats_taken() == 1


def test_remove_user_frees_the_seat(onboarding: Onboarding) -> None:
    callbacks_at_once(onboarding, [f"member{i}" for i in range(CAP)])
    assert seats.seats_taken() == CAP
    assert isinstance(callbacks_at_once(onboarding, ["latecomer"])[0], WaitlistRequired)

    assert seats.remove_user("member0") is True
    assert users.get("member0") is None
    assert seats.seats_taken() == CAP - 1
    assert seats.remove_user("member0") is False  # already gone: nothing changes
    assert seats.remove_user("never-was") is False
    assert seats.seats_taken() == CAP - 1

    (result,) = callbacks_at_once(onboarding, ["latecomer"])
    assert isinstance(result, Connected) and not result.returning
    assert seats.seats_taken() == CAP
    assert len(user_ids()) == CAP


def test_concurrent_removals_and_sign_ups_keep_the_counter_exact(onboarding: Onboarding) -> None:
    callbacks_at_once(onboarding, [f"member{i}" for i in range(CAP)])
    with ThreadPoolExecutor(max_workers=8) as pool:
        removals = pool.map(seats.remove_user, ["member0", "member1", "member0", "member1"])
        assert sorted(removals) == [False, False, True, True]
    results = callbacks_at_once(onboarding, [f"new{i}" for i in range(6)])
    assert sum(isinstance(r, Connected) for r in results) == 2
    assert seats.seats_taken() == CAP == len(user_ids())


def test_transaction_conflicts_are_retried(onboarding: Onboarding, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.exceptions import TransactionCanceledException
    from moto.dynamodb.models import DynamoDBBackend

    original = DynamoDBBackend.transact_write_items
    conflicts = {"left": 2}

    def conflicting(self: Any, transact_items: list[dict[str, Any]]) -> None:
        if conflicts["left"] > 0:
            conflicts["left"] -= 1
            raise TransactionCanceledException([("TransactionConflict", "conflict", None), (None, None, None)])
        return original(self, transact_items)

    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", conflicting)
    (result,) = callbacks_at_once(onboarding, ["patient"])
    assert isinstance(result, Connected)
    assert conflicts["left"] == 0
    assert seats.seats_taken() == 1 and user_ids() == {"patient"}
