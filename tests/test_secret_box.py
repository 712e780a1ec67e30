"""SecretBox: Fernet encryption with key rotation, and nothing secret in its text."""

import traceback

import pytest
from cryptography.fernet import Fernet

from agent_wake import InvalidInputError, SecretBox, SecretDecryptionError


def test_round_trip() -> None:
    box = SecretBox.from_keys(SecretBox.generate_key())
    ciphertext = box.encrypt("hunter2-but-longer")
    assert b"hunter2" not in ciphertext
    assert box.decrypt(ciphertext) == "hunter2-but-longer"


def test_first_key_encrypts_and_any_key_decrypts() -> None:
    old, new = SecretBox.generate_key(), SecretBox.generate_key()
    from_old = SecretBox.from_keys(old).encrypt("s")
    rotated = SecretBox.from_keys(new, old)
    assert rotated.decrypt(from_old) == "s"
    assert SecretBox.from_keys(new).decrypt(rotated.encrypt("t")) == "t"
    with pytest.raises(SecretDecryptionError):
        SecretBox.from_keys(old).decrypt(rotated.encrypt("t"))


def test_repr_shows_no_key() -> None:
    key = SecretBox.generate_key()
    box = SecretBox.from_keys(key, SecretBox.generate_key())
    assert repr(box) == "SecretBox(keys=2)"
    assert key not in repr(box)


def test_a_malformed_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidInputError) as caught:
        SecretBox.from_keys(SecretBox.generate_key(), "not-a-fernet-key-but-secret")
    assert caught.value.field == "keys[1]"
    assert "not-a-fernet-key-but-secret" not in str(caught.value)


def test_no_keys_is_refused() -> None:
    with pytest.raises(InvalidInputError) as caught:
        SecretBox.from_keys()
    assert caught.value.field == "keys"


def test_generated_secrets_are_long_and_distinct() -> None:
    secrets = {SecretBox.generate_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(len(secret) >= 43 for secret in secrets)


MARKER = "hunter2-marker"
NOT_UTF8 = b"\xff\xfe" + MARKER.encode() + b"\xc3"


def non_utf8_refusal() -> SecretDecryptionError:
    """What decrypting a valid token whose plaintext is NOT_UTF8 raises."""
    key = SecretBox.generate_key()
    ciphertext = Fernet(key).encrypt(NOT_UTF8)
    with pytest.raises(SecretDecryptionError) as caught:
        SecretBox.from_keys(key).decrypt(ciphertext)
    return caught.value


def chain_of(error: BaseException) -> list[BaseException]:
    """``error`` and every exception reachable through __cause__ and __context__."""
    found: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is not None and all(current is not seen for seen in found):
            found.append(current)
            pending += [current.__cause__, current.__context__]
    return found


def test_a_plaintext_that_is_not_utf8_is_refused_as_undecryptable() -> None:
    assert "not UTF-8" in str(non_utf8_refusal())


def test_the_refusal_of_a_non_utf8_plaintext_carries_it_nowhere_in_its_chain() -> None:
    error = non_utf8_refusal()
    assert (error.__cause__, error.__context__) == (None, None)
    for link in chain_of(error):
        for text in (str(link), repr(link), repr(link.args)):
            assert MARKER not in text


def test_no_frame_of_the_secret_box_in_the_refusals_traceback_holds_the_plaintext() -> None:
    error = non_utf8_refusal()
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_globals["__name__"] == "agent_wake.secret_box":
            assert all(MARKER not in repr(value) for value in frame.f_locals.values())


def test_a_ciphertext_that_is_not_bytes_is_refused() -> None:
    box = SecretBox.from_keys(SecretBox.generate_key())
    with pytest.raises(InvalidInputError) as caught:
        box.decrypt(box.encrypt("s").decode("ascii"))  # type: ignore[arg-type]
    assert caught.value.field == "ciphertext"


def test_is_current_only_for_a_ciphertext_of_the_first_key() -> None:
    old, new = SecretBox.generate_key(), SecretBox.generate_key()
    rotated = SecretBox.from_keys(new, old)
    assert rotated.is_current(rotated.encrypt("s"))
    assert not rotated.is_current(SecretBox.from_keys(old).encrypt("s"))


def test_a_ciphertext_no_key_opens_is_not_current() -> None:
    box = SecretBox.from_keys(SecretBox.generate_key())
    assert not box.is_current(SecretBox.from_keys(SecretBox.generate_key()).encrypt("s"))


def test_reencrypt_gives_a_ciphertext_the_first_key_alone_opens() -> None:
    old, new = SecretBox.generate_key(), SecretBox.generate_key()
    from_old = SecretBox.from_keys(old).encrypt("hunter2-but-longer")
    fresh = SecretBox.from_keys(new, old).reencrypt(from_old)
    assert SecretBox.from_keys(new).decrypt(fresh) == "hunter2-but-longer"
    with pytest.raises(SecretDecryptionError):
        SecretBox.from_keys(old).decrypt(fresh)


def test_reencrypt_carries_a_plaintext_that_is_not_utf8_over_unchanged() -> None:
    old, new = SecretBox.generate_key(), SecretBox.generate_key()
    fresh = SecretBox.from_keys(new, old).reencrypt(Fernet(old).encrypt(NOT_UTF8))
    assert Fernet(new).decrypt(fresh) == NOT_UTF8


def test_reencrypt_refuses_a_ciphertext_no_key_opens_without_showing_a_key() -> None:
    key = SecretBox.generate_key()
    with pytest.raises(SecretDecryptionError) as caught:
        SecretBox.from_keys(key).reencrypt(SecretBox.from_keys(SecretBox.generate_key()).encrypt(MARKER))
    assert "cannot be decrypted" in str(caught.value)
    assert key not in str(caught.value)


class _LyingFernet(Fernet):
    """Encrypts under a key other than its own: what reencrypt's check is there to catch."""

    def encrypt(self, data: bytes) -> bytes:
        return Fernet(Fernet.generate_key()).encrypt(data)


def test_reencrypt_refuses_a_result_the_first_key_alone_does_not_open() -> None:
    old = SecretBox.generate_key()
    box = SecretBox([_LyingFernet(Fernet.generate_key()), Fernet(old)])
    with pytest.raises(SecretDecryptionError, match="does not decrypt to itself") as caught:
        box.reencrypt(Fernet(old).encrypt(MARKER.encode()))
    for link in chain_of(caught.value):
        assert MARKER not in str(link)
    for frame, _ in traceback.walk_tb(caught.value.__traceback__):
        if frame.f_globals["__name__"] == "agent_wake.secret_box":
            assert all(MARKER not in repr(value) for value in frame.f_locals.values())


@pytest.mark.parametrize("method", ["is_current", "reencrypt"])
def test_is_current_and_reencrypt_refuse_a_ciphertext_that_is_not_bytes(method: str) -> None:
    box = SecretBox.from_keys(SecretBox.generate_key())
    with pytest.raises(InvalidInputError) as caught:
        getattr(box, method)(box.encrypt("s").decode("ascii"))
    assert caught.value.field == "ciphertext"
