"""TokenCipher on the stack's KMS key (moto): round trip, binding to the user, tampering, data-key
caching (counted at the KMS client), and no plaintext in a blob."""

from __future__ import annotations

import base64
from collections import Counter

import boto3
import pytest

from playvault.crypto import TokenCipher, TokenDecryptError

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


def parts(blob: str) -> list[str]:
    return blob.split(".")


def decoded(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_round_trip(key_arn, kms):
    cipher = TokenCipher(kms.client, key_arn)
    blob = cipher.encrypt(TOKEN, "alice")
    assert cipher.decrypt(blob, "alice") == TOKEN
    # a new container (empty cache) decrypts it too, through KMS
    assert TokenCipher(kms.client, key_arn).decrypt(blob, "alice") == TOKEN


def test_encrypt_like_reuses_the_blobs_data_key(key_arn, kms):
    blob = TokenCipher(kms.client, key_arn).encrypt(TOKEN, "alice")
    worker = TokenCipher(kms.client, key_arn)
    kms.calls.clear()
    sealed = worker.encrypt_like(blob, "BQ-access", "alice")
    assert parts(sealed)[1] == parts(blob)[1]
    assert worker.decrypt(sealed, "alice") == "BQ-access"
    assert kms.calls == Counter({"Decrypt": 1})  # no GenerateDataKey: the worker only decrypts


def test_same_plaintext_gives_different_blobs(key_arn, kms):
    cipher = TokenCipher(kms.client, key_arn)
    assert cipher.encrypt(TOKEN, "alice") != cipher.encrypt(TOKEN, "alice")


def test_wrong_user_cannot_decrypt(key_arn, kms):
    cipher = TokenCipher(kms.client, key_arn)
    blob = cipher.encrypt(TOKEN, "alice")
    with pytest.raises(TokenDecryptError) as caught:
        cipher.decrypt(blob, "mallory")
    assert blob not in str(caught.value) and TOKEN not in str(caught.value)
    with pytest.raises(TokenDecryptError):
        TokenCipher(kms.client, key_arn).decrypt(blob, "mallory")


def _flip_last_byte(part: str) -> str:
    raw = bytearray(decoded(part))
    raw[-1] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda p: [p[0], p[1], p[2], _flip_last_byte(p[3])], id="ciphertext-bit"),
        pytest.param(lambda p: [p[0], p[1], _flip_last_byte(p[2]), p[3]], id="nonce-bit"),
        pytest.param(lambda p: [p[0], p[1], p[2], p[3][:10]], id="ciphertext-truncated"),
        pytest.param(lambda p: [p[0], p[1], p[2][:4], p[3]], id="nonce-truncated"),
        pytest.param(lambda p: [p[0], p[1], p[2], ""], id="ciphertext-empty"),
        pytest.param(lambda p: [p[0], _flip_last_byte(p[1]), p[2], p[3]], id="data-key-bit"),
        pytest.param(lambda p: [p[0], p[1][:20], p[2], p[3]], id="data-key-truncated"),
        pytest.param(lambda p: ["v2", p[1], p[2], p[3]], id="version"),
        pytest.param(lambda p: p[:3], id="missing-part"),
        pytest.param(lambda p: [*p, "x"], id="extra-part"),
    ],
)
@pytest.mark.parametrize("fresh_container", [False, True])
def test_tampered_blob_is_a_decrypt_error(key_arn, kms, tamper, fresh_container):
    cipher = TokenCipher(kms.client, key_arn)
    blob = cipher.encrypt(TOKEN, "alice")
    bad = ".".join(tamper(parts(blob)))
    reader = TokenCipher(kms.client, key_arn) if fresh_container else cipher
    with pytest.raises(TokenDecryptError) as caught:
        reader.decrypt(bad, "alice")
    assert bad not in str(caught.value)


@pytest.mark.parametrize("blob", [None, "", "garbage", "v1...", 42])
def test_not_a_blob_is_a_decrypt_error(key_arn, kms, blob):
    with pytest.raises(TokenDecryptError):
        TokenCipher(kms.client, key_arn).decrypt(blob, "alice")


def test_data_key_is_cached_per_container(key_arn, kms):
    signup = TokenCipher(kms.client, key_arn)
    blobs = [signup.encrypt(f"{TOKEN}-{i}", f"user{i}") for i in range(20)]
    assert kms.calls == Counter({"GenerateDataKey": 1})
    assert [signup.decrypt(b, f"user{i}") for i, b in enumerate(blobs)] == [f"{TOKEN}-{i}" for i in range(20)]
    assert kms.calls == Counter({"GenerateDataKey": 1})  # the sealing container knows its key

    kms.calls.clear()
    worker = TokenCipher(kms.client, key_arn)
    for _ in range(3):
        assert [worker.decrypt(b, f"user{i}") for i, b in enumerate(blobs)] == [f"{TOKEN}-{i}" for i in range(20)]
    assert kms.calls == Counter({"Decrypt": 1})


def test_data_key_is_renewed_after_max_uses(key_arn, kms):
    cipher = TokenCipher(kms.client, key_arn, data_key_max_uses=5)
    blobs = [cipher.encrypt(TOKEN, "alice") for _ in range(12)]
    assert kms.calls == Counter({"GenerateDataKey": 3})
    assert len({parts(b)[1] for b in blobs}) == 3
    assert all(cipher.decrypt(b, "alice") == TOKEN for b in blobs)


def test_blob_never_contains_the_plaintext(key_arn, kms):
    cipher = TokenCipher(kms.client, key_arn)
    blob = cipher.encrypt(TOKEN, "alice")
    assert TOKEN not in blob
    assert all(TOKEN.encode() not in decoded(part) for part in parts(blob)[1:])
    assert all(TOKEN[:16] not in part for part in parts(blob))
    assert "alice" not in blob  # the user id is associated data, not stored
