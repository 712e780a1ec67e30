"""Encryption of webhook secrets at rest, over ``cryptography``'s Fernet.

HMAC verification needs the raw secret, so it is encrypted rather than
hashed. Several keys allow rotation: new ciphertext uses the first key,
and any key decrypts. To retire a key, put the new one first, re-encrypt
the stored secrets (:func:`agent_wake.maintenance.rotate_secrets`, built
on :meth:`SecretBox.is_current` and :meth:`SecretBox.reencrypt`), then drop
the old key.
"""

import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from agent_wake._validation import require_utf8
from agent_wake.errors import InvalidInputError, SecretDecryptionError

__all__ = ["SecretBox"]

_GENERATED_SECRET_BYTES = 32


class SecretBox:
    """Encrypts and decrypts webhook secrets with one or more Fernet keys.

    Neither keys nor plaintexts ever appear in its ``repr`` or its errors.
    """

    def __init__(self, fernets: list[Fernet]) -> None:
        if not fernets:
            raise InvalidInputError("keys", "at least one Fernet key is required")
        self._fernet = MultiFernet(fernets)
        self._first = fernets[0]
        self._key_count = len(fernets)

    @classmethod
    def from_keys(cls, *keys: str | bytes) -> "SecretBox":
        """A box over these url-safe base64 Fernet keys; the first one encrypts."""
        fernets = []
        for position, key in enumerate(keys):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                # The message names the position only: the key itself is secret.
                raise InvalidInputError(f"keys[{position}]", "must be a 32-byte url-safe base64 Fernet key") from None
        return cls(fernets)

    @staticmethod
    def generate_key() -> str:
        """A new random Fernet key, as text to keep in a secret store."""
        return Fernet.generate_key().decode("ascii")

    @staticmethod
    def generate_secret() -> str:
        """A new random webhook secret (256 bits, url-safe text)."""
        return secrets.token_urlsafe(_GENERATED_SECRET_BYTES)

    def encrypt(self, plaintext: str) -> bytes:
        """Fernet ciphertext of ``plaintext`` under the first key."""
        if not isinstance(plaintext, str):
            raise InvalidInputError("plaintext", "must be a string")
        require_utf8("plaintext", plaintext)
        return self._fernet.encrypt(plaintext.encode("utf-8"))

    def decrypt(self, ciphertext: bytes) -> str:
        """The plaintext of ``ciphertext``; refuses one that no key opens or
        whose plaintext is not UTF-8 text, without showing the plaintext."""
        _require_ciphertext(ciphertext)
        try:
            plaintext = _utf8_or_none(self._fernet.decrypt(ciphertext))
        except InvalidToken:
            raise SecretDecryptionError("the stored secret cannot be decrypted with any configured key") from None
        if plaintext is None:
            raise SecretDecryptionError("the stored secret decrypts to bytes that are not UTF-8 text")
        return plaintext

    def is_current(self, ciphertext: bytes) -> bool:
        """Whether the first key alone opens ``ciphertext`` (nothing to re-encrypt).

        False for a ciphertext of another key and for one no key opens. Costs
        one HMAC check, and one decryption when it passes; the plaintext is dropped.
        """
        _require_ciphertext(ciphertext)
        try:
            self._first.decrypt(ciphertext)
        except InvalidToken:
            return False
        return True

    def reencrypt(self, ciphertext: bytes) -> bytes:
        """``ciphertext``'s plaintext encrypted again under the first key, checked before it is returned.

        Opens ``ciphertext`` with any key, encrypts the plaintext's bytes as
        they are under the first key, and decrypts the result with the first
        key alone: it must give the same bytes. Refuses
        (:class:`~agent_wake.errors.SecretDecryptionError`, showing neither
        key nor plaintext) a ciphertext no key opens, and a result that check
        fails. A plaintext that is not UTF-8 text is carried over unchanged
        (:meth:`decrypt` still refuses it): rotation changes the key, not the secret.
        """
        _require_ciphertext(ciphertext)
        try:
            plaintext = self._fernet.decrypt(ciphertext)
        except InvalidToken:
            raise SecretDecryptionError("the stored secret cannot be decrypted with any configured key") from None
        fresh = self._first.encrypt(plaintext)
        verified = _opens_to(self._first, fresh, plaintext)
        # The plaintext is no local of this frame when it raises (its traceback keeps the frame).
        del plaintext
        if not verified:
            raise SecretDecryptionError("the secret re-encrypted under the first key does not decrypt to itself")
        return fresh

    def __repr__(self) -> str:
        return f"SecretBox(keys={self._key_count})"


def _require_ciphertext(ciphertext: object) -> None:
    if not isinstance(ciphertext, bytes):
        raise InvalidInputError("ciphertext", "must be bytes")


def _opens_to(fernet: Fernet, ciphertext: bytes, plaintext: bytes) -> bool:
    try:
        return hmac.compare_digest(fernet.decrypt(ciphertext), plaintext)
    except InvalidToken:
        return False


def _utf8_or_none(data: bytes) -> str | None:
    # The UnicodeDecodeError holds the decrypted bytes: it is dropped here, so
    # that it is neither the cause nor the context of the error raised instead,
    # and the bytes are never a local of a frame in that error's traceback.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None
