"""Envelope encryption of Spotify tokens at rest (KMS data keys, AES-256-GCM, cached per container).

A blob is `v1.<KMS-encrypted data key>.<nonce>.<ciphertext>` (base64url parts). The data key comes
from KMS GenerateDataKey with the encryption context {"app": "playvault", "purpose": ...}; each
token is sealed with AES-GCM whose associated data is the user id, so a blob copied onto another
user does not decrypt. Data keys are cached per container: KMS is asked once per data key, not once
per poll (KMS requests would otherwise dominate the cost per user).

Least privilege: sign-up (auth) only creates data keys; the worker only decrypts them and seals a
refreshed token with the data key it recovered from the user's own blob.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections import OrderedDict
from typing import Any

from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = "v1"
PURPOSE = "spotify-token"
# KMS answers these when the encrypted data key of a blob was altered or belongs to another key: the
# blob is bad (the user must sign in again), KMS is fine (no redelivery can help).
_BAD_DATA_KEY_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})


class TokenDecryptError(ValueError):
    """A blob is malformed or does not belong to this user (message never contains the blob)."""


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenCipher:
    def __init__(
        self,
        kms_client: Any,
        key_id: str,
        *,
        data_key_max_age_s: float = 3600,
        data_key_max_uses: int = 100_000,
        cache_size: int = 256,
    ):
        self._kms = kms_client
        self._key_id = key_id
        self._max_age_s = data_key_max_age_s
        self._max_uses = data_key_max_uses
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()  # encrypted data key -> plaintext key
        self._current: tuple[bytes, bytes, float, int] | None = None  # (enc, key, created, uses)

    @staticmethod
    def _context() -> dict[str, str]:
        return {"app": "playvault", "purpose": PURPOSE}

    # -- sealing --------------------------------------------------------------------------------
    def encrypt(self, plaintext: str, user_id: str) -> str:
        """Seal with the container's current data key (GenerateDataKey when none or stale)."""
        encrypted_key, key = self._current_data_key()
        return self._seal(encrypted_key, key, plaintext, user_id)

    def encrypt_like(self, existing_blob: str, plaintext: str, user_id: str) -> str:
        """Seal with the data key of an existing blob of the same user: needs kms:Decrypt only."""
        encrypted_key, _, _ = self._split(existing_blob)
        return self._seal(encrypted_key, self._data_key(encrypted_key), plaintext, user_id)

    def decrypt(self, blob: str, user_id: str) -> str:
        encrypted_key, nonce, ciphertext = self._split(blob)
        key = self._data_key(encrypted_key)
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, user_id.encode()).decode()
        except (InvalidTag, ValueError):  # ValueError: a nonce of the wrong length
            raise TokenDecryptError("token blob does not belong to this user or was altered") from None

    # -- internals ------------------------------------------------------------------------------
    def _seal(self, encrypted_key: bytes, key: bytes, plaintext: str, user_id: str) -> str:
        nonce = os.urandom(12)
        ciphertext = AESGCM(key).encrypt(nonce, plaintext.encode(), user_id.encode())
        return ".".join((VERSION, _b64e(encrypted_key), _b64e(nonce), _b64e(ciphertext)))

    @staticmethod
    def _split(blob: str) -> tuple[bytes, bytes, bytes]:
        parts = blob.split(".") if isinstance(blob, str) else []
        if len(parts) != 4 or parts[0] != VERSION:
            raise TokenDecryptError("token blob has an unknown format")
        try:
            decoded = _b64d(parts[1]), _b64d(parts[2]), _b64d(parts[3])
        except ValueError:
            raise TokenDecryptError("token blob is not valid base64") from None
        if not all(decoded):
            raise TokenDecryptError("token blob has an empty part")
        return decoded

    def _current_data_key(self) -> tuple[bytes, bytes]:
        with self._lock:
            now = time.monotonic()
            current = self._current
            if current is None or now - current[2] > self._max_age_s or current[3] >= self._max_uses:
                answer = self._kms.generate_data_key(
                    KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=self._context()
                )
                current = (answer["CiphertextBlob"], answer["Plaintext"], now, 0)
                self._remember(current[0], current[1])
            self._current = (current[0], current[1], current[2], current[3] + 1)
            return current[0], current[1]

    def _data_key(self, encrypted_key: bytes) -> bytes:
        with self._lock:
            key = self._cache.get(encrypted_key)
            if key is not None:
                self._cache.move_to_end(encrypted_key)
                return key
        try:
            answer = self._kms.decrypt(
                CiphertextBlob=encrypted_key, KeyId=self._key_id, EncryptionContext=self._context()
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _BAD_DATA_KEY_CODES:
                raise TokenDecryptError("token blob's data key was altered or is not ours") from None
            raise
        with self._lock:
            self._remember(encrypted_key, answer["Plaintext"])
        return answer["Plaintext"]

    def _remember(self, encrypted_key: bytes, key: bytes) -> None:
        self._cache[encrypted_key] = key
        self._cache.move_to_end(encrypted_key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
