"""TokenCipher on the stack's KMS key (moto): round trip, binding to the user and the token's purpose,
tampering, data-key caching (counted at the KMS client), and no plaintext in what is stored."""

from __future__ import annotations

from collections import Counter

import boto3
import pytest

from playvault.crypto import ACCESS_TOKEN, REFRESH_TOKEN, TokenCipher, TokenDecryptError

TOKEN = "AQ-refresh-token-0123456789abcdefghijklmnopqrstuvwxyz"


class CountingKms:
    """A real boto3 KMS client whose calls are counted through botocore's event hooks."""

    def __init__(self) -> None:
        self.client = boto3.client("kms")
        self.calls: Counter[str] = Counter()
        self.client.meta.events.register("before-call.kms.*", self._count)

    def _count(self, model, **_: object) -> None:
        self.calls[model.name] += 1


@pytest.fixture
def key_arn(aws_env) -> str:
    return aws_env.physical["TokenKey"]["Arn"]


@pytest.fixture
def kms(aws_env) -> CountingKms:
    return CountingKms()


def test_round_trip(key_arn, kms):
    cipher = TokenCipher(kms.client, key_arn)
    sealed = cipher.seal_new("alice", TOKEN, "BQ-access")
    assert cipher.open(sealed.token_key, sealed.refresh_token_enc, "alice", REFRESH_TOKEN) == TOKEN
    assert cipher.open(sealed.token_key, sealed.access_token_enc, "alice", ACCESS_TOKEN) == "BQ-access"
    # a new container (empty cache) opens it too, through KMS
    fresh = TokenCipher(kms.client, key_arn)
    assert fresh.open(sealed.token_key, sealed.refresh_token_enc, "alice", REFRESH_TOKEN) == TOKEN


def test_both_tokens_share_one_data_key_stored_once(key_arn, kms):
    sealed = TokenCipher(kms.client, key_arn).seal_new("alice", TOKEN, "BQ-access")
    # nonce + ciphertext + tag only: the data key is not repeated in each token
    assert len(sealed.refresh_token_enc) == 12 + len(TOKEN) + 16
    assert len(sealed.access_token_enc) == 12 + len("BQ-access") + 16
    assert sealed.token_key not in sealed.refresh_token_enc and sealed.token_key not in sealed.access_token_enc


def test_worker_seals_with_the_users_key_using_decrypt_only(key_arn, kms):
    sealed = TokenCipher(kms.client, key_arn).seal_new("alice", TOKEN, None)
    worker = TokenCipher(kms.client, key_arn)
    kms.calls.clear()
    access = worker.seal(sealed.token_key, "BQ-access", "alice", ACCESS_TOKEN)
    assert worker.open(sealed.token_key, access, "alice", ACCESS_TOKEN) == "BQ-access"
    assert kms.calls == Counter({"Decrypt": 1})  # no GenerateDataKey: the worker only decrypts


def test_same_plaintext_gives_different_sealed_values(key_arn, kms):
    cipher = TokenCipher(kms.client, key_arn)
    key = cipher.new_token_key()
    assert cipher.seal(key, TOKEN, "alice", REFRESH_TOKEN) != cipher.seal(key, TOKEN, "alice", REFRESH_TOKEN)


def test_wrong_user_cannot_open(key_arn, kms):
    cipher = TokenCipher(kms.client, key_arn)
    sealed = cipher.seal_new("alice", TOKEN, None)
    with pytest.raises(TokenDecryptError) as caught:
        cipher.open(sealed.token_key, sealed.refresh_token_enc, "mallory", REFRESH_TOKEN)
    assert TOKEN not in str(caught.value)
    with pytest.raises(TokenDecryptError):
        TokenCipher(kms.client, key_arn).open(sealed.token_key, sealed.refresh_token_enc, "mallory", REFRESH_TOKEN)


def test_access_token_does_not_open_as_the_refresh_token(key_arn, kms):
    cipher = TokenCipher(kms.client, key_arn)
    sealed = cipher.seal_new("alice", TOKEN, "BQ-access")
    with pytest.raises(TokenDecryptError):
        cipher.open(sealed.token_key, sealed.access_token_enc, "alice", REFRESH_TOKEN)


