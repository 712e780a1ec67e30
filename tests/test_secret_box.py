"""SecretBox: Fernet encryption with key rotation, and nothing secret in its text."""

import pytest

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
