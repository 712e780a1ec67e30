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