def _flip_last_byte(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 0x01])


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda key, sealed: (key, _flip_last_byte(sealed)), id="ciphertext-bit"),
        pytest.param(lambda key, sealed: (key, bytes([sealed[0] ^ 0x01]) + sealed[1:]), id="nonce-bit"),
        pytest.param(lambda key, sealed: (key, sealed[:20]), id="truncated-to-nonce-and-some"),
        pytest.param(lambda key, sealed: (key, sealed[:-1]), id="tag-truncated"),
        pytest.param(lambda key, sealed: (key, b""), id="empty"),
        pytest.param(lambda key, sealed: (key, None), id="missing"),
        pytest.param(lambda key, sealed: (_flip_last_byte(key), sealed), id="data-key-bit"),
        pytest.param(lambda key, sealed: (key[:20], sealed), id="data-key-truncated"),
        pytest.param(lambda key, sealed: (None, sealed), id="data-key-missing"),
        pytest.param(lambda key, sealed: (key, sealed.hex()), id="text-not-bytes"),
    ],
)
@pytest.mark.parametrize("fresh_container", [False, True])
def test_tampered_token_is_a_decrypt_error(key_arn, kms, tamper, fresh_container):
    cipher = TokenCipher(kms.client, key_arn)
    sealed = cipher.seal_new("alice", TOKEN, None)
    key, bad = tamper(sealed.token_key, sealed.refresh_token_enc)
    reader = TokenCipher(kms.client, key_arn) if fresh_container else cipher
    with pytest.raises(TokenDecryptError) as caught:
        reader.open(key, bad, "alice", REFRESH_TOKEN)
    assert TOKEN not in str(caught.value)


def test_data_key_is_cached_per_container(key_arn, kms):
    signup = TokenCipher(kms.client, key_arn)
    stored = [signup.seal_new(f"user{i}", f"{TOKEN}-{i}", None) for i in range(20)]
    assert kms.calls == Counter({"GenerateDataKey": 1})

    def open_all(cipher: TokenCipher) -> list[str]:
        return [cipher.open(s.token_key, s.refresh_token_enc, f"user{i}", REFRESH_TOKEN) for i, s in enumerate(stored)]

    assert open_all(signup) == [f"{TOKEN}-{i}" for i in range(20)]
    assert kms.calls == Counter({"GenerateDataKey": 1})  # the sealing container knows its key

    kms.calls.clear()
    worker = TokenCipher(kms.client, key_arn)
    for _ in range(3):
        assert open_all(worker) == [f"{TOKEN}-{i}" for i in range(20)]
    assert kms.calls == Counter({"Decrypt": 1})


def test_data_key_is_renewed_after_max_uses(key_arn, kms):
    cipher = TokenCipher(kms.client, key_arn, data_key_max_uses=5)
    stored = [cipher.seal_new("alice", TOKEN, None) for _ in range(12)]
    assert kms.calls == Counter({"GenerateDataKey": 3})
    assert len({s.token_key for s in stored}) == 3
    assert all(cipher.open(s.token_key, s.refresh_token_enc, "alice", REFRESH_TOKEN) == TOKEN for s in stored)


def test_sealing_after_max_age_on_the_domain_clock_generates_a_new_key_without_decrypt(key_arn, kms):
    """The sign-up container may only GenerateDataKey (AuthFunction's role has no kms:Decrypt): its
    current data key and its cache of opened keys must age on one clock, or a key still current by
    one clock is stale by the other and sealing falls back to Decrypt (seen under the simulated
    clock of `make run ARGS="--days ..."`, where the domain clock jumps days between sign-ins)."""
    from datetime import UTC, datetime, timedelta

    from playvault import clock

    start = datetime(2026, 7, 1, tzinfo=UTC)
    clock.set_clock(lambda: start)
    cipher = TokenCipher(kms.client, key_arn)
    first = cipher.seal_new("alice", TOKEN, None)
    clock.set_clock(lambda: start + timedelta(days=10))
    second = cipher.seal_new("bob", TOKEN, None)
    assert kms.calls == Counter({"GenerateDataKey": 2})
    assert first.token_key != second.token_key


def test_stored_values_never_contain_the_plaintext(key_arn, kms):
    sealed = TokenCipher(kms.client, key_arn).seal_new("alice", TOKEN, "BQ-access-0123456789")
    stored = sealed.token_key + sealed.refresh_token_enc + sealed.access_token_enc
    assert TOKEN.encode() not in stored and TOKEN[:16].encode() not in stored
    assert b"BQ-access" not in stored
    assert b"alice" not in stored  # the user id is associated data, not stored
    assert "<sealed>" in repr(sealed) and TOKEN not in repr(sealed)
