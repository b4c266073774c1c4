"""Envelope encryption of Spotify tokens at rest (KMS data keys, AES-256-GCM, cached per container).

A user item holds its KMS-encrypted data key once (`token_key`) and each token sealed with it as
`nonce || AES-GCM ciphertext` (binary attributes: no base64, no second copy of the data key, so the
item stays under DynamoDB's 1 KB write unit). The associated data is the user id and the token's
purpose, so a sealed token copied onto another user, or from the access slot to the refresh slot,
does not open. The data key comes from KMS GenerateDataKey with the encryption context
{"app": "playvault", "purpose": ...}; data keys are cached per container: KMS is asked once per data
key, not once per poll (KMS requests would otherwise dominate the cost per user).

Least privilege: sign-up (auth) only creates data keys; the worker only decrypts them and seals a
refreshed token with the data key it recovered from the user's own `token_key`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from playvault import clock

PURPOSE = "spotify-token"
# What a sealed token is for (part of its associated data); names, not secrets.
REFRESH_TOKEN = "refresh_token"  # noqa: S105
ACCESS_TOKEN = "access_token"  # noqa: S105
_NONCE_BYTES = 12
_TAG_BYTES = 16
# KMS answers these when an encrypted data key was altered or belongs to another key: the stored
# key is bad (the user must sign in again), KMS is fine (no redelivery can help).
_BAD_DATA_KEY_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})


class TokenDecryptError(ValueError):
    """A sealed token or data key is malformed or not this user's (the message never contains it)."""


@dataclass(frozen=True)
class SealedTokens:
    """A user's tokens as stored: the KMS-encrypted data key and the tokens sealed with it."""

    token_key: bytes
    refresh_token_enc: bytes
    access_token_enc: bytes | None

    def __repr__(self) -> str:
        return "SealedTokens(<sealed>)"


class TokenCipher:
    def __init__(
        self,
        kms_client: Any,
        key_id: str,
        *,
        data_key_max_age_s: float = 3600,
        data_key_max_uses: int = 100_000,
        # Every data key of a 400,000-user fleet (a data key per sign-in hour: ~1 per 100 users), ~1.6 MB:
        # at 256 a 100,000-user fleet's ~1,000 keys missed the cache and each poll paid a KMS Decrypt.
        cache_size: int = 4096,
    ):
        self._kms = kms_client
        self._key_id = key_id
        self._max_age_s = data_key_max_age_s
        self._max_uses = data_key_max_uses
        self._cache_size = cache_size
        self._lock = threading.Lock()
        # encrypted data key -> (plaintext key, when it was opened): entries expire after max age, so
        # disabling the KMS key stops warm containers within the hour too.
        self._cache: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._current: tuple[bytes, bytes, float, int] | None = None  # (enc, key, created, uses)

    @staticmethod
    def _context() -> dict[str, str]:
        return {"app": "playvault", "purpose": PURPOSE}

    def new_token_key(self) -> bytes:
        """An encrypted data key for a user's tokens: the container's current one (GenerateDataKey
        when none or stale). Stored on the user as `token_key`."""
        with self._lock:
            now = clock.now().timestamp()  # the clock the cache of opened keys ages on
            current = self._current
            if current is None or now - current[2] > self._max_age_s or current[3] >= self._max_uses:
                answer = self._kms.generate_data_key(
                    KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=self._context()
                )
                current = (answer["CiphertextBlob"], answer["Plaintext"], now, 0)
                self._remember(current[0], current[1])
            self._current = (current[0], current[1], current[2], current[3] + 1)
            return current[0]

    def seal_new(self, user_id: str, refresh_token: str, access_token: str | None) -> SealedTokens:
        """Sign-up: a token key and both tokens sealed with it."""
        token_key = self.new_token_key()
        return SealedTokens(
            token_key=token_key,
            refresh_token_enc=self.seal(token_key, refresh_token, user_id, REFRESH_TOKEN),
            access_token_enc=self.seal(token_key, access_token, user_id, ACCESS_TOKEN) if access_token else None,
        )

    def seal(self, token_key: bytes, plaintext: str, user_id: str, purpose: str) -> bytes:
        """`nonce || ciphertext` of a token under the user's data key (needs kms:Decrypt at most)."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + AESGCM(self._data_key(token_key)).encrypt(nonce, plaintext.encode(), _aad(user_id, purpose))

    def open(self, token_key: bytes | None, sealed: bytes | None, user_id: str, purpose: str) -> str:
        if not isinstance(token_key, bytes) or not token_key:
            raise TokenDecryptError("user has no token key")
        if not isinstance(sealed, bytes) or len(sealed) <= _NONCE_BYTES + _TAG_BYTES:
            raise TokenDecryptError(f"sealed {purpose} is missing or too short")
        key = self._data_key(token_key)
        try:
            plaintext = AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _aad(user_id, purpose))
        except InvalidTag:
            raise TokenDecryptError(f"sealed {purpose} does not belong to this user or was altered") from None
        return plaintext.decode()

    # -- internals ------------------------------------------------------------------------------
    def _data_key(self, encrypted_key: bytes) -> bytes:
        with self._lock:
            entry = self._cache.get(encrypted_key)
            if entry is not None and clock.now().timestamp() - entry[1] <= self._max_age_s:
                self._cache.move_to_end(encrypted_key)
                return entry[0]
            if entry is not None:
                del self._cache[encrypted_key]
        try:
            answer = self._kms.decrypt(
                CiphertextBlob=encrypted_key, KeyId=self._key_id, EncryptionContext=self._context()
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _BAD_DATA_KEY_CODES:
                raise TokenDecryptError("token key was altered or is not ours") from None
            raise
        with self._lock:
            self._remember(encrypted_key, answer["Plaintext"])
        return answer["Plaintext"]

    def _remember(self, encrypted_key: bytes, key: bytes) -> None:
        self._cache[encrypted_key] = (key, clock.now().timestamp())
        self._cache.move_to_end(encrypted_key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _aad(user_id: str, purpose: str) -> bytes:
    return f"{user_id}\x00{purpose}".encode()
